"""Performance estimate without labels (docs/method.md §7; the estimator: docs/method-estimate.md).

Labelled secondaries give pairs (distance, F): per image, F at the dataset's ODS threshold
against the size-free distance `i_dist_mean` (= I_dist / n) and against the min-max scaled
I_dist; per dataset, ODS against `o_dist_mean`. A monotone non-increasing fit (isotonic
regression, `out_of_bounds="clip"`) turns tonight's distances into expected F.

The estimator (the one number reported, gated and checked by leave-one-out):

    g        = isotonic fit of per-image F on i_dist_mean, all labelled images pooled
    offset   = mean over labelled sets d of (ODS_d - mean_{j in d} g(x_dj))
    est(S)   = clip(mean_{j in S} g(x_j) + offset, 0, 1)

i.e. the mean expected per-image F over the secondary's images, calibrated by the average gap
between each labelled set's pooled ODS and its mean fitted per-image F (ODS pools pixel counts
over images, so it is not the mean of per-image F). The leave-one-labelled-dataset-out error
refits g and offset without set d and compares est(d) with ODS_d: LOO MAE = mean_d |.|.

Interval (90%, percentile): a seeded bootstrap over images (resampled within each labelled
set), each replicate refitting g and offset (its ODS_d shifted by the change of the set's mean
F), plus the sampling error of the secondary's own mean (the mean of m residuals of that
replicate, drawn with replacement, inflated by sqrt(N / (N - blocks of the fit))), so the
interval is for the ODS the secondary would show were it labelled. The dataset-level fit
(ODS on o_dist_mean) is a second opinion with a bootstrap over labelled datasets.

Everything here is pure (numpy / scikit-learn on arrays and report dicts, no I/O). Result
blocks are pydantic v2 models; `gate_value` reads the `estimated_f` gate metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression

from worker.adapt.masks import image_stem
from worker.results import (
    Curve,
    DatasetEstimate,
    Estimate,
    ImageEstimate,
    LabelledPoint,
    LabelledSet,
)

MIN_LABELLED_DATASETS = 2
MIN_LABELLED_IMAGES = 30
N_BOOTSTRAP = 200
INTERVAL = 0.90
EXTRAPOLATION_SHARE = 0.10  # a secondary is flagged when more than this share lies outside
CURVE_POINTS = 101
METHOD = (
    "mean over the secondary's images of the isotonic (non-increasing) fit of per-image F on "
    "i_dist_mean, plus the mean gap between labelled ODS and mean fitted per-image F"
)


# ------------------------------------------------------------------------------------------
# inputs (plain arrays)


@dataclass(frozen=True)
class Evidence:
    """One labelled secondary: per-image F at its ODS threshold with its distances (length N)."""

    name: str
    ids: list[str]
    i_dist_scaled: np.ndarray  # (N,) min-max scaled I_dist within the set, [0, 1]
    i_dist_mean: np.ndarray  # (N,) I_dist / n, feature-space units
    f: np.ndarray  # (N,) per-image F at the dataset's ODS threshold, [0, 1]
    o_dist_mean: float
    ods_f: float
    ods_threshold: float | None = None


@dataclass(frozen=True)
class Target:
    """One secondary to estimate: its images' distances (length M)."""

    name: str
    ids: list[str]
    i_dist_scaled: np.ndarray
    i_dist_mean: np.ndarray
    o_dist_mean: float


# ------------------------------------------------------------------------------------------
# result models


# ------------------------------------------------------------------------------------------
# fitting


def fit_isotonic(x: np.ndarray, y: np.ndarray) -> IsotonicRegression:
    """Non-increasing least-squares fit y ~ g(x), clipped to [0, 1] and to the fitted x range."""
    iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return iso


