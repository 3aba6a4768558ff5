"""The model choice across architectures (docs/method.md §5.8): pure functions, numbers in,
typed results out, no I/O.

Per architecture, over the scored secondaries with positive mask pixels (all unseen by M) and
the seeds (s = 1..n, every seed trains every model on the same images):

    ods_unseen_s  = mean_d ODS_F(M, s, d)
    gain_s        = mean_d [ODS_F(M{qmax}, s, d) - ODS_F(M, s, d)]
    instability_s = mean_d |slope_d(M, s)|     slope of per-image F against scaled I_dist
    cost_s        = sum over its models of the training seconds of seed s

and each criterion's value is the mean over seeds (std with ddof = 1). `instability` is the
stability criterion (smaller is flatter): F points lost or gained from the nearest to the
farthest image, F's whole range being 0..1; the set's curve is flat when it is below
SLOPE_TOL, the threshold of the verdicts. gain_per_image = gain / the images M{qmax} trained on
beyond M's.

Trivial baselines (`worker.adapt.score.trivial_baseline`): per set, F of the all-positive
map (P = prevalence, R = 1: 2p / (1 + p)) and of the all-negative map (R = 0: F = 0) under the
ODS conventions; f_trivial = the larger. An architecture is "not learning" when ods_unseen <=
mean_d f_trivial + LEARN_MARGIN; it is never recommended.

Noise (`worker.adapt.noise.bootstrap_draws`): a paired two-level bootstrap. Each of N_BOOT
replicates draws the images of every set and the seeds, with replacement, the same draws for
every architecture; each criterion is recomputed on them. A difference between two
architectures is called only when the 95% interval of its replicates excludes 0 (`compare`).
With one seed the interval holds the noise of the evaluated images only. Cost has no
replicates: two costs differ when the larger exceeds the smaller by more than COST_TOL.

Recommendation (`decide`): among the learning architectures, for each criterion of
adaptation.choose_by in turn, keep the best and every architecture not distinguishable from
it; the first criterion that leaves one names it, the runner-up being the best of those that
criterion dropped. When every criterion leaves two or more: "no distinguishable choice".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from worker.adapt.block import (
    TENDENCY_TOL,
    AdaptationScore,
    ArchitectureBlock,
    ArchitectureSummary,
    Comparison,
    MeanStd,
    Reason,
    Recommendation,
    SeedScore,
    SeedSpread,
    SelectionSummary,
    Statement,
    TrainedModel,
    TrivialBaseline,
)
from worker.adapt.names import BASELINE
from worker.adapt.noise import N_BOOT
from worker.adapt.verdicts import SLOPE_TOL

CRITERIA = ("ods_unseen", "gain", "stability", "cost")
LEARN_MARGIN = (
    0.02  # ODS F points above the trivial F below which an architecture is "not learning"
)
COST_TOL = 0.25  # training costs within 25% of each other are not told apart
INTERVAL = (0.025, 0.975)

#: criterion -> (ArchitectureSummary field, higher is better, words, number format)
_CRITERION = {
    "ods_unseen": ("baseline_ods_unseen", True, "baseline ODS F on unseen sets", ".3f"),
    "gain": ("gain", True, "ODS F gain from labels", "+.3f"),
    "stability": ("instability", False, "|slope| of F against scaled I_dist", ".3f"),
    "cost": ("training_seconds", False, "training seconds", ".1f"),
}
_ADJ = {"ods_unseen": "higher", "gain": "larger", "stability": "smaller", "cost": "fewer"}
_TITLE = {
    "ods_unseen": "best on unseen data",
    "gain": "largest gain from labels",
    "stability": "most stable across unseen data",
    "cost": "cheapest to train",
}

SUMMARY_RULE = (
    "Per architecture, over the scored secondaries with positive mask pixels (all unseen by M) "
    "and the seeds: baseline ODS = mean ODS F of M; gain = mean ODS F of the largest M{q} "
    "minus M's (per labelled image: divided by the images it added); stability = mean "
    "|slope| of M's per-image F against scaled I_dist (smaller is flatter; flat below "
    f"{SLOPE_TOL}); cost = training seconds of all its models; each the mean over seeds "
    "(std ddof = 1). Not learning: baseline ODS at most the trivial baselines' F (all-positive "
    f"or all-negative map) + {LEARN_MARGIN}. Noise: a paired bootstrap over the evaluated "
    f"images and the seeds ({N_BOOT} replicates, the same draws for every architecture); a "
    "difference counts only when its 95% interval excludes 0; costs differ beyond "
    f"{COST_TOL:.0%}. Recommendation: for each criterion of adaptation.choose_by in turn, keep "
    "the best learning architecture and those within the noise of it; the first criterion "
    "that leaves one decides; otherwise no distinguishable choice."
)


# ----------------------------------------------------------------------------- per seed


def _mean(values: Sequence[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def mean_std(values: Sequence[float | None]) -> MeanStd:
    """Mean and sample standard deviation (ddof = 1) over seeds; the mean is null when a
    value is missing, the std also with fewer than two values."""
    if not values or any(v is None for v in values):
        return MeanStd(mean=None, std=None)
    v = np.asarray(values, dtype=np.float64)
    return MeanStd(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else None)


def seed_scores(seed: int, results: Sequence[AdaptationScore]) -> list[SeedScore]:
    """The per-seed numbers of one architecture's results."""
    return [
        SeedScore(
            seed=seed,
            model=r.model,
            dataset=r.dataset,
            ods_f=r.ods_f,
            ois_f=r.ois_f,
            precision=r.precision,
            recall=r.recall,
            f_slope=r.f_slope,
            gain_over_baseline=r.gain_over_baseline,
            fp_rate=r.fp_rate,
            training_seconds=r.training_seconds,
        )
        for r in results
    ]


