"""The performance estimate's inputs and candidates (moved out of worker.estimate): constants,
the labelled evidence and the target, the isotonic candidates, their nested leave-one-out and
the interval (docs/method-estimate.md). See worker.estimate for the estimator as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from worker.results import (
    EstimateRange,
)

MIN_LABELLED_DATASETS = 3  # the nested LOO needs an inner LOO over at least two sets
MIN_LABELLED_IMAGES = 30
N_BOOTSTRAP = 200
INTERVAL = 0.90
EXTRAPOLATION_SHARE = 0.10  # a secondary is flagged when more than this share lies outside
CURVE_POINTS = 101
NO_SKILL = "no_skill"
#: candidate predictors, in tie-break order (the simplest first)
CANDIDATES: tuple[str, ...] = (NO_SKILL, "i_dist_mean", "novelty", "energy")
DESCRIPTIONS = {
    NO_SKILL: "the mean ODS of the labelled sets, whatever the distance",
    "i_dist_mean": "isotonic (non-increasing) fit of per-image F on the size-free I_dist / n, "
    "averaged over the set's images, plus the mean gap between labelled ODS and fitted F",
    "novelty": "isotonic (non-increasing) fit of per-image F on the calibrated novelty, "
    "averaged over the set's images, plus the mean gap between labelled ODS and fitted F",
    "energy": "isotonic (non-increasing) fit of labelled ODS on the set's energy distance",
}
LEVELS = {NO_SKILL: "set", "i_dist_mean": "image", "novelty": "image", "energy": "set"}
METHOD = (
    "the candidate predictor with the smallest leave-one-labelled-set-out error (no_skill, "
    "i_dist_mean, novelty, energy), its error measured by nested leave-one-out, its 90% "
    "interval from those between-set errors"
)


# ------------------------------------------------------------------------------------------
# inputs (plain arrays)


@dataclass(frozen=True)
class Target:
    """One secondary's distances (length M): what every predictor reads."""

    name: str
    ids: list[str]
    i_dist_scaled: np.ndarray  # (M,) min-max scaled I_dist within the set, [0, 1]
    i_dist_mean: np.ndarray  # (M,) I_dist / n, feature-space units
    o_dist_mean: float
    novelty: np.ndarray | None = None  # (M,) calibrated novelty in [0, 1], higher = more novel
    novel: np.ndarray | None = None  # (M,) bool, novelty beyond P's q-quantile
    novelty_base_rate: float | None = None  # 1 - q: the novel share of an unshifted set
    energy: float | None = None  # the set's energy distance to P (joint PCA space)


@dataclass(frozen=True)
class Evidence:
    """One labelled secondary: its distances and per-image F (length M), and its ODS."""

    name: str
    ids: list[str]
    i_dist_scaled: np.ndarray  # (M,)
    i_dist_mean: np.ndarray  # (M,)
    f: np.ndarray  # (M,) per-image F at the dataset's ODS threshold, [0, 1]
    o_dist_mean: float
    ods_f: float
    ods_threshold: float | None = None
    novelty: np.ndarray | None = None
    novel: np.ndarray | None = None
    novelty_base_rate: float | None = None
    energy: float | None = None


def labelled(
    target: Target, f: np.ndarray, ods_f: float, ods_threshold: float | None = None
) -> Evidence:
    """`target` with its per-image F (M,) and its ODS: a labelled set."""
    fields = {k: getattr(target, k) for k in Target.__dataclass_fields__}
    return Evidence(
        **fields,
        f=np.asarray(f, dtype=np.float64),
        ods_f=float(ods_f),
        ods_threshold=ods_threshold,
    )


# ------------------------------------------------------------------------------------------
# candidates


@dataclass(frozen=True)
class Isotonic:
    """A fitted non-increasing step-linear curve: y at the distinct fitted x (ascending);
    `predict` interpolates linearly between them and holds the end values beyond them
    (scikit-learn's IsotonicRegression(increasing=False, out_of_bounds="clip") predicts the
    same)."""

    x: np.ndarray  # (K,) distinct x, ascending
    y: np.ndarray  # (K,) fitted values, non-increasing, in [0, 1]

    def predict(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=np.float64), self.x, self.y)


