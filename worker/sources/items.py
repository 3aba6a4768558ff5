"""The values a dataset listing hands on: Item (one file), Listing (the items and what was
not used), ListingPolicy (how symlinks are treated). Shared by the local and S3 readers."""

from __future__ import annotations

from dataclasses import dataclass


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