def over_seeds(per_seed: Sequence[SeedScore]) -> list[SeedSpread]:
    """Mean and std over seeds of every (model, dataset), in first-seen order."""
    groups: dict[tuple[str, str], list[SeedScore]] = {}
    for r in per_seed:
        groups.setdefault((r.model, r.dataset), []).append(r)
    keys = ("ods_f", "ois_f", "precision", "recall", "f_slope", "fp_rate", "training_seconds")
    out = []
    for (model, dataset), rows in groups.items():
        spread = {k: mean_std([getattr(r, k) for r in rows]) for k in keys}
        gain = (
            MeanStd(mean=None, std=None)
            if model == BASELINE
            else mean_std([r.gain_over_baseline for r in rows])
        )
        out.append(
            SeedSpread(
                model=model, dataset=dataset, seeds=len(rows), gain_over_baseline=gain, **spread
            )
        )
    return out


# ----------------------------------------------------------------------------- one architecture


def _adapted_model(models: Sequence[TrainedModel]) -> TrainedModel | None:
    plain = [m for m in models if m.q > 0 and m.negatives == 0]
    return max(plain, key=lambda m: m.q) if plain else None


def _positive_sets(block: ArchitectureBlock) -> tuple[list[str], list[str]]:
    """(sets with positive mask pixels, sets without), by M's results."""
    base = [r for r in block.results if r.model == BASELINE]
    return (
        sorted({r.dataset for r in base if r.mask_pixels > 0}),
        sorted({r.dataset for r in base if r.mask_pixels == 0}),
    )


def per_seed_criteria(block: ArchitectureBlock) -> dict[str, list[float | None]]:
    """Each criterion per seed (in the order of the seeds): ods_unseen, gain, stability
    (instability), cost (seconds), precision, recall, noise (module docstring)."""
    rows = block.per_seed or seed_scores(0, block.results)
    pos, neg = _positive_sets(block)
    adapted = _adapted_model(block.models)
    seeds = list(dict.fromkeys(r.seed for r in rows))
    by = {(r.seed, r.model, r.dataset): r for r in rows}
    last = block.models[-1].name if len(block.models) > 1 else None
    keys = (*CRITERIA, "adapted_ods", "precision", "recall", "noise", "noise_adapted")
    out: dict[str, list[float | None]] = {k: [] for k in keys}
    for s in seeds:
        base = [by[(s, BASELINE, d)] for d in pos if (s, BASELINE, d) in by]
        out["ods_unseen"].append(_mean([r.ods_f for r in base]))
        gains = [
            by[(s, adapted.name, d)].ods_f - by[(s, BASELINE, d)].ods_f
            for d in pos
            if adapted is not None
            and (s, adapted.name, d) in by
            and by[(s, adapted.name, d)].ods_f is not None
            and by[(s, BASELINE, d)].ods_f is not None
        ]
        out["gain"].append(_mean(gains))
        out["adapted_ods"].append(
            _mean([by[(s, adapted.name, d)].ods_f for d in pos if (s, adapted.name, d) in by])
            if adapted
            else None
        )
        out["stability"].append(_mean([abs(r.f_slope) for r in base if r.f_slope is not None]))
        first = {}
        for r in rows:
            if r.seed == s:
                first.setdefault(r.model, r.training_seconds)
        out["cost"].append(
            float(sum(first.values()))
            if first
            else float(sum(m.training_seconds or 0.0 for m in block.models))
        )
        out["precision"].append(_mean([r.precision for r in base]))
        out["recall"].append(_mean([r.recall for r in base]))
        for key, model in (("noise", BASELINE), ("noise_adapted", last)):
            out[key].append(_mean([by[(s, model, d)].fp_rate for d in neg if (s, model, d) in by]))
    return out