def _pooled(evidence: Sequence[Evidence]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([e.i_dist_mean for e in evidence]).astype(np.float64)
    f = np.concatenate([e.f for e in evidence]).astype(np.float64)
    return x, f


def fit_estimator(evidence: Sequence[Evidence]) -> tuple[IsotonicRegression, float]:
    """(g, offset): g the pooled per-image fit on i_dist_mean, offset the mean over sets of
    ODS_d - mean_j g(x_dj)."""
    x, f = _pooled(evidence)
    g = fit_isotonic(x, f)
    offset = float(np.mean([e.ods_f - float(np.mean(g.predict(e.i_dist_mean))) for e in evidence]))
    return g, offset


def estimate_ods(evidence: Sequence[Evidence], x_target: np.ndarray) -> float:
    """The estimator: clip(mean_j g(x_j) + offset, 0, 1) for target distances x (M,)."""
    g, offset = fit_estimator(evidence)
    return float(np.clip(np.mean(g.predict(np.asarray(x_target, dtype=np.float64))) + offset, 0, 1))


def leave_one_out(evidence: Sequence[Evidence]) -> list[float]:
    """est(d) from every labelled set but d, for each d in order (needs >= 2 sets)."""
    return [
        estimate_ods([o for k, o in enumerate(evidence) if k != d], e.i_dist_mean)
        for d, e in enumerate(evidence)
    ]


def _dataset_fit_loo(evidence: Sequence[Evidence]) -> float | None:
    errs = []
    for d, e in enumerate(evidence):
        rest = [o for k, o in enumerate(evidence) if k != d]
        g = fit_isotonic([o.o_dist_mean for o in rest], [o.ods_f for o in rest])
        errs.append(abs(float(g.predict([e.o_dist_mean])[0]) - e.ods_f))
    return float(np.mean(errs)) if errs else None


def _grid(lo: float, hi: float) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi):
        return np.zeros(0)
    if hi <= lo:
        return np.array([lo])
    return np.linspace(lo, hi, CURVE_POINTS)


def _curve(x_grid: np.ndarray, fit: np.ndarray, boot: np.ndarray) -> Curve:
    q = (1 - INTERVAL) / 2 * 100
    if len(boot):
        low, high = np.percentile(boot, [q, 100 - q], axis=0)
    else:
        low, high = fit, fit
    return Curve(x=x_grid.tolist(), f=fit.tolist(), low=low.tolist(), high=high.tolist())


def _no_estimate(t: Target, reason: str) -> DatasetEstimate:
    return DatasetEstimate(
        dataset=t.name,
        count=len(t.ids),
        o_dist_mean=_finite(t.o_dist_mean),
        estimated_f=None,
        low=None,
        high=None,
        loo_mae=None,
        extrapolation=False,
        share_outside=None,
        o_dist_mean_outside=False,
        dataset_fit_f=None,
        dataset_fit_low=None,
        dataset_fit_high=None,
        images=[],
        reason=reason,
    )


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _refusal(evidence: Sequence[Evidence], min_datasets: int, min_images: int) -> str | None:
    n_sets, n_images = len(evidence), sum(len(e.f) for e in evidence)
    if n_sets < min_datasets:
        names = ", ".join(e.name for e in evidence) or "none"
        return (
            f"{n_sets} labelled dataset(s) ({names}); an estimate needs at least {min_datasets} "
            "secondaries with masks and scores (adaptation results or 'predictions:') so that "
            "its leave-one-dataset-out error can be measured"
        )
    if n_images < min_images:
        return (
            f"{n_images} labelled images over {n_sets} datasets; an estimate needs at least "
            f"{min_images}: label more images of the secondaries"
        )
    return None


def _labelled_set(
    e: Evidence, loo_estimate: float | None = None, loo_error: float | None = None
) -> LabelledSet:
    """One labelled secondary's evidence as report.json lists it."""
    return LabelledSet(
        dataset=e.name,
        count=len(e.f),
        o_dist_mean=e.o_dist_mean,
        ods_f=e.ods_f,
        ods_threshold=e.ods_threshold,
        mean_f=float(np.mean(e.f)),
        loo_estimate=loo_estimate,
        loo_error=loo_error,
    )


