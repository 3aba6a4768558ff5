"""The embedding stage: a dataset (image files or a precomputed array) -> an EmbeddedSet."""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from worker.errors import JobError
from worker.images import ImageError, decode_image, decode_pixels
from worker.sources import Item, read_bytes

LOGGER = logging.getLogger("worker")


@dataclass
class EmbeddedSet:
    """Features of one dataset. Rows of `vectors` align with `ids` (and `uris`, `hashes`)."""

    name: str
    ids: list[str]
    vectors: np.ndarray
    uris: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    #: what the listing did not read (hidden or unreadable folders, links leaving the job
    #: folder): one line each, for report.json's `warnings`
    warnings: list[str] = field(default_factory=list)
    #: id -> worker.sources.samples.Sample for rows that are video frames or object crops
    samples: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def has_images(self) -> bool:
        return bool(self.uris)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Loaded:
    """One item after the parallel stage: a cached vector, a prepared input, or a skip."""

    item: Item
    digest: str | None = None
    vector: np.ndarray | None = None
    prepared: object = None
    skip: str | None = None


def read_decoded(
    item: Item, storage, cache, key: str, draft: int | None = None, pixels: bool = False
) -> _Loaded:
    """Read one image, hash it, look it up in the cache; on a miss decode it to RGB.

    Returns a cached `vector`, the decoded PIL image as `prepared` (with `pixels`: a uint8
    (H, W, 3) array, worker.images.decode_pixels, for a file), or a `skip` reason.
    Shared by the local loader threads and the Ray Data read stage. A sample (a video frame
    or an object crop, worker.sources.samples.Sample) is looked up under its own `digest`
    (its source file's hash plus its position and settings) and makes its own pixels.
    `draft` (the extractor's `decode_size`): see worker.images.decode_image."""
    if hasattr(item, "pixels"):
        return _read_sample(item, storage, cache, key)
    try:
        data = read_bytes(item.uri, storage)
    except OSError as err:
        return _Loaded(item, skip=f"cannot read: {err.strerror or err}")
    digest = content_hash(data)
    if cache is not None:
        vector = cache.get(digest, key)
        if vector is not None:
            return _Loaded(item, digest, vector=vector)
    try:
        img = (decode_pixels if pixels else decode_image)(data, draft=draft)
    except ImageError as err:
        return _Loaded(item, skip=str(err))
    return _Loaded(item, digest, prepared=img)


def _read_sample(item, storage, cache, key: str) -> _Loaded:
    """read_decoded for a Sample: cache first, then its pixels (decoded only on a miss)."""
    digest = item.digest
    if cache is not None:
        vector = cache.get(digest, key)
        if vector is not None:
            return _Loaded(item, digest, vector=vector)
    try:
        img = item.pixels(storage)
    except ImageError as err:
        return _Loaded(item, skip=str(err))
    return _Loaded(item, digest, prepared=img)


def prepare_or_skip(prepare, image) -> tuple[object, str | None]:
    """(prepare(image), None), or (None, reason) when the model's processor rejects it."""
    try:
        return prepare(image), None
    except Exception as err:  # noqa: BLE001 - an image the processor rejects is skipped
        return None, f"cannot preprocess ({err.__class__.__name__}: {err})"


#: a cache shard is written every SHARD_ROWS images, SHARD_BYTES of features or SHARD_SECONDS,
#: whichever comes first (worker.cache)
SHARD_ROWS = 1024
SHARD_BYTES = 64 << 20
SHARD_SECONDS = 2.0

#: model.num_workers "auto": at most this many decode threads (8 fed an H100 3.8x faster than
#: one thread did, benchmarks/GPU.md; the GIL limits what more threads add)
AUTO_MAX_WORKERS = 8


def default_num_workers(extractor=None) -> int:
    """The extractor's `num_workers` (model.num_workers) when it is a number; "auto", or an
    extractor without the setting: one thread per usable core, at most AUTO_MAX_WORKERS."""
    n = getattr(extractor, "num_workers", None)
    if n is not None and n != "auto":
        return int(n)
    from worker.devices import usable_cores

    return min(AUTO_MAX_WORKERS, usable_cores())


_END = object()


