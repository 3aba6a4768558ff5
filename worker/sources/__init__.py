"""Where datasets live: local folders or s3:// prefixes. One interface for listing and reading."""

from __future__ import annotations

import contextlib
import contextvars

from worker.sources.items import Item, Listing, ListingPolicy

__all__ = ["Item", "Listing", "ListingPolicy"]  # defined in worker.sources.items

#: .gif: its first frame is the image (an animated GIF is one image, not a video)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


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
