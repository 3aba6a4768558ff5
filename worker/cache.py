"""Content-hash embedding cache in shards, in a local folder or under an s3:// prefix.

An entry is one image's feature vector for one extractor, keyed by (sha256 of the image
bytes, the extractor's `cache_key`). Entries are stored in shards, one per batch of images
written together (worker.embeddings writes one per dataset every SHARD_ROWS images, 64 MB
or SHARD_SECONDS, whichever comes first):

    <dir>/<sha256(cache_key)[:16]>/KEY              the full cache_key, for people
    <dir>/<sha256(cache_key)[:16]>/<shard>.f32      rows x dim little-endian float32
    <dir>/<sha256(cache_key)[:16]>/<shard>.idx      JSON index of the shard (below)

The index records the format, the cache_key, the image hash of every row, the shape and the
payload's size and sha256. The payload is written first and the index last, each atomically
(worker.sources.write_bytes: temp file + rename locally, one PUT on S3), so a shard without
an index is invisible and a run killed half way keeps every shard it finished and never
leaves a half-written one. `<shard>` is the sha256 of the shard's image hashes, so writing
the same batch twice gives the same shard.

Reading: the first lookup for a key lists its folder and reads every index (one dict of
hash -> (shard, row) in memory: ~100 bytes per image). A shard's payload is opened on its
first hit: memory-mapped locally, read whole on S3 (the last few S3 shards are kept), and
checked once (size, sha256); every returned row is checked to be finite. A payload or index
that does not check out is ignored (its rows are misses, recomputed and written again),
never trusted. A hit is a view of the mapped file, so a cached re-run reads its features
at disk speed instead of decoding one small file per image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from worker.sources import is_s3, read_bytes, write_bytes

LOGGER = logging.getLogger("worker")

FORMAT_VERSION = 2
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_SHARD_RE = re.compile(r"^[0-9a-f]{32}$")
#: S3 shard payloads kept in memory after their first hit (lookups run in dataset order)
S3_SHARDS_KEPT = 4


class EmbeddingCache:
    """get(hash, key) -> vector | None; put_many(hashes, key, vectors). Thread-safe."""

    def __init__(self, dir_uri: str, storage=None) -> None:
        self.dir = str(dir_uri).rstrip("/") or "/"
        self.storage = storage
        self._lock = threading.Lock()
        self._keys_written: set[str] = set()
        self._warned: set[str] = set()
        #: per key digest: image hash -> (shard name, row)
        self._index: dict[str, dict[str, tuple[str, int]]] = {}
        #: per (key digest, shard name): its index header
        self._meta: dict[tuple[str, str], dict] = {}
        #: opened payloads: (key digest, shard name) -> (rows, dim) array, or None if bad
        self._payloads: OrderedDict[tuple[str, str], np.ndarray | None] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "rejected": 0, "writes": 0, "write_errors": 0}

    # -- paths ------------------------------------------------------------------------

    @staticmethod
    def key_digest(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]

    def key_dir(self, key: str) -> str:
        return f"{self.dir}/{self.key_digest(key)}"

    @staticmethod
    def shard_name(hashes: list[str]) -> str:
        return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()[:32]

    def shard_uris(self, key: str, shard: str) -> tuple[str, str]:
        """(payload, index) of one shard."""
        base = f"{self.key_dir(key)}/{shard}"
        return base + ".f32", base + ".idx"

    # -- API --------------------------------------------------------------------------

    def get(self, image_hash: str, key: str) -> np.ndarray | None:
        """The cached vector (read-only), or None when absent or failing its checks."""
        if not _HASH_RE.match(image_hash):
            raise ValueError(f"image hash must be 64 lowercase hex digits, got {image_hash!r}")
        kd = self.key_digest(key)
        index = self._key_index(key)
        where = index.get(image_hash)
        if where is None:
            self._count("misses")
            return None
        shard, row = where
        payload = self._payload(key, kd, shard)
        vector = None if payload is None else payload[row]
        if vector is None or not np.isfinite(vector).all():
            self._count("rejected")
            with self._lock:
                if index.get(image_hash) == where:
                    del index[image_hash]
            if vector is not None:
                LOGGER.warning("embedding cache: non-finite entry in shard %s; recomputing", shard)
            return None
        self._count("hits")
        return vector

    def put_many(self, hashes: list[str], key: str, vectors: np.ndarray) -> None:
        """Write one shard of these vectors (duplicates and non-finite rows left out).
        Errors are logged and counted, never raised."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes but vectors of shape {vectors.shape}")
        for h in hashes:
            if not _HASH_RE.match(h):
                raise ValueError(f"image hash must be 64 lowercase hex digits, got {h!r}")
        keep: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in keep and np.isfinite(vectors[i]).all():
                keep[h] = i
        if not keep:
            return
        self._write_key_file(key)
        names = list(keep)
        rows = np.ascontiguousarray(vectors[list(keep.values())], dtype="<f4")
        payload = rows.tobytes()
        shard = self.shard_name(names)
        header = {
            "format": FORMAT_VERSION,
            "key": key,
            "dtype": "<f4",
            "shape": [len(names), int(rows.shape[1])],
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "hashes": names,
        }
        data_uri, index_uri = self.shard_uris(key, shard)
        try:
            write_bytes(data_uri, payload, self.storage)
            write_bytes(index_uri, json.dumps(header).encode("utf-8"), self.storage)
        except Exception as err:  # noqa: BLE001 - the cache is an optimisation
            self._count("write_errors")
            self._warn_once("write", f"embedding cache: cannot write {data_uri} ({err})")
            return
        kd = self.key_digest(key)
        index = self._key_index(key)
        with self._lock:
            self._meta[(kd, shard)] = header
            self._payloads.pop((kd, shard), None)
            for row, h in enumerate(names):
                index[h] = (shard, row)
            self.stats["writes"] += len(names)

    def count(self, key: str | None = None) -> int:
        """Distinct images with a readable index entry, for one key or every key."""
        if key is not None:
            return len(self._key_index(key))
        total = 0
        for kd in self._key_digests():
            total += len(self._read_indexes(kd)[0])
        return total

    # -- index ------------------------------------------------------------------------

    def _key_index(self, key: str) -> dict[str, tuple[str, int]]:
        kd = self.key_digest(key)
        with self._lock:
            index = self._index.get(kd)
        if index is not None:
            return index
        index, meta = self._read_indexes(kd, key)
        with self._lock:
            if kd not in self._index:  # another thread may have loaded it meanwhile
                self._index[kd] = index
                self._meta.update({(kd, s): m for s, m in meta.items()})
            return self._index[kd]

    def _list(self, folder: str) -> list[str]:
        """Names of the files directly in a folder (local or S3); [] when it is absent."""
        try:
            if is_s3(folder):
                from worker.sources import s3

                return [k.rsplit("/", 1)[-1] for k, _ in s3.iter_keys(folder, self.storage)]
            path = Path(folder)
            return [p.name for p in path.iterdir()] if path.is_dir() else []
        except Exception as err:  # noqa: BLE001 - an unreadable cache is an empty one
            self._warn_once("read", f"embedding cache: cannot list {folder} ({err}); recomputing")
            return []

    def _key_digests(self) -> list[str]:
        if is_s3(self.dir):
            from worker.sources import s3

            try:
                keys = [k for k, _ in s3.iter_keys(self.dir, self.storage)]
            except Exception:  # noqa: BLE001
                return []
            _, prefix = s3.parse_uri(self.dir)
            prefix = prefix.rstrip("/") + "/" if prefix else ""
            return sorted({k[len(prefix) :].split("/", 1)[0] for k in keys if "/" in k})
        path = Path(self.dir)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []

    def _read_indexes(
        self, kd: str, key: str | None = None
    ) -> tuple[dict[str, tuple[str, int]], dict[str, dict]]:
        """Every valid shard index of a key folder: (hash -> (shard, row), shard -> header).
        Shards are read in name order, so which copy of a twice-written hash wins is fixed."""
        folder = f"{self.dir}/{kd}"
        shards = sorted(
            n[: -len(".idx")]
            for n in self._list(folder)
            if n.endswith(".idx") and _SHARD_RE.match(n[: -len(".idx")])
        )
        index: dict[str, tuple[str, int]] = {}
        meta: dict[str, dict] = {}
        uris = [f"{folder}/{s}.idx" for s in shards]
        for shard, uri, data in zip(shards, uris, self._read_all(uris), strict=True):
            try:
                if isinstance(data, BaseException):
                    raise data
                header = self._check_header(json.loads(data.decode("utf-8")), key)
            except Exception as err:  # noqa: BLE001 - a bad index hides its shard
                self._count("rejected")
                LOGGER.warning("embedding cache: ignoring shard index %s (%s)", uri, err)
                continue
            meta[shard] = header
            for row, h in enumerate(header["hashes"]):
                index[h] = (shard, row)
        return index, meta

    def _read_all(self, uris: list[str]) -> list:
        if is_s3(self.dir) and uris:
            from worker.sources import s3

            return [d for _, d in s3.read_many(uris, self.storage, return_exceptions=True)]
        out = []
        for uri in uris:
            try:
                out.append(read_bytes(uri, self.storage))
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out

    @staticmethod
    def _check_header(header: dict, key: str | None) -> dict:
        if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
            raise ValueError("not a shard index of this format")
        if key is not None and header.get("key") != key:
            raise ValueError("index belongs to another key")
        shape, hashes = header.get("shape"), header.get("hashes")
        if header.get("dtype") != "<f4" or not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(v, int) and v >= 0 for v in shape)
        ):
            raise ValueError(f"dtype {header.get('dtype')!r}, shape {shape!r}")
        if not isinstance(hashes, list) or len(hashes) != shape[0]:
            raise ValueError("hashes do not match the shape")
        if not all(isinstance(h, str) and _HASH_RE.match(h) for h in hashes):
            raise ValueError("malformed image hash")
        if header.get("bytes") != shape[0] * shape[1] * 4:
            raise ValueError("payload size does not match the shape")
        return header

    # -- payloads ---------------------------------------------------------------------

    def _payload(self, key: str, kd: str, shard: str) -> np.ndarray | None:
        """The shard's (rows, dim) float32 array, checked once; None when it is bad."""
        with self._lock:
            if (kd, shard) in self._payloads:
                self._payloads.move_to_end((kd, shard))
                return self._payloads[(kd, shard)]
            header = self._meta[(kd, shard)]
        uri = self.shard_uris(key, shard)[0]
        try:
            arr = self._open(uri, header)
        except Exception as err:  # noqa: BLE001 - missing, short, damaged: recompute
            arr = None
            LOGGER.warning("embedding cache: ignoring shard %s (%s); recomputing", uri, err)
        with self._lock:
            self._payloads[(kd, shard)] = arr
            if is_s3(uri):
                loaded = [k for k, v in self._payloads.items() if v is not None]
                for old in loaded[:-S3_SHARDS_KEPT]:
                    del self._payloads[old]
        return arr

    def _open(self, uri: str, header: dict) -> np.ndarray:
        shape = tuple(header["shape"])
        if is_s3(uri):
            data = read_bytes(uri, self.storage)
            if len(data) != header["bytes"]:
                raise ValueError(f"{len(data)} bytes, the index says {header['bytes']}")
            if hashlib.sha256(data).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            return np.frombuffer(data, dtype="<f4").reshape(shape)
        size = Path(uri).stat().st_size
        if size != header["bytes"]:
            raise ValueError(f"{size} bytes, the index says {header['bytes']}")
        if size == 0:
            return np.zeros(shape, dtype="<f4")
        arr = np.memmap(uri, dtype="<f4", mode="r", shape=shape)
        digest = hashlib.sha256()
        flat = arr.reshape(-1)
        step = 1 << 22
        for s in range(0, flat.size, step):
            digest.update(flat[s : s + step])
        if digest.hexdigest() != header["sha256"]:
            raise ValueError("checksum mismatch")
        return arr

    # -- internals --------------------------------------------------------------------

    def _write_key_file(self, key: str) -> None:
        digest = self.key_digest(key)
        if digest in self._keys_written:
            return
        self._keys_written.add(digest)
        try:
            write_bytes(f"{self.dir}/{digest}/KEY", key.encode("utf-8") + b"\n", self.storage)
        except Exception as err:  # noqa: BLE001
            self._warn_once("write", f"embedding cache: cannot write to {self.dir} ({err})")

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        LOGGER.warning(message)
