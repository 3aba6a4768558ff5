"""Checks on the file system before any computation: every location the job names.

`check_locations(job, out=..., junit=...)` raises JobError naming the field (or the command
line option) for a location that cannot work: a missing dataset folder, an embeddings path
that is a folder, a path leaving the job folder when `allow_outside_paths: false`, dataset
folders nested in one another (the outer listing would read the inner one's images), an
output folder inside a dataset folder (its figures would be listed as images on the next run),
a selection.labelled entry that names a missing folder or a file the job cannot use,
an output or `--junit` location that cannot be written, and any output (`--junit`, the store)
that would overwrite the job file, a dataset or the store's own files. `validate` and `run`
both call it, so
`validate` refuses exactly what `run` would refuse before computing. s3:// locations are
checked when they are read (they need the network).
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.errors import JobError
from worker.sources import is_s3


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(inner: str, outer: str) -> bool:
    """Whether real path `inner` is `outer` or below it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of `path` (or path itself) that is not a folder."""
    for p in [path, *path.parents]:
        if p.exists():
            return None if p.is_dir() else p
    return None


def _locations(job) -> list[tuple[str, str, str]]:
    """(field, kind, resolved) for every local location of datasets and adaptation."""
    found = []
    for ds in job.all_datasets:
        for key, kind in (
            ("path", "folder"),
            ("embeddings", "file"),
            ("masks", "folder"),
            ("predictions", "folder"),
            ("boxes", "any"),
        ):
            loc = getattr(ds, key)
            if loc is not None and not is_s3(loc):
                found.append((f"datasets.{ds.name}.{key}", kind, job.resolve(loc)))
    neg = job.adaptation.negatives if job.adaptation.enabled else None
    if neg is not None and not is_s3(neg.path):
        found.append(("adaptation.negatives.path", "folder", job.resolve(neg.path)))
    return found


def check_locations(job, *, out: str | None = None, junit: str | None = None) -> None:
    """Refuse, before any computation, every local location of the job that cannot work."""
    base = _real(str(job.base_dir))
    locations = _locations(job)
    for field, kind, resolved in locations:
        given = resolved
        if not job.allow_outside_paths and not _inside(_real(resolved), base):
            raise JobError(
                f"{field}: {given} resolves outside the job folder ({_real(resolved)}); "
                f"move the data under {base} or set allow_outside_paths: true"
            )
        p = Path(resolved)
        if not p.exists():
            what = {"folder": "folder not found", "file": "file not found"}.get(kind, "not found")
            raise JobError(f"{field}: {given}: {what}; check the path (relative to the job file)")
        if kind == "folder" and not p.is_dir():
            raise JobError(f"{field}: {given} is not a folder; give a folder of images")
        if kind == "file" and not p.is_file():
            raise JobError(f"{field}: {given} is not a file; give a .npy or .npz file")
        if kind == "folder" and not os.access(p, os.R_OK | os.X_OK):
            raise JobError(f"{field}: {given} cannot be read; check its permissions")
    from worker.labelled import entries

    entries(job)  # selection.labelled: missing or unusable folders and files
    folders = [(f, _real(r)) for f, kind, r in locations if kind == "folder"]
    for field_a, a in folders:
        for field_b, b in folders:
            if field_a != field_b and a != b and _inside(a, b):
                raise JobError(
                    f"{field_a}: {a} is inside {field_b} ({b}), so its files would also be "
                    f"listed as images of {field_b.split('.')[1]}; use folders side by side"
                )
    for field, _kind, resolved in locations:  # annotation files parse at the door too
        if field.endswith(".boxes"):
            from worker.sources import policy_for
            from worker.sources.samples import read_boxes

            read_boxes(resolved, None, policy_for(job), field)
    _check_output(job, out, folders)
    store = out or job.resolve(job.output.dir)
    for field, _kind, resolved in locations:
        if not is_s3(store) and _inside(_real(resolved), _real(store)):
            raise JobError(
                f"{field}: {resolved} is inside the run store {store}, whose files the worker "
                "replaces and prunes; move the data out of the output folder"
            )
    if junit is not None:
        protected = [("the job file", str(job.job_file))] if job.job_file else []
        protected += [(field, r) for field, _kind, r in locations]
        check_junit_path(junit, protected, store)


def _check_output(job, out: str | None, folders: list[tuple[str, str]]) -> None:
    where = "--out (output.dir)" if out else "output.dir"
    target = out or job.resolve(job.output.dir)
    if is_s3(target):
        return
    real = _real(target)
    for field, folder in folders:
        if _inside(real, folder):
            raise JobError(
                f"{where}: {target} is inside {field} ({folder}); the reports and figures "
                "would be read as images by the next run; choose an output folder outside "
                "every dataset folder"
            )
    blocker = _blocking_file(Path(target))
    if blocker is not None:
        raise JobError(
            f"{where}: {target} cannot be created: {blocker} is a file, not a folder; "
            "choose another folder with --out"
        )
    existing = next(p for p in [Path(target), *Path(target).parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JobError(f"{where}: {existing} is not writable; choose another folder with --out")
    from worker.store import check_latest

    check_latest(Path(target))


STORE_NAMES = ("runs", "latest", "latest.json", "report.json", "report.pdf", "figures")


def check_junit_path(junit: str, protected: list[tuple[str, str]], store: str | None) -> None:
    """Refuse a --junit path that cannot be written, or that would overwrite (or land inside)
    one of `protected` (label, path: the job file, datasets, reports read), the run store
    itself or the store's own files (runs/, latest, the flat report paths). Before any work."""
    if not junit.strip():
        raise JobError("--junit: the path is empty; give a file path such as gates.xml")
    real = _real(junit)
    for label, location in protected:
        if (
            location
            and not is_s3(location)
            and os.path.lexists(location)
            and _inside(real, _real(location))
        ):
            raise JobError(
                f"--junit: {junit} is {label} ({location}) or inside it; the JUnit file would "
                "overwrite it; give another path such as gates.xml"
            )
    if store and not is_s3(store):
        root = _real(store)
        own = [root] + [os.path.join(root, n) for n in STORE_NAMES]
        if real == root or any(_inside(real, o) for o in own[1:]):
            raise JobError(
                f"--junit: {junit} is the run store {store} or one of its own files (runs/, "
                "latest, report.json, report.pdf, figures/); give a path beside them such as "
                f"{os.path.join(store, 'junit.xml')}"
            )
    _check_junit(junit)


def _check_junit(junit: str) -> None:
    path = Path(junit)
    if path.is_dir():
        raise JobError(
            f"--junit: {junit} is a folder; give a file path such as {path / 'gates.xml'}"
        )
    blocker = _blocking_file(path.parent)
    if blocker is not None:
        raise JobError(f"--junit: {junit} cannot be created: {blocker} is a file, not a folder")
    existing = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise JobError(f"--junit: {existing} is not writable; choose another path")
