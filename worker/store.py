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
nor the one `latest` names.

Reading (the one door to earlier runs): open_store, list_runs, latest_run, load_run, each_run,
earlier_runs, load_report, read_report; every report comes back as a typed Report, and one
that cannot be read raises DamagedReport (readers of earlier runs skip it with a warning).
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
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import JobError
from worker.interrupt import check as check_interrupt
from worker.sources import is_s3

if TYPE_CHECKING:
    from worker.results import Report

RUNS = "runs"
LATEST = "latest"
POINTER = "latest.json"
REPORT = "report.json"
STANDARD_FLAT = ("figures", "report.pdf", "report.json")
STALE_AFTER_S = 3600.0
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


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


# ------------------------------------------------------------------------------ signals


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


# ------------------------------------------------------------------------------ staging


STAGING_PREFIX = "worker-out-"


@contextmanager
def staging_dir(store_uri: str, run_id: str) -> Iterator[Path]:
    """Where a run writes its outputs before publish_run makes them visible.

    Local store: `<store>/runs/.<run_id>.partial/` with a `.<run_id>.writer` record (host,
    pid), so when this process dies a later run of the store removes it (clean_stale), and
    publishing renames it into place instead of copying. S3 store: a folder
    `worker-out-<run_id>.<pid>` under $TMPDIR; such folders of dead processes are removed
    at the start of every run. Left by an exception or a stop, the folder is removed, and
    the store folders this call created are removed again (nothing visible changes)."""
    if is_s3(store_uri):
        root = Path(tempfile.gettempdir())
        _clean_stale_tmp(root)
        path = root / f"{STAGING_PREFIX}{run_id}.{os.getpid()}"
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    store = Path(store_uri)
    runs = store / RUNS
    made = [p for p in (store, runs) if not p.exists()]
    path = runs / f".{run_id}.partial"
    writer = _writer_file(runs, run_id)
    try:
        try:
            runs.mkdir(parents=True, exist_ok=True)
            clean_stale(str(store))
            writer.write_text(f"{socket.gethostname()} {os.getpid()}\n")
            path.mkdir()
        except OSError as err:
            raise _store_error(store, err) from None
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # gone already when it was published
        try:
            writer.unlink(missing_ok=True)
        except OSError:
            pass
        for folder in reversed(made):
            try:
                folder.rmdir()  # only if still empty: never another run's files
            except OSError:
                pass


def _clean_stale_tmp(root: Path) -> None:
    """Remove $TMPDIR/worker-out-<run_id>.<pid> folders whose process is gone."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(STAGING_PREFIX):
            continue
        pid = name.rpartition(".")[2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(root / name, ignore_errors=True)


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


def _fsync_tree(root: Path) -> None:
    """fsync every file of a folder written in place, then every folder, deepest first."""
    folders = []
    for dirpath, _dirnames, filenames in os.walk(root):
        folders.append(Path(dirpath))
        for name in filenames:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
    for folder in reversed(folders):
        _fsync_dir(folder)


LOCK = ".lock"


@contextmanager
def _store_lock(runs: Path) -> Iterator[None]:
    """An exclusive lock on the store (flock on runs/.lock): held while a run is renamed into
    place and `latest` switched to it, and while old runs are pruned, so a concurrent run's
    pruning can never remove the run `latest` is about to name."""
    import fcntl

    fd = os.open(runs / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def check_latest(store: Path) -> None:
    """Refuse a store whose `latest` is not the link the store keeps (a user's plain file or
    folder there is never replaced)."""
    latest = store / LATEST
    if latest.exists() and not latest.is_symlink():
        what = "folder" if latest.is_dir() else "file"
        raise JobError(
            f"output.dir: {latest} is a plain {what}, not the link to the newest run that the "
            "store keeps there; move it away (nothing was changed) or choose another folder"
        )


def _keep_flat_layout(store: Path, flat: list[str]) -> None:
    """An older one-folder layout (report.json, report.pdf, figures/ ... as plain files at the
    top of the store, no runs yet) becomes a run of its own, runs/<id>/ with the id taken
    from its report.json's time, instead of being replaced by the links."""
    report = store / REPORT
    if not report.is_file() or report.is_symlink():
        return
    legacy = new_run_id(report.stat().st_mtime)
    partial = store / RUNS / f".{legacy}.partial"
    partial.mkdir()
    names = [n for n in flat if (store / n).exists() and not (store / n).is_symlink()]
    for name in sorted(names, key=lambda n: n == REPORT):  # report.json last: then complete
        os.rename(store / name, partial / name)
    os.rename(partial, store / RUNS / legacy)
    from worker.logs import LOGGER

    LOGGER.warning(
        "output.dir: the one-folder layout's %s in %s kept as run %s",
        ", ".join(names),
        store,
        legacy,
    )


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
            check_latest(store)
            if staging.resolve() == partial.resolve():  # staged in place (staging_dir)
                _fsync_tree(partial)
            else:
                clean_stale(str(store))
                writer.write_text(f"{socket.gethostname()} {os.getpid()}\n")
                _copy_tree(staging, partial)
            check_interrupt()  # the last safe point: a stop asked for now publishes nothing
            with _signals_held(), _store_lock(runs):
                _keep_flat_layout(store, _flat_names(partial))
                previous = _latest_target(store)
                os.rename(partial, final)
                _fsync_dir(runs)
                writer.unlink(missing_ok=True)
                try:
                    _switch_latest(store, run_id)
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
                if runs in made:  # this call made the store: its lock file goes with it
                    (runs / LOCK).unlink(missing_ok=True)
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
            check_interrupt()  # the last safe point: a stop asked for now publishes nothing
            with _signals_held():
                finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                pointer = {"run_id": run_id, "report": _join(run_uri, REPORT), "finished": finished}
                s3.write_bytes(_join(store_uri, POINTER), json.dumps(pointer).encode(), storage)
                pub = Published(run_id, store_uri, run_uri)
                _record(pub)
                committed = True
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


# ------------------------------------------------------------------------------ retention


def prune_runs(
    store_uri: str, keep: int, storage=None, *, protect: tuple[str, ...] = ()
) -> list[str]:
    """Remove the oldest complete runs so that at most `keep` remain (plus any protected run
    and the one `latest` names, which are never removed). Returns the ids removed."""
    if keep < 1:
        raise JobError(f"output.keep: {keep} must be at least 1")
    if not is_s3(store_uri):
        with _store_lock(Path(store_uri) / RUNS):
            return _prune(store_uri, keep, storage, protect)
    return _prune(store_uri, keep, storage, protect)


def _prune(store_uri: str, keep: int, storage, protect: tuple[str, ...]) -> list[str]:
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
