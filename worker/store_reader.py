"""Reading the run store (moved out of worker.store): the one door to earlier runs.

open_store, list_runs, latest_run, load_run, each_run, earlier_runs, load_report, read_report;
every report comes back as a typed Report, and one that cannot be read raises DamagedReport
(readers of earlier runs skip it with a warning).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import JobError
from worker.sources import is_s3

if TYPE_CHECKING:
    from worker.results import Report
from worker.store_layout import (
    LATEST,
    REPORT,
    RUNS,
    _join,
    _latest_target,
    _s3_pointer,
    _s3_run_keys,
    is_run_id,
)

# ------------------------------------------------------------------------------ reading
#
# The one door to earlier runs: a store (local folder or s3:// prefix) behind one small
# interface (run ids, latest, the bytes of a run's report.json), and one parser that turns
# those bytes into a typed Report or says exactly why it cannot (DamagedReport).


class DamagedReport(JobError):
    """A report.json that cannot be read as a Report: empty, truncated, not JSON, or a field
    of the wrong type. Readers of earlier runs skip it with this message as the warning."""


class _LocalStore:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = Path(uri)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise JobError(
                f"{self.uri} is a file, not a run store; give the folder that holds runs/ "
                "(output.dir of the job)"
            )

    def run_ids(self) -> list[str]:
        runs_dir = self.root / RUNS
        try:
            names = os.listdir(runs_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if is_run_id(n) and (runs_dir / n / REPORT).is_file())

    def latest(self) -> str | None:
        return _latest_target(self.root)

    def read(self, run_id: str) -> bytes:
        return _read_limited(self.root / RUNS / run_id / REPORT)


class _S3Store:
    def __init__(self, uri: str, storage) -> None:
        self.uri = uri
        self.storage = storage

    def check(self) -> None:
        pass

    def run_ids(self) -> list[str]:
        runs = _s3_run_keys(self.uri, self.storage)
        return sorted(r for r, keys in runs.items() if REPORT in keys)

    def latest(self) -> str | None:
        pointer = _s3_pointer(self.uri, self.storage)
        return None if pointer is None else str(pointer["run_id"])

    def read(self, run_id: str) -> bytes:
        from worker.sources import s3

        return s3.read_bytes(_join(self.uri, RUNS, run_id, REPORT), self.storage)


def open_store(store_uri: str, storage=None) -> _LocalStore | _S3Store:
    """The run store at `store_uri` (a folder or an s3:// prefix), for reading."""
    return _S3Store(store_uri, storage) if is_s3(store_uri) else _LocalStore(store_uri)


MAX_REPORT_BYTES = 1 << 30  # a report.json larger than this is not one the worker wrote


def _read_limited(path: Path) -> bytes:
    """A regular file's bytes (FileNotFoundError / OSError as raised; a device, FIFO or
    folder is refused, so a link to /dev/zero cannot eat memory)."""
    import stat

    with open(path, "rb", buffering=0) as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = f.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise OSError(errno.EFBIG, "larger than 1 GiB, not a worker report.json", str(path))
    return data


def list_runs(store_uri: str, storage=None) -> list[str]:
    """Ids of the complete runs in the store (runs/<id>/report.json exists), oldest first.
    An empty or missing store gives []."""
    return open_store(store_uri, storage).run_ids()


def latest_run(store_uri: str, storage=None) -> str | None:
    """The run id that `latest` (local link) or latest.json (S3) names, or None."""
    return open_store(store_uri, storage).latest()


def _loc_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def parse_report(data: bytes, source: str, run_id: str | None = None) -> Report:
    """report.json bytes as a typed Report; DamagedReport naming `source` and the first bad
    field when they are not one. `run_id` (the run folder's name) fills run.run_id when the
    report lacks it."""
    from pydantic import ValidationError

    from worker.results import Report

    if not data.strip():
        raise DamagedReport(f"{source}: empty file, not a report.json")
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedReport(f"{source}: not UTF-8 text, not a report.json") from None
    except RecursionError:
        raise DamagedReport(f"{source}: nested too deeply, not a report.json") from None
    except json.JSONDecodeError as err:
        raise DamagedReport(
            f"{source}: not valid JSON at line {err.lineno} column {err.colno} ({err.msg}; "
            "truncated?)"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("secondaries"), list):
        raise DamagedReport(
            f"{source}: not a report.json (no 'secondaries' list); give a report.json "
            "written by `python -m worker run`"
        )
    if run_id is not None and isinstance(raw.get("run"), dict):
        raw["run"].setdefault("run_id", run_id)
    try:
        return Report.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise DamagedReport(
            f"{source}: {_loc_text(first['loc'])}: {first['msg']}{more}; not a report.json "
            f"this worker (schema {raw.get('schema_version', '?')}) can read"
        ) from None
    except RecursionError:
        raise DamagedReport(f"{source}: nested too deeply, not a report.json") from None


def load_run(store_uri: str, run_id_or_latest: str = "latest", storage=None) -> Report:
    """One run of the store as a Report: a run id, "latest" (the run `latest` names) or
    "previous" (the complete run before it). JobError naming the store and the run when there
    is no such complete run; DamagedReport when its report.json cannot be read."""
    st = open_store(store_uri, storage)
    st.check()
    run_id = run_id_or_latest
    if run_id in ("latest", "previous"):
        latest = st.latest()
        if latest is None:
            raise JobError(
                f"{store_uri}: no published run (no {LATEST}); run a job with this output.dir"
            )
        if run_id == "previous":
            older = [r for r in st.run_ids() if r < latest]
            if not older:
                raise JobError(
                    f"{store_uri}: no complete run before the latest ({latest}); 'previous' "
                    "needs two runs"
                )
            latest = older[-1]
        run_id = latest
    elif not is_run_id(run_id):
        raise JobError(
            f"{run_id!r}: not a run id (YYYYMMDDTHHMMSSZ-xxxxxx) nor 'latest'/'previous'; "
            f"see the folders under {_join(store_uri, RUNS)}"
        )
    uri = _join(store_uri, RUNS, run_id, REPORT)
    try:
        data = st.read(run_id)
    except (FileNotFoundError, NotADirectoryError):  # also S3NotFoundError
        raise JobError(
            f"{uri}: no such complete run in the store; list the runs under "
            f"{_join(store_uri, RUNS)}"
        ) from None
    except OSError as err:
        reason = err.strerror or err
        raise DamagedReport(f"{uri}: cannot read the run's report ({reason})") from None
    return parse_report(data, f"run {run_id} ({uri})", run_id)


def read_report(location: str, storage=None, source: str | None = None) -> Report:
    """A report.json outside a store: a local file, a folder holding report.json, or an
    s3:// object or prefix. A report in a run folder gets run.run_id from the folder name."""
    source = source or location
    if is_s3(location):
        from worker.sources import s3

        uri = location if location.endswith(".json") else s3.join_uri(location, REPORT)
        folder = uri.split("/")[-2] if uri.count("/") > 3 else ""
        data = s3.read_bytes(uri, storage)
        return parse_report(data, source, folder if is_run_id(folder) else None)
    path = Path(location)
    if path.is_dir():
        path = path / REPORT
    try:
        data = _read_limited(path)
    except FileNotFoundError:
        raise JobError(f"{source}: {path} not found; give a report.json path") from None
    except IsADirectoryError:
        raise JobError(f"{source}: {path} is a folder without report.json") from None
    except OSError as err:
        raise JobError(f"{source}: cannot read {path} ({err.strerror or err})") from None
    folder = path.resolve().parent.name
    return parse_report(data, source, folder if is_run_id(folder) else None)


def load_report(ref: str, *, store: str | None = None, storage=None, source: str = "") -> Report:
    """A report from a reference: a report.json path or folder, an s3:// URI, or a run id
    (or 'latest' / 'previous') in `store`. JobError naming `source` when it cannot be read."""
    label = f"{source} ({ref})" if source else ref
    if not is_s3(ref) and (is_run_id(ref) or ref in ("latest", "previous")):
        if store is None:
            if Path(ref).exists():
                return read_report(ref, storage, source=label)
            raise JobError(f"{label}: a run id needs the store; give --store DIR or s3://PREFIX")
        try:
            return load_run(store, ref, storage)
        except JobError as err:
            raise type(err)(f"{label}: {err}") from None
    return read_report(ref, storage, source=label)


def _without_images(report: Report) -> Report:
    return report.model_copy(
        update={"secondaries": [s.model_copy(update={"images": []}) for s in report.secondaries]}
    )


def each_run(
    store_uri: str, *, before: str | None = None, storage=None, skipped: list[str]
) -> Iterator[Report]:
    """Every complete run of the store older than run `before` (all when None), oldest first,
    one typed Report at a time; a run whose report.json cannot be read is skipped, its
    reason appended to `skipped`."""
    for run_id in open_store(store_uri, storage).run_ids():
        if before is not None and run_id >= before:
            continue
        try:
            yield load_run(store_uri, run_id, storage)
        except JobError as err:
            skipped.append(f"earlier run {run_id} skipped: {err}")


def earlier_runs(
    store_uri: str, *, before: str | None, max_runs: int, storage=None
) -> tuple[list[Report], list[str]]:
    """Up to `max_runs` complete runs of the store older than run `before` (all when None),
    oldest first, as Reports; only the newest keeps its per-image lists (what new-image
    detection needs), so a long history holds one full report at a time. A run whose
    report.json cannot be read is skipped: its reason is in the returned warnings (the
    caller puts them in report.warnings, on stderr and in any gate reason they change)."""
    if max_runs <= 0:
        return [], []
    st = open_store(store_uri, storage)
    ids = [r for r in st.run_ids() if before is None or r < before]
    reports: list[Report] = []
    skipped: list[str] = []
    for run_id in reversed(ids):  # newest first: read until max_runs readable runs
        if len(reports) >= max_runs:
            break
        try:
            reports.append(load_run(store_uri, run_id, storage))
        except JobError as err:
            skipped.append(f"earlier run {run_id} skipped: {err}")
            continue
        if len(reports) > 1:
            reports[-1] = _without_images(reports[-1])
    return list(reversed(reports)), list(reversed(skipped))
