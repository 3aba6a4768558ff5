"""Publishing a finished local output folder to its destination (s3:// or another folder).

The pipeline writes every output locally first (into a temporary folder when `output.dir` is
an s3:// URI), and calls publish_outputs once the report is complete. report.json is the
signal consumers (CI gates, dashboards) wait for, so it goes LAST: every other file has been
uploaded completely before report.json's upload starts, and a reader that sees report.json
can rely on report.pdf and the rest being there.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker.errors import JobError
from worker.sources import is_s3

# Published in this order, after everything else; report.json is the very last object.
LAST_FILES = ("report.json",)


def _files(local_dir: Path) -> list[Path]:
    files = [
        p
        for p in local_dir.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.endswith(".tmp")
    ]
    return sorted(files, key=lambda p: p.relative_to(local_dir).as_posix())


def publish_order(local_dir: Path) -> list[Path]:
    """Files of local_dir in upload order: everything else (sorted), then LAST_FILES at the top
    level in the order given."""
    local_dir = Path(local_dir)
    last = [local_dir / name for name in LAST_FILES]
    files = _files(local_dir)
    first = [p for p in files if p not in last]
    return first + [p for p in last if p in files]


def publish_outputs(
    local_dir: str | Path, dest_uri: str, storage=None, *, max_workers: int = 4
) -> list[str]:
    """Copy every file of local_dir to dest_uri (s3://bucket/prefix or a local folder),
    keeping relative paths; report.json last, after all other uploads have finished.

    Returns the destination URIs in the order they were completed (report.json last).
    Raises JobError (naming the URI) when an upload fails; report.json is then not published.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise JobError(f"{local_dir}: output folder not found; nothing to publish")
    order = publish_order(local_dir)
    last_names = {local_dir / n for n in LAST_FILES}
    first = [p for p in order if p not in last_names]
    last = [p for p in order if p in last_names]

    if is_s3(dest_uri):
        from worker.sources import s3

        def dest(p: Path) -> str:
            return s3.join_uri(dest_uri, p.relative_to(local_dir).as_posix())

        def put(p: Path) -> str:
            uri = dest(p)
            s3.upload_file(p, uri, storage)
            return uri

        s3.get_client(storage)  # one client, created before the threads start
    else:
        base = Path(dest_uri)

        def dest(p: Path) -> str:
            return str(base / p.relative_to(local_dir))

        def put(p: Path) -> str:
            target = Path(dest(p))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(p, tmp)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    tmp.unlink()
            return str(target)

    done: list[str] = []
    if first:
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            # Waits for every upload; the first error (if any) is raised after all finished.
            done.extend(pool.map(put, first))
    for p in last:
        done.append(put(p))
    return done


def delete_keys(uris: list[str], storage=None) -> None:
    """Delete s3:// objects (one bucket per call is typical; batches of 1,000 per request).
    Missing objects are not an error. Raises JobError naming the first URI of a failed batch."""
    from worker.sources import s3

    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        bucket, key = s3.parse_uri(uri)
        by_bucket.setdefault(bucket, []).append(key)
    client = s3.get_client(storage)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                response = client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except Exception as err:  # noqa: BLE001 - translated into a JobError
                s3._raise(err, f"s3://{bucket}/{batch[0]}", "deleting objects")
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise JobError(
                    f"s3://{bucket}/{first.get('Key')}: cannot delete ({first.get('Code')}); "
                    "check the credentials' s3:DeleteObject permission"
                )
