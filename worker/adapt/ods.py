"""ODS / OIS F-score of binary segmentation probability maps (docs/method.md §5.2-5.3).

The definition follows DeepSegmentor's `eval/prf_metrics.py`, pixel-exact, no tolerance:

- thresholds t = 0.00, 0.01, ..., 0.99 (`THRESHOLDS`, computed as k/100, which for 8-bit maps
  agrees with DeepSegmentor's `np.arange(0, 1, 0.01)` on every value);
- a pixel is predicted positive where prob > t (strict), prob in [0, 1]; an 8-bit map (uint8)
  reads prob = value / 255;
- per threshold, TP / FP / FN are counted per image; P = TP / (TP + FP), or 1 when TP + FP = 0
  (nothing predicted, nothing wrong); R = TP / (TP + FN), or 1 when TP + FN = 0 (nothing to find,
  nothing missed; DeepSegmentor leaves this case undefined); F = 2PR / (P + R), or 0 when
  P + R = 0.

ODS (optimal dataset scale): the counts of all images are summed per threshold and the best F
over thresholds wins; ties go to the lowest threshold (NaN-safe argmax). OIS (optimal image
scale, BSDS style): each image takes its own best threshold, the counts at those thresholds are
summed over images and F is computed from the sums. The per-image F at the ODS threshold feeds
the F-score vs I_dist curves.

Counting is vectorised over thresholds: each pixel is binned by how many thresholds it exceeds,
and a reverse cumulative sum of the two histograms (mask positive / negative) gives TP and FP at
every threshold at once. Everything here is pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np

N_THRESHOLDS = 100
THRESHOLDS = np.arange(N_THRESHOLDS, dtype=np.float64) / N_THRESHOLDS


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A ground-truth mask as bool: 0/1 masks (or bool) are positive where > 0, masks with
    values above 1 (0/255, possibly with compression noise) where >= 128."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if arr.size and arr.max() > 1:
        return arr >= 128
    return arr > 0


def threshold_index(prob: np.ndarray) -> np.ndarray:
    """For every pixel, the number of thresholds it exceeds: positive at threshold k iff
    k < index. uint8 maps are compared exactly in integers (100 * v > 255 * k)."""
    arr = np.asarray(prob)
    if arr.dtype == np.uint8:
        # number of k in [0, 99] with 255 * k < 100 * v  ->  ceil(100 v / 255), capped at 100
        v = arr.astype(np.int64)
        return np.minimum((100 * v + 254) // 255, N_THRESHOLDS)
    if arr.dtype == bool:
        raise ValueError("probability map is boolean; give probabilities in [0, 1] or 8-bit")
    arr = arr.astype(np.float64, copy=False)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("probability map contains NaN or infinite values")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(
            f"probabilities must lie in [0, 1] (got {arr.min():.4g}..{arr.max():.4g}); "
            "give 8-bit maps as uint8"
        )
    return np.searchsorted(THRESHOLDS, arr, side="left")


def threshold_counts(prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N_THRESHOLDS, 3) int64 array of TP, FP, FN per threshold for one image."""
    prob = np.asarray(prob)
    mask = np.asarray(mask)
    if prob.shape != mask.shape:
        raise ValueError(f"probability map shape {prob.shape} differs from mask shape {mask.shape}")
    idx = threshold_index(prob).ravel()
    gt = binarize_mask(mask).ravel()
    n_bins = N_THRESHOLDS + 1
    pos = np.bincount(idx[gt], minlength=n_bins)
    neg = np.bincount(idx[~gt], minlength=n_bins)
    # positive at threshold k  <=>  idx > k  ->  sum of bins k+1..100
    tp = np.cumsum(pos[::-1])[::-1][1:]
    fp = np.cumsum(neg[::-1])[::-1][1:]
    fn = int(gt.sum()) - tp
    return np.stack([tp, fp, fn], axis=-1).astype(np.int64)


def prf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F from (..., 3) TP/FP/FN counts, with the conventions above."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp == 0, 1.0, tp / np.where(tp + fp == 0, 1.0, tp + fp))
        r = np.where(tp + fn == 0, 1.0, tp / np.where(tp + fn == 0, 1.0, tp + fn))
        f = np.where(p + r == 0, 0.0, 2 * p * r / np.where(p + r == 0, 1.0, p + r))
    return p, r, f


