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

from worker.errors import JobError
from worker.interrupt import check as check_interrupt
from worker.sources import is_s3
from worker.store_layout import (  # noqa: F401
    LATEST,
    POINTER,
    REPORT,
    RUN_ID_RE,
    RUNS,
    STALE_AFTER_S,
    STANDARD_FLAT,
    _join,
    _latest_target,
    _s3_pointer,
    _s3_run_keys,
    is_run_id,
    new_run_id,
    run_id_time,
)
from worker.store_reader import (  # noqa: F401
    MAX_REPORT_BYTES,
    DamagedReport,
    _loc_text,
    _LocalStore,
    _read_limited,
    _S3Store,
    _without_images,
    each_run,
    earlier_runs,
    latest_run,
    list_runs,
    load_report,
    load_run,
    open_store,
    parse_report,
    read_report,
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
    `worker-out-<run_id>.<pid>` under $TMPDIR; such folders of dead processes (a run killed
    with SIGKILL) are removed at the start of every later run on this machine, into any
    store. Left by an exception or a stop, the folder is removed, and the store folders this
    call created are removed again (nothing visible changes)."""
    _clean_stale_tmp(Path(tempfile.gettempdir()))
    if is_s3(store_uri):
        root = Path(tempfile.gettempdir())
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
