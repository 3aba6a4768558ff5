"""The adaptation stage (paper sections 3.3, 4.2-4.3, appendix C; docs/method.md §5).

Every architecture of adaptation.models (`unet`, `unetplusplus`, `segformer`, `upernet`; the
first is the baseline) trains the same models on the same images with the same seed and
settings, and every model of every architecture is scored on the same images. Models:
- `M`: the baseline, trained on P;
- `M{q}` for q in adaptation.counts (M1, M3, M7): P plus the q selected images of every
  secondary with masks and `select: true` (the ids the selection section chose);
- `M_B{q}` for q in adaptation.negatives.counts (M_B3, M_B7): the training set of the largest
  M{q} (M7 by default) plus q images with empty masks from adaptation.negatives.path (a seeded
  permutation of that folder; the smaller set is a prefix of the larger).

Every model is evaluated on every secondary with masks (`select: false` sets included: the
paper's blind sets). Images selected for training by any q are excluded from a secondary's
evaluation, so all models are compared on the same images; images without an I_dist (skipped by
the distance stage) are excluded too. Per model and secondary: ODS F and threshold, OIS F,
precision / recall at ODS, per-image F at the ODS threshold, and the trend of per-image F
against min-max scaled I_dist (least-squares slope, Spearman correlation) with a verdict:

- fewer than MIN_IMAGES images: "not enough images to judge";
- |slope| < SLOPE_TOL and Spearman p >= ALPHA (or undefined): "no fine-tuning needed: F is flat
  against I_dist";
- |slope| < SLOPE_TOL and p < ALPHA: "no fine-tuning needed: a significant but small trend";
- slope <= -SLOPE_TOL and p < ALPHA (rho < 0): "fine-tuning recommended: F falls with distance";
- slope <= -SLOPE_TOL and not significant: "inconclusive: F tends to fall with distance, but the
  correlation is not significant";
- slope >= SLOPE_TOL: "no fine-tuning needed: F does not fall with distance";
- a secondary whose masks have no positive pixel at all: "not applicable" (NO_POSITIVES): with
  TP + FN = 0 everywhere, F is 1 at a threshold with no false positive and 0 otherwise.

That slope rule is then refined with the measured gains (worker.adapt.results): M's verdict
says fine-tuning is recommended when some M{q} raised ODS F by GAIN_TOL or more, and M{q} /
M_B{q} say whether adaptation flattened the curve. On a set without positive pixels F is null
(with the reason) and the false-positive pixel rate at the model's operating threshold
(`operating_threshold`: its ODS threshold over the sets with positives, pooled) is the noise.

`mask_pixels` in each result is the number of positive mask pixels evaluated. The block is
returned as `worker.adapt.results.Adaptation` (pydantic), with `summary` from
`results.summarise`.

The slope is per unit of scaled I_dist, i.e. the change of F from the nearest to the farthest
image of the secondary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worker.adapt import ods
from worker.adapt import results as res
from worker.adapt.masks import (
    MaskedSet,
    build_masked_sets,
    check_adaptation_inputs,
    primary_masks_error,
)
from worker.adapt.segmenters import (
    Segmenter,
    TrainedEncoderExtractor,
    build_segmenter,
    save_segmenter,
)
from worker.adapt.train import (
    Sample,
    load_pair,
    predict_probs,
    resolve_device,
    to_uint8_prob,
    train_segmenter,
)
from worker.errors import JobError
from worker.sources import is_s3, list_images

__all__ = [
    "MaskedSet",
    "build_masked_sets",
    "check_adaptation_inputs",
    "operating_threshold",
    "run_adaptation",
    "trend",
    "verdict",
]

LOGGER = logging.getLogger("worker")

SLOPE_TOL = res.SLOPE_TOL
ALPHA = 0.05
MIN_IMAGES = res.MIN_IMAGES
EXAMPLES_PER_DATASET = 4  # farthest images shown in the prediction grid (fig. 8)
EVAL_CHUNK = 16
UNET_WIDTH = 16
NO_POSITIVES = (
    "not applicable: the masks of this set have no positive pixel, so F only tells whether "
    "some threshold leaves no false positive (1) or none does (0); read fp_rate (noise)"
)
NO_POSITIVES_REASON = (
    "the masks of this set have no positive pixel: F would only tell whether some threshold "
    "leaves no false positive; fp_rate (false-positive pixel rate at fp_threshold) is reported"
)
VERDICT_RULE = (
    f"per-image F at the ODS threshold against min-max scaled I_dist: least-squares slope and "
    f"Spearman correlation. Fewer than {MIN_IMAGES} images: not enough to judge. "
    f"|slope| < {SLOPE_TOL}: no fine-tuning needed. slope <= -{SLOPE_TOL} with Spearman "
    f"p < {ALPHA}: fine-tuning recommended; without significance: inconclusive. "
    f"slope >= {SLOPE_TOL}: no fine-tuning needed (F does not fall with distance). "
    "A set whose masks have no positive pixel: not applicable (its fp_rate is the noise). "
    f"M's verdict also weighs the M{{q}}: one that raised ODS F by {res.GAIN_TOL} or more "
    "means fine-tuning is recommended, even on a flat curve. M{q} and M_B{q} say whether "
    "adaptation flattened the curve (M's slope before, theirs after)."
)


@dataclass
class _Model:
    name: str
    q: int
    negatives: int
    samples: list[Sample]
    segmenter: Segmenter | None = None
    train_ids: list[str] = field(default_factory=list)
    history: dict = field(default_factory=dict)


def _fingerprint(job, arch, samples: list[Sample], unet_width: int) -> str:
    cfg = job.adaptation
    fields = {
        "v": 1,
        "model": arch.name,
        "checkpoint": arch.checkpoint,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": job.seed,
        "unet_width": unet_width,
        "samples": [[s.dataset, s.id, s.image_uri, s.mask_uri, s.empty_mask] for s in samples],
    }
    if arch.encoder is not None:  # absent otherwise, so older resume checkpoints still match
        fields["encoder"] = arch.encoder
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _train_ids(samples: list[Sample], primary: str) -> list[str]:
    """Training ids for report.json: P's ids as they are, others prefixed 'dataset/'."""
    return [s.id if s.dataset == primary else f"{s.dataset}/{s.id}" for s in samples]


