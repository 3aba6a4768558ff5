"""Images paired with masks, and the mask check that runs before any embedding (no torch).

`check_adaptation_inputs(job)` is what `python -m worker validate` and the start of a `run`
call (before the embed stage) when adaptation is enabled: for the primary and every secondary
that declares `masks` (the sets adaptation trains on or scores), it checks that the masks
folder exists and holds masks, that every image has a mask with the same stem (relative path
without extension), that every mask decodes and has its image's size; it also checks
adaptation.negatives (enough images) and local encoder / .pt checkpoint paths of
adaptation.models. Every problem is a JobError naming the field and files (CLI exit 2); masks
without an image are logged as a warning (they are not used).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from worker.errors import JobError
from worker.sources import is_s3, list_images, read_bytes

LOGGER = logging.getLogger("worker")
_SHOW = 5


@dataclass(frozen=True)
class Sample:
    """One training or evaluation image. `mask_uri` None with `empty_mask` True: an image with
    no positive pixel (the negatives of appendix C); None otherwise: a missing mask."""

    dataset: str
    id: str
    image_uri: str
    mask_uri: str | None
    empty_mask: bool = False


@dataclass
class MaskedSet:
    """A dataset of images with masks paired by stem; `mask_uris[i]` is None when image i has
    no mask (an error if that image is used), and `mask_uris` None when the set has no masks."""

    name: str
    ids: list[str]
    image_uris: list[str]
    mask_uris: list[str | None] | None
    select: bool = True

    @property
    def has_masks(self) -> bool:
        return self.mask_uris is not None

    def samples(self, ids: list[str] | None = None) -> list[Sample]:
        index = {i: k for k, i in enumerate(self.ids)}
        wanted = self.ids if ids is None else ids
        out = []
        for i in wanted:
            if i not in index:
                raise JobError(f"adaptation: dataset {self.name!r} has no image {i!r}")
            k = index[i]
            mask = self.mask_uris[k] if self.mask_uris is not None else None
            out.append(Sample(self.name, i, self.image_uris[k], mask))
        return out


def primary_masks_error(name: str) -> JobError:
    return JobError(
        f"datasets.primary.masks: adaptation needs masks for the primary dataset "
        f"{name!r}; add 'masks: <folder>' or set adaptation.enabled: false"
    )


def build_masked_sets(job) -> dict[str, MaskedSet]:
    """Every dataset of the job with images and masks (masks paired by stem), primary first.

    Raises JobError when adaptation is enabled and the primary has no masks, or when a masks
    folder has two files with the same stem.
    """
    primary = job.datasets.primary
    if primary.masks is None or primary.path is None:
        raise primary_masks_error(primary.name)
    out: dict[str, MaskedSet] = {}
    for ds in job.all_datasets:
        if ds.path is None or ds.masks is None:
            continue
        images = list_images(job.resolve(ds.path), job.storage)
        masks = list_images(job.resolve(ds.masks), job.storage)
        by_stem: dict[str, str] = {}
        for m in masks:
            if m.stem in by_stem:
                raise JobError(
                    f"datasets.{ds.name}.masks: two masks share the stem {m.stem!r} "
                    f"({by_stem[m.stem]} and {m.uri}); keep one"
                )
            by_stem[m.stem] = m.uri
        out[ds.name] = MaskedSet(
            name=ds.name,
            ids=[it.id for it in images],
            image_uris=[it.uri for it in images],
            mask_uris=[by_stem.get(it.stem) for it in images],
            select=ds.select,
        )
    return out


def image_stem(item_id: str) -> str:
    """An image id without its extension ('a/b.png' -> 'a/b'): masks and maps pair by it."""
    dot = item_id.rfind(".")
    return item_id[:dot] if dot > item_id.rfind("/") else item_id


def _shown(items: list[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # an undecodable image is skipped (and listed) by the embed stage
        return None


def _read_or_empty(uri: str, storage=None) -> bytes:
    try:
        return read_bytes(uri, storage)
    except OSError:
        return b""


def check_masked_set(ms: MaskedSet, field: str, storage=None) -> None:
    """Every image of `ms` has a readable mask of its size. `field`: the job field in errors."""
    from worker.adapt.evaluate_cli import decode_mask

    if not ms.has_masks:
        return
    # an image that cannot be read needs no mask: the embed stage skips and lists it
    missing = [
        i
        for i, uri, m in zip(ms.ids, ms.image_uris, ms.mask_uris, strict=True)
        if m is None and _size(_read_or_empty(uri, storage)) is not None
    ]
    if missing:
        raise JobError(
            f"{field}: {len(missing)} of {len(ms.ids)} images of dataset {ms.name!r} have no "
            f"mask with the same stem: {_shown(missing)}; add the masks or remove the images"
        )
    bad: list[str] = []
    for image_uri, mask_uri in zip(ms.image_uris, ms.mask_uris, strict=True):
        if mask_uri is None:
            continue
        try:
            mask = decode_mask(read_bytes(mask_uri, storage), mask_uri)
        except JobError as err:
            bad.append(str(err))
            continue
        except FileNotFoundError:
            bad.append(f"{mask_uri}: not found")
            continue
        size = _size(read_bytes(image_uri, storage))
        if size is not None and (mask.shape[1], mask.shape[0]) != size:
            bad.append(
                f"{mask_uri} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{size[0]}x{size[1]}"
            )
    if bad:
        raise JobError(
            f"{field}: {len(bad)} masks of dataset {ms.name!r} cannot be used: {_shown(bad)}; "
            "masks must be images (PNG recommended, 0/255 or 0/1) of their image's size"
        )


def check_adaptation_inputs(job) -> dict[str, MaskedSet]:
    """The masks (and negatives, local model paths) adaptation needs, checked before any
    embedding; returns `build_masked_sets(job)` ({} when adaptation is off)."""
    cfg = job.adaptation
    if not cfg.enabled:
        return {}
    for k, arch in enumerate(cfg.architectures):
        field = "adaptation" if cfg.models is None else f"adaptation.models[{k}]"
        for key in ("checkpoint", "encoder"):
            loc = getattr(arch, key)
            if loc is None or is_s3(loc):
                continue
            local = loc.endswith(".pt") or key == "encoder" or loc.startswith((".", "/", "~"))
            if local and not Path(job.resolve(loc)).exists():
                raise JobError(f"{field}.{key}: {job.resolve(loc)} does not exist")
    primary = job.datasets.primary
    if primary.masks is None or primary.path is None:
        raise primary_masks_error(primary.name)
    for ds in job.all_datasets:
        if ds.masks is not None and not list_images(job.resolve(ds.masks), job.storage):
            raise JobError(
                f"datasets.{ds.name}.masks: {job.resolve(ds.masks)} holds no mask images; "
                "add the masks (same stems as the images) or remove 'masks'"
            )
    sets = build_masked_sets(job)
    for ds in job.all_datasets:
        if ds.name not in sets:
            if ds.path is not None:
                LOGGER.info("adaptation: dataset %r has no masks and is not scored", ds.name)
            continue
        role = "primary" if ds.name == primary.name else ds.name
        check_masked_set(sets[ds.name], f"datasets.{role}.masks", job.storage)
        stems = {image_stem(i) for i in sets[ds.name].ids}
        orphans = [
            m.id for m in list_images(job.resolve(ds.masks), job.storage) if m.stem not in stems
        ]
        if orphans:
            LOGGER.warning(
                "datasets.%s.masks: %d masks have no image with the same stem (ignored): %s",
                ds.name,
                len(orphans),
                _shown(orphans),
            )
    if cfg.negatives is not None and cfg.negatives.counts:
        root = job.resolve(cfg.negatives.path)
        n = len(list_images(root, job.storage))
        want = max(cfg.negatives.counts)
        if n < want:
            raise JobError(
                f"adaptation.negatives.path: {root} has {n} images but "
                f"adaptation.negatives.counts asks for {want}; add images or lower it"
            )
    return sets
