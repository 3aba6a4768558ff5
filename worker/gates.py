"""Gates: bounds on report numbers that turn into the exit code (0 pass, 1 some gate failed).

`worker.gate_metrics.GATE_METRICS` is the one registry of gate metric names: the job model
validates names against it and `evaluate_gates` reads each value off the typed report here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from worker.gate_metrics import (
    ADAPTATION_METRICS,
    ESTIMATE_METRICS,
    GROUP_METRICS,
    HISTORY_METRICS,
    PRIMARY_TOO,
)
from worker.results import GateResult, Report, SecondaryResult

if TYPE_CHECKING:
    from worker.job import GateConfig


def _with_primary(sec: SecondaryResult) -> float | None:
    return len(sec.duplicates.with_primary) if sec.duplicates is not None else None


#: metric of gate_metrics.SECONDARY_METRICS -> its value read off one secondary's typed
#: result (None when not computed)
SECONDARY_VALUES: dict[str, Callable[[SecondaryResult], float | None]] = {
    "o_dist": lambda s: s.o_dist,
    "o_dist_scaled": lambda s: s.o_dist_scaled,
    "o_dist_mean": lambda s: s.o_dist_mean,
    "o_dist_ratio": lambda s: s.statistics.o_dist_ratio if s.statistics else None,
    "o_dist_percentile": lambda s: s.statistics.o_dist_percentile if s.statistics else None,
    "i_dist_scaled_p90": lambda s: s.i_dist_scaled_p90,
    "i_dist_p90": lambda s: s.i_dist.p90,
    "diversity_mean": lambda s: s.diversity.mean if s.diversity else None,
    "coverage_by_primary_mean": lambda s: (
        s.coverage_by_primary.mean if s.coverage_by_primary else None
    ),
    "coverage_by_primary_max": lambda s: (
        s.coverage_by_primary.max if s.coverage_by_primary else None
    ),
    "mmd_p_value": lambda s: s.statistics.mmd.p_value if s.statistics else None,
    "fid": lambda s: s.statistics.fid if s.statistics else None,
    "duplicates_with_primary": _with_primary,
    "energy_distance": lambda s: s.energy.distance if s.energy else None,
    "energy_p_value": lambda s: s.energy.p_value_adjusted if s.energy else None,
    "novel_fraction": lambda s: s.novelty.novel_fraction if s.novelty else None,
    "novelty_p_value": lambda s: s.novelty.p_value_adjusted if s.novelty else None,
}


def _skipped_fraction(report: Report, dataset: str) -> float | None:
    counts = {report.primary.name: report.primary.count}
    counts.update({s.name: s.count for s in report.secondaries})
    if dataset not in counts:
        return None
    skipped = sum(1 for s in report.skipped if s.dataset == dataset)
    total = counts[dataset] + skipped
    return skipped / total if total else 0.0


def _secondaries_of(report: Report, model: str | None) -> list[SecondaryResult] | None:
    """The secondaries measured by extractor `model` (label or name; None = the first)."""
    if model is None:
        return report.secondaries
    for i, entry in enumerate(report.models):
        if model in (entry.model.name, entry.label):
            return report.secondaries if i == 0 else entry.secondaries
    return None


def gate_value(report: Report, gate: GateConfig, dataset: str) -> float | None:
    """The number `gate` checks on `dataset`, or None when it was not computed."""
    if gate.metric == "skipped_fraction":
        return _skipped_fraction(report, dataset)
    if gate.metric in ADAPTATION_METRICS:
        if report.adaptation is None:
            return None
        from worker.adapt.block import adaptation_metric

        return adaptation_metric(
            report.adaptation, dataset, gate.metric, gate.model, gate.architecture
        )
    if gate.metric in ESTIMATE_METRICS:
        # the interval's lower end against a min (upper against a max); None when no
        # estimate (no skill, extrapolation): the gate fails with the estimate's reason
        sec = report.secondary(dataset)
        est = sec.estimate if sec is not None else None
        return est.gate_value(gate.min, gate.max) if est is not None else None
    if gate.metric in GROUP_METRICS:
        return _group_separation(report, dataset)
    if gate.metric in HISTORY_METRICS:
        from worker import history

        return history.gate_value(report.history, gate.metric, dataset) if report.history else None
    if gate.metric == "diversity_mean" and dataset == report.primary.name:
        return report.primary.diversity.mean if report.primary.diversity else None
    secondaries = _secondaries_of(report, gate.model)
    for sec in secondaries or []:
        if sec.name == dataset:
            return SECONDARY_VALUES[gate.metric](sec)
    return None


def group_pair_name(group_a: str, group_b: str) -> str:
    """How a gate names a pair of groups: 'A vs B'."""
    return f"{group_a} vs {group_b}"


def _group_separation(report: Report, pair: str) -> float | None:
    """The separation of the pair of groups named 'A vs B' or 'B vs A' (report.groups): the
    order-free `separation` (method.md §12.6)."""
    for p in report.groups.pairs if report.groups else []:
        if pair in (group_pair_name(p.group_a, p.group_b), group_pair_name(p.group_b, p.group_a)):
            return p.separation if p.separation is not None else p.auc
    return None


#: metrics that need at least two samples in each set (a covariance or a spread)
TWO_SAMPLE_METRICS = ("fid", "diversity_mean", "mmd_p_value", "energy_p_value")


def _secondary_reason(report: Report, gate: GateConfig, dataset: str) -> str | None:
    """Why a per-secondary value is missing, where the report can tell."""
    secondaries = _secondaries_of(report, gate.model)
    sec = next((s for s in secondaries or [] if s.name == dataset), None)
    if sec is None:
        which = f" measured by {gate.model}" if gate.model else ""
        return f"{gate.metric}: {dataset} is not a secondary{which} in this run"
    if gate.metric in TWO_SAMPLE_METRICS:
        small = [
            (n, c)
            for n, c in ((report.primary.name, report.primary.count), (dataset, sec.count))
            if c < 2
        ]
        if small:
            name, count = small[0]
            return f"{gate.metric}: needs at least 2 images in each set; {name} has {count}"
    return None


def _estimate_reason(report: Report, dataset: str) -> str | None:
    """Why secondary `dataset` has no estimate to gate on (no skill, extrapolation, labelled)."""
    sec = report.secondary(dataset)
    if sec is not None and sec.estimate is not None and sec.estimate.reason:
        return f"estimated_f: {sec.estimate.reason}"
    if report.estimate is not None and any(s.dataset == dataset for s in report.estimate.labelled):
        return f"estimated_f: {dataset} is labelled evidence; gate it on ods_f"
    return None


def evaluate_gates(report: Report, gates: list[GateConfig]) -> list[GateResult]:
    """One result per (gate, dataset).

    A gate whose dataset is "*" applies to every secondary (and, for skipped_fraction and
    diversity_mean, to the primary too). A gate whose value was not computed fails with a
    reason, so a CI build never passes on a number that does not exist; the one exception is
    a change gate on the first run of a store (no earlier run exists), which passes with
    that reason and no value (JUnit: skipped).
    """
    results = []
    secondary_names = [s.name for s in report.secondaries]
    for gate in gates:
        if gate.dataset != "*":
            targets = [gate.dataset]
        elif gate.metric in GROUP_METRICS:
            pairs = report.groups.pairs if report.groups else []
            targets = [group_pair_name(p.group_a, p.group_b) for p in pairs]
        elif gate.metric in PRIMARY_TOO:
            targets = [report.primary.name, *secondary_names]
        else:
            targets = secondary_names
        for dataset in targets:
            value = gate_value(report, gate, dataset)
            reason = f"{gate.metric} was not computed for {dataset}" if value is None else None
            if value is None and gate.metric in ESTIMATE_METRICS:
                reason = _estimate_reason(report, dataset) or reason
            elif value is None and gate.metric in SECONDARY_VALUES:
                reason = _secondary_reason(report, gate, dataset) or reason
            passed = value is not None and (
                (gate.max is None or value <= gate.max) and (gate.min is None or value >= gate.min)
            )
            if gate.metric in HISTORY_METRICS:
                from worker import history

                reason = history.gate_reason(report.history, gate.metric, dataset)
                if value is None and history.first_run(report.history):
                    passed = True  # nothing to compare yet: JUnit lists it as skipped
            results.append(
                GateResult(
                    metric=gate.metric,
                    dataset=dataset,
                    model=gate.model,
                    value=value,
                    max=gate.max,
                    min=gate.min,
                    passed=bool(passed),
                    reason=reason,
                )
            )
    return results