def summarise_architecture(
    block: ArchitectureBlock, baselines: Sequence[TrivialBaseline] = ()
) -> ArchitectureSummary:
    """One row of the summary from one architecture's per-seed results (pure; rule in the
    module docstring)."""
    by = {(r.model, r.dataset): r for r in block.results}
    pos, _ = _positive_sets(block)
    per = per_seed_criteria(block)
    ods_unseen, gain = mean_std(per["ods_unseen"]), mean_std(per["gain"])
    instab, cost = mean_std(per["stability"]), mean_std(per["cost"])
    p, r = mean_std(per["precision"]).mean, mean_std(per["recall"]).mean
    adapted = _adapted_model(block.models)
    base_models = {m.name: m for m in block.models}
    labelled = None
    if adapted is not None and BASELINE in base_models:
        labelled = len(adapted.train_ids) - len(base_models[BASELINE].train_ids)
    trivial = _mean([b.f_trivial for b in baselines if b.dataset in pos])
    tendency = None
    if p is not None and r is not None:
        tendency = (
            "precision"
            if p - r >= TENDENCY_TOL
            else "recall"
            if r - p >= TENDENCY_TOL
            else "balanced"
        )
    return ArchitectureSummary(
        architecture=block.label,
        baseline_ods_unseen=ods_unseen.mean,
        generalisation_slope=_mean([by[(BASELINE, d)].f_slope for d in pos]),
        adapted_model=adapted.name if adapted else None,
        adapted_ods=mean_std(per["adapted_ods"]).mean,
        gain=gain.mean,
        precision=p,
        recall=r,
        tendency=tendency,
        noise_fp_rate=mean_std(per["noise"]).mean,
        noise_fp_rate_adapted=mean_std(per["noise_adapted"]).mean,
        training_seconds=cost.mean or 0.0,
        parameters=block.parameters,
        baseline_ods_unseen_std=ods_unseen.std,
        trivial_f_unseen=trivial,
        not_learning=(
            ods_unseen.mean is not None
            and trivial is not None
            and ods_unseen.mean <= trivial + LEARN_MARGIN
        ),
        gain_std=gain.std,
        labelled_images=labelled,
        gain_per_image=(gain.mean / labelled if gain.mean is not None and labelled else None),
        instability=instab.mean,
        instability_std=instab.std,
        flat=None if instab.mean is None else instab.mean < SLOPE_TOL,
        training_seconds_std=cost.std,
    )


# ----------------------------------------------------------------------------- noise


def compare(
    rows: Sequence[ArchitectureSummary],
    draws: Mapping[str, Mapping[str, np.ndarray]],
) -> list[Comparison]:
    """Every pair of architectures (in row order) on every criterion: the point difference,
    the 95% interval of its paired replicates, and whether it excludes 0 (cost: whether one
    exceeds the other by more than COST_TOL)."""
    out = []
    for crit in CRITERIA:
        key = _CRITERION[crit][0]
        for ra, rb in combinations(rows, 2):
            va, vb = getattr(ra, key), getattr(rb, key)
            diff = None if va is None or vb is None else va - vb
            low = high = None
            sure = False
            if crit == "cost":
                if diff is not None and min(va, vb) > 0:
                    sure = max(va, vb) > (1 + COST_TOL) * min(va, vb)
            else:
                da = draws.get(ra.architecture, {}).get(crit)
                db = draws.get(rb.architecture, {}).get(crit)
                if diff is not None and da is not None and db is not None:
                    d = da - db
                    if np.any(np.isfinite(d)):
                        low, high = (float(q) for q in np.nanquantile(d, INTERVAL))
                        sure = low > 0 or high < 0
            out.append(
                Comparison(
                    criterion=crit,
                    a=ra.architecture,
                    b=rb.architecture,
                    difference=diff,
                    low=low,
                    high=high,
                    distinguishable=sure,
                )
            )
    return out


# ----------------------------------------------------------------------------- the choice


def _value(row: ArchitectureSummary, crit: str) -> float | None:
    return getattr(row, _CRITERION[crit][0])


def _better(crit: str, a: float, b: float) -> bool:
    return a > b if _CRITERION[crit][1] else a < b


