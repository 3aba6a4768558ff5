"""Content-hash embedding cache, in a local folder or under an s3:// prefix.

An entry is one image's feature vector for one extractor, keyed by (sha256 of the image
bytes, the extractor's `cache_key`). Layout, one small file per image:

    <dir>/<sha256(cache_key)[:16]>/<image hash[:2]>/<image hash>.emb
    <dir>/<sha256(cache_key)[:16]>/KEY          the full cache_key, for people

One file per entry keeps lookups to a single read (no index, no listing, works the same on
S3) and makes every entry independent: a write is atomic (worker.sources.write_bytes:
temp file + rename locally, one PUT on S3), so a run killed half way keeps every batch it
finished and never leaves a half-written entry. It suits thousands to a few hundred
thousand images per extractor; the file count is one per (image, extractor).

Entry format: MAGIC, a 4-byte little-endian header length, a JSON header, then the raw
little-endian float32 payload. The header records the cache_key, the image hash, dtype,
shape and the payload's sha256. A read checks all of them and that the values are finite;
anything that does not check out is treated as a miss (recomputed and overwritten), never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from worker.sources import read_bytes, write_bytes

LOGGER = logging.getLogger("worker")

MAGIC = b"DDWEMB1\n"
FORMAT_VERSION = 1
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_WRITE_THREADS = 8


class EmbeddingCache:
    """get(hash, key) -> vector | None; put_many(hashes, key, vectors). Thread-safe."""

    def __init__(self, dir_uri: str, storage=None) -> None:
        self.dir = str(dir_uri).rstrip("/") or "/"
        self.storage = storage
        self._lock = threading.Lock()
        self._keys_written: set[str] = set()
        self._warned: set[str] = set()
        self.stats = {"hits": 0, "misses": 0, "rejected": 0, "writes": 0, "write_errors": 0}

    # -- paths ------------------------------------------------------------------------

    @staticmethod
    def key_digest(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]

    def entry_uri(self, image_hash: str, key: str) -> str:
        if not _HASH_RE.match(image_hash):
            raise ValueError(f"image hash must be 64 lowercase hex digits, got {image_hash!r}")
        return f"{self.dir}/{self.key_digest(key)}/{image_hash[:2]}/{image_hash}.emb"

    # -- encoding ---------------------------------------------------------------------

    @staticmethod
    def encode(image_hash: str, key: str, vector: np.ndarray) -> bytes:
        payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        header = json.dumps(
            {
                "format": FORMAT_VERSION,
                "key": key,
                "hash": image_hash,
                "dtype": "<f4",
                "shape": list(vector.shape),
                "sha256": hashlib.sha256(payload).hexdigest(),
            },
            sort_keys=True,
        ).encode("utf-8")
        return MAGIC + struct.pack("<I", len(header)) + header + payload

    @staticmethod
    def decode(data: bytes, image_hash: str, key: str) -> np.ndarray:
        """The vector in an entry, or ValueError saying what does not check out."""
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise ValueError("bad magic")
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if hlen > 1 << 20 or start + hlen > len(data):
            raise ValueError("bad header length")
        header = json.loads(data[start : start + hlen].decode("utf-8"))
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {header.get('format')!r}")
        if header.get("key") != key or header.get("hash") != image_hash:
            raise ValueError("entry belongs to another key or image")
        if header.get("dtype") != "<f4":
            raise ValueError(f"dtype {header.get('dtype')!r}")
        shape = header.get("shape")
        if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int)):
            raise ValueError(f"shape {shape!r}")
        payload = data[start + hlen :]
        if len(payload) != shape[0] * 4:
            raise ValueError(f"payload is {len(payload)} bytes, shape says {shape[0] * 4}")
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise ValueError("checksum mismatch")
        vector = np.frombuffer(payload, dtype="<f4").astype(np.float32)
        if not np.isfinite(vector).all():
            raise ValueError("non-finite values")
        return vector

    # -- API --------------------------------------------------------------------------

    def get(self, image_hash: str, key: str) -> np.ndarray | None:
        """The cached vector, or None when absent, unreadable or failing its checks."""
        uri = self.entry_uri(image_hash, key)
        try:
            data = read_bytes(uri, self.storage)
        except FileNotFoundError:
            self._count("misses")
            return None
        except Exception as err:  # noqa: BLE001 - any storage error is a miss, not a failure
            self._count("misses")
            self._warn_once("read", f"embedding cache: cannot read {uri} ({err}); recomputing")
            return None
        try:
            vector = self.decode(data, image_hash, key)
        except Exception as err:  # noqa: BLE001 - corrupt in any way: recompute
            self._count("rejected")
            LOGGER.warning("embedding cache: ignoring bad entry %s (%s); recomputing", uri, err)
            return None
        self._count("hits")
        return vector

    def put_many(self, hashes: list[str], key: str, vectors: np.ndarray) -> None:
        """Write one entry per image (atomically each). Errors are logged, never raised."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes but vectors of shape {vectors.shape}")
        for h in hashes:
            self.entry_uri(h, key)  # ValueError on a malformed hash, before writing anything
        if not len(hashes):
            return
        self._write_key_file(key)
        # One job per distinct hash (two writers to one path would share a temp file name);
        # non-finite vectors are not cached.
        unique: dict[str, np.ndarray] = {}
        for h, v in zip(hashes, vectors, strict=True):
            if h not in unique and np.isfinite(v).all():
                unique[h] = v
        jobs = list(unique.items())
        if not jobs:
            return
        if len(jobs) == 1:
            self._put_one(*jobs[0], key)
            return
        with ThreadPoolExecutor(min(_WRITE_THREADS, len(jobs))) as pool:
            list(pool.map(lambda job: self._put_one(job[0], job[1], key), jobs))

    # -- internals --------------------------------------------------------------------

    def _put_one(self, image_hash: str, vector: np.ndarray, key: str) -> None:
        uri = self.entry_uri(image_hash, key)
        try:
            write_bytes(uri, self.encode(image_hash, key, vector), self.storage)
        except Exception as err:  # noqa: BLE001 - the cache is an optimisation
            self._count("write_errors")
            self._warn_once("write", f"embedding cache: cannot write {uri} ({err})")
            return
        self._count("writes")

    def _write_key_file(self, key: str) -> None:
        digest = self.key_digest(key)
        if digest in self._keys_written:
            return
        self._keys_written.add(digest)
        try:
            write_bytes(f"{self.dir}/{digest}/KEY", key.encode("utf-8") + b"\n", self.storage)
        except Exception as err:  # noqa: BLE001
            self._warn_once("write", f"embedding cache: cannot write to {self.dir} ({err})")

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        LOGGER.warning(message)