def _plan_models(job, datasets, selections, primary: MaskedSet) -> list[_Model]:
    cfg = job.adaptation
    for field_name, values in (
        ("adaptation.counts", cfg.counts),
        ("adaptation.negatives.counts", cfg.negatives.counts if cfg.negatives else []),
    ):
        if any(int(q) < 1 for q in values):
            raise JobError(f"{field_name}: every count must be a positive integer, got {values}")
    base = primary.samples()
    models = [_Model("M", 0, 0, base)]
    selectable = [
        ds.name
        for ds in job.datasets.secondary
        if ds.select and ds.name in datasets and datasets[ds.name].has_masks
    ]
    counts = sorted(set(cfg.counts))
    for q in counts:
        extra: list[Sample] = []
        for name in selectable:
            chosen = (selections.get(name) or {}).get(q)
            if chosen is None:
                raise JobError(
                    f"adaptation.counts: no selection of {q} images for dataset {name!r} "
                    f"(strategy {cfg.selection!r}); add {q} to selection.counts and "
                    f"{cfg.selection!r} to selection.strategy, or set select: false on {name!r}"
                )
            extra.extend(datasets[name].samples(list(chosen)))
        models.append(_Model(f"M{q}", q, 0, base + extra))
    if cfg.negatives is not None and cfg.negatives.counts:
        neg_counts = sorted(set(cfg.negatives.counts))
        root = job.resolve(cfg.negatives.path)
        items = list_images(root, job.storage)
        if len(items) < neg_counts[-1]:
            raise JobError(
                f"adaptation.negatives.path: {root} has {len(items)} images but "
                f"adaptation.negatives.counts asks for {neg_counts[-1]}; add images or lower it"
            )
        order = np.random.default_rng(job.seed).permutation(len(items))
        largest = models[-1]
        for q in neg_counts:
            negs = [
                Sample("negatives", items[k].id, items[k].uri, None, empty_mask=True)
                for k in order[:q]
            ]
            models.append(_Model(f"M_B{q}", largest.q, q, largest.samples + negs))
    return models


def _check_masks(samples: list[Sample]) -> None:
    """Every image that trains or is evaluated has a mask (checked before any training)."""
    missing = sorted({s.image_uri for s in samples if s.mask_uri is None and not s.empty_mask})
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise JobError(
            f"adaptation: {len(missing)} images have no mask with the same stem in their "
            f"dataset's masks folder: {shown}; add the masks or remove the images"
        )


