"""Page 1 of report.pdf and the first table of report.html: one row per secondary in ranking
order, and what to do about it.

`decision(report)` reads the typed Report and returns the cells as text (plus a sort key for
report.html). It picks and formats; it computes no metric: every verdict, p-value, fraction
and estimate comes from its block (docs/method.md). A quantity this run has not got gives a
cell that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.report.fmt import fmt_num, fmt_p, fmt_pct, fmt_signed_pct
from worker.results import Report, SecondaryResult, SelectionResult

#: ranking metric -> (column title, unit words)
METRIC_TITLES = {
    "energy_distance": "energy distance",
    "o_dist_mean": "o_dist_mean",
    "mmd": "MMD²",
    "fid": "FID",
    "kid": "KID",
}
#: secondaries listed by name in a "what to do" sentence before "and N more"
NAMED_IN_SENTENCE = 6


@dataclass
class Cell:
    """One table cell: its text (and a smaller second line), a sort key for report.html, a
    tone for its colour, the longer explanation, and for a missing value the number of the
    footnote that says why."""

    text: str
    sort: float | str | None = None
    tone: str = ""  # "", "good", "warn", "bad"
    title: str = ""  # the longer explanation (a tooltip in report.html)
    sub: str = ""
    note: int | None = None


@dataclass(frozen=True)
class Row:
    rank: int
    name: str
    images: int
    verdict: Cell
    distance: Cell
    o_dist_mean: Cell
    novel: Cell
    estimate: Cell
    change: Cell
    gates: Cell

    def cells(self) -> list[Cell]:
        """The cells after rank and name, in column order."""
        return [
            self.verdict,
            self.distance,
            self.o_dist_mean,
            self.novel,
            self.estimate,
            self.change,
            self.gates,
        ]


COLUMNS = [
    "verdict",
    "distance",
    "o_dist_mean (paper)",
    "novel images",
    "estimated F",
    "since last run",
    "gates",
]


@dataclass(frozen=True)
class Decision:
    """Page 1: the rows, which of them page 1 shows, and the sentences under the table."""

    metric: str  # the ranking metric's name (report.ranking)
    metric_title: str
    rows: list[Row]  # every secondary, ranking order (closest first)
    shown: list[Row | None]  # page 1's rows; None marks the ranks left out between both ends
    hidden: int  # how many rows page 1 leaves out
    headline: str
    todo: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)  # why a value is missing, numbered


def _footnotes(rows: list[Row]) -> list[str]:
    """Number the reasons of the cells without a value (one number per distinct reason)."""
    reasons: list[str] = []
    for row in rows:
        for cell in row.cells():
            if cell.sort is None and cell.title:
                if cell.title not in reasons:
                    reasons.append(cell.title)
                cell.note = reasons.index(cell.title) + 1
    return reasons


def _ranked(report: Report) -> list[SecondaryResult]:
    by_name = {s.name: s for s in report.secondaries}
    if report.ranking is None:
        return list(report.secondaries)
    return [by_name[n] for n in report.ranking.order if n in by_name]


def ranking_metric(report: Report) -> str:
    """The metric the ranking is ordered by (report.ranking)."""
    r = report.ranking
    if r is None:
        return "o_dist_mean"
    return getattr(r, "metric", None) or r.by


def _metric_value(sec: SecondaryResult, metric: str) -> tuple[float | None, float | None]:
    """(value, adjusted p-value or raw where no adjustment) of the ranking metric for sec."""
    st = sec.statistics
    mmd_p = None
    if st is not None:
        mmd_p = getattr(st.mmd, "p_value_adjusted", None) or st.mmd.p_value
    energy = getattr(sec, "energy", None)
    if metric == "energy_distance":
        if energy is None:
            return None, None
        return energy.distance, energy.p_value_adjusted or energy.p_value
    if metric == "mmd":
        return (st.mmd.statistic if st else None), mmd_p
    if metric == "fid":
        return (st.fid if st else None), mmd_p
    if metric == "kid":
        return (st.kid.mean if st else None), mmd_p
    p = energy.p_value_adjusted if energy is not None else mmd_p
    return sec.o_dist_mean, p


def _verdict(sec: SecondaryResult) -> Cell:
    v = getattr(sec, "verdict", None)
    if v is None:
        return Cell("n/a", None, title="no verdict: the energy and novelty tests did not run")
    tone = {"same": "good", "shifted": "warn", "far": "bad"}.get(v.label, "")
    order = {"same": 0, "shifted": 1, "far": 2}.get(v.label, 3)
    return Cell(v.label, order, tone, v.reason)


def _distance(sec: SecondaryResult, metric: str) -> Cell:
    value, p = _metric_value(sec, metric)
    if value is None:
        return Cell("n/a", None, title=f"{metric} was not computed for this secondary")
    sub = fmt_p(p) if p is not None else ""
    return Cell(fmt_num(value, 3), value, title="p adjusted over the secondaries", sub=sub)


def _novel(sec: SecondaryResult) -> Cell:
    nov = getattr(sec, "novelty", None)
    if nov is None or nov.novel_fraction is None:
        return Cell("n/a", None, title="novelty was not computed (the primary set is too small)")
    p = nov.p_value_adjusted if nov.p_value_adjusted is not None else nov.p_value
    tone = "warn" if p is not None and p < 0.05 else ""
    return Cell(
        fmt_pct(nov.novel_fraction),
        nov.novel_fraction,
        tone,
        f"{nov.novel_count} of {sec.count} images beyond the primary's "
        f"{fmt_pct(nov.quantile)} quantile; binomial {fmt_p(p)}",
        sub=f"base {fmt_pct(nov.base_rate)}",
    )


def _estimate(report: Report, sec: SecondaryResult) -> Cell:
    est = sec.estimate
    if est is not None and est.estimated_f is not None:
        sub = f"[{est.low:.2f}, {est.high:.2f}]" if est.low is not None else ""
        if est.extrapolation:
            sub += " extrapolated"
            return Cell(
                f"{est.estimated_f:.2f}", est.estimated_f, "warn", "outside the labelled range", sub
            )
        return Cell(f"{est.estimated_f:.2f}", est.estimated_f, sub=sub)
    if est is not None and est.reason:
        return Cell("none", None, title=est.reason)
    block = report.estimate
    if block is not None:
        for lab in block.labelled:
            if lab.dataset == sec.name:
                return Cell(f"{lab.ods_f:.2f}", lab.ods_f, title="measured ODS F", sub="labelled")
        if not block.made and block.reason:
            return Cell("none", None, title=block.reason)
    return Cell("none", None, title="no labelled secondaries to estimate from")


def _change(report: Report, sec: SecondaryResult) -> Cell:
    hist = report.history
    if hist is None:
        return Cell("first run", None, title="no earlier run in this output store")
    for h in hist.secondaries:
        if h.name != sec.name:
            continue
        if h.vs_previous is None or h.vs_previous.o_dist_mean_rel is None:
            return Cell(h.status, None, title="not in the previous run")
        rel = h.vs_previous.o_dist_mean_rel
        return Cell(fmt_signed_pct(rel), rel, title="relative change of o_dist_mean")
    return Cell("new", None, title="not in the previous run")


def _gates(report: Report, sec: SecondaryResult) -> Cell:
    mine = [g for g in report.gates if g.dataset == sec.name]
    if not mine:
        return Cell("–", "")
    failed = [g for g in mine if not g.passed]
    if failed:
        return Cell(
            f"✗ {len(failed)} of {len(mine)}",
            -len(failed),
            "bad",
            "failed: " + ", ".join(g.metric for g in failed),
        )
    return Cell(f"✓ {len(mine)}", 0, "good", "passed: " + ", ".join(g.metric for g in mine))


def _rows(report: Report, metric: str) -> list[Row]:
    return [
        Row(
            rank=i + 1,
            name=s.name,
            images=s.count,
            verdict=_verdict(s),
            distance=_distance(s, metric),
            o_dist_mean=Cell(fmt_num(s.o_dist_mean, 4), s.o_dist_mean),
            novel=_novel(s),
            estimate=_estimate(report, s),
            change=_change(report, s),
            gates=_gates(report, s),
        )
        for i, s in enumerate(_ranked(report))
    ]


def _names(names: list[str]) -> str:
    if len(names) <= NAMED_IN_SENTENCE:
        return ", ".join(names)
    return ", ".join(names[:NAMED_IN_SENTENCE]) + f" and {len(names) - NAMED_IN_SENTENCE} more"


def _largest(sec: SecondaryResult) -> SelectionResult | None:
    """The largest selection of the job's first strategy for sec."""
    if not sec.selections:
        return None
    first = sec.selections[0].strategy
    mine = [s for s in sec.selections if s.strategy == first]
    return max(mine, key=lambda s: s.count)


