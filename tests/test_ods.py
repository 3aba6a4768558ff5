"""ODS / OIS F-score (docs/method.md §5.2-5.3) against hand vectors and a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import reference as R
from worker.adapt import ods

HAND_PROBS, HAND_MASKS = R.ODS_PROBS_HAND, R.ODS_MASKS_HAND


def _prf_scalar(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = 1.0 if tp + fp == 0 else tp / (tp + fp)
    r = 1.0 if tp + fn == 0 else tp / (tp + fn)
    f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return p, r, f


def brute_force(probs, masks):
    """A plain loop in the style of DeepSegmentor's prf_metrics.py (same conventions)."""
    thresholds = np.arange(0.0, 1.0, 0.01)
    per = []  # per image, per threshold: (tp, fp, fn)
    for prob, mask in zip(probs, masks, strict=True):
        prob = np.asarray(prob)
        p = prob / 255.0 if prob.dtype == np.uint8 else prob.astype(np.float64)
        gt = np.asarray(mask) > (127 if np.asarray(mask).max() > 1 else 0)
        rows = []
        for t in thresholds:
            pred = p > t
            rows.append((int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())))
        per.append(rows)
    per = np.array(per)  # (N, T, 3)
    best_f, best_k, best_pr = -1.0, 0, (0.0, 0.0)
    for k in range(len(thresholds)):
        tp, fp, fn = per[:, k].sum(axis=0)
        p, r, f = _prf_scalar(tp, fp, fn)
        if f > best_f:
            best_f, best_k, best_pr = f, k, (p, r)
    ois_tot = np.zeros(3, dtype=np.int64)
    for i in range(len(per)):
        fs = [_prf_scalar(*per[i, k])[2] for k in range(len(thresholds))]
        ois_tot += per[i, int(np.argmax(fs))]
    per_image = [_prf_scalar(*per[i, best_k])[2] for i in range(len(per))]
    return {
        "ods_f": best_f,
        "ods_threshold": float(thresholds[best_k]),
        "precision": best_pr[0],
        "recall": best_pr[1],
        "ois_f": _prf_scalar(*ois_tot)[2],
        "per_image": per_image,
    }


def test_design_hand_vector():
    r = ods.evaluate(HAND_PROBS, HAND_MASKS, ["a", "b"])
    assert r["ods_f"] == pytest.approx(0.833333, abs=1e-6)
    for key, value in R.ODS_HAND.items():
        assert r[key] == pytest.approx(value), key
    # per image at t = 0.12: image a TP 3 FP 2 -> F = 0.75; image b TP 2 -> F = 1
    assert [p["f"] for p in r["per_image"]] == pytest.approx([0.75, 1.0])
    # OIS: a's best threshold (0.20) gives TP 3 FP 1, b's gives TP 2 -> F = 10/11
    assert r["ois_f"] == pytest.approx(10 / 11)
    assert r["count"] == 2


def test_float_and_uint8_agree_and_mask_scales():
    a = ods.evaluate(HAND_PROBS, HAND_MASKS)
    b = ods.evaluate([p / 255.0 for p in HAND_PROBS], [m * 255 for m in HAND_MASKS])
    for key in ("ods_f", "ods_threshold", "ois_f", "precision", "recall"):
        assert a[key] == b[key]


def test_counts_per_threshold_hand():
    c = ods.threshold_counts(HAND_PROBS[0], HAND_MASKS[0])
    assert c.shape == (100, 3)
    # t = 0.00: every non-zero pixel positive: 200 150 100 (gt) and 120 50 (not)
    assert c[0].tolist() == [3, 2, 0]
    # t = 0.50 (127.5): 200, 150
    assert c[50].tolist() == [2, 0, 1]
    # t = 0.99 (252.45): nothing
    assert c[99].tolist() == [0, 0, 3]


def test_strict_threshold_at_exact_boundary():
    # 51 / 255 == 0.20 exactly: not positive at t = 0.20, positive at 0.19
    prob = np.array([[51]], dtype=np.uint8)
    mask = np.array([[1]])
    c = ods.threshold_counts(prob, mask)
    assert c[19].tolist() == [1, 0, 0]
    assert c[20].tolist() == [0, 0, 1]
    c2 = ods.threshold_counts(prob / 255.0, mask)
    assert np.array_equal(c, c2)


