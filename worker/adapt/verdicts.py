"""Plain-language verdicts of one adaptation result (docs/method.md §5.4-5.5).

- `trend` / `verdict`: the slope of per-image F against min-max scaled I_dist and its Spearman
  correlation, judged by `VERDICT_RULE`:
  - fewer than MIN_IMAGES images: "not enough images to judge";
  - |slope| < SLOPE_TOL: flat ("no fine-tuning needed"; with Spearman p < ALPHA: "a
    significant but small trend");
  - slope <= -SLOPE_TOL with p < ALPHA and rho < 0: "fine-tuning recommended"; without
    significance: "inconclusive";
  - slope >= SLOPE_TOL: "no fine-tuning needed: F rises with distance (not flat)";
  - a set whose masks have no positive pixel: "not applicable" (NO_POSITIVES).
- `baseline_verdict`: M answers "does M need fine-tuning": fine-tuning is recommended when some
  M{q} raised the ODS F-score by GAIN_TOL or more over M on the set, or when F falls with
  I_dist; "no fine-tuning needed" only when F is flat (or rising) AND no M{q} gained GAIN_TOL.
- `adapted_verdict`: M{q} and M_B{q} answer "did adaptation flatten the curve": M's slope on
  the set against theirs; flat means |slope| < SLOPE_TOL on either side (a rising curve,
  slope >= SLOPE_TOL, is not flat).

The slope is per unit of scaled I_dist, i.e. the change of F from the nearest to the farthest
image of the set.
"""

from __future__ import annotations

import numpy as np

SLOPE_TOL = 0.1
ALPHA = 0.05
MIN_IMAGES = 5
GAIN_TOL = 0.02  # ODS F-score points: a smaller gain from labels is treated as none
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
    f"slope >= {SLOPE_TOL}: no fine-tuning needed, but F rises with distance (not flat). "
    "A set whose masks have no positive pixel: not applicable (its fp_rate is the noise). "
    f"M's verdict also weighs the M{{q}}: one that raised ODS F by {GAIN_TOL} or more "
    "means fine-tuning is recommended, even on a flat curve. M{q} and M_B{q} say whether "
    "adaptation flattened the curve (M's slope before, theirs after): flat means "
    f"|slope| < {SLOPE_TOL}, whatever the sign."
)


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
            sp = spearmanr(x, f)
            r, pv = float(sp.statistic), float(sp.pvalue)
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
    return "no fine-tuning needed: F rises with distance (not flat)"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def baseline_verdict(
    slope_verdict: str,
    slope: float | None,
    ods_m: float | None,
    adapted_ods: dict[str, float | None],
) -> str:
    """M's verdict from its slope verdict (`verdict`) and the ODS of the
    M{q} models on the same images (`adapted_ods`: name -> ODS F)."""
    if slope_verdict.startswith(("not enough", "not applicable")):
        return slope_verdict
    gains = {k: v - ods_m for k, v in adapted_ods.items() if v is not None and ods_m is not None}
    if not gains:
        return slope_verdict
    best = max(gains, key=lambda k: (gains[k], -list(gains).index(k)))
    g = gains[best]
    falls = slope_verdict.startswith("fine-tuning recommended")
    slope_txt = f"slope of F against I_dist {_fmt(slope, '+.3f')}"
    if g >= GAIN_TOL:
        tail = f"; F also falls with distance ({slope_txt})" if falls else f" ({slope_txt})"
        return (
            f"fine-tuning recommended: {best} raised ODS F from {ods_m:.3f} to "
            f"{adapted_ods[best]:.3f} ({g:+.3f}){tail}"
        )
    if falls:
        return (
            f"fine-tuning recommended: F falls with distance ({slope_txt}), but the labels tried "
            f"did not raise ODS F (best {best}: {g:+.3f}); try more labels or another "
            "architecture"
        )
    if slope_verdict.startswith("inconclusive"):
        return (
            f"inconclusive: F tends to fall with distance ({slope_txt}, not significant) and "
            f"the labels tried did not raise ODS F (best {best}: {g:+.3f})"
        )
    return (
        f"no fine-tuning needed: F does not fall with distance ({slope_txt}) and no M{{q}} "
        f"raised ODS F by {GAIN_TOL} or more (best {best}: {g:+.3f})"
    )


def adapted_verdict(
    slope_before: float | None,
    slope_after: float | None,
    ods_before: float | None,
    ods_after: float | None,
    n: int,
) -> str:
    """An adapted model's verdict: did adaptation flatten M's F-vs-I_dist curve? A curve is
    flat only when |slope| < SLOPE_TOL (the stability definition of method.md §5.4), so a
    rising curve is never called flat."""
    if n < MIN_IMAGES or slope_before is None or slope_after is None:
        return f"not enough images to judge (fewer than {MIN_IMAGES} with I_dist)"
    change = f"slope {slope_before:+.3f} -> {slope_after:+.3f}"
    if ods_before is not None and ods_after is not None:
        change += f", ODS F {ods_before:.3f} -> {ods_after:.3f}"
    flat_after = abs(slope_after) < SLOPE_TOL
    after = (
        "flat"
        if flat_after
        else "falls with distance"
        if slope_after < 0
        else "rises with distance"
    )
    if slope_before <= -SLOPE_TOL:
        if flat_after:
            return f"adaptation flattened the curve ({change})"
        if slope_after > slope_before:
            if slope_after >= SLOPE_TOL:
                return f"adaptation reversed the fall: F now rises with distance ({change})"
            return f"adaptation reduced the fall but did not flatten the curve ({change})"
        return f"adaptation did not flatten the curve ({change})"
    if abs(slope_before) < SLOPE_TOL:
        if flat_after:
            return f"the curve was already flat before adaptation and stays flat ({change})"
        return f"the curve was flat before adaptation and now {after} ({change})"
    if flat_after:
        return f"F rose with distance before adaptation; adaptation flattened it ({change})"
    return f"F rose with distance before adaptation and now {after}: not flat ({change})"
