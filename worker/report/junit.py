"""Gate results as JUnit XML, so CI systems show each gate as a test case.

One <testcase> per gate result, named like "o_dist_scaled[S1] <= 0.5"; a failed gate carries
a <failure> with its value and bound (or the reason it could not be computed).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from worker.report.model import atomic_write_bytes
from worker.results import GateResult, Report

SUITE_NAME = "dataset-distance gates"
# Characters XML 1.0 cannot carry, even escaped.
_INVALID_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value) -> str:
    return _INVALID_XML.sub("\ufffd", str(value))


def _number(x) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def gate_target(gate: GateResult) -> str:
    """'metric[dataset]' or 'metric[dataset @ model]'."""
    where = gate.dataset
    if gate.model:
        where = f"{where} @ {gate.model}"
    return f"{gate.metric}[{where}]"


def gate_bound(
    gate: GateResult, number=None, le: str = "<=", ge: str = ">=", missing: str = "(no bound)"
) -> str:
    """'<= 0.5', '>= 2' or 'in [a, b]' for a gate result; `number` formats the bounds."""
    number = number or _number
    lo, hi = gate.min, gate.max
    if lo is not None and hi is not None:
        return f"in [{number(lo)}, {number(hi)}]"
    if hi is not None:
        return f"{le} {number(hi)}"
    if lo is not None:
        return f"{ge} {number(lo)}"
    return missing


def gate_case_name(gate: GateResult) -> str:
    """e.g. 'o_dist_scaled[S1] <= 0.5', 'o_dist_ratio[S2] >= 1.5'."""
    return f"{gate_target(gate)} {gate_bound(gate)}"


def _failure_message(gate: GateResult) -> str:
    value = gate.value
    if value is None:
        return gate.reason or f"{gate_target(gate)} was not computed"
    lo, hi = gate.min, gate.max
    if hi is not None and value > hi:
        return f"{gate_target(gate)} = {_number(value)} > max {_number(hi)}"
    if lo is not None and value < lo:
        return f"{gate_target(gate)} = {_number(value)} < min {_number(lo)}"
    return gate.reason or f"{gate_target(gate)} = {_number(value)} failed {gate_bound(gate)}"


def gate_skipped(gate: GateResult) -> bool:
    """A gate that passed without a value (a change gate with nothing to compare yet, e.g.
    the first run of a store): JUnit lists it as skipped, with its reason."""
    return gate.passed and gate.value is None


def build_junit(report: Report) -> ET.Element:
    """The <testsuites> element for report.gates."""
    properties = {
        "schema_version": report.schema_version,
        "primary": report.primary.name,
        "model": report.model.name,
        "passed": report.passed,
    }
    return build_gate_suite(report.gates, properties, report.run.duration_s, report.run.started)


def build_gate_suite(
    gates: list[GateResult],
    properties: dict | None = None,
    duration_s: float = 0.0,
    started: str | None = None,
) -> ET.Element:
    """<testsuites> with one <testcase> per gate result (a report's, or compare's)."""
    failures = sum(1 for g in gates if not g.passed)
    skipped = sum(1 for g in gates if gate_skipped(g))
    root = ET.Element(
        "testsuites",
        {"name": SUITE_NAME, "tests": str(len(gates)), "failures": str(failures), "errors": "0"},
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": SUITE_NAME,
            "tests": str(len(gates)),
            "failures": str(failures),
            "errors": "0",
            "skipped": str(skipped),
            "time": f"{float(duration_s):.3f}",
        },
    )
    if started:
        suite.set("timestamp", _text(started))
    props = ET.SubElement(suite, "properties")
    for name, value in (properties or {}).items():
        if value is not None:
            ET.SubElement(
                props,
                "property",
                {
                    "name": name,
                    "value": _text(_number(value) if isinstance(value, bool) else value),
                },
            )
    for gate in gates:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "name": _text(gate_case_name(gate)),
                "classname": _text(f"gates.{gate.metric}"),
                "time": "0",
            },
        )
        out = ET.SubElement(case, "system-out")
        lines = [
            f"metric: {gate.metric}",
            f"dataset: {gate.dataset}",
            f"model: {gate.model or '-'}",
            f"value: {_number(gate.value)}",
            f"bound: {gate_bound(gate)}",
        ]
        if gate.reason:
            lines.append(f"reason: {gate.reason}")
        out.text = _text("\n".join(lines))
        if gate_skipped(gate):
            ET.SubElement(case, "skipped", {"message": _text(gate.reason or "no value")})
        if not gate.passed:
            failure = ET.SubElement(
                case, "failure", {"message": _text(_failure_message(gate)), "type": "GateFailed"}
            )
            failure.text = _text(
                f"value {_number(gate.value)}, bound {gate_bound(gate)}"
                + (f": {gate.reason}" if gate.reason else "")
            )
    return root


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def junit_bytes(report: Report) -> bytes:
    return _xml_bytes(build_junit(report))


def write_junit(report: Report, path: str | Path) -> Path:
    """Write the gates of `report` as JUnit XML to `path` (atomic; parent folders created)."""
    return atomic_write_bytes(path, junit_bytes(report))


def write_gates_junit(gates: list[GateResult], path: str | Path, properties: dict) -> Path:
    """Write gate results that belong to no single report (compare's thresholds)."""
    return atomic_write_bytes(path, _xml_bytes(build_gate_suite(gates, properties)))
