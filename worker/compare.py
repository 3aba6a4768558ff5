"""`python -m worker compare A B`: what changed between two reports (method.md §6.3).

A and B are report.json paths (or folders holding one), s3:// URIs, or run ids in a store
(`--store`; also `latest` and `previous`). `compare_reports(a, b, band)` is pure and gives a
`Comparison`: per secondary in both, the deltas of o_dist_mean, count, I_dist p90 and the MMD
p-value; the ranking by o_dist_mean (farthest first) in A and in B; secondaries and images
added and removed (images matched by content hash, else id: worker.history.image_diff).
`compare_gates` turns threshold options into typed gate results (worker.results.GateResult,
the same as report.json's `gates[]`), so worker/report/junit.py writes them unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import BaseModel, ConfigDict, Field

from worker.errors import JobError
from worker.history import (
    DEFAULT_BAND,
    _abs_rel,
    _num,
    image_diff,
    in_band,
    load_report,
    run_id_of,
    secondaries_by_name,
)
from worker.results import GateResult


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Delta(Strict):
    """One number in A and in B: abs = b - a, rel = (b - a) / |a| (null when a is 0/null)."""

    a: float | None = Field(description="value in report A")
    b: float | None = Field(description="value in report B")
    abs: float | None = Field(description="b - a, in the value's unit")
    rel: float | None = Field(description="(b - a) / |a|, e.g. 0.1 = +10%")


class SecondaryDelta(Strict):
    name: str = Field(description="secondary dataset name (in both A and B)")
    o_dist_mean: Delta = Field(description="size-free O_dist / |P|, distance units")
    count: Delta = Field(description="number of images")
    i_dist_p90: Delta = Field(description="90th percentile of I_dist, distance units")
    mmd_p_value: Delta = Field(description="MMD permutation p-value vs P, (0, 1]")
    rank_a: int | None = Field(description="rank by o_dist_mean in A, 1 = farthest from P")
    rank_b: int | None = Field(description="rank by o_dist_mean in B, 1 = farthest from P")
    matched_by: str = Field(description="'sha256' (content hash) or 'id'")
    images_added: list[str] = Field(description="ids of B's images not in A")
    images_removed: list[str] = Field(description="ids of A's images not in B")
    new_images_far_fraction: float = Field(
        description="share of added images with scaled I_dist in the band, [0, 1]; 0 if none"
    )


class Comparison(Strict):
    a: str = Field(description="report A: its run id, else the reference given")
    b: str = Field(description="report B: its run id, else the reference given")
    band: tuple[float, float] = Field(description="selection band of scaled I_dist, [lo, hi]")
    secondaries: list[SecondaryDelta] = Field(description="secondaries in both, in B's order")
    secondaries_added: list[str] = Field(description="secondaries in B only")
    secondaries_removed: list[str] = Field(description="secondaries in A only")
    ranking_a: list[str] = Field(description="A's secondaries by o_dist_mean, farthest first")
    ranking_b: list[str] = Field(description="B's secondaries by o_dist_mean, farthest first")
    ranking_changed: bool = Field(description="true when the common secondaries' order differs")


def _delta(a, b) -> Delta:
    a, b = _num(a), _num(b)
    d, r = _abs_rel(b, a)
    return Delta(a=a, b=b, abs=d, rel=r)


def ranking(report: dict) -> list[str]:
    """Secondary names by o_dist_mean, farthest first (ties by name); nulls last."""
    secs = report.get("secondaries") or []
    known = [s for s in secs if _num(s.get("o_dist_mean")) is not None]
    unknown = sorted(s["name"] for s in secs if _num(s.get("o_dist_mean")) is None)
    return [
        s["name"] for s in sorted(known, key=lambda s: (-_num(s["o_dist_mean"]), s["name"]))
    ] + unknown


def compare_reports(
    a: dict,
    b: dict,
    band: tuple[float, float] = DEFAULT_BAND,
    *,
    label_a: str = "A",
    label_b: str = "B",
) -> Comparison:
    """Deltas from report A to report B (see the module docstring)."""
    sa, sb = secondaries_by_name(a), secondaries_by_name(b)
    rank_a, rank_b = ranking(a), ranking(b)
    rows = []
    for name, sec_b in sb.items():
        if name not in sa:
            continue
        sec_a = sa[name]
        added, removed, by = image_diff(sec_b, sec_a)
        added_set = set(added)
        far = [
            im
            for im in sec_b.get("images") or []
            if im["id"] in added_set and in_band(_num(im.get("i_dist_scaled")), band)
        ]
        st_a = (sec_a.get("statistics") or {}).get("mmd") or {}
        st_b = (sec_b.get("statistics") or {}).get("mmd") or {}
        rows.append(
            SecondaryDelta(
                name=name,
                o_dist_mean=_delta(sec_a.get("o_dist_mean"), sec_b.get("o_dist_mean")),
                count=_delta(sec_a.get("count"), sec_b.get("count")),
                i_dist_p90=_delta(
                    (sec_a.get("i_dist") or {}).get("p90"), (sec_b.get("i_dist") or {}).get("p90")
                ),
                mmd_p_value=_delta(st_a.get("p_value"), st_b.get("p_value")),
                rank_a=rank_a.index(name) + 1,
                rank_b=rank_b.index(name) + 1,
                matched_by=by,
                images_added=added,
                images_removed=removed,
                new_images_far_fraction=len(far) / len(added) if added else 0.0,
            )
        )
    common = [n for n in rank_a if n in sb]
    common_b = [n for n in rank_b if n in sa]
    return Comparison(
        a=run_id_of(a) or label_a,
        b=run_id_of(b) or label_b,
        band=(float(band[0]), float(band[1])),
        secondaries=rows,
        secondaries_added=[n for n in sb if n not in sa],
        secondaries_removed=[n for n in sa if n not in sb],
        ranking_a=rank_a,
        ranking_b=rank_b,
        ranking_changed=common != common_b,
    )


# metric name -> (option dest, "max" | "min", value getter on a SecondaryDelta)
THRESHOLDS = {
    "o_dist_mean_change": ("max_o_dist_mean_change", "max", lambda r: r.o_dist_mean.rel),
    "i_dist_p90_change": ("max_i_dist_p90_change", "max", lambda r: r.i_dist_p90.rel),
    "count_change": ("max_count_change", "max", lambda r: r.count.rel),
    "new_images_far_fraction": (
        "max_new_images_far_fraction",
        "max",
        lambda r: r.new_images_far_fraction,
    ),
    "mmd_p_value": ("min_mmd_p_value", "min", lambda r: r.mmd_p_value.b),
}


def compare_gates(comparison: Comparison, thresholds: dict[str, float]) -> list[GateResult]:
    """Gate results {metric, dataset, model, value, max|min, passed, reason?} for every
    threshold given (metric -> bound, see THRESHOLDS) and every secondary in both reports.
    A value that cannot be computed fails with a reason, as report gates do."""
    out = []
    for metric, bound in thresholds.items():
        _, side, getter = THRESHOLDS[metric]
        for row in comparison.secondaries:
            value = getter(row)
            out.append(
                GateResult(
                    metric=metric,
                    dataset=row.name,
                    value=value,
                    passed=value is not None
                    and bool(value <= bound if side == "max" else value >= bound),
                    reason=None
                    if value is not None
                    else f"{metric} was not computed for {row.name} (a value is null or 0)",
                    **{side: float(bound)},
                )
            )
    return out


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "a", metavar="A", help="the earlier report: report.json path, s3:// URI or run id"
    )
    p.add_argument("b", metavar="B", help="the later report: report.json path, s3:// URI or run id")
    p.add_argument("--store", help="run store (output.dir: folder or s3:// prefix) for run ids")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--junit", help="write the threshold results as JUnit XML to this path")
    p.add_argument(
        "--band",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        default=list(DEFAULT_BAND),
        help="selection band of scaled I_dist for new_images_far_fraction (default 0.6 1.0)",
    )
    for metric, (dest, side, _) in THRESHOLDS.items():
        flag = "--" + dest.replace("_", "-")
        what = "relative change" if metric.endswith("_change") else "value"
        p.add_argument(
            flag,
            dest=dest,
            type=float,
            metavar="X",
            help=f"gate: fail (exit 1) when {metric} ({what}, per secondary) is "
            + ("above X" if side == "max" else "below X"),
        )


def _fmt(x, pct: bool = False, digits: int = 6) -> str:
    if x is None:
        return "n/a"
    if pct:
        return f"{x:+.1%}"
    return f"{x:.{digits}g}"


def format_text(c: Comparison, gates: list[GateResult]) -> str:
    lines = [f"compare {c.a} -> {c.b}"]
    head = f"{'secondary':<20} {'o_dist_mean A -> B':>28} {'change':>8} {'count':>14} "
    head += f"{'i_dist p90 change':>18} {'MMD p A -> B':>19} {'rank':>7}"
    lines.append(head)
    for r in c.secondaries:
        count = f"{_fmt(r.count.a)} -> {_fmt(r.count.b)}"
        lines.append(
            f"{r.name:<20} {_fmt(r.o_dist_mean.a) + ' -> ' + _fmt(r.o_dist_mean.b):>28} "
            f"{_fmt(r.o_dist_mean.rel, True):>8} {count:>14} "
            f"{_fmt(r.i_dist_p90.rel, True):>18} "
            f"{_fmt(r.mmd_p_value.a, digits=3) + ' -> ' + _fmt(r.mmd_p_value.b, digits=3):>19} "
            f"{str(r.rank_a) + ' -> ' + str(r.rank_b):>7}"
        )
    lines.append(
        "ranking by o_dist_mean (farthest first): "
        + ("changed: " if c.ranking_changed else "unchanged: ")
        + ", ".join(c.ranking_a)
        + " -> "
        + ", ".join(c.ranking_b)
    )
    if c.secondaries_added:
        lines.append("secondaries added: " + ", ".join(c.secondaries_added))
    if c.secondaries_removed:
        lines.append("secondaries removed: " + ", ".join(c.secondaries_removed))
    for r in c.secondaries:
        if r.images_added or r.images_removed:
            lines.append(
                f"{r.name}: {len(r.images_added)} image(s) added, {len(r.images_removed)} "
                f"removed (by {r.matched_by}); {r.new_images_far_fraction:.0%} of the added "
                f"in the band [{c.band[0]:g}, {c.band[1]:g}]"
            )
            for label, ids in (("+", r.images_added), ("-", r.images_removed)):
                for i in ids[:20]:
                    lines.append(f"  {label} {i}")
                if len(ids) > 20:
                    lines.append(f"  {label} ... {len(ids) - 20} more")
    from worker.report.junit import gate_bound, gate_target

    for g in gates:
        if not g.passed:
            why = f" ({g.reason})" if g.reason else ""
            lines.append(f"gate failed: {gate_target(g)} = {g.value} (want {gate_bound(g)}){why}")
    if gates:
        lines.append("gates: " + ("all passed" if all(g.passed for g in gates) else "FAILED"))
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    """The compare subcommand: 0 every threshold passed, 1 one exceeded; JobError -> 2."""
    lo, hi = args.band
    if not (0.0 <= lo <= hi <= 1.0):
        raise JobError(f"--band {lo:g} {hi:g}: give LO HI with 0 <= LO <= HI <= 1")
    for dest, _, _ in THRESHOLDS.values():
        v = getattr(args, dest)
        if v is not None and v != v:
            raise JobError(f"--{dest.replace('_', '-')}: not a number")
    storage = None
    a = load_report(args.a, store=args.store, storage=storage, source="A")
    b = load_report(args.b, store=args.store, storage=storage, source="B")
    comparison = compare_reports(a, b, (lo, hi), label_a=args.a, label_b=args.b)
    thresholds = {
        m: getattr(args, dest)
        for m, (dest, _, _) in THRESHOLDS.items()
        if getattr(args, dest) is not None
    }
    gates = compare_gates(comparison, thresholds)
    passed = all(g.passed for g in gates)
    if args.junit:
        from worker.report.junit import write_gates_junit

        try:
            write_gates_junit(gates, args.junit, {"compare": f"{args.a} -> {args.b}"})
        except OSError as err:
            raise JobError(f"--junit {args.junit}: cannot write ({err.strerror or err})") from None
    if args.json:
        payload = comparison.model_dump(mode="json")
        payload["gates"] = [g.model_dump(mode="json") for g in gates]
        payload["passed"] = passed
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        print(format_text(comparison, gates))
    sys.stdout.flush()
    return 0 if passed else 1
