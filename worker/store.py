"""The run store at `output.dir`: every run in its own immutable folder, published atomically.

Local layout (`<dir>` is output.dir or --out):

    <dir>/runs/<run_id>/          report.json, report.pdf, figures/, ... of one complete run
    <dir>/runs/.<run_id>.partial/ a run being written (never read; removed if its writer died)
    <dir>/latest -> runs/<run_id> the newest published run (a symlink, replaced atomically)
    <dir>/report.json -> latest/report.json, report.pdf, figures, ...: fixed links (made once)

run_id = UTC start time `YYYYMMDDTHHMMSSZ` + `-` + 6 random hex characters: ids sort by start.

Publishing a run (local): copy the staging folder into `runs/.<run_id>.partial/` (every file and
folder fsynced), `os.rename` it to `runs/<run_id>/` (atomic), point a temporary symlink at it and
`os.replace` it onto `latest` (atomic), then make sure the flat paths are links through `latest`
(an older plain file or folder there, from the one-folder layout, is replaced; report.json
last). SIGINT/SIGTERM are held from the rename until the flat links are in place, so an
interrupt there lands after the run is published and says so. A failure before `latest` switched
removes the new run; a failure while linking the flat paths puts `latest` back. A process
killed with SIGKILL between the rename and the switch leaves a complete run that `latest` does
not name; a killed copy leaves a `.partial` folder that a later run removes (its writer pid is
gone on this host, or it is older than STALE_AFTER_S).

S3 layout (`<dir>` is s3://bucket/prefix): `runs/<run_id>/...` uploaded with report.json last
(a run without report.json is incomplete), then the pointer object `latest.json` {"run_id",
"report", "finished"} in one PUT, then the flat keys `<prefix>/report.json` etc. copied from
the run (report.json last; flat `figures/` keys that the run lacks are deleted). The pointer
always names one complete run; the flat keys are a compatibility copy and may briefly mix two
runs while they are copied (read latest.json, or the run it names, for a consistent view).

`output.keep: N` prunes the oldest complete runs after a successful publish, never the new run
nor the one `latest` names. list_runs / read_run give the history feature the complete runs.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import JobError
from worker.sources import is_s3

RUNS = "runs"
LATEST = "latest"
POINTER = "latest.json"
REPORT = "report.json"
STANDARD_FLAT = ("figures", "report.pdf", "report.json")
STALE_AFTER_S = 3600.0
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
PAUSE_ENV = "WORKER_TEST_PAUSE_AT"  # test hook: pause at a named point of publishing
PAUSE_FILE_ENV = "WORKER_TEST_PAUSE_FILE"  # written when paused (the test waits for it)
RELEASE_FILE_ENV = "WORKER_TEST_RELEASE_FILE"  # the pause ends when this file exists
PAUSE_POINTS = (
    "copied",  # local: .partial folder complete, before the rename
    "renamed",  # local: runs/<id>/ in place, before latest switches (signals held)
    "switched",  # local: latest names the new run, before the flat links (signals held)
    "uploaded",  # S3: runs/<id>/ complete with report.json, before latest.json
    "pointed",  # S3: latest.json names the new run, before the flat copy (signals held)
)


@dataclass(frozen=True)
class Published:
    """One run made visible by publish_run."""

    run_id: str
    store: str  # the store URI (output.dir / --out)
    run_uri: str  # <store>/runs/<run_id>
    pruned: list[str] = field(default_factory=list)  # run ids removed by output.keep

    @property
    def report_uri(self) -> str:
        return _join(self.run_uri, REPORT)


_LAST: list[Published] = []
_LOCK = threading.Lock()


def last_published() -> Published | None:
    """The run this process published most recently (None before any). The CLI reads it to
    tell an interrupt after publishing from one before."""
    with _LOCK:
        return _LAST[-1] if _LAST else None


def forget_published() -> None:
    """Clear last_published() (the CLI calls it before each run)."""
    with _LOCK:
        _LAST.clear()


def _record(pub: Published) -> None:
    with _LOCK:
        _LAST.append(pub)


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


# ------------------------------------------------------------------------------ test hook


def _pause(point: str) -> None:
    """When WORKER_TEST_PAUSE_AT names `point`: write WORKER_TEST_PAUSE_FILE and wait until
    WORKER_TEST_RELEASE_FILE exists (at most 120 s). Lets tests kill a run at a known point."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(f"{os.getpid()} {point}\n")
    release = os.environ.get(RELEASE_FILE_ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (release and Path(release).exists()):
        time.sleep(0.02)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (stay pending) until the block ends: the commit steps between
    them are short and must not be split by an interrupt. SIGKILL cannot be held."""
    wanted = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------------------ publishing


def publish_run(
    staging: str | Path,
    store_uri: str,
    storage=None,
    *,
    started: float | None = None,
    run_id: str | None = None,
    keep: int | None = None,
) -> Published:
    """Publish the finished outputs in `staging` as a new run of the store at `store_uri`.

    `run_id` (default: new_run_id(started)) names the run; `keep` prunes older runs after the
    publish. Returns the Published run (also recorded for last_published()). Raises JobError
    naming output.dir when the store cannot be written; what was visible before is then
    unchanged (latest, the flat paths and every complete run).
    """
    staging = Path(staging)
    if not (staging / REPORT).is_file():
        raise JobError(f"{staging}: no {REPORT} in the finished outputs; nothing to publish")
    if keep is not None and keep < 1:
        raise JobError(f"output.keep: {keep} must be at least 1 (or null to keep every run)")
    run_id = run_id or new_run_id(started)
    if not is_run_id(run_id):
        raise JobError(f"run id {run_id!r} is not of the form YYYYMMDDTHHMMSSZ-xxxxxx")
    if is_s3(store_uri):
        pub = _publish_s3(staging, store_uri, storage, run_id)
    else:
        pub = _publish_local(staging, Path(store_uri), run_id)
    if keep is not None:
        try:
            pruned = prune_runs(store_uri, keep, storage, protect=(run_id,))
        except (OSError, JobError) as err:  # the run is published; pruning waits for the next
            from worker.logs import LOGGER

            LOGGER.warning("output.keep: could not prune old runs of %s (%s)", store_uri, err)
            pruned = []
        pub = Published(pub.run_id, pub.store, pub.run_uri, pruned)
        _record(pub)
    return pub


def _store_error(store: object, err: OSError | JobError) -> JobError:
    if isinstance(err, JobError):
        return JobError(f"output.dir: cannot publish the run to {store}: {err}")
    reason = err.strerror or str(err)
    hint = (
        "free disk space or choose another folder with --out"
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else "make it a writable folder (nothing else may sit at runs/, latest or the report "
        "paths inside it), free disk space, or choose another folder with --out"
    )
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return JobError(f"output.dir: cannot publish the run to {store}: {reason}{where}; {hint}")


def _copy_file(src: Path, dst: Path) -> None:
    """Copy one file and fsync it (the copy function tests replace to simulate ENOSPC)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - some filesystems refuse to open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy staging into a new folder dst: files fsynced, then every folder, deepest first."""
    dst.mkdir()
    folders = [dst]
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        for name in dirnames:
            (dst / rel / name).mkdir()
            folders.append(dst / rel / name)
        for name in sorted(filenames):
            _copy_file(Path(dirpath) / name, dst / rel / name)
    for folder in reversed(folders):
        _fsync_dir(folder)


def _writer_file(runs: Path, run_id: str) -> Path:
    return runs / f".{run_id}.writer"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_dead(runs: Path, run_id: str, now: float, stale_after: float) -> bool:
    """A .partial folder's writer is gone: its recorded pid on this host no longer runs, or the
    folder (or its record) is older than stale_after seconds. Never true for a live writer
    on this host that started less than stale_after ago."""
    partial = runs / f".{run_id}.partial"
    try:
        age = now - partial.stat().st_mtime
    except OSError:
        age = 0.0
    if age > stale_after:
        return True
    try:
        host, pid = _writer_file(runs, run_id).read_text().split()
        return host == socket.gethostname() and not _pid_alive(int(pid))
    except (OSError, ValueError):
        return False  # no record (yet): only the age can tell


def clean_stale(store_uri: str, storage=None, *, stale_after: float = STALE_AFTER_S) -> list[str]:
    """Remove what dead runs left in the store: local `.partial` folders whose writer is gone
    (see _writer_dead), half-pruned `.deleting` folders; on S3, runs/<id>/ objects without
    report.json whose run id is older than stale_after. Returns the names removed."""
    now = time.time()
    if is_s3(store_uri):
        removed = []
        for run_id, keys in _s3_run_keys(store_uri, storage).items():
            if REPORT in keys:
                continue
            if now - run_id_time(run_id) > stale_after:
                from worker.outputs import delete_keys

                delete_keys([_join(store_uri, RUNS, run_id, k) for k in keys], storage)
                removed.append(run_id)
        return removed
    runs = Path(store_uri) / RUNS
    removed = []
    try:
        entries = sorted(os.listdir(runs))
    except OSError:
        return removed
    for name in entries:
        path = runs / name
        if name.startswith(".") and name.endswith(".partial"):
            run_id = name[1 : -len(".partial")]
            if path.is_dir() and _writer_dead(runs, run_id, now, stale_after):
                shutil.rmtree(path, ignore_errors=True)
                _writer_file(runs, run_id).unlink(missing_ok=True)
                removed.append(name)
        elif name.startswith(".") and name.endswith(".deleting") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        elif name.startswith(".") and name.endswith(".writer"):
            run_id = name[1 : -len(".writer")]
            if not (runs / f".{run_id}.partial").exists():
                try:
                    if now - path.stat().st_mtime > stale_after:
                        path.unlink()
                        removed.append(name)
                except OSError:
                    pass
    return removed


def _remove_run_dir(path: Path) -> None:
    """Rename a run folder aside (one atomic step: it stops being a run), then delete it."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(3)}.deleting")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _latest_target(store: Path) -> str | None:
    """The run id that <store>/latest names, or None (no link, or not one of ours)."""
    try:
        target = os.readlink(store / LATEST)
    except OSError:
        return None
    name = Path(target).name
    return name if is_run_id(name) else None


