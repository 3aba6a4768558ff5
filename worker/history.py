"""History across runs (docs/method.md §6): what changed since the previous run and a baseline.

Pure functions over typed reports (worker.results.Report); the earlier runs come from the one
reader of the run store (worker.store.earlier_runs / load_report), which skips a damaged
earlier report with a warning. They read only `secondaries[] {name, count, o_dist,
o_dist_mean, i_dist.p90, i_dist_scaled_p90, images[] {id, sha256?, i_dist, i_dist_scaled},
statistics.mmd.p_value, statistics.o_dist_ratio, estimate.estimated_f}`, `run {run_id,
finished}`, `primary.name`, `model` and `pca.dims`.

An image is *new* when its content hash (`images[].sha256`) was not in the previous run's
dataset of the same name; when either side has no hash (precomputed embeddings, or a report
written before hashes existed) its id decides instead.

Distances of two reports are comparable only when both used the same extractor (name,
checkpoint, pooling, image size), the same primary and the same PCA dims (`incomparable`).
When the reference run of the change gate (the baseline if set, else the previous run) is not
comparable, `o_dist_mean_change` is null, `history.not_comparable` says why, and a gate on it
fails with that reason (docs/method.md §6).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from worker.results import (
    Change,
    FarImage,
    History,
    HistoryPoint,
    NewImages,
    Report,
    SecondaryHistory,
    SecondaryResult,
)
from worker.results import ValueSummary as Summary

HISTORY_GATE_METRICS = (
    "o_dist_mean_change",
    "new_images_far_fraction",
    "change_energy_distance",
    "change_p_value",
    "change_novel_fraction",
)
#: change-test gate metric -> field of SecondaryHistory.change (method.md §12.7)
CHANGE_FIELDS = {
    "change_energy_distance": "energy_distance",
    "change_p_value": "p_value_adjusted",
    "change_novel_fraction": "novel_fraction",
}
DEFAULT_BAND = (0.6, 1.0)
FAR_LIST_MAX = 20


def run_id_of(report: Report) -> str | None:
    return report.run.run_id


def secondaries_by_name(report: Report) -> dict[str, SecondaryResult]:
    return {s.name: s for s in report.secondaries}


def abs_rel(cur: float | None, ref: float | None) -> tuple[float | None, float | None]:
    """(cur - ref, (cur - ref) / |ref|); None where undefined."""
    if cur is None or ref is None:
        return None, None
    d = cur - ref
    return d, (d / abs(ref) if ref != 0 else None)


def summarize(values: Iterable[float | None]) -> Summary:
    """Summary of I_dist values: count, mean, std (ddof=0), min, max, p50, p90 (numpy linear)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return Summary(count=0, mean=None, std=None, min=None, max=None, p50=None, p90=None)
    p50, p90 = np.percentile(x, [50, 90])
    return Summary(
        count=int(x.size),
        mean=float(x.mean()),
        std=float(x.std()),
        min=float(x.min()),
        max=float(x.max()),
        p50=float(p50),
        p90=float(p90),
    )


def series_point(report: Report, secondary: SecondaryResult) -> HistoryPoint:
    """One trend point from a report and one of its secondaries."""
    stats = secondary.statistics
    return HistoryPoint(
        run_id=run_id_of(report),
        finished=report.run.finished,
        count=secondary.count,
        o_dist=secondary.o_dist,
        o_dist_mean=secondary.o_dist_mean,
        i_dist_p90=secondary.i_dist.p90,
        i_dist_scaled_p90=secondary.i_dist_scaled_p90,
        mmd_p_value=stats.mmd.p_value if stats is not None and stats.mmd is not None else None,
        o_dist_ratio=stats.o_dist_ratio if stats is not None else None,
        estimated_f=secondary.estimate.estimated_f if secondary.estimate is not None else None,
    )


def change(current: HistoryPoint, reference: HistoryPoint, label: str) -> Change:
    """Absolute and relative change of o_dist_mean, count, I_dist p90; absolute of MMD p."""
    o_abs, o_rel = abs_rel(current.o_dist_mean, reference.o_dist_mean)
    c_cur = None if current.count is None else float(current.count)
    c_ref = None if reference.count is None else float(reference.count)
    c_abs, c_rel = abs_rel(c_cur, c_ref)
    p_abs, p_rel = abs_rel(current.i_dist_p90, reference.i_dist_p90)
    m_abs, _ = abs_rel(current.mmd_p_value, reference.mmd_p_value)
    return Change(
        reference=label,
        o_dist_mean_abs=o_abs,
        o_dist_mean_rel=o_rel,
        count_abs=None if c_abs is None else int(round(c_abs)),
        count_rel=c_rel,
        i_dist_p90_abs=p_abs,
        i_dist_p90_rel=p_rel,
        mmd_p_value_abs=m_abs,
    )


