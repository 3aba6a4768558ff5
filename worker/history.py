"""History across runs (docs/method.md §6): what changed since the previous run and a baseline.

Two parts:

- Pure functions on report.json dicts (no I/O): `image_diff`, `series_point`, `change`,
  `new_images`, `build_history`, `gate_value`. They read only `secondaries[] {name, count,
  o_dist, o_dist_mean, i_dist.p90, i_dist_scaled_p90, images[] {id, sha256?, i_dist,
  i_dist_scaled}, statistics.mmd.p_value, statistics.o_dist_ratio}`, `run {run_id?, finished}`,
  `primary.name`, `model` and `pca.dims`.
- A minimal reader of the run store layout (`<store>/runs/<run_id>/report.json`, local folder
  or s3:// prefix): `list_runs`, `read_run`, `load_report`, `collect_history`. worker/store.py
  (another branch) provides `list_runs` / `read_run` with the same signatures; the lead will
  keep one of the two.

An image is *new* when its content hash (`images[].sha256`) was not in the previous run's
dataset of the same name; when either side has no hash (precomputed embeddings, or a report
written before hashes existed) its id decides instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from worker.errors import JobError
from worker.results import (
    Change,
    FarImage,
    History,
    HistoryPoint,
    NewImages,
    SecondaryHistory,
)
from worker.results import ValueSummary as Summary
from worker.store import list_runs  # noqa: F401 (the store's listing; re-exported)

RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-z]{6}$")
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


# ----------------------------------------------------------------------------- models


# ----------------------------------------------------------------------------- pure helpers


def _num(x) -> float | None:
    """A finite float, or None (report numbers may be null)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def run_id_of(report: dict) -> str | None:
    return (report.get("run") or {}).get("run_id")


def secondaries_by_name(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report.get("secondaries") or []}


def _abs_rel(cur: float | None, ref: float | None) -> tuple[float | None, float | None]:
    """(cur - ref, (cur - ref) / |ref|); None where undefined."""
    if cur is None or ref is None:
        return None, None
    d = cur - ref
    return d, (d / abs(ref) if ref != 0 else None)


def summarize(values: Iterable[float]) -> Summary:
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


def series_point(report: dict, secondary: dict) -> HistoryPoint:
    """One trend point from a report and one of its secondaries[] entries."""
    stats = secondary.get("statistics") or {}
    count = secondary.get("count")
    return HistoryPoint(
        run_id=run_id_of(report),
        finished=(report.get("run") or {}).get("finished"),
        count=int(count) if count is not None else None,
        o_dist=_num(secondary.get("o_dist")),
        o_dist_mean=_num(secondary.get("o_dist_mean")),
        i_dist_p90=_num((secondary.get("i_dist") or {}).get("p90")),
        i_dist_scaled_p90=_num(secondary.get("i_dist_scaled_p90")),
        mmd_p_value=_num((stats.get("mmd") or {}).get("p_value")),
        o_dist_ratio=_num(stats.get("o_dist_ratio")),
        estimated_f=_num((secondary.get("estimate") or {}).get("estimated_f")),
    )


def change(current: HistoryPoint, reference: HistoryPoint, label: str) -> Change:
    """Absolute and relative change of o_dist_mean, count, I_dist p90; absolute of MMD p."""
    o_abs, o_rel = _abs_rel(current.o_dist_mean, reference.o_dist_mean)
    c_cur = None if current.count is None else float(current.count)
    c_ref = None if reference.count is None else float(reference.count)
    c_abs, c_rel = _abs_rel(c_cur, c_ref)
    p_abs, p_rel = _abs_rel(current.i_dist_p90, reference.i_dist_p90)
    m_abs, _ = _abs_rel(current.mmd_p_value, reference.mmd_p_value)
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


def image_diff(current: dict, previous: dict) -> tuple[list[str], list[str], str]:
    """(ids new in `current`, ids of `previous` gone from it, 'sha256' | 'id').

    Both arguments are secondaries[] entries of the same name. Images match by content hash
    (`sha256`) when every image on both sides has one, else by id. Lists keep report order."""
    cur_imgs = current.get("images") or []
    prev_imgs = previous.get("images") or []
    hashed = all(im.get("sha256") for im in cur_imgs) and all(im.get("sha256") for im in prev_imgs)
    key = "sha256" if hashed and (cur_imgs or prev_imgs) else "id"
    prev_keys = {im[key] for im in prev_imgs}
    cur_keys = {im[key] for im in cur_imgs}
    new = [im["id"] for im in cur_imgs if im[key] not in prev_keys]
    removed = [im["id"] for im in prev_imgs if im[key] not in cur_keys]
    return new, removed, key