def _replace_with_link(path: Path, target: str) -> None:
    """Make `path` a symlink to `target` in one atomic step (os.replace of a temporary link).
    A plain folder there (the one-folder layout's figures/) is renamed aside first, then
    deleted."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.link")
    os.symlink(target, tmp)
    try:
        if path.is_dir() and not path.is_symlink():
            aside = path.with_name(f".{path.name}.{secrets.token_hex(3)}.old")
            try:
                os.rename(path, aside)
            except FileNotFoundError:  # a concurrent run moved it first
                aside = None
            os.replace(tmp, path)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def _switch_latest(store: Path, run_id: str) -> None:
    _replace_with_link(store / LATEST, f"{RUNS}/{run_id}")
    _fsync_dir(store)


def _flat_names(run_dir: Path) -> list[str]:
    """Top-level entries of the run plus the standard ones, report.json last."""
    names = {n for n in os.listdir(run_dir) if not n.startswith(".")} | set(STANDARD_FLAT)
    return sorted(names, key=lambda n: (n == REPORT, n))


def _link_flat(store: Path, run_dir: Path) -> None:
    """<store>/<name> -> latest/<name> for each flat name: made once, kept afterwards; an
    older plain file or folder there is replaced (report.json last)."""
    for name in _flat_names(run_dir):
        path = store / name
        target = f"{LATEST}/{name}"
        try:
            if os.readlink(path) == target:
                continue
        except OSError:
            pass
        _replace_with_link(path, target)
    _fsync_dir(store)


def _publish_local(staging: Path, store: Path, run_id: str) -> Published:
    runs = store / RUNS
    made = [p for p in (store, runs) if not p.exists()]
    partial = runs / f".{run_id}.partial"
    final = runs / run_id
    writer = _writer_file(runs, run_id)
    committed = False
    try:
        try:
            runs.mkdir(parents=True, exist_ok=True)
            latest = store / LATEST
            if latest.is_dir() and not latest.is_symlink():
                raise IsADirectoryError(
                    errno.EISDIR, "a plain folder sits where the latest link goes", str(latest)
                )
            clean_stale(str(store))
            writer.write_text(f"{socket.gethostname()} {os.getpid()}\n")
            _copy_tree(staging, partial)
            _pause("copied")
            with _signals_held():
                previous = _latest_target(store)
                os.rename(partial, final)
                _fsync_dir(runs)
                writer.unlink(missing_ok=True)
                _pause("renamed")
                try:
                    _switch_latest(store, run_id)
                    _pause("switched")
                    try:
                        _link_flat(store, final)
                    except OSError:
                        if previous is not None:
                            _switch_latest(store, previous)
                        else:
                            (store / LATEST).unlink(missing_ok=True)
                        raise
                except OSError:
                    _remove_run_dir(final)
                    raise
                pub = Published(run_id, str(store), str(final))
                _record(pub)
                committed = True
        except OSError as err:
            raise _store_error(store, err) from None
    finally:
        if not committed:
            shutil.rmtree(partial, ignore_errors=True)
            try:
                writer.unlink(missing_ok=True)
            except OSError:
                pass
            for folder in reversed(made):
                try:
                    folder.rmdir()  # only if still empty: never another run's files
                except OSError:
                    pass
    return pub


# ------------------------------------------------------------------------------ S3


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


def _publish_s3(staging: Path, store_uri: str, storage, run_id: str) -> Published:
    from worker.outputs import delete_keys, publish_outputs
    from worker.sources import s3

    run_uri = _join(store_uri, RUNS, run_id)
    uploaded = False
    committed = False
    try:
        try:
            clean_stale(store_uri, storage)
            uploaded = True
            publish_outputs(staging, run_uri, storage)  # report.json last: then it is complete
            _pause("uploaded")
            with _signals_held():
                finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                pointer = {"run_id": run_id, "report": _join(run_uri, REPORT), "finished": finished}
                s3.write_bytes(_join(store_uri, POINTER), json.dumps(pointer).encode(), storage)
                pub = Published(run_id, store_uri, run_uri)
                _record(pub)
                committed = True
                _pause("pointed")
                # The flat keys consumers read today, report.json last; stale figures go.
                publish_outputs(staging, store_uri, storage)
                fresh = {p.relative_to(staging).as_posix() for p in staging.rglob("*")}
                flat_root = _join(store_uri, "figures")
                bucket, root_key = s3.parse_uri(store_uri)
                root_key = root_key.rstrip("/") + "/" if root_key else ""
                stale = [
                    f"s3://{bucket}/{key}"
                    for key, _ in s3.iter_keys(flat_root, storage)
                    if key[len(root_key) :] not in fresh
                ]
                if stale:
                    delete_keys(stale, storage)
        except JobError as err:
            raise _store_error(store_uri, err) from None
    finally:
        if uploaded and not committed:
            try:  # best effort: a later run removes what is left once it is stale
                keys = _s3_run_keys(store_uri, storage).get(run_id, set())
                ordered = sorted(keys, key=lambda k: k != REPORT)
                delete_keys([_join(run_uri, k) for k in ordered], storage)
            except (JobError, OSError):
                pass
    return pub


# ------------------------------------------------------------------------------ reading


def list_runs(store_uri: str, storage=None) -> list[str]:
    """Ids of the complete runs in the store (runs/<id>/report.json exists), oldest first.
    An empty or missing store gives []."""
    if is_s3(store_uri):
        runs = _s3_run_keys(store_uri, storage)
        return sorted(r for r, keys in runs.items() if REPORT in keys)
    runs_dir = Path(store_uri) / RUNS
    try:
        names = os.listdir(runs_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if is_run_id(n) and (runs_dir / n / REPORT).is_file())


def latest_run(store_uri: str, storage=None) -> str | None:
    """The run id that `latest` (local link) or latest.json (S3) names, or None."""
    if is_s3(store_uri):
        pointer = _s3_pointer(store_uri, storage)
        return None if pointer is None else str(pointer["run_id"])
    return _latest_target(Path(store_uri))


def read_run(store_uri: str, run_id_or_latest: str = "latest", storage=None) -> dict:
    """The report.json of one run of the store: a run id, or "latest". JobError (naming the
    store and the run) when there is no such complete run."""
    run_id = run_id_or_latest
    if run_id == "latest":
        run_id = latest_run(store_uri, storage)
        if run_id is None:
            raise JobError(
                f"{store_uri}: no published run (no {LATEST}); run a job with this output.dir"
            )
    elif not is_run_id(run_id):
        raise JobError(
            f"{run_id!r}: not a run id (YYYYMMDDTHHMMSSZ-xxxxxx) nor 'latest'; "
            f"see the folders under {_join(store_uri, RUNS)}"
        )
    uri = _join(store_uri, RUNS, run_id, REPORT)
    missing = f"{uri}: no such complete run in the store; list_runs gives the complete runs"
    try:
        if is_s3(store_uri):
            from worker.sources import s3

            data = s3.read_bytes(uri, storage)
        else:
            data = Path(uri).read_bytes()
    except FileNotFoundError:  # also S3NotFoundError
        raise JobError(missing) from None
    except NotADirectoryError:
        raise JobError(missing) from None
    except OSError as err:
        raise JobError(f"{uri}: cannot read the run's report ({err.strerror})") from None
    try:
        return json.loads(data)
    except ValueError as err:
        raise JobError(f"{uri}: not valid JSON ({err})") from None


# ------------------------------------------------------------------------------ retention


def prune_runs(
    store_uri: str, keep: int, storage=None, *, protect: tuple[str, ...] = ()
) -> list[str]:
    """Remove the oldest complete runs so that at most `keep` remain (plus any protected run
    and the one `latest` names, which are never removed). Returns the ids removed."""
    if keep < 1:
        raise JobError(f"output.keep: {keep} must be at least 1")
    runs = list_runs(store_uri, storage)
    candidates = runs[: max(0, len(runs) - keep)]
    removed = []
    for run_id in candidates:
        if run_id in protect or run_id == latest_run(store_uri, storage):  # re-read each time
            continue
        if is_s3(store_uri):
            from worker.outputs import delete_keys

            keys = _s3_run_keys(store_uri, storage).get(run_id, set())
            # report.json first: the run stops being complete before its files go.
            ordered = sorted(keys, key=lambda k: k != REPORT)
            delete_keys([_join(store_uri, RUNS, run_id, k) for k in ordered], storage)
        else:
            _remove_run_dir(Path(store_uri) / RUNS / run_id)
        removed.append(run_id)
    return removed