def estimate_performance(
    evidence: Sequence[Evidence],
    targets: Sequence[Target],
    *,
    seed: int = 0,
    source: str = "adaptation:M",
    n_bootstrap: int = N_BOOTSTRAP,
    min_datasets: int = MIN_LABELLED_DATASETS,
    min_images: int = MIN_LABELLED_IMAGES,
) -> Estimate:
    """Fit the distance -> F relation on `evidence` and estimate every target (module docstring).

    Deterministic for a given seed. With fewer than `min_datasets` labelled sets or fewer than
    `min_images` labelled images, no estimate is made and every target carries the reason.
    """
    evidence = [e for e in evidence if len(e.f)]
    points = [
        LabelledPoint(
            dataset=e.name, id=i, i_dist_scaled=float(s), i_dist_mean=float(x), f=float(f)
        )
        for e in evidence
        for i, s, x, f in zip(e.ids, e.i_dist_scaled, e.i_dist_mean, e.f, strict=True)
    ]
    common = dict(
        source=source,
        method=METHOD,
        seed=seed,
        n_bootstrap=n_bootstrap,
        interval=INTERVAL,
        min_labelled_datasets=min_datasets,
        min_labelled_images=min_images,
        extrapolation_share=EXTRAPOLATION_SHARE,
        points=points,
    )
    reason = _refusal(evidence, min_datasets, min_images)
    if reason is not None:
        labelled = [_labelled_set(e) for e in evidence]
        return Estimate(
            **common,
            made=False,
            reason=reason,
            offset=None,
            loo_mae=None,
            dataset_fit_loo_mae=None,
            labelled_range=None,
            labelled=labelled,
            curve=None,
            curve_scaled=None,
            dataset_curve=None,
            secondaries=[_no_estimate(t, reason) for t in targets],
        )

    x_all, f_all = _pooled(evidence)
    s_all = np.concatenate([e.i_dist_scaled for e in evidence]).astype(np.float64)
    lo, hi = float(x_all.min()), float(x_all.max())
    o_lab = np.array([e.o_dist_mean for e in evidence], dtype=np.float64)
    ods_lab = np.array([e.ods_f for e in evidence], dtype=np.float64)

    g, offset = fit_estimator(evidence)
    g_scaled = fit_isotonic(s_all, f_all)
    g_set = fit_isotonic(o_lab, ods_lab)
    loo = leave_one_out(evidence)
    loo_err = [abs(v - e.ods_f) for v, e in zip(loo, evidence, strict=True)]
    loo_mae = float(np.mean(loo_err))

    t_x = [np.asarray(t.i_dist_mean, dtype=np.float64) for t in targets]
    t_o = np.array([t.o_dist_mean for t in targets], dtype=np.float64)
    x_lo = min([lo] + [float(x.min()) for x in t_x if len(x)])
    x_hi = max([hi] + [float(x.max()) for x in t_x if len(x)])
    grid = _grid(x_lo, x_hi)
    grid_s = np.linspace(0.0, 1.0, CURVE_POINTS)
    finite_o = t_o[np.isfinite(t_o)]
    grid_o = _grid(
        float(min(o_lab.min(), finite_o.min() if len(finite_o) else o_lab.min())),
        float(max(o_lab.max(), finite_o.max() if len(finite_o) else o_lab.max())),
    )

    # bootstrap: images within each labelled set (per-image fits), datasets (dataset-level fit)
    rng = np.random.default_rng(seed)
    b_est = np.zeros((n_bootstrap, len(targets)))
    b_img = [np.zeros((n_bootstrap, len(x))) for x in t_x]
    b_curve = np.zeros((n_bootstrap, len(grid)))
    b_curve_s = np.zeros((n_bootstrap, len(grid_s)))
    b_set = np.zeros((n_bootstrap, len(targets)))
    b_curve_o = np.zeros((n_bootstrap, len(grid_o)))
    for b in range(n_bootstrap):
        resampled = []
        for e in evidence:
            idx = rng.integers(0, len(e.f), size=len(e.f))
            # the replicate's ODS moves with its images: ODS cannot be recomputed from
            # per-image F, so shift it by the change of mean per-image F (first order); a fixed
            # ODS would add spurious variance to the offset
            ods_b = e.ods_f + float(e.f[idx].mean() - e.f.mean())
            resampled.append(
                Evidence(
                    e.name,
                    [e.ids[i] for i in idx],
                    e.i_dist_scaled[idx],
                    e.i_dist_mean[idx],
                    e.f[idx],
                    e.o_dist_mean,
                    ods_b,
                )
            )
        gb, off_b = fit_estimator(resampled)
        xb, fb = _pooled(resampled)
        fitted = gb.predict(xb)
        resid = fb - fitted
        # isotonic regression spends one degree of freedom per constant block (Meyer and
        # Woodroofe 2000): inflate residuals by sqrt(N / (N - blocks)) as for any least squares
        blocks = len(np.unique(fitted))
        resid = resid * np.sqrt(len(resid) / max(len(resid) - blocks, 1))
        for k, x in enumerate(t_x):
            if not len(x):
                continue
            pred = gb.predict(x)
            b_img[k][b] = pred
            noise = float(np.mean(resid[rng.integers(0, len(resid), size=len(x))]))
            b_est[b, k] = np.clip(np.mean(pred) + off_b + noise, 0.0, 1.0)
        b_curve[b] = gb.predict(grid)
        sb = np.concatenate([r.i_dist_scaled for r in resampled])
        b_curve_s[b] = fit_isotonic(sb, fb).predict(grid_s)
        sets = rng.integers(0, len(evidence), size=len(evidence))
        gsb = fit_isotonic(o_lab[sets], ods_lab[sets])
        b_curve_o[b] = gsb.predict(grid_o)
        ok = np.isfinite(t_o)
        if ok.any():
            b_set[b, ok] = gsb.predict(t_o[ok])

    q = (1 - INTERVAL) / 2 * 100
    secondaries = []
    for k, t in enumerate(targets):
        x = t_x[k]
        if not len(x):
            secondaries.append(_no_estimate(t, f"secondary {t.name!r} has no image distances"))
            continue
        pred = g.predict(x)
        est = float(np.clip(np.mean(pred) + offset, 0.0, 1.0))
        outside = (x < lo) | (x > hi)
        share = float(outside.mean())
        if n_bootstrap:
            e_lo, e_hi = np.percentile(b_est[:, k], [q, 100 - q])
            i_lo, i_hi = np.percentile(b_img[k], [q, 100 - q], axis=0)
        else:
            e_lo = e_hi = est
            i_lo = i_hi = pred
        o = _finite(t.o_dist_mean)
        if o is not None:
            set_f = float(g_set.predict([o])[0])
            s_lo, s_hi = np.percentile(b_set[:, k], [q, 100 - q]) if n_bootstrap else (set_f, set_f)
            s_lo, s_hi = float(s_lo), float(s_hi)
        else:
            set_f = s_lo = s_hi = None
        secondaries.append(
            DatasetEstimate(
                dataset=t.name,
                count=len(x),
                o_dist_mean=o,
                estimated_f=est,
                low=float(min(e_lo, est)),
                high=float(max(e_hi, est)),
                loo_mae=loo_mae,
                extrapolation=share > EXTRAPOLATION_SHARE,
                share_outside=share,
                o_dist_mean_outside=o is not None and not (o_lab.min() <= o <= o_lab.max()),
                dataset_fit_f=set_f,
                dataset_fit_low=s_lo,
                dataset_fit_high=s_hi,
                images=[
                    ImageEstimate(
                        id=i,
                        i_dist_mean=float(xi),
                        expected_f=float(p),
                        low=float(a),
                        high=float(c),
                        extrapolated=bool(out),
                    )
                    for i, xi, p, a, c, out in zip(t.ids, x, pred, i_lo, i_hi, outside, strict=True)
                ],
                reason=None,
            )
        )

    labelled = [_labelled_set(e, v, err) for e, v, err in zip(evidence, loo, loo_err, strict=True)]
    return Estimate(
        **common,
        made=True,
        reason=None,
        offset=offset,
        loo_mae=loo_mae,
        dataset_fit_loo_mae=_dataset_fit_loo(evidence),
        labelled_range=[lo, hi],
        labelled=labelled,
        curve=_curve(grid, g.predict(grid), b_curve),
        curve_scaled=_curve(grid_s, g_scaled.predict(grid_s), b_curve_s),
        dataset_curve=_curve(grid_o, g_set.predict(grid_o), b_curve_o),
        secondaries=secondaries,
    )