def image_diff(
    current: SecondaryResult, previous: SecondaryResult
) -> tuple[list[str], list[str], str]:
    """(ids new in `current`, ids of `previous` gone from it, 'sha256' | 'id').

    Both arguments are secondaries of the same name. Images match by content hash (`sha256`)
    when every image on both sides has one, else by id. Lists keep report order."""
    cur, prev = current.images, previous.images
    hashed = all(im.sha256 for im in cur) and all(im.sha256 for im in prev)
    by = "sha256" if hashed and (cur or prev) else "id"
    prev_keys = {getattr(im, by) for im in prev}
    cur_keys = {getattr(im, by) for im in cur}
    new = [im.id for im in cur if getattr(im, by) not in prev_keys]
    removed = [im.id for im in prev if getattr(im, by) not in cur_keys]
    return new, removed, by


def in_band(x: float | None, band: tuple[float, float]) -> bool:
    """lo <= x <= hi (both ends included, as the selection band); False for null."""
    return x is not None and band[0] <= x <= band[1]


def new_images(
    current: SecondaryResult,
    previous: SecondaryResult | None,
    band: tuple[float, float],
    previous_run: str | None = None,
) -> tuple[NewImages, list[str]]:
    """New images of one secondary since `previous` (its entry in the previous run; None when
    the previous run did not have it: then every image is new). Returns (model, new ids)."""
    if previous is None:
        new_ids = [im.id for im in current.images]
        removed: list[str] = []
        by = "id"
    else:
        new_ids, removed, by = image_diff(current, previous)
    new_set = set(new_ids)
    new_rows = [im for im in current.images if im.id in new_set]
    seen_rows = [im for im in current.images if im.id not in new_set]
    far_rows = [im for im in new_rows if in_band(im.i_dist_scaled, band)]
    far_rows.sort(key=lambda im: (-im.i_dist_scaled, im.id))
    model = NewImages(
        previous_run=previous_run,
        by=by,
        count=len(new_rows),
        removed=len(removed),
        seen=len(seen_rows),
        i_dist_new=summarize(im.i_dist for im in new_rows),
        i_dist_seen=summarize(im.i_dist for im in seen_rows),
        band=(float(band[0]), float(band[1])),
        far_count=len(far_rows),
        far_fraction=len(far_rows) / len(new_rows) if new_rows else 0.0,
        far=[
            FarImage(id=im.id, i_dist=im.i_dist, i_dist_scaled=im.i_dist_scaled)
            for im in far_rows[:FAR_LIST_MAX]
        ],
    )
    return model, new_ids


def incomparable(current: Report, other: Report, label: str) -> list[str]:
    """Why distances of `other` are not comparable with `current`: another extractor (name,
    checkpoint, pooling, image size), another primary, or other PCA dims. [] when comparable."""
    out = []
    for key in ("name", "checkpoint", "pooling", "image_size"):
        mine, theirs = getattr(current.model, key), getattr(other.model, key)
        if mine != theirs:
            out.append(f"{label} used model {key} {theirs!r}, this run {mine!r}")
            break
    if current.primary.name != other.primary.name:
        out.append(f"{label} has primary {other.primary.name!r}, this run {current.primary.name!r}")
    if current.pca.dims != other.pca.dims:
        out.append(f"{label} used PCA dims {other.pca.dims}, this run {current.pca.dims}")
    return out