def nan_safe_argmax(values: np.ndarray) -> int:
    """Index of the largest value ignoring NaN (first on ties); 0 when all are NaN."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.all(np.isnan(v)):
        return 0
    return int(np.nanargmax(v))


def evaluate_counts(per_image: np.ndarray, ids: list[str] | None = None) -> dict:
    """ODS / OIS from per-image counts of shape (N, N_THRESHOLDS, 3).

    Returns ods_f, ods_threshold, ois_f, precision, recall (at the ODS threshold), count,
    per_image [{id, f}] (F of each image at the ODS threshold) and curve {thresholds, precision,
    recall, f} (dataset P/R/F per threshold). With no images every score is None.
    """
    counts = np.asarray(per_image, dtype=np.int64)
    n = counts.shape[0]
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} images")
    if n == 0:
        return {
            "ods_f": None,
            "ods_threshold": None,
            "ois_f": None,
            "precision": None,
            "recall": None,
            "count": 0,
            "per_image": [],
            "curve": {"thresholds": THRESHOLDS.tolist(), "precision": [], "recall": [], "f": []},
        }
    total = counts.sum(axis=0)  # (T, 3)
    p, r, f = prf(total)
    k = nan_safe_argmax(f)
    _, _, f_img = prf(counts)  # (N, T)
    best = np.array([nan_safe_argmax(row) for row in f_img], dtype=np.int64)
    ois_counts = counts[np.arange(n), best].sum(axis=0)
    _, _, ois_f = prf(ois_counts)
    return {
        "ods_f": float(f[k]),
        "ods_threshold": float(THRESHOLDS[k]),
        "ois_f": float(ois_f),
        "precision": float(p[k]),
        "recall": float(r[k]),
        "count": int(n),
        "per_image": [{"id": i, "f": float(v)} for i, v in zip(ids, f_img[:, k], strict=True)],
        "curve": {
            "thresholds": THRESHOLDS.tolist(),
            "precision": p.tolist(),
            "recall": r.tolist(),
            "f": f.tolist(),
        },
    }


def evaluate(
    probs: list[np.ndarray], masks: list[np.ndarray], ids: list[str] | None = None
) -> dict:
    """ODS / OIS of probability maps against masks (see `evaluate_counts`)."""
    if len(probs) != len(masks):
        raise ValueError(f"{len(probs)} probability maps for {len(masks)} masks")
    counts = (
        np.stack([threshold_counts(p, m) for p, m in zip(probs, masks, strict=True)])
        if (probs)
        else np.zeros((0, N_THRESHOLDS, 3), dtype=np.int64)
    )
    return evaluate_counts(counts, ids)


def false_positive_rate(
    per_image: np.ndarray, pixels: np.ndarray, threshold: float
) -> tuple[float | None, list[float | None]]:
    """False-positive pixel rate at `threshold` (a multiple of 0.01 in [0, 0.99]).

    per_image: (N, N_THRESHOLDS, 3) TP / FP / FN counts; pixels: (N,) pixels per image.
    rate = sum FP / sum negatives, negatives = pixels - (TP + FN) (a pixel is a false positive
    where the mask is 0 and prob > threshold). Returns (rate over all images, per-image rates);
    None where an image (or the set) has no negative pixel.
    """
    counts = np.asarray(per_image, dtype=np.int64)
    pix = np.asarray(pixels, dtype=np.int64)
    if counts.shape[0] != pix.shape[0]:
        raise ValueError(f"{pix.shape[0]} pixel counts for {counts.shape[0]} images")
    k = int(round(float(threshold) * N_THRESHOLDS))
    if not 0 <= k < N_THRESHOLDS or abs(k / N_THRESHOLDS - threshold) > 1e-9:
        raise ValueError(f"threshold {threshold} is not one of 0.00, 0.01, ..., 0.99")
    if counts.shape[0] == 0:
        return None, []
    fp = counts[:, k, 1]
    neg = pix - counts[:, k, 0] - counts[:, k, 2]
    if np.any(neg < 0):
        raise ValueError("pixel counts smaller than the positives counted")
    per = [None if n == 0 else float(f / n) for f, n in zip(fp, neg, strict=True)]
    total = int(neg.sum())
    return (None if total == 0 else float(fp.sum() / total)), per
