"""The run store's layout (moved out of worker.store): folder and key names, run ids, and
where `latest` points (local link or S3 pointer). See worker.store for the whole layout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import time
from pathlib import Path

from worker.sources import is_s3

RUNS = "runs"
LATEST = "latest"
POINTER = "latest.json"
REPORT = "report.json"
STANDARD_FLAT = ("figures", "report.pdf", "report.json")
STALE_AFTER_S = 3600.0
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


# ------------------------------------------------------------------------------ run ids


def new_run_id(started: float | None = None) -> str:
    """`YYYYMMDDTHHMMSSZ-xxxxxx`: UTC start time (seconds since the epoch; now if None) and 6
    random hex characters, so ids sort by start time and two runs never share one."""
    when = dt.datetime.fromtimestamp(time.time() if started is None else started, dt.timezone.utc)
    return f"{when:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def is_run_id(name: str) -> bool:
    return bool(RUN_ID_RE.match(name))


def run_id_time(run_id: str) -> float:
    """The start time (seconds since the epoch) encoded in a run id."""
    stamp = dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def _join(base: str, *parts: str) -> str:
    if is_s3(base):
        from worker.sources import s3

        return s3.join_uri(base, *parts)
    return str(Path(base).joinpath(*parts))


def _latest_target(store: Path) -> str | None:
    """The run id that <store>/latest names, or None (no link, or not one of ours)."""
    try:
        target = os.readlink(store / LATEST)
    except OSError:
        return None
    name = Path(target).name
    return name if is_run_id(name) else None


def _s3_run_keys(store_uri: str, storage) -> dict[str, set[str]]:
    """run id -> the keys (relative to runs/<id>/) stored under it."""
    from worker.sources import s3

    bucket, prefix = s3.parse_uri(_join(store_uri, RUNS))
    prefix = prefix.rstrip("/") + "/"
    out: dict[str, set[str]] = {}
    for key, _size in s3.iter_keys(_join(store_uri, RUNS), storage):
        rel = key[len(prefix) :]
        run_id, _, rest = rel.partition("/")
        if is_run_id(run_id) and rest:
            out.setdefault(run_id, set()).add(rest)
    return out


def _s3_pointer(store_uri: str, storage) -> dict | None:
    from worker.sources import s3

    uri = _join(store_uri, POINTER)
    try:
        data = s3.read_bytes(uri, storage)
    except s3.S3NotFoundError:
        return None
    try:
        pointer = json.loads(data)
    except ValueError:
        return None
    return pointer if isinstance(pointer, dict) and is_run_id(str(pointer.get("run_id"))) else None