def _ordered_parallel_map(fn, items, workers: int, window: int) -> Iterator:
    """fn over items, results in input order, at most `window` in flight (threads).

    Threads, not processes: reading (local or S3), hashing, JPEG/PNG decoding, PIL resizing
    and numpy normalisation all release the GIL, and threads need no pickling of the
    extractor or the storage client. workers == 0 runs inline (sequential).
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed-load")
    pending: deque = deque()
    source = iter(items)
    try:
        for item in itertools.islice(source, max(window, 1)):
            pending.append(pool.submit(fn, item))
        while pending:
            result = pending.popleft().result()
            nxt = next(source, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def embed_items(
    name: str,
    items: list[Item],
    extractor,
    *,
    cache=None,
    batch_size: int = 32,
    storage=None,
    progress=None,
    num_workers: int | None = None,
    prefetch_batches: int = 2,
) -> EmbeddedSet:
    """Read, decode and embed every item; unreadable images are skipped and listed.

    Reading, hashing, the cache lookup, decoding and the extractor's `prepare` (resize and
    processor, when it has one; a model on a GPU resizes there) run in `num_workers`
    threads (default: the extractor's `num_workers`, else 2; 0 = sequential), up to
    `prefetch_batches` batches ahead, while the main thread runs the model on full batches.
    Results keep the order of `items` whatever `num_workers` is, so the vectors are the
    same as a sequential run.

    `cache` (optional) has get(hash, key) -> vector | None and put_many(hashes, key, vectors);
    finished batches are gathered into shards of up to SHARD_ROWS images (SHARD_BYTES,
    SHARD_SECONDS) written by a background thread, the last one also on an error or Ctrl-C,
    so a killed run keeps what it finished but the last shard's images.
    `progress` (optional) is called with the number of items done (embedded, cached or
    skipped) whenever that number grows.
    """
    key = extractor.cache_key
    prepare = getattr(extractor, "prepare", None)
    embed_prepared = getattr(extractor, "embed_prepared", None)
    if prepare is None or embed_prepared is None:
        prepare, embed_prepared = None, extractor.embed
    workers = default_num_workers(extractor) if num_workers is None else max(0, int(num_workers))
    window = max(batch_size * max(prefetch_batches, 1), 2 * workers, 1)

    draft = extractor.info.get("decode_size")
    pixels = bool(extractor.info.get("decode_pixels")) and prepare is not None

    def load(item: Item) -> _Loaded:
        loaded = read_decoded(item, storage, cache, key, draft, pixels)
        if loaded.prepared is None or prepare is None:
            return loaded
        prepared, skip = prepare_or_skip(prepare, loaded.prepared)
        return _Loaded(item, loaded.digest, prepared=prepared, skip=skip)

    ids: list[str] = []
    uris: list[str] = []
    hashes: list[str] = []
    rows: list[np.ndarray | None] = []
    samples: dict = {}
    # entries the listing could not use (FIFOs, links leaving the job folder, ...) come first
    skipped: list[dict] = [{"dataset": name, **s} for s in getattr(items, "skipped", [])]
    pending: list[tuple[int, object]] = []  # (row index, prepared input)
    shard: list[tuple[str, np.ndarray]] = []  # (hash, vector) not yet written to the cache
    shard_started = time.monotonic()
    writes: deque = deque()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-cache") if cache else None
    consumed = reported = 0

    def report() -> None:
        nonlocal reported
        if progress is not None and not pending and consumed > reported:
            reported = consumed
            progress(consumed)

    def flush() -> None:
        if not pending:
            return
        vectors = np.asarray(embed_prepared([p for _, p in pending]), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(pending):
            raise RuntimeError(
                f"extractor returned shape {vectors.shape} for a batch of {len(pending)} images"
            )
        for (row, _), vec in zip(pending, vectors, strict=True):
            rows[row] = vec
            if writer is not None:
                shard.append((hashes[row], vec))
        pending.clear()
        if shard and (
            len(shard) >= SHARD_ROWS
            or len(shard) * shard[0][1].nbytes >= SHARD_BYTES
            or time.monotonic() - shard_started >= SHARD_SECONDS
        ):
            write_shard()

    def write_shard() -> None:
        nonlocal shard_started
        shard_started = time.monotonic()
        if not shard:
            return
        while len(writes) >= 2:  # bound memory: wait for the oldest shard's write
            writes.popleft().result()
        batch = list(shard)
        shard.clear()
        vectors = np.stack([v for _, v in batch])
        writes.append(writer.submit(cache.put_many, [h for h, _ in batch], key, vectors))

    loader = _ordered_parallel_map(load, items, workers, window)
    try:
        for loaded in loader:
            consumed += 1
            item = loaded.item
            if loaded.skip is not None:
                skipped.append({"dataset": name, "id": item.id, "reason": loaded.skip})
                report()
                continue
            ids.append(item.id)
            uris.append(item.uri)
            hashes.append(loaded.digest)
            if hasattr(item, "pixels"):
                samples[item.id] = item
            rows.append(loaded.vector)
            if loaded.vector is None:
                pending.append((len(rows) - 1, loaded.prepared))
                if len(pending) >= batch_size:
                    flush()
            report()
        flush()
        report()
    finally:
        loader.close()  # stop the loading threads now, also on an error or Ctrl-C
        if writer is not None:
            write_shard()  # the finished batches of the last shard, also on an error
            writer.shutdown(wait=True)  # finished batches reach the cache even on Ctrl-C
        for fut in writes:
            if fut.done() and fut.exception() is not None:
                LOGGER.warning("embedding cache: a batch write failed: %s", fut.exception())
    dim = extractor.info.get("feature_dim") or 0
    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return EmbeddedSet(
        name=name,
        ids=ids,
        vectors=vectors,
        uris=uris,
        hashes=hashes,
        skipped=skipped,
        warnings=list(getattr(items, "warnings", [])),
        samples=samples,
    )


#: precomputed embeddings whose largest magnitude lies outside [MIN_ABS, MAX_ABS] are refused:
#: squared distances of larger values overflow float32 (compute.precision) and lose float64
#: exactness; smaller values underflow, so every distance would read 0
MAX_ABS = 1e15
MIN_ABS = 1e-15


def _array(uri: str, loaded, key: str) -> np.ndarray:
    """One array of a .npz, or JobError naming the file (bad CRC, object arrays, ...)."""
    try:
        return loaded[key]
    except ValueError as err:  # object arrays need pickle, which is never allowed
        raise JobError(
            f"{uri}: array {key!r} cannot be read without pickle ({err}); save numbers and "
            "strings only (numpy.savez(path, embeddings=X.astype(float), ids=ids.astype(str)))"
        ) from None
    except Exception as err:  # zipfile.BadZipFile (bad CRC), EOFError, OSError, ...
        raise JobError(
            f"{uri}: array {key!r} is unreadable ({err.__class__.__name__}: {err}); the file "
            "is damaged: write it again"
        ) from None


def _ids(uri: str, raw: np.ndarray, rows: int) -> list[str]:
    """`ids` as strings: a 1-D array of text or integers, one per row, unique, UTF-8."""
    if raw.ndim != 1:
        raise JobError(f"{uri}: 'ids' must be a 1-D array (one id per row), got shape {raw.shape}")
    if raw.dtype.kind == "S":
        try:
            ids = [bytes(i).decode("utf-8") for i in raw]
        except UnicodeDecodeError:
            raise JobError(f"{uri}: 'ids' holds bytes that are not UTF-8; save str ids") from None
    elif raw.dtype.kind in "Uiu":
        ids = [str(i) for i in raw]
    else:
        raise JobError(
            f"{uri}: 'ids' must be strings or integers, got dtype {raw.dtype}; "
            "save them with ids=numpy.array(list_of_str)"
        )
    for i in ids:
        try:
            i.encode("utf-8")
        except UnicodeEncodeError:
            raise JobError(f"{uri}: 'ids' holds an invalid (surrogate) character") from None
        if not i.strip():
            raise JobError(f"{uri}: 'ids' holds an empty id; every row needs a name")
    if len(ids) != rows:
        raise JobError(f"{uri}: 'ids' has {len(ids)} entries but 'embeddings' has {rows} rows")
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise JobError(f"{uri}: 'ids' must be unique; repeated: {', '.join(dupes)}")
    return ids


def check_embeddings(vectors: np.ndarray) -> np.ndarray:
    """A precomputed (n, d) array as float64, or ValueError saying what is wrong.

    Accepted: real floating or integer dtypes (not bool, complex, object, strings, dates),
    2-D, non-empty, finite, largest magnitude 0 or within [MIN_ABS, MAX_ABS]."""
    if vectors.dtype.kind not in "fiu":
        raise ValueError(
            f"embeddings must be real floating or integer numbers, got dtype {vectors.dtype}"
            + (
                "; complex values have no distance here: save the real features"
                if vectors.dtype.kind == "c"
                else ""
            )
        )
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(
            f"embeddings must be a non-empty 2-D array (n x d), got shape {vectors.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = vectors.astype(np.float64)
    # max and min propagate NaN and reach inf: both finite <=> every value is (no temporaries)
    high, low = float(out.max()), float(out.min())
    if not (np.isfinite(high) and np.isfinite(low)):
        bad = ~np.isfinite(out).all(axis=1)
        rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
        raise ValueError(f"embeddings contain NaN or inf (rows {rows}); clean or drop those rows")
    top = max(abs(high), abs(low))
    if top > MAX_ABS or 0.0 < top < MIN_ABS:
        raise ValueError(
            f"embeddings' largest magnitude is {top:.3g}, outside [{MIN_ABS:g}, {MAX_ABS:g}] "
            "where squared distances stay exact; divide (or multiply) them by one constant "
            "(scaled O_dist and every ranking do not change)"
        )
    return out


#: a local .npy at least this large is memory-mapped instead of read (and kept in its dtype)
MMAP_MIN_BYTES = 64 << 20


def check_mapped(vectors: np.ndarray, chunk_bytes: int = 32 << 20) -> np.ndarray:
    """check_embeddings for a memory-mapped array, in row chunks of about `chunk_bytes` as
    float64: the same checks and messages, the array itself returned (no float64 copy;
    worker.pca and worker.reduce stream it)."""
    from worker.pca import release_rows

    if vectors.dtype.kind not in "fiu" or vectors.ndim != 2 or 0 in vectors.shape:
        return check_embeddings(vectors[:0] if vectors.ndim == 2 else vectors)
    rows = max(1, chunk_bytes // (8 * vectors.shape[1]))
    top = 0.0
    for s in range(0, len(vectors), rows):
        chunk = vectors[s : s + rows]
        try:
            check_embeddings(chunk)
        except ValueError as err:
            if "NaN or inf" in str(err):  # name the rows of the whole array
                bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))[:5] + s
                raise ValueError(
                    "embeddings contain NaN or inf (rows "
                    f"{', '.join(str(i) for i in bad)}); clean or drop those rows"
                ) from None
            if "largest magnitude" not in str(err):
                raise
        top = max(top, float(np.abs(chunk).max()))
        release_rows(vectors, s, s + len(chunk))
    if top > MAX_ABS or 0.0 < top < MIN_ABS:
        raise ValueError(
            f"embeddings' largest magnitude is {top:.3g}, outside [{MIN_ABS:g}, {MAX_ABS:g}] "
            "where squared distances stay exact; divide (or multiply) them by one constant "
            "(scaled O_dist and every ranking do not change)"
        )
    return vectors


def _load_mapped(name: str, uri: str) -> EmbeddedSet | None:
    """A large local .npy, memory-mapped; None for anything else (read the usual way)."""
    import os

    from worker.sources import is_s3

    if is_s3(uri) or not uri.lower().endswith(".npy"):
        return None
    try:
        if os.path.getsize(uri) < MMAP_MIN_BYTES:
            return None
        vectors = np.load(uri, mmap_mode="r", allow_pickle=False)
    except Exception:  # noqa: BLE001 - the usual path reports what is wrong
        return None
    try:
        vectors = check_mapped(vectors)
    except ValueError as err:
        raise JobError(f"{uri} (dataset {name!r}): {err}") from None
    return EmbeddedSet(name=name, ids=[str(i) for i in range(len(vectors))], vectors=vectors)


def load_precomputed(name: str, uri: str, storage=None) -> EmbeddedSet:
    """A .npy (n x d) array, or a .npz with `embeddings` and optional `ids` (1-D, str or int).

    A local .npy of MMAP_MIN_BYTES or more is memory-mapped and kept in its own dtype
    (float32 features of a 20k + 20k job at 200k values each are 32 GB: PCA and
    model.reduce stream them); anything smaller is read and converted to float64.
    Anything else (complex, object or bool arrays, 0-d or 2-D ids, damaged archives,
    magnitudes outside [MIN_ABS, MAX_ABS]) is a JobError naming the file."""
    mapped = _load_mapped(name, uri)
    if mapped is not None:
        return mapped
    try:
        data = read_bytes(uri, storage)
    except FileNotFoundError:
        raise JobError(
            f"{uri}: embeddings file not found (dataset {name!r}); check 'embeddings'"
        ) from None
    except OSError as err:
        raise JobError(f"{uri}: cannot read embeddings (dataset {name!r}): {err}") from None
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        raise JobError(
            f"{uri}: not a readable .npy or .npz file (dataset {name!r}); "
            "save embeddings with numpy.save or numpy.savez"
        ) from None
    raw_ids = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "embeddings" not in loaded.files:
                raise JobError(
                    f"{uri}: .npz has no array named 'embeddings' "
                    f"(has: {', '.join(loaded.files) or 'none'}); "
                    "save it as numpy.savez(path, embeddings=X, ids=ids)"
                )
            vectors = _array(uri, loaded, "embeddings")
            if "ids" in loaded.files:
                raw_ids = _array(uri, loaded, "ids")
    else:
        vectors = loaded
    try:
        vectors = check_embeddings(vectors)
    except ValueError as err:
        raise JobError(f"{uri} (dataset {name!r}): {err}") from None
    if raw_ids is None:
        ids = [str(i) for i in range(len(vectors))]
    else:
        ids = _ids(uri, raw_ids, len(vectors))
    return EmbeddedSet(name=name, ids=ids, vectors=vectors)
