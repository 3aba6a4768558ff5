"""The embedding stage: a dataset (image files or a precomputed array) -> an EmbeddedSet."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from worker.errors import JobError
from worker.images import ImageError, decode_image
from worker.sources import Item, read_bytes


@dataclass
class EmbeddedSet:
    """Features of one dataset. Rows of `vectors` align with `ids` (and `uris`, `hashes`)."""

    name: str
    ids: list[str]
    vectors: np.ndarray
    uris: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def has_images(self) -> bool:
        return bool(self.uris)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embed_items(
    name: str,
    items: list[Item],
    extractor,
    *,
    cache=None,
    batch_size: int = 32,
    storage=None,
    progress=None,
) -> EmbeddedSet:
    """Read, decode and embed every item; unreadable images are skipped and listed.

    `cache` (optional) has get(hash, key) -> vector | None and put_many(hashes, key, vectors).
    `progress` (optional) is called with the number of items done after each batch.
    """
    ids: list[str] = []
    uris: list[str] = []
    hashes: list[str] = []
    rows: list[np.ndarray] = []
    skipped: list[dict] = []
    pending: list[tuple[int, object]] = []  # (row index, decoded image)

    def flush() -> None:
        if not pending:
            return
        vectors = extractor.embed([img for _, img in pending])
        for (row, _), vec in zip(pending, vectors, strict=True):
            rows[row] = vec
        if cache is not None:
            cache.put_many([hashes[r] for r, _ in pending], extractor.cache_key, vectors)
        pending.clear()

    for done, item in enumerate(items, start=1):
        try:
            data = read_bytes(item.uri, storage)
        except OSError as err:
            skipped.append({"dataset": name, "id": item.id, "reason": f"cannot read: {err.strerror or err}"})
            continue
        digest = content_hash(data)
        cached = cache.get(digest, extractor.cache_key) if cache is not None else None
        if cached is None:
            try:
                img = decode_image(data)
            except ImageError as err:
                skipped.append({"dataset": name, "id": item.id, "reason": str(err)})
                continue
        ids.append(item.id)
        uris.append(item.uri)
        hashes.append(digest)
        rows.append(cached)
        if cached is None:
            pending.append((len(rows) - 1, img))
            if len(pending) >= batch_size:
                flush()
        if progress is not None:
            progress(done)
    flush()
    dim = extractor.info.get("feature_dim") or 0
    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return EmbeddedSet(name=name, ids=ids, vectors=vectors, uris=uris, hashes=hashes, skipped=skipped)


def load_precomputed(name: str, uri: str, storage=None) -> EmbeddedSet:
    """A .npy (n x d) array, or a .npz with `embeddings` and optional `ids`."""
    try:
        data = read_bytes(uri, storage)
    except FileNotFoundError:
        raise JobError(f"{uri}: embeddings file not found (dataset {name!r}); check 'embeddings'") from None
    except OSError as err:
        raise JobError(f"{uri}: cannot read embeddings (dataset {name!r}): {err}") from None
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        raise JobError(
            f"{uri}: not a readable .npy or .npz file (dataset {name!r}); "
            "save embeddings with numpy.save or numpy.savez"
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        if "embeddings" not in loaded.files:
            raise JobError(
                f"{uri}: .npz has no array named 'embeddings' (has: {', '.join(loaded.files) or 'none'}); "
                "save it as numpy.savez(path, embeddings=X, ids=ids)"
            )
        vectors = loaded["embeddings"]
        ids = [str(i) for i in loaded["ids"]] if "ids" in loaded.files else None
    else:
        vectors, ids = loaded, None
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise JobError(f"{uri}: embeddings must be a non-empty 2-D array (n x d), got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number):
        raise JobError(f"{uri}: embeddings must be numeric, got dtype {vectors.dtype}")
    vectors = vectors.astype(np.float64)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
        raise JobError(f"{uri}: embeddings contain NaN or inf (rows {rows}); clean or drop those rows")
    if ids is None:
        ids = [str(i) for i in range(len(vectors))]
    if len(ids) != len(vectors):
        raise JobError(f"{uri}: 'ids' has {len(ids)} entries but 'embeddings' has {len(vectors)} rows")
    if len(set(ids)) != len(ids):
        raise JobError(f"{uri}: 'ids' must be unique")
    return EmbeddedSet(name=name, ids=ids, vectors=vectors)
