"""Local folders: a recursive listing that never blocks and never hides, and plain reads.

Only regular files are listed (a FIFO named pipe.png is never opened); hidden folders and
files (a name starting with '.') are not read; folder symlinks are followed once, loops are
detected; with `ListingPolicy.confine_to`, a file or folder whose real path leaves that folder
is skipped. What is not used is in the Listing's `skipped` (image-named entries) or `warnings`
(folders), each with its reason.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from worker.errors import JobError
from worker.sources.items import Item, Listing, ListingPolicy


def _inside(real: str, folder: str) -> bool:
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def _printable(rel: str) -> tuple[str, bool]:
    """(an id that is valid UTF-8, whether the name was valid UTF-8 as it is)."""
    try:
        rel.encode("utf-8")
        return rel, True
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), False


def list_items(
    root: str, extensions: tuple[str, ...], policy: ListingPolicy | None = None
) -> Listing:
    """Image files under root, recursively, sorted by id (the path relative to root, '/')."""
    policy = policy or ListingPolicy()
    base = Path(root)
    if not base.exists():
        raise JobError(f"{root}: folder not found; check the dataset 'path' in the job")
    if not base.is_dir():
        raise JobError(f"{root}: not a folder; a dataset 'path' must name a folder of images")
    confine = os.path.realpath(policy.confine_to) if policy.confine_to else None
    exts = tuple(e.lower() for e in extensions)
    items: list[Item] = []
    skipped: list[dict] = []
    warnings: list[str] = []
    hidden_files = 0
    root_real = os.path.realpath(base)
    visited = {root_real}

    def skip(rel: str, reason: str) -> None:
        skipped.append({"id": _printable(rel)[0], "reason": reason})

    def warn(rel: str, reason: str) -> None:
        warnings.append(f"{root}: folder {_printable(rel)[0]}/ not read: {reason}")

    # an explicit stack, not recursion: a tree 10,000 folders deep lists like a flat one
    stack: list[tuple[str, str, frozenset[str]]] = [(str(base), "", frozenset({root_real}))]
    while stack:
        folder, prefix, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            if not prefix:
                raise JobError(
                    f"{root}: cannot read the dataset folder ({err.strerror or err}); "
                    "check its permissions"
                ) from None
            warn(prefix.rstrip("/"), f"cannot read it ({err.strerror or err})")
            continue
        subfolders = []
        for entry in entries:
            rel = prefix + entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError as err:
                skip(rel, f"cannot inspect ({err.strerror or err})")
                continue
            if is_dir:
                if entry.name.startswith("."):
                    warn(rel, "hidden folder (name starts with '.')")
                    continue
                real = os.path.realpath(entry.path)
                if is_link and confine and not _inside(real, confine):
                    warn(rel, f"symlink to {real}, outside the job folder (allow_outside_paths)")
                    continue
                if real in ancestors:
                    warn(rel, f"symlink loop (points back to {real})")
                    continue
                if real in visited:
                    warn(rel, f"already listed through another path ({real})")
                    continue
                visited.add(real)
                subfolders.append((entry.path, rel + "/", ancestors | {real}))
                continue
            if not entry.name.lower().endswith(exts):
                continue
            if entry.name.startswith("."):
                hidden_files += 1
                continue
            if is_link:
                real = os.path.realpath(entry.path)
                if confine and not _inside(real, confine):
                    skip(rel, f"symlink to {real}, outside the job folder (allow_outside_paths)")
                    continue
            try:
                st = os.stat(entry.path)  # follows a link: the target's kind
            except OSError as err:
                reason = "broken symlink" if err.errno == errno.ENOENT and is_link else None
                skip(rel, reason or f"cannot read: {err.strerror or err}")
                continue
            if not stat.S_ISREG(st.st_mode):
                skip(rel, f"not a regular file ({_kind(st.st_mode)}); never opened")
                continue
            ident, ok = _printable(rel)
            if not ok:
                skip(rel, "file name is not valid UTF-8; rename the file")
                continue
            items.append(Item(id=ident, uri=entry.path))
        stack.extend(reversed(subfolders))  # depth first, in name order

    if hidden_files:
        warnings.append(
            f"{root}: {hidden_files} hidden image file(s) (name starts with '.') not read"
        )
    items.sort(key=lambda it: it.id)
    return Listing(items, skipped=sorted(skipped, key=lambda s: s["id"]), warnings=warnings)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_bytes(uri: str) -> bytes:
    """The bytes of a regular file. Opened non-blocking and checked before reading, so a file
    that became a FIFO or device after listing raises OSError instead of hanging."""
    fd = os.open(uri, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", uri)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: a temp file in the same folder, fsync, then rename over the target."""
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
