"""Change since a previous run (moved out of worker.analysis): the previous run's images
against this run's new ones (docs/method.md §12.7).
"""

from __future__ import annotations

import numpy as np

from worker import metrics, stats
from worker.embeddings import EmbeddedSet
from worker.job import Job
from worker.pair_passes import _engine_kw
from worker.pca import joint_pca
from worker.results import (
    ChangeTest,
    Report,
)

# --------------------------------------------------------------------------- change since a run


def previous_vectors(
    previous_images: list[tuple[str, str | None]], current: EmbeddedSet, lookup=None
) -> tuple[np.ndarray, int]:
    """Embeddings of a previous run's images of one secondary (method.md §12.7): an image with
    a content hash takes this run's vector of the same content when this run has it, else
    `lookup(hash)` (the embedding cache: vector or None); an image without a hash (precomputed
    embeddings) takes this run's vector of the same id. previous_images: (id, sha256 or None)
    per image. Returns (vectors (k, d), missing)."""
    by_hash = {h: r for r, h in enumerate(current.hashes or []) if h}
    by_id = {i: r for r, i in enumerate(current.ids)}
    rows, missing = [], 0
    for image_id, h in previous_images:
        if h and h in by_hash:
            rows.append(current.vectors[by_hash[h]])
        elif h and lookup is not None and (v := lookup(h)) is not None:
            rows.append(np.asarray(v, dtype=np.float64))
        elif not h and image_id in by_id:
            rows.append(current.vectors[by_id[image_id]])
        else:
            missing += 1
    width = current.vectors.shape[1]
    return (np.vstack(rows) if rows else np.zeros((0, width))), missing


def change_test(
    previous: np.ndarray,
    new: np.ndarray,
    job: Job,
    *,
    previous_run: str | None,
    previous_missing: int = 0,
) -> ChangeTest:
    """The new images (r, d) against the previous run's images (k, d) (method.md §12.7): one
    joint PCA of the two (pca.dims), the energy distance and its permutation test, and the
    novel fraction of the new images against the previous run's leave-one-out k-NN
    distances, with its binomial p-value against 1 - q."""
    q, k = job.metrics.novelty_quantile, job.metrics.novelty_k
    out = {
        "previous_run": previous_run,
        "previous_images": len(previous),
        "previous_missing": previous_missing,
        "new_images": len(new),
        "energy_distance": None,
        "p_value": None,
        "p_value_adjusted": None,
        "min_p_value": None,
        "novel_fraction": None,
        "base_rate": 1.0 - q,
        "novelty_p_value": None,
        "reason": None,
    }
    if len(new) == 0:
        return ChangeTest(**{**out, "reason": "no image is new since the previous run"})
    if len(previous) <= max(1, k):
        return ChangeTest(
            **{
                **out,
                "reason": f"only {len(previous)} embeddings of the previous run's images were "
                "found (this run's images and the embedding cache)",
            }
        )
    (prev_l, new_l), _ = joint_pca(
        [previous, new], job.pca.dims, route=job.pca.route, seed=job.seed
    )
    kw = _engine_kw(job)
    terms = metrics.energy_distance(new_l, prev_l, **kw)
    test = stats.energy_test(
        prev_l, new_l, permutations=job.metrics.energy_permutations, seed=job.seed
    )
    d = metrics.kth_nearest_distances(new_l, prev_l, k, **kw)
    loo = metrics.kth_nearest_distances(prev_l, prev_l, k, exclude_self=True, **kw)
    novelty = metrics.novelty_summary(d, loo, q)
    out.update(
        energy_distance=terms["distance"],
        p_value=test["p_value"],
        min_p_value=1.0 / (1 + test["permutations"]) if test["p_value"] is not None else None,
        novel_fraction=novelty["novel_fraction"],
        novelty_p_value=novelty["p_value"],
        reason=None if test["p_value"] is not None else "metrics.energy_permutations is 0",
    )
    return ChangeTest(**out)


def change_tests(
    history, previous_report: Report, sets: list[EmbeddedSet], job: Job, lookup=None
) -> None:
    """Fill `history.secondaries[].change` for every secondary the previous run also had
    (method.md §12.7), then adjust the change p-values over the secondaries."""
    previous = {s.name: s for s in previous_report.secondaries}
    embedded = {s.name: s for s in sets}
    run_id = history.previous_run
    done = []
    for entry in history.secondaries:
        sec = embedded.get(entry.name)
        if sec is None or entry.name not in previous:
            continue
        images = [(im.id, im.sha256) for im in previous[entry.name].images]
        prev, missing = previous_vectors(images, sec, lookup)
        new_ids = set(history.new_ids.get(entry.name, []))
        rows = [r for r, i in enumerate(sec.ids) if i in new_ids]
        entry.change = change_test(
            prev, sec.vectors[rows], job, previous_run=run_id, previous_missing=missing
        )
        done.append(entry.change)
    adjusted = stats.adjust_p_values([c.p_value for c in done], job.metrics.p_adjustment)
    for c, a in zip(done, adjusted, strict=True):
        c.p_value_adjusted = a
