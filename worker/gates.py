"""Gates: bounds on report numbers that turn into the exit code (0 pass, 1 some gate failed).

`GATE_METRICS` is the one registry of gate metric names: the job model validates names
against it and `evaluate_gates` reads each value off the typed report through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from worker.results import GateResult, Report, SecondaryResult

if TYPE_CHECKING:
    from worker.job import GateConfig


def _with_primary(sec: SecondaryResult) -> float | None:
    return len(sec.duplicates.with_primary) if sec.duplicates is not None else None


#: metric -> value read off one secondary's typed result (None when not computed)
SECONDARY_METRICS: dict[str, Callable[[SecondaryResult], float | None]] = {
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
#: metric -> the metrics.* switches it needs (a gate on a switched-off metric is refused)
METRIC_SWITCHES: dict[str, tuple[str, ...]] = {
    "diversity_mean": ("diversity",),
    "coverage_by_primary_mean": ("coverage",),
    "coverage_by_primary_max": ("coverage",),
    "o_dist_ratio": ("statistics",),
    "o_dist_percentile": ("statistics",),
    "fid": ("statistics",),
    "mmd_p_value": ("statistics",),
    "duplicates_with_primary": ("duplicates",),
}
#: metrics of the adaptation block (per secondary, trained model (default M) and architecture)
ADAPTATION_METRICS = ("f_slope", "ods_f")
#: metrics of the history block: change against earlier runs of the same store
HISTORY_METRICS = (
    "o_dist_mean_change",
    "new_images_far_fraction",
    "change_energy_distance",
    "change_p_value",
    "change_novel_fraction",
)
#: the performance estimated without labels (secondaries without masks)
ESTIMATE_METRICS = ("estimated_f",)
#: metrics of the groups block: one value per pair of groups, dataset "A vs B"
GROUP_METRICS = ("group_separation",)
#: metrics that also apply to the primary when a gate names every dataset ("*")
PRIMARY_TOO = ("skipped_fraction", "diversity_mean")

GATE_METRICS: tuple[str, ...] = (
    *SECONDARY_METRICS,
    *ADAPTATION_METRICS,
    *HISTORY_METRICS,
    *ESTIMATE_METRICS,
    *GROUP_METRICS,
    "skipped_fraction",
)


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
        sec = report.secondary(dataset)
        return sec.estimate.estimated_f if sec is not None and sec.estimate else None
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
            return SECONDARY_METRICS[gate.metric](sec)
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


def _first_run(report: Report) -> bool:
    """True when the store held no earlier run of this job: a change gate then passes (with
    its reason) instead of failing the first night."""
    return report.history is None or report.history.previous_run is None


def evaluate_gates(report: Report, gates: list[GateConfig]) -> list[GateResult]:
    """One result per (gate, dataset).

    A gate whose dataset is "*" applies to every secondary (and, for skipped_fraction and
    diversity_mean, to the primary too). A gate whose value was not computed fails with a
    reason, so a CI build never passes on a number that does not exist; the one exception is
    a change gate on the first run of a store (no earlier run exists), which passes with
    that reason.
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
            passed = value is not None and (
                (gate.max is None or value <= gate.max) and (gate.min is None or value >= gate.min)
            )
            if value is None and gate.metric in HISTORY_METRICS and _first_run(report):
                passed, reason = True, f"{gate.metric}: first run in the store, nothing to compare"
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