def _against_random(sel: SelectionResult) -> str:
    beats = getattr(sel, "beats_random", None)
    if beats is None:
        return "not judged against random subsets"
    return "beats random" if beats else "does not beat random"


def _label_sentence(secs: list[SecondaryResult]) -> str:
    changed = [s for s in secs if getattr(s, "verdict", None) is None or s.verdict.label != "same"]
    same = [s.name for s in secs if s not in changed]
    picks = [(s, _largest(s)) for s in changed]
    picks = [(s, sel) for s, sel in picks if sel is not None and sel.count]
    if not picks:
        if changed:
            return "Label: no selection was made (selection.counts), so nothing is proposed."
        return "Label: nothing; every secondary is the same as the primary set."
    total = sum(sel.count for _, sel in picks)
    beats = [getattr(sel, "beats_random", None) for _, sel in picks]
    parts = [
        f"{sel.count} of {s.name} ({sel.strategy}, {_against_random(sel)})" for s, sel in picks
    ]
    if len(parts) > NAMED_IN_SENTENCE:
        known = [b for b in beats if b is not None]
        parts = parts[:NAMED_IN_SENTENCE] + [
            f"{len(picks) - NAMED_IN_SENTENCE} more sets"
            + (f"; {sum(known)} of {len(known)} selections beat random" if known else "")
        ]
    text = f"Label {total} image{'s' if total != 1 else ''}: " + "; ".join(parts) + "."
    if same:
        text += f" Nothing to label in {_names(same)} (same as the primary set)."
    return text