# ------------------------------------------------------------------------------------------
# evidence from report.json


def _evidence(sec: dict, per_image: list[dict], ods_f, ods_threshold, by_stem: bool) -> Evidence:
    f_by = {r["id"]: r["f"] for r in per_image if r.get("f") is not None}
    rows = []
    for im in sec.get("images", []):
        key = image_stem(im["id"]) if by_stem else im["id"]
        if key in f_by and im.get("i_dist_mean") is not None:
            rows.append((im["id"], im["i_dist_scaled"], im["i_dist_mean"], f_by[key]))
    return Evidence(
        name=sec["name"],
        ids=[r[0] for r in rows],
        i_dist_scaled=np.array([r[1] for r in rows], dtype=np.float64),
        i_dist_mean=np.array([r[2] for r in rows], dtype=np.float64),
        f=np.array([r[3] for r in rows], dtype=np.float64),
        o_dist_mean=float(sec["o_dist_mean"]),
        ods_f=float(ods_f),
        ods_threshold=None if ods_threshold is None else float(ods_threshold),
    )


def evidence_from_adaptation(report: dict, model: str = "M") -> list[Evidence]:
    """Labelled evidence from report["adaptation"]["results"] of `model` (baseline M): per-image
    F joined by image id with report["secondaries"][*]["images"] distances. Results without an
    ODS (no images) or whose masks have no positive pixel are left out."""
    results = (report.get("adaptation") or {}).get("results") or []
    secs = {s["name"]: s for s in report.get("secondaries", [])}
    out = []
    for r in results:
        if r.get("model") != model or r.get("ods_f") is None or r.get("dataset") not in secs:
            continue
        if r.get("mask_pixels") == 0:
            continue
        e = _evidence(
            secs[r["dataset"]], r.get("per_image", []), r["ods_f"], r.get("ods_threshold"), False
        )
        out.append(e)
    return out


