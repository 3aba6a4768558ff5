"""Performance estimate without labels (docs/method.md §7; the estimator: docs/method-estimate.md).

Labelled secondaries (masks with the user's `predictions:`, or the adaptation's baseline model
M) give, per set d, its ODS_d and per image its F at the set's ODS threshold. Candidate
predictors turn a set's distances into an estimate of its ODS:

    no_skill     est(S) = mean_d ODS_d                                  (the baseline)
    i_dist_mean  g = isotonic non-increasing fit of per-image F on I_dist / n, all labelled
    novelty      images pooled (for `novelty`: on the calibrated per-image novelty);
                 offset = mean_d (ODS_d - mean_{j in d} g(x_dj));
                 est(S) = clip(mean_{j in S} g(x_j) + offset, 0, 1)
    energy       h = isotonic non-increasing fit of ODS_d on the set's energy distance E_d;
                 est(S) = h(E_S)

The procedure: score every available candidate by leave-one-labelled-set-out (LOO) mean
absolute error, choose the smallest (no_skill on ties), fit it on every labelled set. Its own
error is measured by nested LOO: for each labelled set i the whole procedure, choice included,
runs on the other sets and estimates ODS_i; R_i = |ODS_i - est_{-i}(i)|, loo_mae = mean_i R_i.

Skill: the procedure must beat no_skill (a predictor other than no_skill chosen, and nested
loo_mae < no_skill's LOO MAE); otherwise no estimate ("no skill").

Interval (nominal 90%, between-set error included): with n labelled sets and alpha = 0.1,
jackknife+ (Barber et al. 2021) when ceil((1 - alpha)(n + 1)) <= n (n >= 9):
    [ floor(alpha (n+1))-th smallest of est_{-i}(S) - R_i,
      ceil((1-alpha)(n+1))-th smallest of est_{-i}(S) + R_i ];
with fewer sets no distribution-free 90% interval is finite, so a Student-t prediction
interval from the signed nested residuals e_i: est(S) +- t_{n, 0.95} sqrt(mean_i e_i^2).

Extrapolation: a set whose value of any available predictor (mean over its images for
image-level ones, E_S for energy) lies outside the labelled sets' [min, max], or with more
than EXTRAPOLATION_SHARE of its images outside the labelled images' i_dist_mean range, is
flagged and gets no point estimate: farther than every labelled set, F is bounded above only
(low = 0); closer, below only (high = 1).

Everything here is pure (numpy / scikit-learn on arrays and typed reports, no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from worker.adapt.masks import image_stem
from worker.estimate_curves import (  # noqa: F401
    _band,
    _curve,
    _Curves,
    _curves,
    _grid,
)
from worker.estimate_fit import (  # noqa: F401
    CANDIDATES,
    CURVE_POINTS,
    DESCRIPTIONS,
    EXTRAPOLATION_SHARE,
    INTERVAL,
    LEVELS,
    METHOD,
    MIN_LABELLED_DATASETS,
    MIN_LABELLED_IMAGES,
    N_BOOTSTRAP,
    NO_SKILL,
    Evidence,
    Isotonic,
    NestedLoo,
    Predictor,
    Target,
    available,
    choose,
    fit_candidate,
    fit_isotonic,
    fit_procedure,
    image_fit,
    image_values,
    interval,
    interval_method,
    labelled,
    loo_estimates,
    nested_loo,
    ranges,
    sampling_error,
    set_value,
)
from worker.results import (
    CandidateScore,
    DatasetEstimate,
    Estimate,
    EstimateRange,
    EstimateTrack,
    ImageEstimate,
    LabelledPoint,
    LabelledSet,
    RealisedEstimate,
    Report,
    SecondaryResult,
)

# ------------------------------------------------------------------------------------------
# the estimate


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _novel(t: Target) -> dict:
    if t.novel is None or len(t.novel) != len(t.ids) or not len(t.ids):
        return {}
    count = int(np.count_nonzero(t.novel))
    return {
        "novel_count": count,
        "novel_fraction": count / len(t.ids),
        "novelty_base_rate": t.novelty_base_rate,
    }


def _no_estimate(t: Target, reason: str, **extra) -> DatasetEstimate:
    fields = dict(
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
    fields.update(_novel(t))
    fields.update(extra)
    return DatasetEstimate(**fields)


def _refusal(evidence: Sequence[Evidence], min_datasets: int, min_images: int) -> str | None:
    n_sets, n_images = len(evidence), sum(len(e.f) for e in evidence)
    if n_sets < min_datasets:
        names = ", ".join(e.name for e in evidence) or "none"
        return (
            f"{n_sets} labelled dataset(s) ({names}); an estimate needs at least {min_datasets} "
            "secondaries with masks and scores (adaptation results or 'predictions:') so that "
            "the error of choosing a predictor can be measured by nested leave-one-out"
        )
    if n_images < min_images:
        return (
            f"{n_images} labelled images over {n_sets} datasets; an estimate needs at least "
            f"{min_images}: label more images of the secondaries"
        )
    return None


def _labelled_set(
    e: Evidence,
    loo_estimate: float | None = None,
    loo_error: float | None = None,
    loo_predictor: str | None = None,
) -> LabelledSet:
    return LabelledSet(
        dataset=e.name,
        count=len(e.f),
        o_dist_mean=e.o_dist_mean,
        ods_f=e.ods_f,
        ods_threshold=e.ods_threshold,
        mean_f=float(np.mean(e.f)),
        loo_estimate=loo_estimate,
        loo_error=loo_error,
        loo_predictor=loo_predictor,
    )


def _extrapolation_reason(rs: list[EstimateRange], share: float, side: str) -> str:
    parts = [
        f"{r.predictor} {r.value:.4g} {'>' if r.side == 'above' else '<'} "
        f"{r.high if r.side == 'above' else r.low:.4g}"
        for r in rs
        if r.side != "inside"
    ]
    if share > EXTRAPOLATION_SHARE:
        parts.append(f"{share:.0%} of its images outside the labelled i_dist_mean range")
    where = "farther than" if side == "above" else "closer than"
    bound = "above only (low = 0)" if side == "above" else "below only (high = 1)"
    return (
        f"extrapolation: {where} every labelled set ({'; '.join(parts)}); the labelled sets "
        f"bound its F {bound}, so no point estimate"
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
    candidates: Sequence[str] = CANDIDATES,
) -> Estimate:
    """Choose a predictor by leave-one-labelled-set-out error, estimate every target with an
    interval that includes between-set error, flag extrapolation (module docstring).

    Deterministic for a given seed (the seed only drives the figure's bootstrap bands). With
    fewer than `min_datasets` labelled sets or `min_images` labelled images, or without
    skill, no estimate is made and every target carries the reason.
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
        return Estimate(
            **common,
            made=False,
            reason=reason,
            offset=None,
            loo_mae=None,
            dataset_fit_loo_mae=None,
            labelled_range=None,
            labelled=[_labelled_set(e) for e in evidence],
            curve=None,
            curve_scaled=None,
            dataset_curve=None,
            secondaries=[_no_estimate(t, reason) for t in targets],
        )

    nonempty = [t for t in targets if len(t.ids)]
    why_not = {n: available(n, [*evidence, *nonempty]) for n in candidates}
    names = [n for n in candidates if why_not[n] is None]
    if NO_SKILL not in names:
        names.insert(0, NO_SKILL)
    ods = np.array([e.ods_f for e in evidence], dtype=np.float64)
    chosen, maes = choose(names, evidence)
    loo = {n: loo_estimates(n, evidence) for n in names}
    nested = nested_loo(names, evidence)
    no_skill_mae = maes[NO_SKILL]
    noise = sampling_error(evidence)
    skilled = [n for n in names if n != NO_SKILL and maes[n] < no_skill_mae - noise]
    skill = chosen in skilled
    final = fit_candidate(chosen, evidence)
    scores = [
        CandidateScore(
            name=n,
            description=DESCRIPTIONS[n],
            level=LEVELS[n],
            available=why_not.get(n) is None,
            reason=why_not.get(n),
            loo_mae=maes.get(n),
            loo_estimates=[float(v) for v in loo[n]] if n in loo else [None] * len(evidence),
            set_values=[float(ods.mean()) if n == NO_SKILL else set_value(n, e) for e in evidence],
            chosen=n == chosen,
            skill=n in skilled,
        )
        for n in candidates
    ]
    best = (
        "no predictor beats"
        if chosen == NO_SKILL
        else f"{chosen} (LOO MAE {maes[chosen]:.3f}) does not beat"
    )
    no_skill_reason = (
        f"no skill: {best} the labelled sets' mean ODS (LOO MAE {no_skill_mae:.3f}) by more "
        f"than the sampling error of a set's F ({noise:.3f}); F is not explained by distance "
        "here"
    )
    lo_x = min(float(e.i_dist_mean.min()) for e in evidence)
    hi_x = max(float(e.i_dist_mean.max()) for e in evidence)
    o_lab = [e.o_dist_mean for e in evidence]
    curves = _curves(evidence, targets, seed, n_bootstrap)

    secondaries = []
    for k, t in enumerate(targets):
        if not len(t.ids):
            secondaries.append(_no_estimate(t, f"secondary {t.name!r} has no image distances"))
            continue
        x = np.asarray(t.i_dist_mean, dtype=np.float64)
        outside = (x < lo_x) | (x > hi_x)
        share = float(outside.mean())
        rs = ranges(names, evidence, t)
        # judged on the predictors with skill; with none, on every available one
        judged = [r for r in rs if r.predictor in skilled] if skilled else rs
        above = any(r.side == "above" for r in judged)
        below = any(r.side == "below" for r in judged)
        if chosen != "i_dist_mean":
            share_flag = False
        else:
            share_flag = share > EXTRAPOLATION_SHARE
        if share_flag and not (above or below):
            above = np.count_nonzero(x > hi_x) >= np.count_nonzero(x < lo_x)
            below = not above
        side = "above" if above else "below" if below else None
        est = final(t)
        lo, hi, method = interval(
            est, np.array([fold(t) for fold in nested.folds]), nested.residuals
        )
        o = _finite(t.o_dist_mean)
        sf = curves.set_fit[k]
        band = curves.image_band[k]
        block = dict(
            dataset=t.name,
            count=len(t.ids),
            o_dist_mean=o,
            estimated_f=est,
            low=min(lo, est),
            high=max(hi, est),
            loo_mae=nested.mae,
            extrapolation=side is not None,
            share_outside=share,
            o_dist_mean_outside=o is not None and not (min(o_lab) <= o <= max(o_lab)),
            dataset_fit_f=sf[0] if sf else None,
            dataset_fit_low=sf[1] if sf else None,
            dataset_fit_high=sf[2] if sf else None,
            images=[
                ImageEstimate(
                    id=i,
                    i_dist_mean=float(xi),
                    expected_f=float(p),
                    low=float(a),
                    high=float(c),
                    extrapolated=bool(out),
                )
                for i, xi, p, a, c, out in zip(
                    t.ids, x, curves.image_fit[k], band[0], band[1], outside, strict=True
                )
            ],
            reason=None,
            predictor=chosen,
            predictor_value=float(ods.mean()) if chosen == NO_SKILL else set_value(chosen, t),
            interval_method=method,
            ranges=rs,
            extrapolation_side=side,
            **_novel(t),
        )
        if not skill:
            # no point estimate; the labelled sets' spread is all the data say about F
            mean = float(ods.mean())
            lo, hi, method = interval(mean, loo[NO_SKILL], ods - loo[NO_SKILL])
            reason = no_skill_reason
            if side is not None:
                where = "farther" if side == "above" else "closer"
                reason += f"; and extrapolation: {where} than every labelled set"
            block.update(
                estimated_f=None,
                low=0.0 if above else lo,
                high=1.0 if below else hi,
                predictor=NO_SKILL,
                predictor_value=mean,
                interval_method=method,
                reason=reason,
            )
        elif side is not None:
            block.update(
                estimated_f=None,
                low=0.0 if above else block["low"],
                high=1.0 if below else block["high"],
                reason=_extrapolation_reason(judged, share if share_flag else 0.0, side),
            )
        secondaries.append(DatasetEstimate(**block))

    offset = image_fit("i_dist_mean", evidence)[1] if "i_dist_mean" in names else None
    labelled_sets = [
        _labelled_set(e, float(v), float(abs(r)), c)
        for e, v, r, c in zip(
            evidence, nested.estimates, nested.residuals, nested.chosen, strict=True
        )
    ]
    return Estimate(
        **common,
        made=skill,
        reason=None if skill else no_skill_reason,
        offset=offset,
        loo_mae=nested.mae,
        dataset_fit_loo_mae=curves.dataset_fit_loo_mae,
        labelled_range=[lo_x, hi_x],
        labelled=labelled_sets,
        curve=curves.curve,
        curve_scaled=curves.curve_scaled,
        dataset_curve=curves.dataset_curve,
        secondaries=secondaries,
        candidates=scores,
        chosen=chosen,
        no_skill_loo_mae=no_skill_mae,
        sampling_error=noise,
        skill=skill,
        interval_method=interval_method(len(evidence)),
    )


# ------------------------------------------------------------------------------------------
# evidence from the typed report


def target_of(sec: SecondaryResult) -> Target:
    """A secondary's distances as a Target: images with an i_dist_mean, in report order, with
    their novelty and the set's energy distance when the report has them."""
    ims = [im for im in sec.images if im.i_dist_mean is not None]
    novelty = [im.novelty for im in ims]
    novel = [im.novel for im in ims]
    return Target(
        name=sec.name,
        ids=[im.id for im in ims],
        i_dist_scaled=np.array([im.i_dist_scaled or 0.0 for im in ims], dtype=np.float64),
        i_dist_mean=np.array([im.i_dist_mean for im in ims], dtype=np.float64),
        o_dist_mean=math.nan if sec.o_dist_mean is None else float(sec.o_dist_mean),
        novelty=None if None in novelty else np.array(novelty, dtype=np.float64),
        novel=None if None in novel else np.array(novel, dtype=bool),
        novelty_base_rate=sec.novelty.base_rate if sec.novelty is not None else None,
        energy=sec.energy.distance if sec.energy is not None else None,
    )


def _evidence(
    sec: SecondaryResult,
    f_by: Mapping[str, float],
    ods_f: float,
    ods_threshold: float | None,
    by_stem: bool,
) -> Evidence:
    """`sec` restricted to its images with an F (joined by id, or by stem for predictions)."""
    t = target_of(sec)
    keep = [k for k, i in enumerate(t.ids) if (image_stem(i) if by_stem else i) in f_by]
    f = [f_by[image_stem(t.ids[k]) if by_stem else t.ids[k]] for k in keep]

    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep]

    sub = Target(
        name=t.name,
        ids=[t.ids[k] for k in keep],
        i_dist_scaled=t.i_dist_scaled[keep],
        i_dist_mean=t.i_dist_mean[keep],
        o_dist_mean=t.o_dist_mean,
        novelty=pick(t.novelty),
        novel=pick(t.novel),
        novelty_base_rate=t.novelty_base_rate,
        energy=t.energy,
    )
    return labelled(sub, np.array(f, dtype=np.float64), ods_f, ods_threshold)