def _adaptation_sentences(report: Report) -> list[str]:
    ad = report.adaptation
    if ad is None:
        return [
            "Fine-tuning: not tested in this job (adaptation.enabled: false).",
            "Architecture: no choice made (no adaptation runs).",
        ]
    rows = ad.summary.architectures if ad.summary else []
    base = next((r for r in rows if r.architecture == ad.baseline_architecture), None)
    base = base or (rows[0] if rows else None)
    verdicts = {r.dataset: r.verdict for r in ad.results if r.model == "M" and r.verdict}
    wanted = [d for d, v in verdicts.items() if v.startswith("fine-tuning recommended")]
    if wanted:
        tune = (
            f"Fine-tuning: recommended for {_names(wanted)}. M's verdict on {wanted[0]}: "
            f"{verdicts[wanted[0]]}."
        )
    elif base is not None and base.gain is not None and base.adapted_model is not None:
        tune = (
            f"Fine-tuning: not needed: {base.adapted_model} (trained with labelled images of "
            f"the secondaries) scores ODS F {fmt_num(base.adapted_ods, 3)} against "
            f"{fmt_num(base.baseline_ods_unseen, 3)} for M ({base.gain:+.3f}) on the sets "
            "with masks."
        )
    else:
        tune = "Fine-tuning: no adapted model was scored on sets with masks."
    rec = ad.summary.recommended if ad.summary else None
    if rec is not None:
        arch = f"Architecture: {rec.reason}"
        if rec.trade_off:
            arch += f" Trade-off: {rec.trade_off}"
    elif len(rows) < 2:
        arch = (
            f"Architecture: only {ad.baseline_architecture} was trained "
            "(adaptation.models lists one), so there is no choice to make."
        )
    else:
        arch = "Architecture: the runs made no recommendation; see the adaptation section."
    return [tune, arch]


def decision(report: Report) -> Decision:
    """Page 1's table and sentences (see the module docstring)."""
    metric = ranking_metric(report)
    rows = _rows(report, metric)
    shown: list[Row | None] = list(rows)
    hidden = 0
    r = report.ranking
    if r is not None and len(rows) > 2 * r.top_k:
        k = r.top_k
        shown = rows[:k] + [None] + rows[-k:]
        hidden = len(rows) - 2 * k
    labels = [getattr(s, "verdict", None) for s in report.secondaries]
    counts = {
        lab: sum(1 for v in labels if v is not None and v.label == lab)
        for lab in ("same", "shifted", "far")
    }
    n = len(report.secondaries)
    if any(v is not None for v in labels):
        headline = (
            f"{n} secondar{'ies' if n != 1 else 'y'} against {report.primary.name}: "
            f"{counts['far']} far, {counts['shifted']} shifted, {counts['same']} the same."
        )
    else:
        headline = f"{n} secondar{'ies' if n != 1 else 'y'} against {report.primary.name}."
    todo = [_label_sentence(_ranked(report)[::-1]), *_adaptation_sentences(report)]
    title = METRIC_TITLES.get(metric, metric)
    notes = [
        f"Rows in ranking order by {title}, closest first; p-values adjusted over the "
        "secondaries where the report has them. Verdict: same / shifted / far from the "
        "energy and novelty tests (docs/method.md). o_dist_mean: the paper's mean distance "
        "from an image of the secondary to an image of the primary set. Novel images: the share "
        "beyond the primary set's own nearest-neighbour quantile, against the share expected of "
        "a set like the primary (base)."
    ]
    footnotes = _footnotes(rows)
    return Decision(metric, title, rows, shown, hidden, headline, todo, notes, footnotes)