def _apart(comparisons: Sequence[Comparison], crit: str, a: str, b: str) -> bool:
    for c in comparisons:
        if c.criterion == crit and {c.a, c.b} == {a, b}:
            return c.distinguishable
    return False


def _fmt(row: ArchitectureSummary, crit: str) -> str:
    v = _value(row, crit)
    if v is None:
        return "n/a"
    text = format(v, _CRITERION[crit][3])
    std = {
        "ods_unseen": row.baseline_ods_unseen_std,
        "gain": row.gain_std,
        "stability": row.instability_std,
        "cost": row.training_seconds_std,
    }[crit]
    return text if std is None else f"{text} ± {format(std, _CRITERION[crit][3].lstrip('+'))}"


def _best(rows: Sequence[ArchitectureSummary], crit: str) -> ArchitectureSummary | None:
    scored = [r for r in rows if _value(r, crit) is not None]
    if not scored:
        return None
    best = scored[0]
    for r in scored[1:]:
        if _better(crit, _value(r, crit), _value(best, crit)):
            best = r
    return best


def _reasons(
    rec: ArchitectureSummary, runner: ArchitectureSummary | None, comparisons
) -> list[Reason]:
    out = []
    for crit in (*CRITERIA[:2], "gain_per_image", *CRITERIA[2:]):
        field = "gain_per_image" if crit == "gain_per_image" else _CRITERION[crit][0]
        apart = None
        if runner is not None and crit != "gain_per_image":
            apart = _apart(comparisons, crit, rec.architecture, runner.architecture)
        out.append(
            Reason(
                criterion=crit,
                value=getattr(rec, field),
                runner_up_value=None if runner is None else getattr(runner, field),
                distinguishable=apart,
            )
        )
    return out


def _numbers(row: ArchitectureSummary, skip: str | None = None) -> str:
    """The recommended architecture's other numbers, in words (`skip`: the one already said)."""
    parts = []
    if skip != "ods_unseen":
        parts.append(f"baseline ODS F on unseen sets {_fmt(row, 'ods_unseen')}")
    if skip != "gain":
        per = (
            "" if row.gain_per_image is None else f", {row.gain_per_image:+.4f} per labelled image"
        )
        parts.append(f"gain from M to {row.adapted_model or 'M{q}'} {_fmt(row, 'gain')}{per}")
    if skip != "stability":
        flat = "" if row.flat is None else (", flat" if row.flat else ", not flat")
        parts.append(f"|slope| of F against I_dist {_fmt(row, 'stability')}{flat}")
    if skip != "cost":
        parts.append(f"training {_fmt(row, 'cost')} s")
    return "; ".join(parts)


def _trade_off(
    rec: ArchitectureSummary, runner: ArchitectureSummary, comparisons: Sequence[Comparison]
) -> str:
    better = []
    for crit in CRITERIA:
        vr, vu = _value(rec, crit), _value(runner, crit)
        if vr is None or vu is None or not _better(crit, vu, vr):
            continue
        if not _apart(comparisons, crit, rec.architecture, runner.architecture):
            continue
        words = _CRITERION[crit][2]
        better.append(f"{words} {_fmt(runner, crit)} against {_fmt(rec, crit)}")
    if not better:
        return f"{runner.architecture} is better on no criterion beyond the noise"
    return f"{runner.architecture} is better on " + "; ".join(better)