def evidence_from_adaptation(report: Report, model: str = "M") -> list[Evidence]:
    """Labelled evidence from the adaptation's `model` (baseline M) of its first architecture:
    per-image F joined by image id with the secondaries' distances. Results without an ODS or
    whose masks have no positive pixel are left out (F means nothing there)."""
    if report.adaptation is None or not report.adaptation.results:
        return []
    arch = next((r.architecture for r in report.adaptation.results if r.model == model), None)
    out = []
    for r in report.adaptation.results:
        sec = report.secondary(r.dataset)
        if r.model != model or r.architecture != arch or sec is None:
            continue
        if r.ods_f is None or r.mask_pixels == 0:
            continue
        f_by = {p.id: p.f for p in r.per_image if p.f is not None}
        out.append(_evidence(sec, f_by, r.ods_f, r.ods_threshold, by_stem=False))
    return out


def evidence_from_scores(report: Report, scores: Mapping[str, Mapping]) -> list[Evidence]:
    """Labelled evidence from `predictions:` scores ({dataset: worker.adapt.evaluate_cli
    .evaluate output}, per-image ids are mask stems), joined by stem, in report order."""
    out = []
    for sec in report.secondaries:
        sc = scores.get(sec.name)
        if sc is None or sc.get("ods_f") is None:
            continue
        f_by = {p["id"]: float(p["f"]) for p in sc.get("per_image", []) if p.get("f") is not None}
        out.append(_evidence(sec, f_by, float(sc["ods_f"]), sc.get("ods_threshold"), by_stem=True))
    return out


