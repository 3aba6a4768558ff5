"""Where datasets live: local folders or s3:// prefixes. One interface for listing and reading."""

from __future__ import annotations

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


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def list_images(root: str, storage=None) -> list[Item]:
    """Image files under root (recursive), sorted by relative path."""
    if is_s3(root):
        from worker.sources import s3

        return s3.list_items(root, IMAGE_EXTENSIONS, storage)
    from worker.sources import local

    return local.list_items(root, IMAGE_EXTENSIONS)


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