def in_band(x: float | None, band: tuple[float, float]) -> bool:
    """lo <= x <= hi (both ends included, as the selection band); False for null."""
    return x is not None and band[0] <= x <= band[1]


def new_images(
    current: dict,
    previous: dict | None,
    band: tuple[float, float],
    previous_run: str | None = None,
) -> tuple[NewImages, list[str]]:
    """New images of one secondary since `previous` (its entry in the previous run; None when
    the previous run did not have it: then every image is new). Returns (model, new ids)."""
    if previous is None:
        new_ids = [im["id"] for im in current.get("images") or []]
        removed: list[str] = []
        by = "id"
    else:
        new_ids, removed, by = image_diff(current, previous)
    new_set = set(new_ids)
    imgs = current.get("images") or []
    new_rows = [im for im in imgs if im["id"] in new_set]
    seen_rows = [im for im in imgs if im["id"] not in new_set]
    far_rows = [im for im in new_rows if in_band(_num(im.get("i_dist_scaled")), band)]
    far_rows.sort(key=lambda im: (-_num(im["i_dist_scaled"]), im["id"]))
    model = NewImages(
        previous_run=previous_run,
        by=by,
        count=len(new_rows),
        removed=len(removed),
        seen=len(seen_rows),
        i_dist_new=summarize(_num(im.get("i_dist")) for im in new_rows),
        i_dist_seen=summarize(_num(im.get("i_dist")) for im in seen_rows),
        band=(float(band[0]), float(band[1])),
        far_count=len(far_rows),
        far_fraction=len(far_rows) / len(new_rows) if new_rows else 0.0,
        far=[
            FarImage(
                id=im["id"],
                i_dist=_num(im.get("i_dist")),
                i_dist_scaled=_num(im["i_dist_scaled"]),
            )
            for im in far_rows[:FAR_LIST_MAX]
        ],
    )
    return model, new_ids


def comparability_warnings(current: dict, other: dict, label: str) -> list[str]:
    """Why distances of `other` may not be comparable with `current` (model, primary, dims)."""
    out = []
    cm, om = current.get("model") or {}, other.get("model") or {}
    for key in ("name", "checkpoint", "pooling", "image_size"):
        if cm.get(key) != om.get(key):
            out.append(
                f"{label} used model {key} {om.get(key)!r}, this run {cm.get(key)!r}: "
                "its distances are not comparable"
            )
            break
    cp, op = (current.get("primary") or {}), (other.get("primary") or {})
    if cp.get("name") != op.get("name"):
        out.append(f"{label} has primary {op.get('name')!r}, this run {cp.get('name')!r}")
    if (current.get("pca") or {}).get("dims") != (other.get("pca") or {}).get("dims"):
        out.append(f"{label} used a different number of PCA dims")
    return out