def estimate_from_report(
    report: Report,
    scores: Mapping[str, Mapping] | None = None,
    *,
    seed: int = 0,
    model: str = "M",
    n_bootstrap: int = N_BOOTSTRAP,
) -> Estimate | None:
    """The whole estimate from a typed report: evidence from `scores` (the user's model through
    `predictions:`) when any, else from the adaptation's `model`; None when neither exists."""
    if scores:
        evidence, source = evidence_from_scores(report, scores), "predictions"
    elif report.adaptation is not None and report.adaptation.results:
        evidence, source = evidence_from_adaptation(report, model), f"adaptation:{model}"
    else:
        return None
    names = {e.name for e in evidence}
    targets = [target_of(s) for s in report.secondaries if s.name not in names]
    return estimate_performance(
        evidence, targets, seed=seed, source=source, n_bootstrap=n_bootstrap
    )


# ------------------------------------------------------------------------------------------
# estimated against realised, over the runs of a store


def estimated_vs_realised(runs: Sequence[Report]) -> EstimateTrack | None:
    """Every (run k, secondary S) with an estimate block in run k and masks for S in a later
    run j (S in run j's estimate.labelled, same evidence source): the estimate next to the
    realised ODS of the first such j, oldest first, with the running MAE of the point
    estimates. `runs` oldest first (this run last). None when there is no such pair."""
    points: list[RealisedEstimate] = []
    source = None
    for k, run in enumerate(runs):
        if run.estimate is None:
            continue
        for block in run.estimate.secondaries:
            if block.count == 0:
                continue
            for later in runs[k + 1 :]:
                if later.estimate is None or later.estimate.source != run.estimate.source:
                    continue
                lab = next((s for s in later.estimate.labelled if s.dataset == block.dataset), None)
                if lab is None:
                    continue
                source = run.estimate.source
                err = None if block.estimated_f is None else block.estimated_f - lab.ods_f
                covered = None
                if block.low is not None and block.high is not None:
                    covered = block.low <= lab.ods_f <= block.high
                points.append(
                    RealisedEstimate(
                        dataset=block.dataset,
                        run_id=run.run.run_id,
                        finished=run.run.finished,
                        estimated_f=block.estimated_f,
                        low=block.low,
                        high=block.high,
                        predictor=block.predictor,
                        reason=block.reason,
                        realised_run_id=later.run.run_id,
                        realised_f=lab.ods_f,
                        error=err,
                        covered=covered,
                        running_mae=None,
                    )
                )
                break
    if not points:
        return None
    errs: list[float] = []
    for p in points:
        if p.error is not None:
            errs.append(abs(p.error))
        p.running_mae = float(np.mean(errs)) if errs else None
    cov = [p.covered for p in points if p.covered is not None]
    return EstimateTrack(
        source=source,
        points=points,
        mae=float(np.mean(errs)) if errs else None,
        coverage=float(np.mean(cov)) if cov else None,
    )