def _resume_root(job, train_dir: str | Path | None) -> Path | None:
    if train_dir is not None:
        return Path(train_dir)
    if job.cache.enabled and job.cache.dir and not is_s3(job.cache.dir):
        return Path(job.resolve(job.cache.dir)) / "adaptation"
    return None


def _as_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (3, S, S) image and uint8 (1, S, S) 0/1 mask: training data stays 8-bit."""
    x = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    return x, torch.from_numpy(mask.astype(np.uint8)).unsqueeze(0)


def trend(f: np.ndarray, x: np.ndarray) -> dict:
    """Least-squares slope and Spearman correlation of per-image F against scaled I_dist, and
    the verdict (rule in the module docstring). None where undefined."""
    from scipy.stats import spearmanr

    f = np.asarray(f, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n = len(f)
    slope = rho = p = None
    if n >= 2 and np.ptp(x) > 0:
        slope = float(np.polyfit(x, f, 1)[0])
        if np.ptp(f) > 0:
            res = spearmanr(x, f)
            r, pv = float(res.statistic), float(res.pvalue)
            if np.isfinite(r):
                rho = r
                p = pv if np.isfinite(pv) else None
    return {
        "f_slope": slope,
        "f_spearman": rho,
        "f_spearman_p": p,
        "verdict": verdict(slope, rho, p, n),
    }


def verdict(slope: float | None, rho: float | None, p: float | None, n: int) -> str:
    if n < MIN_IMAGES or slope is None:
        return f"not enough images to judge (fewer than {MIN_IMAGES} with I_dist)"
    significant = p is not None and p < ALPHA
    if abs(slope) < SLOPE_TOL:
        if significant:
            return "no fine-tuning needed: a significant but small trend of F with I_dist"
        return "no fine-tuning needed: F is flat against I_dist"
    if slope < 0:
        if significant and rho is not None and rho < 0:
            return "fine-tuning recommended: F falls with distance from the training set"
        return "inconclusive: F tends to fall with distance, but the correlation is not significant"
    return "no fine-tuning needed: F does not fall with distance"


def _splits(f: np.ndarray, d: np.ndarray) -> dict:
    """Halves and thirds of the images sorted by I_dist (ascending): F and I_dist mean / std."""
    order = np.argsort(d, kind="stable")
    out = {}
    for key, parts in (("halves", 2), ("thirds", 3)):
        rows = []
        for idx in np.array_split(order, parts):
            if len(idx) == 0:
                rows.append(
                    {"mean": None, "std": None, "i_dist_mean": None, "i_dist_std": None, "count": 0}
                )
                continue
            rows.append(
                {
                    "mean": float(f[idx].mean()),
                    "std": float(f[idx].std()),
                    "i_dist_mean": float(d[idx].mean()),
                    "i_dist_std": float(d[idx].std()),
                    "count": int(len(idx)),
                }
            )
        out[key] = rows
    return out


def _train_data(job, models: list[_Model]) -> dict[tuple[str, str], tuple | None]:
    """Every training pair, loaded once (8-bit tensors) and shared by every architecture."""
    cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor] | None] = {}
    for m in models:
        for s in m.samples:
            key = (s.dataset, s.id)
            if key not in cache:
                pair = load_pair(s, job.adaptation.image_size, job.storage)
                cache[key] = None if pair is None else _as_tensors(pair[0], pair[1])
    return cache


def _train_all(
    job,
    arch,
    models: list[_Model],
    primary_name: str,
    resume_root,
    progress,
    unet_width: int,
    cache: dict,
    field_name: str,
) -> None:
    cfg = job.adaptation
    for m in models:
        used = [s for s in m.samples if cache[(s.dataset, s.id)] is not None]
        if not used:
            raise JobError(f"adaptation: model {m.name} has no usable training images")
        x = torch.stack([cache[(s.dataset, s.id)][0] for s in used])
        y = torch.stack([cache[(s.dataset, s.id)][1] for s in used])
        m.train_ids = _train_ids(used, primary_name)
        fp = _fingerprint(job, arch, used, unet_width)
        prefix = m.name if arch.label == cfg.architectures[0].label else f"{arch.label}-{m.name}"
        ckpt_dir = resume_root / f"{prefix}-{fp}" if resume_root is not None else None
        m.segmenter = build_segmenter(
            arch.name,
            arch.checkpoint,
            encoder=arch.encoder,
            width=unet_width,
            seed=job.seed,
            field=field_name,
        )
        tag = m.name if len(cfg.architectures) == 1 else f"{arch.label} {m.name}"

        def _report(epoch: int, epochs: int, loss: float, name: str = tag) -> None:
            if progress is not None:
                progress(f"train {name}", epoch, epochs)
            LOGGER.debug("adaptation: %s epoch %d/%d loss %.4f", name, epoch, epochs, loss)

        m.history = train_segmenter(
            m.segmenter,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=job.seed,
            checkpoint_dir=ckpt_dir,
            fingerprint=fp,
            progress=_report,
            device=resolve_device(job.compute.device),
        )
        LOGGER.info(
            "adaptation: trained %s on %d images in %.1fs (final loss %.4f)",
            tag,
            len(used),
            m.history["seconds"],
            m.history["losses"][-1] if m.history["losses"] else float("nan"),
        )


def _evaluate_set(
    job,
    ds: MaskedSet,
    ids: list[str],
    runs: dict[str, list[_Model]],
    example_ids: set[str],
    progress,
) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray, list[str], list[dict]]:
    """Per (architecture, model) (N, T, 3) counts on `ids`, pixels per image, the ids kept
    (decodable), and example predictions ({"predictions": baseline, "by_architecture"})."""
    size = job.adaptation.image_size
    keys = [(a, m.name) for a, ms in runs.items() for m in ms]
    segs = {(a, m.name): m.segmenter for a, ms in runs.items() for m in ms}
    baseline = next(iter(runs))
    counts: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in keys}
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
                prob8 = to_uint8_prob(probs[k][i], mask.shape)
                counts[k].append(ods.threshold_counts(prob8, mask))
            if s.id in example_ids:
                by_arch: dict[str, dict] = {}
                for a, m in keys:
                    by_arch.setdefault(a, {})[m] = to_uint8_prob(probs[(a, m)][i])
                examples.append(
                    {
                        "id": s.id,
                        "image": image,
                        "mask": small_mask.astype(np.uint8) * 255,
                        "predictions": by_arch[baseline],
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


def _score(
    arch_label: str,
    models: list[_Model],
    evaluated: list[tuple[MaskedSet, dict, np.ndarray, list[str], np.ndarray | None, np.ndarray]],
) -> tuple[list[res.AdaptationScore], dict[str, dict[str, res.FSplitTable]]]:
    """Results and splits of one architecture from the counts (order: set, then model)."""
    seconds = {m.name: float(m.history.get("seconds", 0.0)) for m in models}
    has_pos = {
        ds.name: bool(len(c := counts[(arch_label, "M")]))
        and int(c[:, 0, 0].sum() + c[:, 0, 2].sum()) > 0
        for ds, counts, _, _, _, _ in evaluated
    }
    op = {
        m.name: operating_threshold(
            [counts[(arch_label, m.name)] for ds, counts, *_ in evaluated if has_pos[ds.name]]
        )
        for m in models
    }
    results: list[res.AdaptationScore] = []
    splits: dict[str, dict[str, res.FSplitTable]] = {}
    for ds, counts, pixels, kept, x, d in evaluated:
        splits[ds.name] = {}
        rows: dict[str, dict] = {}
        for m in models:
            c = counts[(arch_label, m.name)]
            ev = ods.evaluate_counts(c, kept)
            mask_pixels = int(c[:, 0, 0].sum() + c[:, 0, 2].sum()) if len(c) else 0
            row = {
                "model": m.name,
                "dataset": ds.name,
                "architecture": arch_label,
                "blind": not ds.select,
                "count": ev["count"],
                "mask_pixels": mask_pixels,
                "training_seconds": seconds[m.name],
            }
            if len(c) and mask_pixels == 0:
                rate, per = ods.false_positive_rate(c, pixels, op[m.name])
                row.update(
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
                    fp_threshold=op[m.name],
                    per_image=[
                        {"id": i, "f": None, "fp_rate": v} for i, v in zip(kept, per, strict=True)
                    ],
                )
            else:
                f = np.array([r["f"] for r in ev["per_image"]], dtype=np.float64)
                tr = trend(f, x) if x is not None else trend(f, np.zeros(len(f)))
                row.update(
                    ods_f=ev["ods_f"],
                    ods_threshold=ev["ods_threshold"],
                    ois_f=ev["ois_f"],
                    precision=ev["precision"],
                    recall=ev["recall"],
                    **tr,
                    per_image=ev["per_image"],
                )
                if d is not None and len(f):
                    splits[ds.name][m.name] = res.FSplitTable.model_validate(_splits(f, d))
            rows[m.name] = row
        base = rows["M"]
        adapted_ods = {m.name: rows[m.name]["ods_f"] for m in models if m.q > 0 and not m.negatives}
        if base["ods_f"] is not None:
            base["verdict"] = res.baseline_verdict(
                base["verdict"], base["f_slope"], base["ods_f"], adapted_ods
            )
        for m in models[1:]:
            row = rows[m.name]
            if row["ods_f"] is None:
                continue
            if base["ods_f"] is not None:
                row["gain_over_baseline"] = row["ods_f"] - base["ods_f"]
            row["verdict"] = res.adapted_verdict(
                base["f_slope"], row["f_slope"], base["ods_f"], row["ods_f"], row["count"]
            )
        results.extend(res.AdaptationScore.model_validate(rows[m.name]) for m in models)
        if not splits[ds.name]:
            del splits[ds.name]
    return results, splits


def run_adaptation(
    job,
    datasets: dict[str, MaskedSet],
    selections_by_dataset: dict[str, dict[int, list[str]]],
    i_dist_scaled: dict[str, dict[str, float]],
    out_dir: str | Path,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    i_dist: dict[str, dict[str, float]] | None = None,
    train_dir: str | Path | None = None,
    unet_width: int = UNET_WIDTH,
) -> tuple[res.Adaptation, dict]:
    """Train M, M{q} and M_B{q} for every architecture; score them on every secondary with
    masks.

    `datasets`: name -> MaskedSet (see `build_masked_sets`), the primary included.
    `selections_by_dataset[name][q]`: the ids selected for training from secondary `name`.
    `i_dist_scaled[name]`: {id: min-max scaled I_dist}; `i_dist[name]` (optional): raw I_dist,
    used for the I_dist mean / std of the splits (scaled values when absent).
    `out_dir`: model checkpoints go to out_dir/checkpoints/<model>.pt (baseline architecture)
    and <label>-<model>.pt (the others) when output.save_checkpoints. `train_dir`: where
    per-epoch resume checkpoints live (default: <cache.dir>/adaptation for a local cache; none
    otherwise). `unet_width`: channels of the UNet's first scale (architecture 'unet' only).
    `progress(stage, done, total)` is called per epoch and per evaluation chunk.

    Returns (report.json's `adaptation` block as `results.Adaptation`, extras for the figures:
    {"adaptation": {model_order, curves, examples, histories, seconds, architectures: {label:
    {model_order, histories}}}, "trained_extractor": TrainedEncoderExtractor of the baseline
    M or None}).
    """
    t0 = time.perf_counter()
    cfg = job.adaptation
    archs = cfg.architectures
    primary_name = job.datasets.primary.name
    primary = datasets.get(primary_name)
    if primary is None or not primary.has_masks:
        raise primary_masks_error(primary_name)
    plan_models = _plan_models(job, datasets, selections_by_dataset, primary)

    # images any model trained on (any q) are left out of every model's evaluation, and so are
    # images without an I_dist (skipped by the distance stage)
    selected_by_set: dict[str, set[str]] = {}
    for m in plan_models:
        for s in m.samples:
            if not s.empty_mask:
                selected_by_set.setdefault(s.dataset, set()).add(s.id)
    plan: list[tuple[MaskedSet, list[str]]] = []
    for ds_cfg in job.datasets.secondary:
        ds = datasets.get(ds_cfg.name)
        if ds is None or not ds.has_masks:
            continue
        scaled = i_dist_scaled.get(ds.name)
        exclude = selected_by_set.get(ds.name, set())
        plan.append(
            (ds, [i for i in ds.ids if i not in exclude and (scaled is None or i in scaled)])
        )
    _check_masks(
        [s for m in plan_models for s in m.samples]
        + [s for ds, ids in plan for s in ds.samples(ids)]
    )

    cache = _train_data(job, plan_models)
    resume_root = _resume_root(job, train_dir)
    runs: dict[str, list[_Model]] = {}
    for k, arch in enumerate(archs):
        field_name = "adaptation" if cfg.models is None else f"adaptation.models[{k}]"
        models = [_Model(m.name, m.q, m.negatives, m.samples) for m in plan_models]
        _train_all(
            job, arch, models, primary_name, resume_root, progress, unet_width, cache, field_name
        )
        runs[arch.label] = models
    baseline = archs[0].label

    evaluated = []
    curves, examples = {}, {}
    for ds, ids in plan:
        scaled = i_dist_scaled.get(ds.name)
        far = sorted(ids, key=lambda i: -scaled[i])[:EXAMPLES_PER_DATASET] if scaled else []
        counts, pixels, kept, ex = _evaluate_set(job, ds, ids, runs, set(far), progress)
        ex.sort(key=lambda e: -scaled[e["id"]] if scaled else 0.0)
        examples[ds.name] = ex
        x = np.array([scaled[i] for i in kept], dtype=np.float64) if scaled else None
        raw = (i_dist or {}).get(ds.name)
        if raw and all(i in raw for i in kept):
            d = np.array([raw[i] for i in kept], dtype=np.float64)
        else:
            d = x
        curves[ds.name] = {"ids": kept, "i_dist_scaled": None if x is None else x.tolist()}
        evaluated.append((ds, counts, pixels, kept, x, d))

    blocks = []
    for arch in archs:
        models = runs[arch.label]
        results, splits = _score(arch.label, models, evaluated)
        blocks.append(
            res.ArchitectureBlock(
                label=arch.label,
                name=arch.name,
                checkpoint=arch.checkpoint,
                encoder=arch.encoder,
                parameters=models[0].segmenter.parameters_count,
                models=[_trained(m) for m in models],
                results=results,
                splits=splits,
            )
        )

    if job.output.save_checkpoints:
        for arch in archs:
            for m in runs[arch.label]:
                name = m.name if arch.label == baseline else f"{arch.label}-{m.name}"
                save_segmenter(m.segmenter, Path(out_dir) / "checkpoints" / f"{name}.pt")

    roles = []
    for ds_cfg in job.datasets.secondary:
        ds = datasets.get(ds_cfg.name)
        scored = ds is not None and ds.has_masks
        selections = None
        if ds_cfg.select and scored:
            chosen = selections_by_dataset.get(ds_cfg.name) or {}
            selections = [
                res.SelectionIds(q=m.q, ids=list(chosen.get(m.q) or []))
                for m in plan_models
                if m.q > 0 and not m.negatives
            ]
        roles.append(
            res.DatasetRole(
                name=ds_cfg.name,
                role="selected" if ds_cfg.select else "blind",
                scored=scored,
                selections=selections,
            )
        )
    first = blocks[0]
    adaptation = res.Adaptation(
        model=archs[0].name,
        checkpoint=archs[0].checkpoint,
        baseline_architecture=baseline,
        selection=cfg.selection,
        epochs=cfg.epochs,
        image_size=cfg.image_size,
        verdict_rule=VERDICT_RULE,
        datasets=roles,
        models=first.models,
        results=first.results,
        splits=first.splits,
        architectures=blocks,
        summary=res.summarise(blocks),
    )
    extractor = None
    if cfg.features_from_trained:
        extractor = TrainedEncoderExtractor(
            runs[baseline][0].segmenter, cfg.image_size, label="M", batch_size=cfg.batch_size
        )
    extras = {
        "adaptation": {
            "model_order": [m.name for m in runs[baseline]],
            "curves": curves,
            "examples": examples,
            "histories": {m.name: m.history.get("losses", []) for m in runs[baseline]},
            "architectures": {
                a: {
                    "model_order": [m.name for m in ms],
                    "histories": {m.name: m.history.get("losses", []) for m in ms},
                }
                for a, ms in runs.items()
            },
            "seconds": time.perf_counter() - t0,
        },
        "trained_extractor": extractor,
    }
    return adaptation, extras


def _trained(m: _Model) -> res.TrainedModel:
    losses = m.history.get("losses") or []
    return res.TrainedModel(
        name=m.name,
        q=m.q,
        negatives=m.negatives,
        train_ids=m.train_ids,
        training_seconds=float(m.history.get("seconds", 0.0)),
        final_loss=float(losses[-1]) if losses else None,
    )
