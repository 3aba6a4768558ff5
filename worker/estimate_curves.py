"""The performance estimate's descriptive curves (moved out of worker.estimate): per-image F
on distance and ODS on o_dist_mean, with bootstrap bands, for the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.estimate_fit import (
    CURVE_POINTS,
    INTERVAL,
    Evidence,
    Target,
    fit_isotonic,
)
from worker.interrupt import stoppable
from worker.results import (
    Curve,
)

# ------------------------------------------------------------------------------------------
# descriptive curves (the figure): per-image F on distance, ODS on o_dist_mean


def _grid(lo: float, hi: float) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi):
        return np.zeros(0)
    if hi <= lo:
        return np.array([lo])
    return np.linspace(lo, hi, CURVE_POINTS)


def _band(boot: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(boot):
        return fit, fit
    q = (1 - INTERVAL) / 2 * 100
    low, high = np.percentile(boot, [q, 100 - q], axis=0)
    return np.minimum(low, fit), np.maximum(high, fit)


def _curve(x_grid: np.ndarray, fit: np.ndarray, boot: np.ndarray) -> Curve:
    low, high = _band(boot, fit)
    return Curve(x=x_grid.tolist(), f=fit.tolist(), low=low.tolist(), high=high.tolist())


@dataclass(frozen=True)
class _Curves:
    curve: Curve
    curve_scaled: Curve
    dataset_curve: Curve
    image_fit: list[np.ndarray]  # per target (M,): g(x_j) of the i_dist_mean fit
    image_band: list[tuple[np.ndarray, np.ndarray]]
    set_fit: list[tuple[float, float, float] | None]  # per target: dataset-level fit and band
    dataset_fit_loo_mae: float


def _curves(
    evidence: Sequence[Evidence], targets: Sequence[Target], seed: int, n_boot: int
) -> _Curves:
    """The fits drawn in the figure with seeded bootstrap bands (images resampled within each
    labelled set; labelled sets resampled for the dataset-level fit). Descriptive only."""
    x_all = np.concatenate([e.i_dist_mean for e in evidence]).astype(np.float64)
    s_all = np.concatenate([e.i_dist_scaled for e in evidence]).astype(np.float64)
    f_all = np.concatenate([e.f for e in evidence]).astype(np.float64)
    o_lab = np.array([e.o_dist_mean for e in evidence], dtype=np.float64)
    ods = np.array([e.ods_f for e in evidence], dtype=np.float64)
    t_x = [np.asarray(t.i_dist_mean, dtype=np.float64) for t in targets]
    t_o = np.array([t.o_dist_mean for t in targets], dtype=np.float64)
    grid = _grid(
        min([float(x_all.min())] + [float(x.min()) for x in t_x if len(x)]),
        max([float(x_all.max())] + [float(x.max()) for x in t_x if len(x)]),
    )
    grid_s = np.linspace(0.0, 1.0, CURVE_POINTS)
    fo = t_o[np.isfinite(t_o)]
    grid_o = _grid(float(np.min(np.r_[o_lab, fo])), float(np.max(np.r_[o_lab, fo])))
    g, g_s, g_o = fit_isotonic(x_all, f_all), fit_isotonic(s_all, f_all), fit_isotonic(o_lab, ods)

    rng = np.random.default_rng(seed)
    b_c, b_s, b_o = (np.zeros((n_boot, len(gr))) for gr in (grid, grid_s, grid_o))
    b_img = [np.zeros((n_boot, len(x))) for x in t_x]
    b_set = np.full((n_boot, len(targets)), np.nan)
    ok = np.isfinite(t_o)
    for b in stoppable(range(n_boot)):
        idx = [rng.integers(0, len(e.f), size=len(e.f)) for e in evidence]
        xb = np.concatenate([e.i_dist_mean[i] for e, i in zip(evidence, idx, strict=True)])
        sb = np.concatenate([e.i_dist_scaled[i] for e, i in zip(evidence, idx, strict=True)])
        fb = np.concatenate([e.f[i] for e, i in zip(evidence, idx, strict=True)])
        gb = fit_isotonic(xb, fb)
        b_c[b] = gb.predict(grid)
        b_s[b] = fit_isotonic(sb, fb).predict(grid_s)
        for k, x in enumerate(t_x):
            if len(x):
                b_img[k][b] = gb.predict(x)
        sets = rng.integers(0, len(evidence), size=len(evidence))
        gob = fit_isotonic(o_lab[sets], ods[sets])
        b_o[b] = gob.predict(grid_o)
        if ok.any():
            b_set[b, ok] = gob.predict(t_o[ok])

    image_fit = [g.predict(x) if len(x) else np.zeros(0) for x in t_x]
    image_band = [_band(b_img[k], image_fit[k]) for k in range(len(t_x))]
    set_fit: list[tuple[float, float, float] | None] = []
    for k in range(len(targets)):
        if not ok[k]:
            set_fit.append(None)
            continue
        v = float(g_o.predict([t_o[k]])[0])
        lo, hi = _band(b_set[:, k], np.array(v))
        set_fit.append((v, float(lo), float(hi)))
    errs = [
        abs(
            float(fit_isotonic(np.delete(o_lab, d), np.delete(ods, d)).predict([o_lab[d]])[0])
            - ods[d]
        )
        for d in range(len(evidence))
    ]
    return _Curves(
        curve=_curve(grid, g.predict(grid), b_c),
        curve_scaled=_curve(grid_s, g_s.predict(grid_s), b_s),
        dataset_curve=_curve(grid_o, g_o.predict(grid_o), b_o),
        image_fit=image_fit,
        image_band=image_band,
        set_fit=set_fit,
        dataset_fit_loo_mae=float(np.mean(errs)),
    )
