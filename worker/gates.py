"""Gates: bounds on report numbers that turn into the exit code (0 pass, 1 some gate failed)."""

from __future__ import annotations

from worker.job import GateConfig


def _secondary_metric(sec: dict, metric: str) -> float | None:
    """Read one gate metric off a report secondary entry; None when it was not computed."""
    stats = sec.get("statistics") or {}
    paths = {
        "o_dist": sec.get("o_dist"),
        "o_dist_scaled": sec.get("o_dist_scaled"),
        "o_dist_mean": sec.get("o_dist_mean"),
        "o_dist_ratio": stats.get("o_dist_ratio"),
        "o_dist_percentile": stats.get("o_dist_percentile"),
        "i_dist_scaled_p90": sec.get("i_dist_scaled_p90"),
        "i_dist_p90": (sec.get("i_dist") or {}).get("p90"),
        "diversity_mean": (sec.get("diversity") or {}).get("mean"),
        "coverage_by_primary_mean": (sec.get("coverage_by_primary") or {}).get("mean"),
        "coverage_by_primary_max": (sec.get("coverage_by_primary") or {}).get("max"),
        "mmd_p_value": (stats.get("mmd") or {}).get("p_value"),
        "fid": stats.get("fid"),
        "duplicates_with_primary": (
            len((sec.get("duplicates") or {}).get("with_primary", []))
            if sec.get("duplicates") is not None
            else None
        ),
    }
    return paths.get(metric)


def _adaptation_metric(report: dict, dataset: str, metric: str, model: str | None) -> float | None:
    """f_slope / ods_f of one adaptation result; model defaults to the baseline 'M'."""
    results = (report.get("adaptation") or {}).get("results", [])
    wanted = model or "M"
    key = {"f_slope": "f_slope", "ods_f": "ods_f"}[metric]
    for r in results:
        if r["dataset"] == dataset and r["model"] == wanted:
            return r.get(key)
    return None


def _skipped_fraction(report: dict, dataset: str) -> float | None:
    counts = {report["primary"]["name"]: report["primary"]["count"]}
    counts.update({s["name"]: s["count"] for s in report["secondaries"]})
    if dataset not in counts:
        return None
    skipped = sum(1 for s in report.get("skipped", []) if s["dataset"] == dataset)
    total = counts[dataset] + skipped
    return skipped / total if total else 0.0


def _value(report: dict, gate: GateConfig, dataset: str) -> float | None:
    if gate.metric == "skipped_fraction":
        return _skipped_fraction(report, dataset)
    if gate.metric in ("f_slope", "ods_f"):
        return _adaptation_metric(report, dataset, gate.metric, gate.model)
    if gate.metric == "diversity_mean" and dataset == report["primary"]["name"]:
        return (report["primary"].get("diversity") or {}).get("mean")
    secondaries = report["secondaries"]
    if gate.model is not None:
        for entry in report.get("models", []):
            if gate.model in (entry["model"]["name"], entry.get("label")):
                secondaries = entry.get("secondaries", secondaries)
    for sec in secondaries:
        if sec["name"] == dataset:
            return _secondary_metric(sec, gate.metric)
    return None


def evaluate_gates(report: dict, gates: list[GateConfig]) -> list[dict]:
    """One result per (gate, dataset): {metric, dataset, model, value, max|min, passed, reason?}.

    A gate whose dataset is "*" applies to every secondary (and, for skipped_fraction and
    diversity_mean, to the primary too). A gate whose value was not computed fails with a
    reason, so a CI build never passes on a number that does not exist.
    """
    results = []
    secondary_names = [s["name"] for s in report["secondaries"]]
    for gate in gates:
        if gate.dataset != "*":
            targets = [gate.dataset]
        elif gate.metric in ("skipped_fraction", "diversity_mean"):
            targets = [report["primary"]["name"], *secondary_names]
        else:
            targets = secondary_names
        for dataset in targets:
            value = _value(report, gate, dataset)
            result: dict = {"metric": gate.metric, "dataset": dataset, "model": gate.model}
            result["value"] = value
            if gate.max is not None:
                result["max"] = gate.max
            if gate.min is not None:
                result["min"] = gate.min
            if value is None:
                result["passed"] = False
                result["reason"] = f"{gate.metric} was not computed for {dataset}"
            else:
                ok = (gate.max is None or value <= gate.max) and (
                    gate.min is None or value >= gate.min
                )
                result["passed"] = bool(ok)
            results.append(result)
    return results