def fit_isotonic(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Isotonic:
    """Non-increasing least-squares fit y ~ g(x) with values in [0, 1]: tied x are pooled
    (mean y, weight = count), then pool-adjacent-violators (scipy's `isotonic_regression`,
    which scikit-learn's calls), clipped to [0, 1]. Shapes: x, y (N,) with N >= 1."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xu, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    mean_y = np.bincount(inverse, weights=y, minlength=len(xu)) / counts
    from scipy.optimize import isotonic_regression  # scipy.stats etc.: only when fitting

    fitted = isotonic_regression(mean_y, weights=counts.astype(np.float64), increasing=False).x
    return Isotonic(xu, np.clip(fitted, 0.0, 1.0))


def image_values(name: str, s: Target | Evidence) -> np.ndarray | None:
    """Per-image values (M,) of an image-level predictor; None for set-level ones or when the
    set lacks them."""
    v = {"i_dist_mean": s.i_dist_mean, "novelty": s.novelty}.get(name)
    if v is None:
        return None
    v = np.asarray(v, dtype=np.float64)
    return v if len(v) == len(s.ids) and np.all(np.isfinite(v)) else None


def set_value(name: str, s: Target | Evidence) -> float | None:
    """A set's value of predictor `name` (higher = farther): the mean over its images for
    image-level predictors, the energy distance for `energy`; None when unknown."""
    if name == "energy":
        return float(s.energy) if s.energy is not None and np.isfinite(s.energy) else None
    v = image_values(name, s)
    return float(v.mean()) if v is not None and len(v) else None


def available(name: str, sets: Sequence[Target | Evidence]) -> str | None:
    """None when every set in `sets` has predictor `name`'s values, else the reason."""
    if name == NO_SKILL:
        return None
    missing = [s.name for s in sets if set_value(name, s) is None]
    if missing:
        return f"no {name} value for {', '.join(missing)}"
    return None


Predictor = Callable[[Target | Evidence], float]


def image_fit(name: str, train: Sequence[Evidence]) -> tuple[Isotonic, float]:
    """(g, offset) of image-level predictor `name`: g the isotonic fit of per-image F on its
    values over every image of `train`, offset = mean_d (ODS_d - mean_{j in d} g(x_dj))."""
    x = np.concatenate([image_values(name, e) for e in train])
    f = np.concatenate([e.f for e in train]).astype(np.float64)
    g = fit_isotonic(x, f)
    offset = float(
        np.mean([e.ods_f - float(g.predict(image_values(name, e)).mean()) for e in train])
    )
    return g, offset


def fit_candidate(name: str, train: Sequence[Evidence]) -> Predictor:
    """Fit predictor `name` on the labelled sets `train` (module docstring); returns
    est: set -> estimated ODS in [0, 1]."""
    ods = np.array([e.ods_f for e in train], dtype=np.float64)
    if name == NO_SKILL:
        mean = float(ods.mean())
        return lambda s: mean
    if LEVELS[name] == "set":
        h = fit_isotonic([set_value(name, e) for e in train], ods)
        return lambda s: float(h.predict([set_value(name, s)])[0])
    g, offset = image_fit(name, train)
    return lambda s: float(np.clip(g.predict(image_values(name, s)).mean() + offset, 0.0, 1.0))


def loo_estimates(name: str, sets: Sequence[Evidence]) -> np.ndarray:
    """est_{-d}(d) for each labelled set d: predictor `name` fitted on the others (n,)."""
    return np.array(
        [
            fit_candidate(name, [o for k, o in enumerate(sets) if k != d])(e)
            for d, e in enumerate(sets)
        ]
    )


def choose(names: Sequence[str], sets: Sequence[Evidence]) -> tuple[str, dict[str, float]]:
    """(chosen predictor, {name: LOO MAE}): the smallest LOO MAE among `names`, ties to the
    earlier name (no_skill first). With one set nothing can be scored: no_skill."""
    if len(sets) < 2:
        return NO_SKILL, {}
    ods = np.array([e.ods_f for e in sets])
    maes = {n: float(np.mean(np.abs(loo_estimates(n, sets) - ods))) for n in names}
    best = min(maes.values())
    chosen = next(n for n in names if maes[n] <= best + 1e-12)
    return chosen, maes


def fit_procedure(names: Sequence[str], train: Sequence[Evidence]) -> tuple[str, Predictor]:
    """The whole procedure on `train`: choose by LOO, fit the chosen predictor on all of it."""
    chosen, _ = choose(names, train)
    return chosen, fit_candidate(chosen, train)


@dataclass(frozen=True)
class NestedLoo:
    """The procedure run without each labelled set i (n folds)."""

    chosen: list[str]  # the predictor fold i chose
    folds: list[Predictor]  # est_{-i}
    estimates: np.ndarray  # (n,) est_{-i}(i)
    residuals: np.ndarray  # (n,) signed ODS_i - est_{-i}(i)

    @property
    def mae(self) -> float:
        return float(np.mean(np.abs(self.residuals)))


def nested_loo(names: Sequence[str], sets: Sequence[Evidence]) -> NestedLoo:
    """Leave each labelled set out, run the whole procedure (choice included) on the rest."""
    chosen, folds, est = [], [], []
    for i, e in enumerate(sets):
        c, fold = fit_procedure(names, [o for k, o in enumerate(sets) if k != i])
        chosen.append(c)
        folds.append(fold)
        est.append(fold(e))
    est_a = np.array(est, dtype=np.float64)
    ods = np.array([e.ods_f for e in sets], dtype=np.float64)
    return NestedLoo(chosen, folds, est_a, ods - est_a)


def sampling_error(sets: Sequence[Evidence]) -> float:
    """The typical sampling error of a labelled set's F: mean over sets d of
    std(f_d, ddof=1) / sqrt(m_d) (0 for a set of one image). A predictor has skill only when
    its LOO error beats the no-skill baseline's by more than this."""
    errs = [float(np.std(e.f, ddof=1)) / math.sqrt(len(e.f)) if len(e.f) > 1 else 0.0 for e in sets]
    return float(np.mean(errs)) if errs else 0.0


def interval_method(n: int, level: float = INTERVAL) -> str:
    """'jackknife+' when n labelled sets allow a finite distribution-free `level` interval
    (ceil(level (n + 1)) <= n), else 'student-t'."""
    return "jackknife+" if math.ceil(level * (n + 1) - 1e-9) <= n else "student-t"


def interval(
    estimate: float, fold_estimates: np.ndarray, residuals: np.ndarray, level: float = INTERVAL
) -> tuple[float, float, str]:
    """(low, high, method) of the `level` interval for one target, clipped to [0, 1].

    fold_estimates (n,): est_{-i}(target); residuals (n,): signed ODS_i - est_{-i}(i).
    Jackknife+ when ceil(level (n + 1)) <= n, else the Student-t prediction interval
    estimate +- t_{n, (1 + level) / 2} sqrt(mean e_i^2) (module docstring)."""
    n = len(residuals)
    alpha = 1.0 - level
    r = np.abs(residuals)
    k_hi = math.ceil((1.0 - alpha) * (n + 1) - 1e-9)
    if interval_method(n, level) == "jackknife+":
        k_lo = max(math.floor(alpha * (n + 1) + 1e-9), 1)
        lo = float(np.sort(fold_estimates - r)[k_lo - 1])
        hi = float(np.sort(fold_estimates + r)[k_hi - 1])
        method = "jackknife+"
    else:
        from scipy import stats as sps

        half = float(sps.t.ppf(0.5 + level / 2, df=n) * np.sqrt(np.mean(residuals**2)))
        lo, hi = estimate - half, estimate + half
        method = "student-t"
    return float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1)), method


def ranges(names: Sequence[str], sets: Sequence[Evidence], target: Target) -> list[EstimateRange]:
    """Where `target` lies against the labelled sets on each predictor in `names`."""
    out = []
    for name in names:
        if name == NO_SKILL:
            continue
        v = set_value(name, target)
        vals = [set_value(name, e) for e in sets]
        if v is None or any(x is None for x in vals):
            continue
        lo, hi = min(vals), max(vals)
        side = "above" if v > hi else "below" if v < lo else "inside"
        out.append(EstimateRange(predictor=name, value=v, low=lo, high=hi, side=side))
    return out
