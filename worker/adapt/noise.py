"""The noise of the model choice (docs/method.md §5.8): a paired two-level bootstrap over the
evaluated images and the seeds, pure numpy.

Each of N_BOOT replicates draws the images of every set with replacement and the seeds with
replacement, the same draws for every architecture, and recomputes the criteria on them:
ODS F of the re-weighted summed counts, and the least-squares slope of per-image F (kept at the
full sample's ODS threshold) against scaled I_dist with the draws as weights. A difference
between two architectures is then called only when the 95% interval of its replicates excludes
0 (`worker.adapt.summary.compare`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from worker.adapt import ods
from worker.adapt.names import BASELINE
from worker.interrupt import stoppable

N_BOOT = 1000


def _ods_draws(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ODS F of (N, T, 3) counts under (B, N) image weights: (B,)."""
    n, t, _ = counts.shape
    pooled = (weights @ counts.reshape(n, t * 3).astype(np.float64)).reshape(-1, t, 3)
    _, _, f = ods.prf(pooled)
    return f.max(axis=1)


def _slope_draws(counts: np.ndarray, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares slope of per-image F (at the full sample's ODS threshold) against x,
    weighted by (B, N) image weights: (B,), NaN where the drawn images have one x value."""
    _, _, f_all = ods.prf(counts.sum(axis=0))
    k = ods.nan_safe_argmax(f_all)
    _, _, f = ods.prf(counts[:, k])
    w = weights.astype(np.float64)
    sw = w.sum(axis=1)
    mx, mf = (w @ x) / sw, (w @ f) / sw
    cov = (w @ (x * f)) / sw - mx * mf
    var = (w @ (x * x)) / sw - mx * mx
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 1e-12, cov / np.where(var > 1e-12, var, 1.0), np.nan)


def bootstrap_draws(
    counts: Mapping[tuple[str, int, str, str], np.ndarray],
    x: Mapping[str, np.ndarray | None],
    archs: Sequence[str],
    seeds: Sequence[int],
    datasets: Sequence[str],
    adapted: str | None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Replicates of ods_unseen, gain and stability per architecture (module docstring).

    `counts[(arch, seed, model, dataset)]`: (N, T, 3) per-image counts; `x[dataset]`: scaled
    I_dist of the same images (None: no stability draws from that set); `datasets`: the sets
    with positive pixels. One replicate b draws, with numpy's Generator(seed), per set the
    image multiplicities W_d[b] ~ Multinomial(N_d, 1/N_d) and the seed indices S[b] (n of n,
    with replacement); for architecture a

        ods_unseen[b] = mean_{j} mean_d ODS(counts[a, S[b, j], M, d] weighted by W_d[b])

    and likewise gain (ODS of `adapted` minus M's) and stability (mean_d |weighted slope|, over
    the sets whose drawn images have two x values or more; NaN when none has).
    Returns {arch: {criterion: (n_boot,) array}}; a criterion without data is left out.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(seeds)
    weights = {}
    for d in datasets:
        n = len(counts[(archs[0], seeds[0], BASELINE, d)])
        weights[d] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n else None
    pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cols = np.arange(n_boot)
    out: dict[str, dict[str, np.ndarray]] = {}
    for a in archs:
        per_seed: dict[str, list[np.ndarray]] = {"ods_unseen": [], "gain": [], "stability": []}
        for s in stoppable(seeds):  # a safe point per architecture and seed
            ods_m, gains, slopes = [], [], []
            for d in datasets:
                w = weights[d]
                if w is None:
                    continue
                base = _ods_draws(counts[(a, s, BASELINE, d)], w)
                ods_m.append(base)
                if adapted is not None and (a, s, adapted, d) in counts:
                    gains.append(_ods_draws(counts[(a, s, adapted, d)], w) - base)
                xd = x.get(d)
                if xd is not None:
                    slopes.append(np.abs(_slope_draws(counts[(a, s, BASELINE, d)], xd, w)))
            for key, parts in (("ods_unseen", ods_m), ("gain", gains)):
                if parts:
                    per_seed[key].append(np.mean(parts, axis=0))
            if slopes:  # a set whose drawn images share one x value has no slope: left out
                stacked = np.stack(slopes)
                finite = np.isfinite(stacked)
                total = np.where(finite, stacked, 0.0).sum(axis=0)
                with np.errstate(invalid="ignore"):
                    per_seed["stability"].append(total / finite.sum(axis=0))
        out[a] = {
            key: np.stack(v)[pick.T, cols].mean(axis=0)
            for key, v in per_seed.items()
            if len(v) == n_seeds
        }
    return out
