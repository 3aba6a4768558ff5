"""selection.labelled (docs/method.md §3.6): the images already labelled, read as the job
names them, so that they join every selection's pool as if they were in P.

Each entry of `selection.labelled` is one of (`entries`):

- `prefix`: an s3:// prefix (its images, listed like a dataset's);
- `folder`: an existing local folder (relative to the job file or absolute; its images,
  recursively, listed like a dataset's);
- `image`: an existing local image file;
- `embeddings`: a .npy/.npz file (local or s3://) of the labelled images' features, for
  jobs whose datasets are precomputed embeddings (nothing to embed images with);
- `id`: anything else, an image id of a secondary (as report.json's images[].id) or a
  prefix of ids (a subfolder of a secondary).

In a job of images an id always ends in an image or video extension (before a '#' of a
frame or crop) and a prefix of ids is a subfolder of a secondary's folder, so a local entry
that does not exist and is neither, or that is written as a path (absolute, './', '../',
'~'), is a folder that is missing: a JobError naming `selection.labelled` and the path
(`entries`, before any work, for `validate` and `run` alike).

Images of a folder, prefix or file that lie in a dataset of the job are matched against it by
location (worker.selection.labelled_mask); the others (`embed_labelled`) are embedded with
the job's model through the same cached path as the datasets, and projected into each pair's
PCA without entering the fit (worker.pair_passes.project_pair). The same content as an S image
(content hash) marks that S image labelled too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.embeddings import EmbeddedSet
from worker.errors import JobError
from worker.sources import IMAGE_EXTENSIONS, Item, Listing, is_s3, list_images, policy_for

FIELD = "selection.labelled"
#: the name the labelled images carry in report.json's `skipped`
SET_NAME = "selection.labelled"
EMBEDDINGS_EXTENSIONS = (".npy", ".npz")
_ID_EXTENSIONS = IMAGE_EXTENSIONS + (".mp4", ".mov", ".avi", ".mkv", ".webm")


@dataclass(frozen=True)
class Entry:
    """One entry of selection.labelled: as written (`given`), what it names (`kind`: prefix,
    folder, image, embeddings or id) and where (`location`: resolved; the id itself for an id)."""

    given: str
    kind: str
    location: str


def _precomputed(job) -> bool:
    """True when no dataset gives images: nothing could embed a labelled image."""
    return not any(d.path for d in job.all_datasets) or all(
        m.name == "precomputed" for m in job.model_list
    )


def _looks_like_path(entry: str) -> bool:
    """Written as a location: absolute, from the job folder ('./', '../'), from home ('~')
    or an embeddings file."""
    return (
        Path(entry).is_absolute()
        or entry.startswith(("./", "../", "~"))
        or entry.lower().endswith(EMBEDDINGS_EXTENSIONS)
    )


def _looks_like_id(job, entry: str) -> bool:
    """An image id (an image or video extension before any '#'), or a prefix of ids: a folder
    inside a secondary's local folder, or anything when a secondary is not a local folder of
    images (s3://, embeddings: its ids are only known once read)."""
    if entry.split("#", 1)[0].lower().endswith(_ID_EXTENSIONS):
        return True
    for ds in job.datasets.secondary:
        if ds.path is None or is_s3(ds.path):
            return True
        if (Path(job.resolve(ds.path)) / entry.rstrip("/")).is_dir():
            return True
    return False


def entries(job) -> list[Entry]:
    """Every selection.labelled entry classified (module docstring). Local entries are
    checked here: a missing folder, a path outside the job folder (without
    allow_outside_paths), a file that is neither an image nor embeddings, an unreadable folder,
    and an entry the job's model cannot use (a folder of images with precomputed datasets, an
    embeddings file with a model that embeds images) are JobErrors naming the field."""
    precomputed = _precomputed(job)
    out = []
    for given in job.selection.labelled:
        given = str(given).strip()
        entry = _classify(job, given, precomputed)
        if entry.kind == "embeddings" and not precomputed:
            raise JobError(
                f"{FIELD}: {given} is an embeddings file, but the job embeds images with its "
                "model; name the folder (or s3:// prefix) of the labelled images instead"
            )
        if entry.kind in ("folder", "prefix", "image") and precomputed:
            raise JobError(
                f"{FIELD}: {given} names images, but the datasets are precomputed embeddings "
                "(no model to embed them with); give the labelled images' embeddings from the "
                "same model as a .npy or .npz file (numpy.savez(path, embeddings=X, ids=ids)), "
                "or their ids"
            )
        out.append(entry)
    return out


def _classify(job, given: str, precomputed: bool) -> Entry:
    if is_s3(given):
        kind = "embeddings" if given.lower().endswith(EMBEDDINGS_EXTENSIONS) else "prefix"
        return Entry(given, kind, given)
    resolved = job.resolve(given)
    path = Path(resolved)
    if not path.exists():
        if not _looks_like_path(given) and (precomputed or _looks_like_id(job, given)):
            return Entry(given, "id", given)
        what = "file" if given.lower().endswith(EMBEDDINGS_EXTENSIONS) else "folder"
        raise JobError(
            f"{FIELD}: {given}: {what} not found ({resolved}); give an existing folder of "
            "labelled images (relative to the job file), an s3:// prefix or an image id"
        )
    if not job.allow_outside_paths:
        real, base = os.path.realpath(resolved), os.path.realpath(job.base_dir)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise JobError(
                f"{FIELD}: {given} resolves outside the job folder ({real}); move the "
                f"labelled images under {base} or set allow_outside_paths: true"
            )
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise JobError(f"{FIELD}: {given} ({resolved}) cannot be read; check its permissions")
        return Entry(given, "folder", resolved)
    lower = given.lower()
    if lower.endswith(EMBEDDINGS_EXTENSIONS):
        return Entry(given, "embeddings", resolved)
    if lower.endswith(IMAGE_EXTENSIONS):
        return Entry(given, "image", resolved)
    raise JobError(
        f"{FIELD}: {given} ({resolved}) is a file but neither an image nor an embeddings file "
        "(.npy/.npz); give a folder of labelled images, an image or an image id"
    )


def _listing(job, entry: Entry, storage) -> Listing:
    """The images an entry names (folder, prefix: recursive listing; image: itself), each with
    its location as id (unique across entries)."""
    if entry.kind == "image":
        return Listing([Item(id=entry.location, uri=entry.location)])
    try:
        found = list_images(entry.location, storage, policy=policy_for(job))
    except JobError as err:  # an s3:// prefix without objects, an unreachable bucket
        why = str(err).removeprefix(f"{entry.location}: ")
        why = why.replace("the dataset 'path' in the job", "the entry")
        raise JobError(f"{FIELD}: {entry.given}: {why}") from None
    items = [Item(id=it.uri, uri=it.uri) for it in found]
    return Listing(items, skipped=found.skipped, warnings=found.warnings)


def _real(uri: str) -> str:
    return uri if is_s3(uri) else os.path.realpath(uri)


@dataclass
class Labelled:
    """The labelled images outside every dataset of the job, embedded (`images`: ids are
    their locations, or the embeddings file's ids), and the entries that named nothing."""

    images: EmbeddedSet
    unmatched: list[str]


def embed_labelled(job, extractor, embed, datasets: list[EmbeddedSet], storage) -> Labelled | None:
    """The labelled images of selection.labelled that are in no dataset of the job (P or any
    S, by location), embedded by `embed(name, listing) -> EmbeddedSet` (the datasets' own
    cached path) or, for precomputed datasets, read from the embeddings files. None when
    the job names no labelled folder, prefix, image or embeddings file.
    `unmatched`: folder and prefix entries that hold no image at all (the ids are matched
    against the secondaries later, `unmatched_ids`)."""
    found = [e for e in entries(job) if e.kind != "id"]
    if not found:
        return None
    if extractor is None:
        return _load_embeddings(found, storage)
    known = {_real(u) for ds in datasets for u in ds.uris}
    items: dict[str, Item] = {}
    skipped, warnings, unmatched = [], [], []
    for entry in found:
        listing = _listing(job, entry, storage)
        skipped += listing.skipped
        warnings += listing.warnings
        if not listing and not listing.skipped:
            unmatched.append(entry.given)
        for it in listing:
            if _real(it.uri) not in known:
                items.setdefault(_real(it.uri), it)
    listing = Listing(sorted(items.values(), key=lambda it: it.id), skipped, warnings)
    if listing:
        return Labelled(embed(SET_NAME, listing), unmatched)
    width = datasets[0].vectors.shape[1]
    empty = EmbeddedSet(SET_NAME, [], np.empty((0, width)), skipped=skipped, warnings=warnings)
    return Labelled(empty, unmatched)


def check_labelled_width(images: EmbeddedSet, datasets: list[EmbeddedSet]) -> None:
    """Labelled embeddings must have the datasets' feature width (the same model)."""
    width, want = images.vectors.shape[1], datasets[0].vectors.shape[1]
    if images.count and width != want:
        raise JobError(
            f"{FIELD}: the labelled embeddings have {width} features, the datasets {want}; "
            "give embeddings made by the same model as the datasets"
        )


def _load_embeddings(found: list[Entry], storage) -> Labelled:
    from worker.embeddings import load_precomputed

    ids: list[str] = []
    blocks = []
    for entry in found:
        loaded = load_precomputed(SET_NAME, entry.location, storage)
        named = _has_ids(entry, storage)  # else rows are 0..n-1: named after the file
        ids += [i if named else f"{entry.given}#{i}" for i in loaded.ids]
        blocks.append(np.asarray(loaded.vectors, dtype=np.float64))
    widths = {b.shape[1] for b in blocks}
    if len(widths) > 1:
        raise JobError(
            f"{FIELD}: the embeddings files have different widths ({sorted(widths)}); every "
            "file must come from the model the datasets were embedded with"
        )
    return Labelled(EmbeddedSet(name=SET_NAME, ids=ids, vectors=np.vstack(blocks)), [])


def _has_ids(entry: Entry, storage) -> bool:
    """Whether an embeddings file names its rows (a .npz with `ids`)."""
    if not entry.location.lower().endswith(".npz"):
        return False
    import io

    from worker.sources import read_bytes

    with np.load(io.BytesIO(read_bytes(entry.location, storage)), allow_pickle=False) as z:
        return "ids" in z.files


def unmatched_ids(job, secondaries: list[EmbeddedSet], labelled: Labelled | None) -> list[str]:
    """Entries of selection.labelled that named nothing: folder and prefix entries without
    images (`labelled.unmatched`), and id entries that are no image id of any secondary (nor
    of a labelled embeddings file)."""
    from worker.selection import labelled_mask

    out = list(labelled.unmatched) if labelled is not None else []
    known = set(labelled.images.ids) if labelled is not None else set()
    for entry in entries(job):
        if entry.kind != "id" or entry.given in known:
            continue
        if not any(labelled_mask(s.ids, s.uris, [entry.given]).any() for s in secondaries):
            out.append(entry.given)
    return out