def build_history(
    current: dict,
    previous: list[dict],
    baseline: dict | None = None,
    band: tuple[float, float] = DEFAULT_BAND,
    *,
    baseline_label: str | None = None,
    run_id: str | None = None,
) -> History:
    """The history block for `current` given earlier reports (oldest first) and a baseline.

    - series: per secondary of `current`, a point for each earlier run that has it, then
      the current run;
    - vs_previous: change against previous[-1] (null when absent there);
    - vs_baseline: change against `baseline` (labelled by its run id, else `baseline_label`);
    - new_images: against previous[-1] (null when there is no earlier run; every image is
      new when previous[-1] lacks the secondary);
    - o_dist_mean_change: vs_baseline.o_dist_mean_rel if a baseline is given, else
      vs_previous.o_dist_mean_rel.
    """
    lo, hi = float(band[0]), float(band[1])
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"band must satisfy 0 <= lo <= hi <= 1, got {band}")
    run_id = run_id or run_id_of(current)
    prev = previous[-1] if previous else None
    prev_id = run_id_of(prev) if prev is not None else None
    warnings: list[str] = []
    if prev is not None:
        warnings += comparability_warnings(current, prev, f"previous run {prev_id or ''}".strip())
    base_label = None
    if baseline is not None:
        base_label = run_id_of(baseline) or baseline_label or "baseline"
        warnings += comparability_warnings(current, baseline, f"baseline {base_label}")
    prev_secs = secondaries_by_name(prev) if prev is not None else {}
    base_secs = secondaries_by_name(baseline) if baseline is not None else {}
    out: list[SecondaryHistory] = []
    new_ids: dict[str, list[str]] = {}
    for sec in current.get("secondaries") or []:
        name = sec["name"]
        series = [
            series_point(r, secondaries_by_name(r)[name])
            for r in previous
            if name in secondaries_by_name(r)
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
                o_dist_mean_change=ref.o_dist_mean_rel if ref is not None else None,
            )
        )
    cur_names = {s["name"] for s in current.get("secondaries") or []}
    return History(
        run_id=run_id,
        runs=[run_id_of(r) for r in previous] + [run_id],
        previous_run=prev_id,
        baseline=base_label,
        band=(lo, hi),
        secondaries=out,
        removed_secondaries=[n for n in prev_secs if n not in cur_names],
        new_ids=new_ids,
        warnings=warnings,
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


def gate_reason(history: History, metric: str, dataset: str) -> str | None:
    """Why gate_value is None (for the gate's `reason`), or None when it has a value."""
    if gate_value(history, metric, dataset) is not None:
        return None
    sec = next((s for s in history.secondaries if s.name == dataset), None)
    if sec is None:
        return f"{dataset} is not a secondary of this run"
    if history.previous_run is None and not history.runs[:-1]:
        return f"{metric}: first run in the store, no earlier run to compare {dataset} with"
    if metric == "o_dist_mean_change":
        ref = "baseline" if history.baseline else "previous run"
        return f"{metric}: {dataset} has no o_dist_mean in the {ref} (or it is 0)"
    return f"{metric}: no earlier run to compare {dataset} with"


def apply_new_flags(report: dict, history: History) -> dict:
    """A copy of report with `images[].new` set from history.new_ids (True/False; left out
    for secondaries without an earlier run). For the lead; the typed Report may do it."""
    out = json.loads(json.dumps(report))
    for sec in out.get("secondaries") or []:
        ids = history.new_ids.get(sec["name"])
        if ids is None:
            continue
        new = set(ids)
        for im in sec.get("images") or []:
            im["new"] = im["id"] in new
    return out


# ----------------------------------------------------------------------------- reader


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def check_report(data: object, source: str) -> dict:
    """`data` if it looks like a report.json (a mapping with a secondaries list of named
    entries); JobError naming `source` otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("secondaries"), list):
        raise JobError(
            f"{source}: not a report.json (no 'secondaries' list); give a report.json "
            "written by `python -m worker run`"
        )
    for i, sec in enumerate(data["secondaries"]):
        if not isinstance(sec, dict) or not isinstance(sec.get("name"), str):
            raise JobError(f"{source}: secondaries[{i}] has no name; not a worker report.json")
        if not isinstance(sec.get("images", []), list):
            raise JobError(f"{source}: secondaries[{i}].images is not a list")
    return data


def _parse(blob: bytes, source: str) -> dict:
    try:
        data = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JobError(f"{source}: not valid JSON; give a report.json") from None
    return check_report(data, source)


def _with_run_id(report: dict, folder: str) -> dict:
    """Fill in run.run_id from the run folder's name (runs/<run_id>/report.json)."""
    run = report.setdefault("run", {})
    if isinstance(run, dict) and RUN_ID_RE.match(folder):
        run.setdefault("run_id", folder)
    return report


def read_report(location: str, storage=None, source: str | None = None) -> dict:
    """Read and check a report.json from a local path (a file, or a folder holding
    report.json) or an s3:// URI (an object, or a prefix holding report.json). When the file
    sits in a run folder (also through the `latest` link), run.run_id is filled in."""
    source = source or location
    if _is_s3(location):
        from worker.sources import s3

        uri = location if location.endswith(".json") else s3.join_uri(location, "report.json")
        report = _parse(s3.read_bytes(uri, storage), source)
        parts = uri.split("/")
        return _with_run_id(report, parts[-2] if len(parts) > 1 else "")
    path = Path(location)
    if path.is_dir():
        path = path / "report.json"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise JobError(f"{source}: {path} not found; give a report.json path") from None
    except IsADirectoryError:
        raise JobError(f"{source}: {path} is a folder without report.json") from None
    except OSError as err:
        raise JobError(f"{source}: cannot read {path} ({err.strerror or err})") from None
    return _with_run_id(_parse(blob, source), path.resolve().parent.name)


def read_run(store_uri: str, run_id: str, storage=None) -> dict:
    """The report.json of one run; `run.run_id` is filled in when the report lacks it."""
    if not RUN_ID_RE.match(run_id):
        raise JobError(f"{run_id!r} is not a run id (YYYYMMDDTHHMMSSZ-xxxxxx)")
    if _is_s3(store_uri):
        from worker.sources import s3

        loc = s3.join_uri(store_uri, "runs", run_id, "report.json")
    else:
        loc = str(Path(store_uri) / "runs" / run_id / "report.json")
    report = read_report(loc, storage, source=f"run {run_id} in {store_uri}")
    return _with_run_id(report, run_id)


def load_report(ref: str, *, store: str | None = None, storage=None, source: str = "") -> dict:
    """A report from a reference: a report.json path or folder, an s3:// URI, or a run id
    (or 'latest' / 'previous') in `store`. JobError naming `source` when it cannot be read."""
    label = f"{source} ({ref})" if source else ref
    if _is_s3(ref):
        return read_report(ref, storage, source=label)
    if RUN_ID_RE.match(ref) or ref in ("latest", "previous"):
        if store is None:
            if Path(ref).exists():
                return read_report(ref, storage, source=label)
            raise JobError(f"{label}: a run id needs the store; give --store DIR or s3://PREFIX")
        run_id = ref
        if ref in ("latest", "previous"):
            runs = list_runs(store, storage)
            need = 1 if ref == "latest" else 2
            if len(runs) < need:
                raise JobError(f"{label}: the store {store} has {len(runs)} complete run(s)")
            run_id = runs[-need]
        elif not _run_exists(store, run_id, storage):
            raise JobError(f"{label}: no complete run {run_id} in {store}; check the id")
        return read_run(store, run_id, storage)
    return read_report(ref, storage, source=label)


def _run_exists(store: str, run_id: str, storage=None) -> bool:
    if _is_s3(store):
        from worker.sources import s3

        return s3.exists(s3.join_uri(store, "runs", run_id, "report.json"), storage)
    return (Path(store) / "runs" / run_id / "report.json").is_file()


def without_images(report: dict) -> dict:
    """`report` with every secondary's per-image list left out (a shallow copy): what a trend
    point needs, so a long history holds one full report at a time, not max_runs of them."""
    secs = [
        {k: v for k, v in sec.items() if k != "images"} if isinstance(sec, dict) else sec
        for sec in report.get("secondaries") or []
    ]
    return {**report, "secondaries": secs}


def collect_history(
    store_uri: str,
    current: dict,
    *,
    max_runs: int = 30,
    baseline: str | None = None,
    band: tuple[float, float] = DEFAULT_BAND,
    storage=None,
    base_dir: str | Path = ".",
    run_id: str | None = None,
) -> History:
    """Read up to `max_runs` earlier complete runs from the store (this run excluded), and
    the baseline (`history.baseline`: a run id in the store, or a report.json path relative
    to `base_dir`), then build_history. An earlier run that cannot be read is skipped with a
    warning; an unreadable baseline is a JobError naming history.baseline."""
    run_id = run_id or run_id_of(current)
    ids = [r for r in list_runs(store_uri, storage) if r != run_id]
    if run_id is not None:
        ids = [r for r in ids if r < run_id]
    ids = ids[-max_runs:] if max_runs > 0 else []
    previous, skipped = [], []
    for rid in ids:
        try:
            report = read_run(store_uri, rid, storage)
        except JobError as err:
            skipped.append(f"earlier run {rid} skipped: {err}")
            continue
        if previous:  # only the newest earlier run's images are read (new_images)
            previous[-1] = without_images(previous[-1])
        previous.append(report)
    base = None
    label = None
    if baseline:
        if RUN_ID_RE.match(baseline):
            if not _run_exists(store_uri, baseline, storage):
                raise JobError(
                    f"history.baseline: no complete run {baseline} in {store_uri}; "
                    "give an existing run id or a report.json path"
                )
            base = read_run(store_uri, baseline, storage)
        else:
            loc = baseline
            if not _is_s3(loc) and not Path(loc).is_absolute():
                loc = str(Path(base_dir) / loc)
            base = read_report(loc, storage, source=f"history.baseline ({baseline})")
            label = baseline
    hist = build_history(current, previous, base, band, baseline_label=label, run_id=run_id)
    if skipped:
        hist = hist.model_copy(update={"warnings": hist.warnings + skipped})
    return hist
