"""Scoring the trained models (docs/method.md §5.2-5.5): predictions turned into per-image
threshold counts, then ODS / OIS, the F-vs-I_dist trend, verdicts and the halves / thirds.

Every model of every architecture and seed is scored on the same images of every secondary
with masks (images selected for training by any q, and images without an I_dist, left out by
`worker.adapt.run`). On a set without positive pixels F is null (with the reason) and the
false-positive pixel rate at the model's operating threshold (`operating_threshold`: its ODS
threshold over the sets with positives, pooled) is the noise. `mask_pixels` is the number of
positive mask pixels evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worker import metrics
from worker.adapt import ods
from worker.adapt.block import (
    AdaptationScore,
    FSplitPart,
    FSplitTable,
    PerImageF,
    TrivialBaseline,
)
from worker.adapt.masks import MaskedSet
from worker.adapt.names import BASELINE
from worker.adapt.plan import PlannedModel
from worker.adapt.train import load_pair, predict_probs, to_uint8_prob
from worker.adapt.verdicts import (
    NO_POSITIVES,
    NO_POSITIVES_REASON,
    adapted_verdict,
    baseline_verdict,
    trend,
)

EVAL_CHUNK = 16

#: (architecture label, seed) -> that run's trained models
Runs = dict[tuple[str, int], list[PlannedModel]]
#: (architecture label, seed, model name)
ScoreKey = tuple[str, int, str]


@dataclass(frozen=True)
class EvaluatedSet:
    """One secondary scored by every model: (N, T, 3) counts per ScoreKey on the `kept` ids,
    pixels per image, min-max scaled I_dist `x` and raw I_dist `d` of the kept ids (None
    when the set has no distances)."""

    ds: MaskedSet
    counts: dict[ScoreKey, np.ndarray]
    pixels: np.ndarray
    kept: list[str]
    x: np.ndarray | None
    d: np.ndarray | None


def splits(f: np.ndarray, d: np.ndarray) -> FSplitTable:
    """Halves and thirds of the images sorted by I_dist d (ascending): F and I_dist mean / std
    (population), by metrics.sorted_splits (the one definition of the parts)."""

    def parts(k: int) -> list[FSplitPart]:
        return [
            FSplitPart(
                mean=p["score_mean"],
                std=p["score_std"],
                i_dist_mean=p["mean"],
                i_dist_std=p["std"],
                count=p["count"],
            )
            for p in metrics.sorted_splits(d, k, scores=f)
        ]

    return FSplitTable(halves=parts(2), thirds=parts(3))


def evaluate_set(
    job, ds: MaskedSet, ids: list[str], runs: Runs, example_ids: set[str], progress
) -> tuple[dict[ScoreKey, np.ndarray], np.ndarray, list[str], list[dict]]:
    """Per ScoreKey (N, T, 3) counts on `ids`, pixels per image, the ids kept (decodable),
    and example predictions of the first seed ({"predictions": baseline architecture,
    "by_architecture"})."""
    size = job.adaptation.image_size
    segs = {(a, s, m.name): m.segmenter for (a, s), ms in runs.items() for m in ms}
    keys = list(segs)
    baseline_arch, first_seed = next(iter(runs))
    counts: dict[ScoreKey, list[np.ndarray]] = {k: [] for k in keys}
    pixels: list[int] = []
    kept: list[str] = []
    examples: list[dict] = []
    samples = ds.samples(ids)
    for start in range(0, len(samples), EVAL_CHUNK):
        chunk = []
        for s in samples[start : start + EVAL_CHUNK]:
            pair = load_pair(s, size, job.storage)
            if pair is not None:
                chunk.append((s, *pair))
        if not chunk:
            continue
        x = torch.from_numpy(np.stack([c[1] for c in chunk])).permute(0, 3, 1, 2)
        probs = {k: predict_probs(segs[k], x, job.adaptation.batch_size) for k in keys}
        for i, (s, image, small_mask, mask) in enumerate(chunk):
            kept.append(s.id)
            pixels.append(int(mask.size))
            for k in keys:
                counts[k].append(ods.threshold_counts(to_uint8_prob(probs[k][i], mask.shape), mask))
            if s.id in example_ids:
                by_arch: dict[str, dict] = {}
                for a, seed, m in keys:
                    if seed == first_seed:
                        by_arch.setdefault(a, {})[m] = to_uint8_prob(probs[(a, seed, m)][i])
                examples.append(
                    {
                        "id": s.id,
                        "image": image,
                        "mask": small_mask.astype(np.uint8) * 255,
                        "predictions": by_arch[baseline_arch],
                        "by_architecture": by_arch,
                    }
                )
        if progress is not None:
            progress(f"evaluate {ds.name}", min(start + EVAL_CHUNK, len(samples)), len(samples))
    empty = np.zeros((0, ods.N_THRESHOLDS, 3), dtype=np.int64)
    stacked = {k: (np.stack(v) if v else empty) for k, v in counts.items()}
    return stacked, np.asarray(pixels, dtype=np.int64), kept, examples


def operating_threshold(counts_with_positives: list[np.ndarray]) -> float:
    """A model's ODS threshold over every scored set with positive pixels, pooled (the counts
    of all their images summed); 0.5 when there is none. Used for the noise (FP) rate."""
    arrays = [c for c in counts_with_positives if len(c)]
    if not arrays:
        return 0.5
    return float(ods.evaluate_counts(np.concatenate(arrays))["ods_threshold"])


def positive_pixels(counts: np.ndarray) -> int:
    """Positive mask pixels of (N, T, 3) counts: TP + FN at any threshold."""
    return int(counts[:, 0, 0].sum() + counts[:, 0, 2].sum()) if len(counts) else 0


def trivial_baseline(dataset: str, counts: np.ndarray, pixels: np.ndarray) -> TrivialBaseline:
    """F of the all-positive and all-negative maps on one set, from any model's (N, T, 3)
    counts (for TP + FN, the positive pixels) and the pixels per image, scored with the ODS
    conventions of `worker.adapt.ods.prf`."""
    pos = int(counts[:, 0, 0].sum() + counts[:, 0, 2].sum()) if len(counts) else 0
    total = int(np.sum(pixels))
    if pos == 0 or total == 0:
        return TrivialBaseline(
            dataset=dataset,
            count=int(len(counts)),
            pixels=total,
            positive_pixels=pos,
            prevalence=0.0 if total else None,
            f_all_positive=None,
            f_all_negative=None,
            f_trivial=None,
        )
    _, _, f_pos = ods.prf(np.array([pos, total - pos, 0]))  # everything marked
    _, _, f_neg = ods.prf(np.array([0, 0, pos]))  # nothing marked
    return TrivialBaseline(
        dataset=dataset,
        count=int(len(counts)),
        pixels=total,
        positive_pixels=pos,
        prevalence=pos / total,
        f_all_positive=float(f_pos),
        f_all_negative=float(f_neg),
        f_trivial=float(max(f_pos, f_neg)),
    )


def _row(
    m: PlannedModel,
    arch: str,
    es: EvaluatedSet,
    c: np.ndarray,
    op: float,
) -> tuple[AdaptationScore, FSplitTable | None]:
    """One model on one set, with its slope verdict (refined by `score`)."""
    ev = ods.evaluate_counts(c, es.kept)
    common = {
        "model": m.name,
        "dataset": es.ds.name,
        "architecture": arch,
        "blind": not es.ds.select,
        "count": ev["count"],
        "mask_pixels": positive_pixels(c),
        "training_seconds": float(m.history.get("seconds", 0.0)),
    }
    if len(c) and common["mask_pixels"] == 0:
        rate, per = ods.false_positive_rate(c, es.pixels, op)
        row = AdaptationScore(
            **common,
            ods_f=None,
            ods_threshold=None,
            ois_f=None,
            precision=None,
            recall=None,
            f_slope=None,
            f_spearman=None,
            f_spearman_p=None,
            verdict=NO_POSITIVES,
            f_null_reason=NO_POSITIVES_REASON,
            fp_rate=rate,
            fp_threshold=op,
            per_image=[
                PerImageF(id=i, f=None, fp_rate=v) for i, v in zip(es.kept, per, strict=True)
            ],
        )
        return row, None
    f = np.array([r["f"] for r in ev["per_image"]], dtype=np.float64)
    tr = trend(f, es.x if es.x is not None else np.zeros(len(f)))
    row = AdaptationScore(
        **common,
        ods_f=ev["ods_f"],
        ods_threshold=ev["ods_threshold"],
        ois_f=ev["ois_f"],
        precision=ev["precision"],
        recall=ev["recall"],
        **tr,
        per_image=[PerImageF(id=r["id"], f=r["f"]) for r in ev["per_image"]],
    )
    split = splits(f, es.d) if es.d is not None and len(f) else None
    return row, split


def score(
    arch: str, seed: int, models: list[PlannedModel], evaluated: list[EvaluatedSet]
) -> tuple[list[AdaptationScore], dict[str, dict[str, FSplitTable]]]:
    """Results and splits of one architecture and seed from the counts (order: set, then
    model), with M's verdict weighing the gains and the M{q} / M_B{q} verdicts on flattening
    (worker.adapt.verdicts)."""
    has_pos = {
        es.ds.name: positive_pixels(es.counts[(arch, seed, BASELINE)]) > 0 for es in evaluated
    }
    op = {
        m.name: operating_threshold(
            [es.counts[(arch, seed, m.name)] for es in evaluated if has_pos[es.ds.name]]
        )
        for m in models
    }
    results: list[AdaptationScore] = []
    all_splits: dict[str, dict[str, FSplitTable]] = {}
    for es in evaluated:
        rows: dict[str, AdaptationScore] = {}
        set_splits: dict[str, FSplitTable] = {}
        for m in models:
            rows[m.name], split = _row(m, arch, es, es.counts[(arch, seed, m.name)], op[m.name])
            if split is not None:
                set_splits[m.name] = split
        base = rows[BASELINE]
        if base.ods_f is not None:
            adapted_ods = {
                m.name: rows[m.name].ods_f for m in models if m.q > 0 and not m.negatives
            }
            rows[BASELINE] = base.model_copy(
                update={
                    "verdict": baseline_verdict(base.verdict, base.f_slope, base.ods_f, adapted_ods)
                }
            )
        for m in models[1:]:
            row = rows[m.name]
            if row.ods_f is None:
                continue
            gain = None if base.ods_f is None else row.ods_f - base.ods_f
            rows[m.name] = row.model_copy(
                update={
                    "gain_over_baseline": gain,
                    "verdict": adapted_verdict(
                        base.f_slope, row.f_slope, base.ods_f, row.ods_f, row.count
                    ),
                }
            )
        results.extend(rows[m.name] for m in models)
        if set_splits:
            all_splits[es.ds.name] = set_splits
    return results, all_splits
