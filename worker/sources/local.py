"""Local folders: recursive listing sorted by relative path, and plain reads."""

from __future__ import annotations

import os
from pathlib import Path

from worker.errors import JobError
from worker.sources import Item


def list_items(root: str, extensions: tuple[str, ...]) -> list[Item]:
    base = Path(root)
    if not base.exists():
        raise JobError(f"{root}: folder not found; check the dataset 'path' in the job")
    if not base.is_dir():
        raise JobError(f"{root}: not a folder; a dataset 'path' must name a folder of images")
    items = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(extensions) and not name.startswith("."):
                full = Path(dirpath) / name
                rel = full.relative_to(base).as_posix()
                items.append(Item(id=rel, uri=str(full)))
    items.sort(key=lambda it: it.id)
    return items


def read_bytes(uri: str) -> bytes:
    with open(uri, "rb") as f:
        return f.read()


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
