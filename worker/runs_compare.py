"""`python -m worker compare A B`: what changed between two runs' reports (method.md §6.3).

(Not worker/comparison.py, which compares datasets within one run: rankings, groups, matrix.)

A and B are report.json paths (or folders holding one), s3:// URIs, or run ids in a store
(`--store`; also `latest`, the run the store's `latest` names, and `previous`, the complete
run before it), read as typed Reports through worker.store. `compare_reports(a, b, band)` is
pure and gives a `Comparison` from the older report to the newer one (by `run.started`; when
A is the newer, `swapped` says so and the text output says it plainly): per secondary in
both, the deltas of o_dist_mean, count, I_dist p90 and the MMD p-value; the ranking by
o_dist_mean (closest first, as report.json's `ranking`) in each; secondaries and images added
and removed (images matched by content hash, else id: worker.history.image_diff); and why the
two measured different things (`not_comparable`: another extractor, image size, primary or
PCA dims), in which case every distance threshold fails with that reason.
`compare_gates` turns threshold options into typed gate results (worker.results.GateResult,
the same as report.json's `gates[]`), so worker/report/junit.py writes them unchanged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from pydantic import ConfigDict, Field

from worker.base import Model
from worker.comparison import rank_order
from worker.errors import JobError
from worker.history import DEFAULT_BAND, abs_rel, image_diff, in_band, incomparable, run_id_of
from worker.results import GateResult, Report


class Strict(Model):
    """Base of the comparison's models; a delta of two finite numbers may overflow to inf."""

    model_config = ConfigDict(allow_inf_nan=True)


class Delta(Strict):
    """One number in A and in B: abs = b - a, rel = (b - a) / |a| (null when a is 0/null)."""

    a: float | None = Field(description="value in the older report")
    b: float | None = Field(description="value in the newer report")
    abs: float | None = Field(description="b - a, in the value's unit")
    rel: float | None = Field(description="(b - a) / |a|, e.g. 0.1 = +10%")


class SecondaryDelta(Strict):
    name: str = Field(description="secondary dataset name (in both reports)")
    o_dist_mean: Delta = Field(description="size-free O_dist / |P|, distance units")
    count: Delta = Field(description="number of images")
    i_dist_p90: Delta = Field(description="90th percentile of I_dist, distance units")
    mmd_p_value: Delta = Field(description="MMD permutation p-value vs P, (0, 1]")
    rank_a: int | None = Field(description="rank by o_dist_mean in the older, 1 = closest to P")
    rank_b: int | None = Field(description="rank by o_dist_mean in the newer, 1 = closest to P")
    matched_by: str = Field(description="'sha256' (content hash) or 'id'")
    images_added: list[str] = Field(description="ids of the newer report's images not in the older")
    images_removed: list[str] = Field(description="ids of the older report's images gone now")
    new_images_far_fraction: float = Field(
        description="share of added images with scaled I_dist in the band, [0, 1]; 0 if none"
    )


class Comparison(Strict):
    a: str = Field(description="the older report: its run id, else the reference given")
    b: str = Field(description="the newer report: its run id, else the reference given")
    swapped: bool = Field(
        description="true when the first argument (A) was the newer report: a and b are then "
        "B and A as given, so every change reads from the older to the newer"
    )
    band: tuple[float, float] = Field(description="selection band of scaled I_dist, [lo, hi]")
    not_comparable: list[str] = Field(
        description="why the two measured different things (extractor, image size, primary, "
        "PCA dims); distance thresholds then fail with this reason"
    )
    secondaries: list[SecondaryDelta] = Field(description="secondaries in both, in b's order")
    secondaries_added: list[str] = Field(description="secondaries in b only")
    secondaries_removed: list[str] = Field(description="secondaries in a only")
    ranking_a: list[str] = Field(description="a's secondaries by o_dist_mean, closest first")
    ranking_b: list[str] = Field(description="b's secondaries by o_dist_mean, closest first")
    ranking_changed: bool = Field(description="true when the common secondaries' order differs")


def _delta(a: float | None, b: float | None) -> Delta:
    d, r = abs_rel(b, a)
    return Delta(a=a, b=b, abs=d, rel=r)


def ranking(report: Report) -> list[str]:
    """Secondary names by o_dist_mean, closest first (ties: report order; nulls last)."""
    return rank_order({s.name: s.o_dist_mean for s in report.secondaries})


