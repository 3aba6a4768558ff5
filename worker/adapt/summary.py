"""The model-selection summary across architectures (docs/method.md §5.5): pure functions,
numbers in, a typed `SelectionSummary` out.
"""

from __future__ import annotations

import numpy as np

from worker.adapt.block import (
    TENDENCY_TOL,
    ArchitectureBlock,
    ArchitectureSummary,
    SelectionSummary,
    Statement,
    TrainedModel,
)

STABLE_MIN_SHARE = 0.5  # "most stable" only among architectures with >= half the best ODS


def _mean(values: list[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _adapted_name(models: list[TrainedModel]) -> str | None:
    plain = [m for m in models if m.q > 0 and m.negatives == 0]
    return max(plain, key=lambda m: m.q).name if plain else None


def summarise_architecture(block: ArchitectureBlock) -> ArchitectureSummary:
    """One row of the summary from one architecture's results (pure)."""
    by = {(r.model, r.dataset): r for r in block.results}
    pos = sorted({r.dataset for r in block.results if r.model == "M" and r.mask_pixels > 0})
    neg = sorted({r.dataset for r in block.results if r.model == "M" and r.mask_pixels == 0})
    base = [by[("M", d)] for d in pos]
    adapted = _adapted_name(block.models)
    last = block.models[-1].name if len(block.models) > 1 else None
    b_ods = _mean([r.ods_f for r in base])
    a_ods = _mean([by[(adapted, d)].ods_f for d in pos if (adapted, d) in by]) if adapted else None
    p, r = _mean([x.precision for x in base]), _mean([x.recall for x in base])
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
        baseline_ods_unseen=b_ods,
        generalisation_slope=_mean([x.f_slope for x in base]),
        adapted_model=adapted,
        adapted_ods=a_ods,
        gain=None if a_ods is None or b_ods is None else a_ods - b_ods,
        precision=p,
        recall=r,
        tendency=tendency,
        noise_fp_rate=_mean([by[("M", d)].fp_rate for d in neg]),
        noise_fp_rate_adapted=(
            _mean([by[(last, d)].fp_rate for d in neg if (last, d) in by]) if last else None
        ),
        training_seconds=float(sum(m.training_seconds or 0.0 for m in block.models)),
        parameters=block.parameters,
    )


def _pick(
    rows: list[ArchitectureSummary],
    criterion: str,
    key: str,
    *,
    higher: bool,
    what: str,
    fmt: str = ".3f",
    eligible: set[str] | None = None,
    missing: str = "not measured",
) -> Statement:
    values = {r.architecture: getattr(r, key) for r in rows}
    pool = {
        a: v for a, v in values.items() if v is not None and (eligible is None or a in eligible)
    }
    if not pool:
        return Statement(
            criterion=criterion,
            architectures=[],
            statement=f"{criterion}: {missing}",
            values=values,
        )
    best = max(pool.values()) if higher else min(pool.values())
    winners = [a for a, v in pool.items() if abs(v - best) <= 1e-9]
    others = [
        f"{a} {format(v, fmt)}" for a, v in values.items() if a not in winners and v is not None
    ]
    who = " and ".join(winners) + (" tie as" if len(winners) > 1 else " is")
    text = f"{who} {criterion}: {what} {format(best, fmt)}"
    if others:
        text += f" (others: {', '.join(others)})"
    excluded = sorted(a for a in values if eligible is not None and a not in eligible)
    if excluded:
        text += (
            f"; {', '.join(excluded)} not considered (baseline ODS below "
            f"{STABLE_MIN_SHARE:.0%} of the best)"
        )
    return Statement(criterion=criterion, architectures=winners, statement=text, values=values)


SUMMARY_RULE = (
    "Per architecture, over the scored secondaries with positive mask pixels (all unseen by "
    "M): baseline ODS = mean ODS F of M; generalisation slope = mean slope of M's per-image F "
    "against scaled I_dist; gain = mean ODS F of the largest M{q} minus baseline ODS; "
    f"precision / recall = means at M's ODS threshold (a tendency when they differ by "
    f">= {TENDENCY_TOL}); noise = mean false-positive pixel rate of M on sets without "
    "positive pixels; cost = training wall time of all its models. 'Most stable across unseen "
    "data' = the least negative generalisation slope among architectures whose baseline ODS "
    f"is at least {STABLE_MIN_SHARE:.0%} of the best (a model that fails everywhere is flat)."
)


def summarise(blocks: list[ArchitectureBlock]) -> SelectionSummary:
    """The model-selection summary: one row per architecture and one statement per criterion
    (pure; rule in SUMMARY_RULE)."""
    rows = [summarise_architecture(b) for b in blocks]
    best_ods = max((r.baseline_ods_unseen or 0.0 for r in rows), default=0.0)
    eligible = {
        r.architecture
        for r in rows
        if r.baseline_ods_unseen is not None
        and r.baseline_ods_unseen >= STABLE_MIN_SHARE * best_ods
    }
    adapted = {r.adapted_model for r in rows if r.adapted_model}
    q_label = adapted.pop() if len(adapted) == 1 else "M{q}"
    labels = q_label[1:] if q_label.startswith("M") and q_label[1:].isdigit() else "the largest q"
    statements = [
        _pick(
            rows,
            "best on unseen data",
            "baseline_ods_unseen",
            higher=True,
            what="ODS F of M on unseen sets",
        ),
        _pick(
            rows,
            "most stable across unseen data",
            "generalisation_slope",
            higher=True,
            what="slope of F against I_dist",
            fmt="+.3f",
            eligible=eligible,
        ),
        _pick(
            rows,
            f"best after {labels} labels",
            "adapted_ods",
            higher=True,
            what=f"ODS F of {q_label}",
            missing="not measured: no M{q} was trained",
        ),
        _pick(
            rows,
            "largest gain from labels",
            "gain",
            higher=True,
            what=f"ODS F gain from M to {q_label}",
            fmt="+.3f",
            missing="not measured: no M{q} was trained",
        ),
        _pick(
            rows,
            "highest precision",
            "precision",
            higher=True,
            what="precision of M at its ODS threshold",
        ),
        _pick(
            rows, "highest recall", "recall", higher=True, what="recall of M at its ODS threshold"
        ),
        _pick(
            rows,
            "least noise",
            "noise_fp_rate",
            higher=False,
            what="false-positive pixel rate of M on sets without positive pixels",
            fmt=".2e",
            missing="not measured: no scored set without positive pixels",
        ),
        _pick(
            rows,
            "cheapest to train",
            "training_seconds",
            higher=False,
            what="seconds to train all its models",
            fmt=".1f",
        ),
    ]
    return SelectionSummary(architectures=rows, statements=statements, rule=SUMMARY_RULE)