def test_empty_masks_and_all_zero_predictions():
    zeros = np.zeros((4, 4), dtype=np.uint8)
    # empty mask, empty prediction: nothing to find, nothing wrong -> P = R = F = 1
    r = ods.evaluate([zeros], [zeros])
    assert r["ods_f"] == 1.0 and r["ods_threshold"] == 0.0 and r["ois_f"] == 1.0
    assert r["precision"] == 1.0 and r["recall"] == 1.0

    # all-zero prediction against a positive mask: P = 1 (convention), R = 0 -> F = 0
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1, :] = 255
    r = ods.evaluate([zeros], [mask])
    assert r["ods_f"] == 0.0 and r["ods_threshold"] == 0.0
    assert r["precision"] == 1.0 and r["recall"] == 0.0 and r["ois_f"] == 0.0

    # empty mask with false positives: F = 0 until the threshold clears them
    fp = np.zeros((4, 4), dtype=np.uint8)
    fp[0, 0] = 100  # 0.392: positive up to t = 0.39
    r = ods.evaluate([fp], [zeros])
    assert r["ods_f"] == 1.0 and r["ods_threshold"] == pytest.approx(0.40)
    c = ods.threshold_counts(fp, zeros)
    assert c[39].tolist() == [0, 1, 0] and c[40].tolist() == [0, 0, 0]

    # a mixed set: empty-mask image with an FP of 200 plus a perfect image with value 255
    good = np.zeros((4, 4), dtype=np.uint8)
    good[2, 2] = 255
    gmask = (good > 0).astype(np.uint8)
    noisy = np.zeros((4, 4), dtype=np.uint8)
    noisy[3, 3] = 200
    r = ods.evaluate([good, noisy], [gmask, zeros], ["good", "noisy"])
    # the FP (200 = 0.784) disappears from t = 0.79 on: TP 1 FP 0 -> F = 1
    assert r["ods_f"] == 1.0 and r["ods_threshold"] == pytest.approx(0.79)
    assert [p["f"] for p in r["per_image"]] == [1.0, 1.0]
    # below 0.79: TP 1 FP 1 -> F = 2/3
    p, rec, f = ods.prf(c := ods.threshold_counts(good, gmask) + ods.threshold_counts(noisy, zeros))
    assert f[0] == pytest.approx(2 / 3) and c[78].tolist() == [1, 1, 0]


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_uint8(seed):
    rng = np.random.default_rng(seed)
    probs, masks = [], []
    for _ in range(int(rng.integers(1, 5))):
        h, w = rng.integers(3, 12, size=2)
        mask = rng.random((h, w)) < rng.uniform(0, 0.4)
        noise = rng.normal(0, 60, size=(h, w))
        prob = np.clip(mask * rng.uniform(60, 200) + noise + 40, 0, 255).astype(np.uint8)
        if rng.random() < 0.2:
            prob[:] = 0  # all-zero prediction
        if rng.random() < 0.2:
            mask[:] = False  # empty mask
        probs.append(prob)
        masks.append(mask.astype(np.uint8) * (255 if rng.random() < 0.5 else 1))
    got = ods.evaluate(probs, masks)
    ref = brute_force(probs, masks)
    for key in ("ods_f", "ods_threshold", "precision", "recall", "ois_f"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert [p["f"] for p in got["per_image"]] == pytest.approx(ref["per_image"], abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_float(seed):
    rng = np.random.default_rng(100 + seed)
    probs = [rng.random((6, 7)) ** 2 for _ in range(3)]
    masks = [rng.random((6, 7)) < 0.3 for _ in range(3)]
    probs[0][0, :3] = [0.2, 0.5, 0.99]  # exact threshold values
    got = ods.evaluate(probs, masks)
    ref = brute_force(probs, masks)
    for key in ("ods_f", "ods_threshold", "precision", "recall", "ois_f"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        ods.threshold_counts(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ods.threshold_counts(np.full((2, 2), 1.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        ods.threshold_counts(np.full((2, 2), np.nan), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="maps for"):
        ods.evaluate([np.zeros((2, 2))], [])


def test_no_images_and_nan_safe_argmax():
    r = ods.evaluate([], [])
    assert r["ods_f"] is None and r["count"] == 0 and r["per_image"] == []
    assert ods.nan_safe_argmax(np.array([np.nan, 0.3, 0.3, np.nan])) == 1
    assert ods.nan_safe_argmax(np.array([np.nan, np.nan])) == 0


def test_mask_binarisation():
    assert ods.binarize_mask(np.array([0, 1])).tolist() == [False, True]
    assert ods.binarize_mask(np.array([0, 3, 127, 128, 255])).tolist() == [
        False,
        False,
        False,
        True,
        True,
    ]
