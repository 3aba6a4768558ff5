"""The adaptation stage (paper sections 3.3, 4.2-4.3, appendix C; DESIGN.md sections 3-4).

Models, all trained with the same seed and settings:
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

`mask_pixels` in each result is the number of positive mask pixels evaluated.

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

LOGGER = logging.getLogger("worker")

SLOPE_TOL = 0.1
ALPHA = 0.05
MIN_IMAGES = 5
EXAMPLES_PER_DATASET = 4  # farthest images shown in the prediction grid (fig. 8)
EVAL_CHUNK = 16
UNET_WIDTH = 16
NO_POSITIVES = (
    "not applicable: the masks of this set have no positive pixel, so F only tells whether "
    "some threshold leaves no false positive (1) or none does (0)"
)
VERDICT_RULE = (
    f"per-image F at the ODS threshold against min-max scaled I_dist: least-squares slope and "
    f"Spearman correlation. Fewer than {MIN_IMAGES} images: not enough to judge. "
    f"|slope| < {SLOPE_TOL}: no fine-tuning needed. slope <= -{SLOPE_TOL} with Spearman "
    f"p < {ALPHA}: fine-tuning recommended; without significance: inconclusive. "
    f"slope >= {SLOPE_TOL}: no fine-tuning needed (F does not fall with distance). "
    "A set whose masks have no positive pixel: not applicable."
)


@dataclass
class MaskedSet:
    """A dataset of images with masks paired by stem; `mask_uris[i]` is None when image i has
    no mask (an error if that image is used), and `mask_uris` None when the set has no masks."""

    name: str
    ids: list[str]
    image_uris: list[str]
    mask_uris: list[str | None] | None
    select: bool = True

    @property
    def has_masks(self) -> bool:
        return self.mask_uris is not None

    def samples(self, ids: list[str] | None = None) -> list[Sample]:
        index = {i: k for k, i in enumerate(self.ids)}
        wanted = self.ids if ids is None else ids
        out = []
        for i in wanted:
            if i not in index:
                raise JobError(f"adaptation: dataset {self.name!r} has no image {i!r}")
            k = index[i]
            mask = self.mask_uris[k] if self.mask_uris is not None else None
            out.append(Sample(self.name, i, self.image_uris[k], mask))
        return out


def _stem(item_id: str) -> str:
    dot = item_id.rfind(".")
    return item_id[:dot] if dot > item_id.rfind("/") else item_id


def build_masked_sets(job) -> dict[str, MaskedSet]:
    """Every dataset of the job with images and masks (masks paired by stem), primary first.

    Raises JobError when adaptation is enabled and the primary has no masks, or when a masks
    folder has two files with the same stem.
    """
    primary = job.datasets.primary
    if primary.masks is None or primary.path is None:
        raise JobError(
            f"datasets.primary.masks: adaptation needs masks for the primary dataset "
            f"{primary.name!r}; add 'masks: <folder>' or set adaptation.enabled: false"
        )
    out: dict[str, MaskedSet] = {}
    for ds in job.all_datasets:
        if ds.path is None or ds.masks is None:
            continue
        images = list_images(job.resolve(ds.path), job.storage)
        masks = list_images(job.resolve(ds.masks), job.storage)
        by_stem: dict[str, str] = {}
        for m in masks:
            if m.stem in by_stem:
                raise JobError(
                    f"datasets.{ds.name}.masks: two masks share the stem {m.stem!r} "
                    f"({by_stem[m.stem]} and {m.uri}); keep one"
                )
            by_stem[m.stem] = m.uri
        out[ds.name] = MaskedSet(
            name=ds.name,
            ids=[it.id for it in images],
            image_uris=[it.uri for it in images],
            mask_uris=[by_stem.get(it.stem) for it in images],
            select=ds.select,
        )
    return out


@dataclass
class _Model:
    name: str
    q: int
    negatives: int
    samples: list[Sample]
    segmenter: Segmenter | None = None
    train_ids: list[str] = field(default_factory=list)
    history: dict = field(default_factory=dict)


def _fingerprint(job, samples: list[Sample], unet_width: int) -> str:
    cfg = job.adaptation
    blob = json.dumps(
        {
            "v": 1,
            "model": cfg.model,
            "checkpoint": cfg.checkpoint,
            "image_size": cfg.image_size,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": job.seed,
            "unet_width": unet_width,
            "samples": [[s.dataset, s.id, s.image_uri, s.mask_uri, s.empty_mask] for s in samples],
        },
        sort_keys=True,
    )
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


def _train_all(
    job, models: list[_Model], primary_name: str, resume_root, progress, unet_width: int
) -> None:
    cfg = job.adaptation
    cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor] | None] = {}
    for m in models:
        rows, used = [], []
        for s in m.samples:
            key = (s.dataset, s.id)
            if key not in cache:
                pair = load_pair(s, cfg.image_size, job.storage)
                cache[key] = None if pair is None else _as_tensors(pair[0], pair[1])
            if cache[key] is not None:
                rows.append(cache[key])
                used.append(s)
        if not rows:
            raise JobError(f"adaptation: model {m.name} has no usable training images")
        x = torch.stack([r[0] for r in rows])
        y = torch.stack([r[1] for r in rows])
        m.train_ids = _train_ids(used, primary_name)
        fp = _fingerprint(job, used, unet_width)
        ckpt_dir = resume_root / f"{m.name}-{fp}" if resume_root is not None else None
        m.segmenter = build_segmenter(cfg.model, cfg.checkpoint, width=unet_width, seed=job.seed)

        def _report(epoch: int, epochs: int, loss: float, name: str = m.name) -> None:
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
            m.name,
            len(rows),
            m.history["seconds"],
            m.history["losses"][-1] if m.history["losses"] else float("nan"),
        )


def _evaluate_set(
    job, ds: MaskedSet, ids: list[str], models: list[_Model], example_ids: set[str], progress
) -> tuple[dict[str, np.ndarray], list[str], list[dict]]:
    """Per-model (N, T, 3) counts on `ids`, the ids kept (decodable), and example predictions."""
    size = job.adaptation.image_size
    counts: dict[str, list[np.ndarray]] = {m.name: [] for m in models}
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
        probs = {m.name: predict_probs(m.segmenter, x, job.adaptation.batch_size) for m in models}
        for k, (s, image, small_mask, mask) in enumerate(chunk):
            kept.append(s.id)
            for m in models:
                prob8 = to_uint8_prob(probs[m.name][k], mask.shape)
                counts[m.name].append(ods.threshold_counts(prob8, mask))
            if s.id in example_ids:
                examples.append(
                    {
                        "id": s.id,
                        "image": image,
                        "mask": small_mask.astype(np.uint8) * 255,
                        "predictions": {m.name: to_uint8_prob(probs[m.name][k]) for m in models},
                    }
                )
        if progress is not None:
            progress(f"evaluate {ds.name}", min(start + EVAL_CHUNK, len(samples)), len(samples))
    empty = np.zeros((0, ods.N_THRESHOLDS, 3), dtype=np.int64)
    stacked = {k: (np.stack(v) if v else empty) for k, v in counts.items()}
    return stacked, kept, examples


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
) -> tuple[dict, dict]:
    """Train M, M{q} and M_B{q}; evaluate them on every secondary with masks.

    `datasets`: name -> MaskedSet (see `build_masked_sets`), the primary included.
    `selections_by_dataset[name][q]`: the ids selected for training from secondary `name`.
    `i_dist_scaled[name]`: {id: min-max scaled I_dist}; `i_dist[name]` (optional): raw I_dist,
    used for the I_dist mean / std of the splits (scaled values when absent).
    `out_dir`: model checkpoints go to out_dir/checkpoints/<model>.pt when
    output.save_checkpoints. `train_dir`: where per-epoch resume checkpoints live (default:
    <cache.dir>/adaptation for a local cache; none otherwise). `unet_width`: channels of the
    UNet's first scale (model 'unet' only).
    `progress(stage, done, total)` is called per epoch and per evaluation chunk.

    Returns (report.json's `adaptation` block, extras for the figures: {"adaptation": {...},
    "trained_extractor": TrainedEncoderExtractor of M or None}).
    """
    t0 = time.perf_counter()
    cfg = job.adaptation
    primary_name = job.datasets.primary.name
    primary = datasets.get(primary_name)
    if primary is None or not primary.has_masks:
        raise JobError(
            f"datasets.primary.masks: adaptation needs masks for the primary dataset "
            f"{primary_name!r}; add 'masks: <folder>' or set adaptation.enabled: false"
        )
    models = _plan_models(job, datasets, selections_by_dataset, primary)

    # images any model trained on (any q) are left out of every model's evaluation, and so are
    # images without an I_dist (skipped by the distance stage)
    selected_by_set: dict[str, set[str]] = {}
    for m in models:
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
        [s for m in models for s in m.samples] + [s for ds, ids in plan for s in ds.samples(ids)]
    )

    _train_all(job, models, primary_name, _resume_root(job, train_dir), progress, unet_width)

    results, splits, curves, examples = [], {}, {}, {}
    for ds, ids in plan:
        scaled = i_dist_scaled.get(ds.name)
        far = sorted(ids, key=lambda i: -scaled[i])[:EXAMPLES_PER_DATASET] if scaled else []
        counts, kept, ex = _evaluate_set(job, ds, ids, models, set(far), progress)
        ex.sort(key=lambda e: -scaled[e["id"]] if scaled else 0.0)
        examples[ds.name] = ex
        x = np.array([scaled[i] for i in kept], dtype=np.float64) if scaled else None
        raw = (i_dist or {}).get(ds.name)
        if raw and all(i in raw for i in kept):
            d = np.array([raw[i] for i in kept], dtype=np.float64)
        else:
            d = x
        splits[ds.name] = {}
        curves[ds.name] = {"ids": kept, "i_dist_scaled": None if x is None else x.tolist()}
        for m in models:
            ev = ods.evaluate_counts(counts[m.name], kept)
            f = np.array([r["f"] for r in ev["per_image"]], dtype=np.float64)
            tr = trend(f, x) if x is not None else trend(f, np.zeros(len(f)))
            c = counts[m.name]
            mask_pixels = int(c[:, 0, 0].sum() + c[:, 0, 2].sum()) if len(c) else 0
            if len(c) and mask_pixels == 0:
                tr["verdict"] = NO_POSITIVES
            results.append(
                {
                    "model": m.name,
                    "dataset": ds.name,
                    "count": ev["count"],
                    "mask_pixels": mask_pixels,
                    "ods_f": ev["ods_f"],
                    "ods_threshold": ev["ods_threshold"],
                    "ois_f": ev["ois_f"],
                    "precision": ev["precision"],
                    "recall": ev["recall"],
                    **tr,
                    "per_image": ev["per_image"],
                }
            )
            if d is not None and len(f):
                splits[ds.name][m.name] = _splits(f, d)

    if job.output.save_checkpoints:
        for m in models:
            save_segmenter(m.segmenter, Path(out_dir) / "checkpoints" / f"{m.name}.pt")

    adaptation = {
        "model": cfg.model,
        "checkpoint": cfg.checkpoint,
        "selection": cfg.selection,
        "epochs": cfg.epochs,
        "image_size": cfg.image_size,
        "verdict_rule": VERDICT_RULE,
        "models": [
            {"name": m.name, "q": m.q, "negatives": m.negatives, "train_ids": m.train_ids}
            for m in models
        ],
        "results": results,
        "splits": splits,
    }
    extractor = None
    if cfg.features_from_trained:
        extractor = TrainedEncoderExtractor(
            models[0].segmenter, cfg.image_size, label="M", batch_size=cfg.batch_size
        )
    extras = {
        "adaptation": {
            "model_order": [m.name for m in models],
            "curves": curves,
            "examples": examples,
            "histories": {m.name: m.history.get("losses", []) for m in models},
            "seconds": time.perf_counter() - t0,
        },
        "trained_extractor": extractor,
    }
    return adaptation, extras