def decide(
    rows: Sequence[ArchitectureSummary],
    comparisons: Sequence[Comparison],
    choose_by: Sequence[str] = CRITERIA,
) -> Recommendation:
    """The one architecture to use (rule in the module docstring), or why none is named."""
    learning = [r for r in rows if not r.not_learning and r.baseline_ods_unseen is not None]
    dead = [r.architecture for r in rows if r.not_learning]
    if not learning:
        why = (
            f"No recommendation: no architecture beats the trivial baselines ({', '.join(dead)} "
            "at or below the F of marking every pixel or none)"
            if dead
            else "No recommendation: no architecture was scored on a set with positive pixels"
        )
        return Recommendation(
            architecture=None,
            decided_by=None,
            runner_up=None,
            reason=why + ".",
            reasons=[],
            trade_off=None,
        )
    if len(learning) == 1:
        rec = learning[0]
        decided = "only architecture" if len(rows) == 1 else "only learning architecture"
        why = (
            f"Recommended {rec.architecture}, the only architecture tried: {_numbers(rec)}"
            if len(rows) == 1
            else f"Recommended {rec.architecture}, the only architecture that beats the trivial "
            f"baselines ({', '.join(dead)} {'does' if len(dead) == 1 else 'do'} not): "
            f"{_numbers(rec)}"
        )
        return Recommendation(
            architecture=rec.architecture,
            decided_by=decided,
            runner_up=None,
            reason=why + ".",
            reasons=_reasons(rec, None, comparisons),
            trade_off=None,
        )
    candidates = list(learning)
    for crit in choose_by:
        best = _best(candidates, crit)
        if best is None:
            continue
        keep = [
            r
            for r in candidates
            if r is best
            or (
                _value(r, crit) is not None
                and not _apart(comparisons, crit, r.architecture, best.architecture)
            )
        ]
        dropped = [r for r in candidates if r not in keep]
        if len(keep) == 1:
            runner = _best(dropped, crit) or dropped[0]
            words = _CRITERION[crit][2]
            reason = (
                f"Recommended {best.architecture}: {_ADJ[crit]} {words} ({_fmt(best, crit)} "
                f"against {_fmt(runner, crit)} for {runner.architecture}, beyond the noise); "
                f"also {_numbers(best, crit)}"
            )
            return Recommendation(
                architecture=best.architecture,
                decided_by=crit,
                runner_up=runner.architecture,
                reason=reason + ".",
                reasons=_reasons(best, runner, comparisons),
                trade_off=_trade_off(best, runner, comparisons) + ".",
            )
        candidates = keep
    names = " and ".join(r.architecture for r in candidates)
    return Recommendation(
        architecture=None,
        decided_by=None,
        runner_up=None,
        reason=(
            f"No distinguishable choice: {names} are within the noise of each other on "
            f"{', '.join(choose_by)}; more seeds (adaptation.seeds) or more evaluated "
            "images narrow the noise."
        ),
        reasons=[],
        trade_off=None,
    )


def _statement(
    rows: Sequence[ArchitectureSummary], crit: str, comparisons: Sequence[Comparison]
) -> Statement:
    title = _TITLE[crit]
    pool = [r for r in rows if not r.not_learning] if crit == "stability" else list(rows)
    values = {r.architecture: _value(r, crit) for r in rows}
    best = _best(pool, crit)
    if best is None:
        return Statement(
            criterion=title, architectures=[], statement=f"{title}: not measured", values=values
        )
    tied = [
        r
        for r in pool
        if r is best
        or (
            _value(r, crit) is not None
            and not _apart(comparisons, crit, r.architecture, best.architecture)
        )
    ]
    names = [r.architecture for r in tied]
    values_text = ", ".join(f"{r.architecture} {_fmt(r, crit)}" for r in tied)
    what = _CRITERION[crit][2]
    if len(names) == 1:
        text = f"{title}: {names[0]} ({what} {_fmt(best, crit)})"
    else:
        text = f"{title}: {' and '.join(names)}, within the noise ({what} {values_text})"
    others = [f"{r.architecture} {_fmt(r, crit)}" for r in rows if r not in tied]
    if others:
        why = "beyond the noise or not learning" if crit == "stability" else "beyond the noise"
        text += f"; behind, {why}: {', '.join(others)}"
    return Statement(criterion=title, architectures=names, statement=text, values=values)


def summarise(
    blocks: Sequence[ArchitectureBlock],
    baselines: Sequence[TrivialBaseline] = (),
    draws: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    choose_by: Sequence[str] = CRITERIA,
) -> SelectionSummary:
    """The model choice: one row per architecture, every pairwise comparison with its noise,
    a statement per criterion and the recommendation (pure; rule in SUMMARY_RULE). `draws`:
    `worker.adapt.noise.bootstrap_draws` of the same blocks (none: no difference is beyond the
    noise but cost)."""
    rows = [summarise_architecture(b, baselines) for b in blocks]
    comparisons = compare(rows, draws or {})
    statements = [_statement(rows, crit, comparisons) for crit in CRITERIA]
    dead = [r for r in rows if r.not_learning]
    if dead:
        statements.append(
            Statement(
                criterion="not learning",
                architectures=[r.architecture for r in dead],
                statement="; ".join(
                    f"{r.architecture} is not learning: baseline ODS F "
                    f"{r.baseline_ods_unseen:.3f} on unseen sets, at most {LEARN_MARGIN} above "
                    f"{r.trivial_f_unseen:.3f}, the F of marking every pixel or none"
                    for r in dead
                ),
                values={r.architecture: r.baseline_ods_unseen for r in rows},
            )
        )
    return SelectionSummary(
        architectures=rows,
        statements=statements,
        rule=SUMMARY_RULE,
        choose_by=list(choose_by),
        comparisons=comparisons,
        recommended=decide(rows, comparisons, choose_by),
    )
