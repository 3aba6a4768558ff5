"""Where datasets live: local folders or s3:// prefixes. One interface for listing and reading."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Item:
    """One file of a dataset. `id` is the path relative to the dataset root, with '/'."""

    id: str
    uri: str

    @property
    def stem(self) -> str:
        """The id without its extension: images and masks pair on it."""
        dot = self.id.rfind(".")
        return self.id[:dot] if dot > self.id.rfind("/") else self.id


class Listing(list):
    """The items of a dataset (a list of Item), plus what the listing did not use.

    `skipped`: [{id, reason}] for image-named entries that were not used (non-regular files,
    symlinks leaving the job folder, broken links, names that are not UTF-8); they belong in
    report.json's `skipped`. `warnings`: one line per folder not read (hidden, unreadable,
    a symlink loop or a link leaving the job folder) and per group of hidden files."""

    def __init__(self, items=(), skipped=None, warnings=None) -> None:
        super().__init__(items)
        self.skipped: list[dict] = list(skipped or [])
        self.warnings: list[str] = list(warnings or [])


@dataclass(frozen=True)
class ListingPolicy:
    """How local listing treats symlinks: `confine_to` (a folder) skips every file or folder
    whose real path is outside it (allow_outside_paths: false); None follows them."""

    confine_to: str | None = None


_POLICY: contextvars.ContextVar[ListingPolicy | None] = contextvars.ContextVar(
    "listing_policy", default=None
)


@contextlib.contextmanager
def listing_policy(policy: ListingPolicy):
    """Within the block, list_images applies `policy` (the CLI sets it from the job)."""
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def policy_for(job) -> ListingPolicy:
    """The listing policy of a job: confined to its folder unless allow_outside_paths."""
    return ListingPolicy(None if job.allow_outside_paths else str(job.base_dir))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def list_images(root: str, storage=None, *, policy: ListingPolicy | None = None) -> Listing:
    """Image files under root (recursive), sorted by relative path, as a Listing.

    Local: only regular files are listed (FIFOs, sockets and devices are never opened);
    hidden folders and files are not read; folder symlinks are followed once (loops are
    detected); with a policy's `confine_to`, links leaving it are skipped. Everything not
    used is in the Listing's `skipped` or `warnings`, with the reason."""
    if is_s3(root):
        from worker.sources import s3

        found = s3.list_items(root, IMAGE_EXTENSIONS, storage)
        _log(found)
        return found
    from worker.sources import local

    found = local.list_items(root, IMAGE_EXTENSIONS, policy or _POLICY.get() or ListingPolicy())
    _log(found)
    return found


def _log(found: Listing) -> None:
    import logging

    log = logging.getLogger("worker")
    for line in found.warnings:
        log.warning("%s", line)
    for s in found.skipped:
        log.warning("skipped %s: %s", s["id"], s["reason"])


def read_bytes(uri: str, storage=None) -> bytes:
    if is_s3(uri):
        from worker.sources import s3

        return s3.read_bytes(uri, storage)
    from worker.sources import local

    return local.read_bytes(uri)


def write_bytes(uri: str, data: bytes, storage=None) -> None:
    """Write a whole object atomically (local: temp file then rename; S3: one PUT)."""
    if is_s3(uri):
        from worker.sources import s3

        s3.write_bytes(uri, data, storage)
        return
    from worker.sources import local

    local.write_bytes(uri, data)