def evidence_from_scores(report: dict, scores: dict[str, dict]) -> list[Evidence]:
    """Labelled evidence from `predictions:` scores ({dataset: worker.adapt.evaluate_cli.evaluate
    output}, whose per-image ids are mask stems), joined by stem with the report's distances."""
    secs = {s["name"]: s for s in report.get("secondaries", [])}
    out = []
    for name in [s["name"] for s in report.get("secondaries", [])]:
        sc = scores.get(name)
        if sc is None or sc.get("ods_f") is None:
            continue
        out.append(
            _evidence(
                secs[name], sc.get("per_image", []), sc["ods_f"], sc.get("ods_threshold"), True
            )
        )
    return out


def targets_from_report(report: dict, labelled: set[str]) -> list[Target]:
    """Every secondary of the report not in `labelled`, in report order."""
    out = []
    for s in report.get("secondaries", []):
        if s["name"] in labelled:
            continue
        ims = [im for im in s.get("images", []) if im.get("i_dist_mean") is not None]
        o = s.get("o_dist_mean")
        out.append(
            Target(
                name=s["name"],
                ids=[im["id"] for im in ims],
                i_dist_scaled=np.array([im["i_dist_scaled"] for im in ims], dtype=np.float64),
                i_dist_mean=np.array([im["i_dist_mean"] for im in ims], dtype=np.float64),
                o_dist_mean=float("nan") if o is None else float(o),
            )
        )
    return out


def estimate_from_report(
    report: dict,
    scores: dict[str, dict] | None = None,
    *,
    seed: int = 0,
    model: str = "M",
    n_bootstrap: int = N_BOOTSTRAP,
) -> Estimate | None:
    """The whole estimate from a report dict: evidence from `scores` (the user's model through
    `predictions:`) when any, else from the adaptation's `model`; None when neither exists."""
    if scores:
        evidence, source = evidence_from_scores(report, scores), "predictions"
    elif (report.get("adaptation") or {}).get("results"):
        evidence, source = evidence_from_adaptation(report, model), f"adaptation:{model}"
    else:
        return None
    targets = targets_from_report(report, {e.name for e in evidence})
    return estimate_performance(
        evidence, targets, seed=seed, source=source, n_bootstrap=n_bootstrap
    )


def gate_value(estimates: Estimate | None, dataset: str) -> float | None:
    """The `estimated_f` gate metric of one secondary: its estimated ODS, or None (no estimate,
    or the dataset is labelled evidence: gate those on `ods_f`)."""
    if estimates is None:
        return None
    block = estimates.for_dataset(dataset)
    return None if block is None else block.estimated_f