def build_history(
    current: Report,
    previous: list[Report],
    baseline: Report | None = None,
    band: tuple[float, float] = DEFAULT_BAND,
    *,
    baseline_label: str | None = None,
    run_id: str | None = None,
    skipped: list[str] | None = None,
) -> History:
    """The history block for `current` given earlier reports (oldest first) and a baseline.

    - series: per secondary of `current`, a point for each earlier run that has it, then
      the current run;
    - vs_previous: change against previous[-1] (null when absent there);
    - vs_baseline: change against `baseline` (labelled by its run id, else `baseline_label`);
    - new_images: against previous[-1] (null when there is no earlier run; every image is
      new when previous[-1] lacks the secondary);
    - o_dist_mean_change: vs_baseline.o_dist_mean_rel if a baseline is given, else
      vs_previous.o_dist_mean_rel; null when that reference is not comparable (incomparable);
    - skipped: earlier runs the store reader could not read (their warnings).
    """
    lo, hi = float(band[0]), float(band[1])
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"band must satisfy 0 <= lo <= hi <= 1, got {band}")
    run_id = run_id or run_id_of(current)
    prev = previous[-1] if previous else None
    prev_id = run_id_of(prev) if prev is not None else None
    prev_label = f"previous run {prev_id or ''}".strip()
    not_comparable: list[str] = []
    prev_issues = incomparable(current, prev, prev_label) if prev is not None else []
    base_label = None
    base_issues: list[str] = []
    if baseline is not None:
        base_label = run_id_of(baseline) or baseline_label or "baseline"
        base_issues = incomparable(current, baseline, f"baseline {base_label}")
    not_comparable = base_issues if baseline is not None else prev_issues
    prev_secs = secondaries_by_name(prev) if prev is not None else {}
    base_secs = secondaries_by_name(baseline) if baseline is not None else {}
    earlier = [secondaries_by_name(r) for r in previous]
    out: list[SecondaryHistory] = []
    new_ids: dict[str, list[str]] = {}
    for sec in current.secondaries:
        name = sec.name
        series = [
            series_point(r, secs[name])
            for r, secs in zip(previous, earlier, strict=True)
            if name in secs
        ]
        now = series_point(current, sec)
        if now.run_id is None and run_id is not None:
            now = now.model_copy(update={"run_id": run_id})
        series.append(now)
        vs_prev = (
            change(now, series_point(prev, prev_secs[name]), prev_id or "previous run")
            if name in prev_secs
            else None
        )
        vs_base = (
            change(now, series_point(baseline, base_secs[name]), base_label)
            if name in base_secs
            else None
        )
        news = None
        if prev is not None:
            news, ids = new_images(sec, prev_secs.get(name), (lo, hi), prev_id)
            new_ids[name] = ids
        ref = vs_base if baseline is not None else vs_prev
        out.append(
            SecondaryHistory(
                name=name,
                status="first run" if prev is None else ("kept" if name in prev_secs else "added"),
                series=series,
                vs_previous=vs_prev,
                vs_baseline=vs_base,
                new_images=news,
                o_dist_mean_change=(
                    ref.o_dist_mean_rel if ref is not None and not not_comparable else None
                ),
            )
        )
    cur_names = {s.name for s in current.secondaries}
    return History(
        run_id=run_id,
        runs=[run_id_of(r) for r in previous] + [run_id],
        previous_run=prev_id,
        baseline=base_label,
        band=(lo, hi),
        secondaries=out,
        removed_secondaries=[n for n in prev_secs if n not in cur_names],
        new_ids=new_ids,
        warnings=[f"{w}: its distances are not comparable" for w in prev_issues + base_issues]
        + list(skipped or []),
        skipped_runs=list(skipped) if skipped else None,
        not_comparable="; ".join(not_comparable) if not_comparable else None,
    )


def gate_value(history: History, metric: str, dataset: str) -> float | None:
    """Value of a history gate metric for one secondary; None when it cannot be computed
    (see gate_reason). o_dist_mean_change: relative change of o_dist_mean against the
    baseline if one is set, else the previous run. new_images_far_fraction: share of the new
    images whose scaled I_dist lies in the selection band (0 when nothing is new)."""
    if metric not in HISTORY_GATE_METRICS:
        raise ValueError(f"not a history gate metric: {metric!r}")
    for sec in history.secondaries:
        if sec.name == dataset:
            if metric == "o_dist_mean_change":
                return sec.o_dist_mean_change
            if metric in CHANGE_FIELDS:
                return getattr(sec.change, CHANGE_FIELDS[metric]) if sec.change else None
            return sec.new_images.far_fraction if sec.new_images is not None else None
    return None


def first_run(history: History | None) -> bool:
    """True when the store held no readable earlier run and no baseline is set."""
    return history is None or (history.previous_run is None and history.baseline is None)


def skipped_note(history: History | None) -> str:
    """' (N earlier run(s) skipped as unreadable: ...)' when the store reader skipped damaged
    earlier runs (they change which run a change is measured against), else ''."""
    skipped = (history.skipped_runs or []) if history is not None else []
    if not skipped:
        return ""
    return f" ({len(skipped)} earlier run(s) skipped as unreadable: {'; '.join(skipped)})"


def gate_reason(history: History | None, metric: str, dataset: str) -> str | None:
    """Why a history gate has its value, or none, in words (the gate's `reason`): None when
    it has a value and no earlier run was skipped; with a value and skipped runs, which run
    it was measured against and what was skipped."""
    if history is not None and gate_value(history, metric, dataset) is not None:
        note = skipped_note(history)
        ref = history.baseline or history.previous_run
        return f"{metric}: measured against {ref}{note}" if note else None
    note = skipped_note(history)
    if first_run(history):
        return f"{metric}: first run in the store, no earlier run to compare {dataset} with{note}"
    sec = next((s for s in history.secondaries if s.name == dataset), None)
    if sec is None:
        return f"{metric}: {dataset} is not a secondary of this run"
    if metric == "o_dist_mean_change" and history.not_comparable:
        return (
            f"{metric}: {dataset} not compared, the reference run measured something else "
            f"({history.not_comparable}); set history.baseline to a comparable run, or accept "
            f"this one night's failure{note}"
        )
    ref = "baseline" if history.baseline else "previous run"
    if metric == "o_dist_mean_change" and sec.status == "added" and not history.baseline:
        return f"{metric}: {dataset} was added since the previous run, nothing to compare{note}"
    if metric == "o_dist_mean_change":
        return (
            f"{metric}: {dataset} has no o_dist_mean in the {ref} or in this run "
            f"(absent there, null, or 0){note}"
        )
    return f"{metric}: no earlier run to compare {dataset} with{note}"