def _started(report: Report) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(report.run.started.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def newer_first(a: Report, b: Report) -> bool:
    """True when report `a` started after report `b` (run.started; unknown: False)."""
    ta, tb = _started(a), _started(b)
    return ta is not None and tb is not None and ta > tb


def _mmd_p(sec) -> float | None:
    return sec.statistics.mmd.p_value if sec.statistics and sec.statistics.mmd else None


def compare_reports(
    a: Report,
    b: Report,
    band: tuple[float, float] = DEFAULT_BAND,
    *,
    label_a: str = "A",
    label_b: str = "B",
) -> Comparison:
    """Deltas from the older of the two reports to the newer (see the module docstring)."""
    swapped = newer_first(a, b)
    if swapped:
        a, b, label_a, label_b = b, a, label_b, label_a
    name_a, name_b = run_id_of(a) or label_a, run_id_of(b) or label_b
    sa = {s.name: s for s in a.secondaries}
    sb = {s.name: s for s in b.secondaries}
    rank_a, rank_b = ranking(a), ranking(b)
    rows = []
    for name, sec_b in sb.items():
        if name not in sa:
            continue
        sec_a = sa[name]
        added, removed, by = image_diff(sec_b, sec_a)
        added_set = set(added)
        far = [im for im in sec_b.images if im.id in added_set and in_band(im.i_dist_scaled, band)]
        rows.append(
            SecondaryDelta(
                name=name,
                o_dist_mean=_delta(sec_a.o_dist_mean, sec_b.o_dist_mean),
                count=_delta(float(sec_a.count), float(sec_b.count)),
                i_dist_p90=_delta(sec_a.i_dist.p90, sec_b.i_dist.p90),
                mmd_p_value=_delta(_mmd_p(sec_a), _mmd_p(sec_b)),
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
        a=name_a,
        b=name_b,
        swapped=swapped,
        band=(float(band[0]), float(band[1])),
        not_comparable=incomparable(b, a, f"the older report ({name_a})"),
        secondaries=rows,
        secondaries_added=[n for n in sb if n not in sa],
        secondaries_removed=[n for n in sa if n not in sb],
        ranking_a=rank_a,
        ranking_b=rank_b,
        ranking_changed=common != common_b,
    )


def _abs(x: float | None) -> float | None:
    return None if x is None else abs(x)


# metric -> (option dest, "max" | "min", value getter on a SecondaryDelta, distance-based)
THRESHOLDS = {
    "o_dist_mean_change": ("max_o_dist_mean_change", "max", lambda r: r.o_dist_mean.rel, True),
    "i_dist_p90_change": ("max_i_dist_p90_change", "max", lambda r: r.i_dist_p90.rel, True),
    # two-sided: losing images matters as much as gaining them
    "count_change": ("max_count_change", "max", lambda r: _abs(r.count.rel), False),
    "new_images_far_fraction": (
        "max_new_images_far_fraction",
        "max",
        lambda r: r.new_images_far_fraction,
        False,
    ),
    "mmd_p_value": ("min_mmd_p_value", "min", lambda r: r.mmd_p_value.b, False),
}


def _why_missing(metric: str, row: SecondaryDelta) -> str:
    if metric == "count_change":
        return f"{metric}: {row.name} had no images in the older report (a change from 0)"
    if metric == "mmd_p_value":
        return f"{metric}: the newer report has no MMD test for {row.name} (metrics.statistics off)"
    field = "o_dist_mean" if metric == "o_dist_mean_change" else "i_dist_p90"
    d = getattr(row, field)
    side = "older" if d.a is None else ("newer" if d.b is None else "older (it is 0)")
    return f"{metric}: {row.name} has no {field} in the {side} report"


def compare_gates(comparison: Comparison, thresholds: dict[str, float]) -> list[GateResult]:
    """Gate results {metric, dataset, value, max|min, passed, reason?} for every threshold
    given (metric -> bound, see THRESHOLDS) and every secondary in both reports. A value that
    cannot be computed fails with a reason, as report gates do; so does every distance
    threshold when the two reports are not comparable, and every threshold when the reports
    share no secondary (dataset '*')."""
    out = []
    for metric, bound in thresholds.items():
        _, side, getter, distance = THRESHOLDS[metric]
        if not comparison.secondaries:
            out.append(
                GateResult(
                    metric=metric,
                    dataset="*",
                    value=None,
                    passed=False,
                    reason=f"{metric}: no secondary is in both reports, nothing to check",
                    **{side: float(bound)},
                )
            )
        for row in comparison.secondaries:
            value = getter(row)
            reason = None if value is not None else _why_missing(metric, row)
            if distance and comparison.not_comparable:
                value = None
                reason = (
                    f"{metric}: {row.name} not compared, the reports measured different things "
                    f"({'; '.join(comparison.not_comparable)})"
                )
            out.append(
                GateResult(
                    metric=metric,
                    dataset=row.name,
                    value=value,
                    passed=value is not None
                    and bool(value <= bound if side == "max" else value >= bound),
                    reason=reason,
                    **{side: float(bound)},
                )
            )
    return out


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "a",
        metavar="A",
        help="one report: report.json path, s3:// URI, run id, latest or previous (the older "
        "of A and B is the reference, whichever order they are given in)",
    )
    p.add_argument("b", metavar="B", help="the other report (as A)")
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
    for metric, (dest, side, _, _) in THRESHOLDS.items():
        flag = "--" + dest.replace("_", "-")
        what = {
            "count_change": "relative change either way, |new - old| / old",
            "mmd_p_value": "the newer report's MMD p-value against P, not against the older run",
        }.get(metric, "relative change" if metric.endswith("_change") else "value")
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
    lines = [f"compare {c.a} -> {c.b} (older -> newer)"]
    if c.swapped:
        lines.append(
            f"note: A ({c.b}) is newer than B ({c.a}); every change below reads from the older "
            "to the newer, whatever the order given"
        )
    for why in c.not_comparable:
        lines.append(f"not comparable: {why}; distance changes are not meaningful")
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
        "ranking by o_dist_mean (closest first): "
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
    for dest, _, _, _ in THRESHOLDS.values():
        v = getattr(args, dest)
        if v is not None and v != v:
            raise JobError(f"--{dest.replace('_', '-')}: not a number")
    from worker.store import load_report

    if args.junit:
        from worker.preflight import check_junit_path

        check_junit_path(args.junit, [("report A", args.a), ("report B", args.b)], args.store)
    a = load_report(args.a, store=args.store, source="A")
    b = load_report(args.b, store=args.store, source="B")
    comparison = compare_reports(a, b, (lo, hi), label_a=args.a, label_b=args.b)
    thresholds = {
        m: getattr(args, dest)
        for m, (dest, _, _, _) in THRESHOLDS.items()
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
