"""Embedding cache and the parallel embedding stage, on a tiny DINOv2 loaded from disk."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.extractors import save_tiny
from worker.cache import EmbeddingCache
from worker.embeddings import content_hash, embed_items
from worker.extractors import get_extractor
from worker.job import ModelConfig
from worker.sources import list_images

KEY = "test-key|v1"


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


# --------------------------------------------------------------------------- cache alone


def test_put_get_roundtrip_and_key_separation(tmp_path):
    cache = EmbeddingCache(str(tmp_path / "c"))
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    cache.put_many([_hash(i) for i in range(3)], KEY, vecs)
    for i in range(3):
        got = cache.get(_hash(i), KEY)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, vecs[i])
    assert cache.get(_hash(0), "other-key") is None
    assert cache.get(_hash(9), KEY) is None
    assert cache.stats["hits"] == 3 and cache.stats["misses"] == 2 and cache.stats["writes"] == 3
    # The full key is recorded next to the entries, for people.
    key_files = list((tmp_path / "c").glob("*/KEY"))
    assert [p.read_text().strip() for p in key_files] == [KEY]


def test_reopened_cache_reads_entries(tmp_path):
    vec = np.random.default_rng(0).normal(size=(1, 300)).astype(np.float32)
    EmbeddingCache(str(tmp_path)).put_many([_hash(1)], KEY, vec)
    np.testing.assert_array_equal(EmbeddingCache(str(tmp_path)).get(_hash(1), KEY), vec[0])


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip_payload", "flip_header", "garbage", "empty", "other_key", "nan"],
)
def test_damaged_entry_is_a_miss(tmp_path, damage):
    cache = EmbeddingCache(str(tmp_path))
    vec = np.linspace(-1, 1, 64, dtype=np.float32)[None]
    cache.put_many([_hash(1)], KEY, vec)
    path = Path(cache.entry_uri(_hash(1), KEY))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-5]
    elif damage == "flip_payload":
        data[-3] ^= 0xFF
    elif damage == "flip_header":
        data[20] ^= 0x01
    elif damage == "garbage":
        data = bytearray(b"not an entry at all" * 10)
    elif damage == "empty":
        data = bytearray()
    elif damage == "other_key":  # a valid entry for another key, copied into this path
        data = bytearray(EmbeddingCache.encode(_hash(1), "other-key", vec[0]))
    elif damage == "nan":  # consistent header and checksum, but NaN inside
        bad = vec[0].copy()
        bad[3] = np.nan
        data = bytearray(EmbeddingCache.encode(_hash(1), KEY, bad))
    path.write_bytes(bytes(data))
    assert cache.get(_hash(1), KEY) is None
    assert cache.stats["rejected"] == 1


def test_bad_arguments(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd", KEY)
    with pytest.raises(ValueError):
        cache.put_many([_hash(1), _hash(2)], KEY, np.zeros((3, 4), np.float32))
    cache.put_many([], KEY, np.zeros((0, 4), np.float32))  # nothing to do, no error


def test_non_finite_vectors_are_not_cached_and_duplicates_written_once(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    vecs = np.ones((3, 4), np.float32)
    vecs[1, 0] = np.inf
    cache.put_many([_hash(1), _hash(2), _hash(1)], KEY, vecs)
    assert cache.get(_hash(2), KEY) is None
    assert cache.get(_hash(1), KEY) is not None
    assert cache.stats["writes"] == 1


def test_unwritable_cache_warns_and_does_not_fail(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    cache = EmbeddingCache(str(blocker / "cache"))
    cache.put_many([_hash(1)], KEY, np.ones((1, 4), np.float32))
    assert cache.stats["write_errors"] == 1
    assert cache.get(_hash(1), KEY) is None


# --------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny("dinov2", tmp_path_factory.mktemp("cache_model") / "dinov2")


@pytest.fixture(scope="module")
def extractor(model_dir):
    """A tiny DINOv2 whose forward passes are counted (images through the model)."""
    ex = get_extractor(ModelConfig(name="dinov2", checkpoint=str(model_dir), image_size=72))
    ex.forwarded = 0

    def count(module, args, kwargs, output):
        ex.forwarded += kwargs["pixel_values"].shape[0]

    ex.model.register_forward_hook(count, with_kwargs=True)
    return ex


def _write_images(folder: Path, count: int, seed: int = 0, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(start, start + count):
        arr = rng.integers(0, 256, size=(40 + i % 7, 56, 3), dtype=np.uint8)
        fmt = "PNG" if i % 2 else "JPEG"
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        (folder / f"img_{i:03d}.{fmt.lower()}").write_bytes(buf.getvalue())


def _embed(folder, extractor, cache, **kw):
    return embed_items("S", list_images(str(folder)), extractor, cache=cache, **kw)


def test_rerun_forwards_nothing_and_one_new_image_forwards_one(tmp_path, extractor):
    images = tmp_path / "images"
    _write_images(images, 9)
    cache = EmbeddingCache(str(tmp_path / "cache"))

    extractor.forwarded = 0
    first = _embed(images, extractor, cache, batch_size=4, num_workers=2)
    assert extractor.forwarded == 9 and first.count == 9
    assert first.vectors.shape == (9, 17 * 32)

    extractor.forwarded = 0
    again = _embed(images, extractor, EmbeddingCache(str(tmp_path / "cache")), batch_size=4)
    assert extractor.forwarded == 0
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert again.hashes == first.hashes and again.ids == first.ids

    _write_images(images, 1, seed=5, start=9)
    extractor.forwarded = 0
    more = _embed(images, extractor, cache, batch_size=4)
    assert extractor.forwarded == 1 and more.count == 10
    np.testing.assert_array_equal(more.vectors[:9], first.vectors)
    np.testing.assert_array_equal(more.vectors[9], extractor.embed([_open(images, more.ids[9])])[0])


def _open(folder: Path, item_id: str) -> Image.Image:
    return Image.open(folder / item_id).convert("RGB")


def test_corrupt_entry_is_recomputed_and_rewritten(tmp_path, extractor):
    images = tmp_path / "images"
    _write_images(images, 4)
    cache = EmbeddingCache(str(tmp_path / "cache"))
    first = _embed(images, extractor, cache)
    victim = Path(cache.entry_uri(first.hashes[2], extractor.cache_key))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x55
    victim.write_bytes(bytes(data))

    extractor.forwarded = 0
    again = _embed(images, extractor, cache)
    assert extractor.forwarded == 1
    np.testing.assert_allclose(again.vectors, first.vectors, rtol=1e-5, atol=1e-5)
    assert cache.get(first.hashes[2], extractor.cache_key) is not None  # rewritten, valid


def test_parallel_decode_equals_sequential_with_skips(tmp_path, extractor):
    images = tmp_path / "images"
    _write_images(images, 11)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    grey = Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20)
    grey.save(images / "grey16.png")
    rgba = Image.new("RGBA", (30, 50), (200, 10, 10, 128))
    rgba.save(images / "alpha.png")

    seq = _embed(images, extractor, None, batch_size=3, num_workers=0)
    par = _embed(images, extractor, None, batch_size=3, num_workers=3)
    par_small_window = _embed(
        images, extractor, None, batch_size=3, num_workers=4, prefetch_batches=1
    )
    assert seq.ids == par.ids == par_small_window.ids
    assert seq.count == 13
    np.testing.assert_array_equal(par.vectors, seq.vectors)
    np.testing.assert_array_equal(par_small_window.vectors, seq.vectors)
    assert [s["id"] for s in par.skipped] == ["broken.jpg", "empty.png"]
    # (PIL's message names a BytesIO address, so compare up to the first parenthesis)
    assert [s["reason"].split("(")[0] for s in par.skipped] == [
        s["reason"].split("(")[0] for s in seq.skipped
    ]
    assert all(s["dataset"] == "S" and s["reason"] for s in par.skipped)
    # Same as embedding the decoded images directly, in one call.
    direct = extractor.embed([_open(images, i) for i in ("img_000.jpeg", "img_001.png")])
    np.testing.assert_allclose(
        seq.vectors[[seq.ids.index("img_000.jpeg"), seq.ids.index("img_001.png")]],
        direct,
        rtol=1e-5,
        atol=1e-5,
    )


def test_progress_reaches_total_and_never_goes_back(tmp_path, extractor):
    images = tmp_path / "images"
    _write_images(images, 7)
    (images / "bad.png").write_bytes(b"nope")
    seen: list[int] = []
    _embed(images, extractor, None, batch_size=3, num_workers=2, progress=seen.append)
    assert seen and seen[-1] == 8 and seen == sorted(seen)


def test_killed_run_keeps_finished_batches(tmp_path, extractor):
    images = tmp_path / "images"
    _write_images(images, 8)
    cache = EmbeddingCache(str(tmp_path / "cache"))

    class Killed(Exception):
        pass

    class DiesOnSecondBatch:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0
            self.cache_key, self.info, self.num_workers = inner.cache_key, inner.info, 2
            self.prepare = inner.prepare

        def embed_prepared(self, batch):
            self.calls += 1
            if self.calls == 2:
                raise Killed
            return self.inner.embed_prepared(batch)

    with pytest.raises(Killed):
        _embed(images, DiesOnSecondBatch(extractor), cache, batch_size=3)
    items = list_images(str(images))
    cached = [
        cache.get(content_hash(Path(it.uri).read_bytes()), extractor.cache_key) is not None
        for it in items
    ]
    assert cached == [True] * 3 + [False] * 5

    extractor.forwarded = 0
    done = _embed(images, extractor, cache, batch_size=3)
    assert extractor.forwarded == 5 and done.count == 8


def test_extractor_without_prepare_still_parallel(tmp_path):
    """HOG has only embed(list[PIL]): decode runs in threads, embed on full batches."""
    images = tmp_path / "images"
    _write_images(images, 6)
    hog = get_extractor(ModelConfig(name="hog", image_size=64))
    seq = _embed(images, hog, None, batch_size=4, num_workers=0)
    par = _embed(images, hog, EmbeddingCache(str(tmp_path / "c")), batch_size=4, num_workers=3)
    np.testing.assert_array_equal(seq.vectors, par.vectors)
    cached = _embed(images, hog, EmbeddingCache(str(tmp_path / "c")), batch_size=4)
    np.testing.assert_array_equal(cached.vectors, seq.vectors)


def test_default_num_workers(monkeypatch):
    """model.num_workers: a number as given; auto (the default) or no setting: one decode
    thread per usable core, at most AUTO_MAX_WORKERS."""
    from types import SimpleNamespace

    from worker import embeddings

    assert ModelConfig(name="hog").num_workers == "auto"
    for cores, expected in [(1, 1), (2, 2), (16, embeddings.AUTO_MAX_WORKERS)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _, c=cores: set(range(c)))
        assert embeddings.default_num_workers(SimpleNamespace(num_workers="auto")) == expected
        assert embeddings.default_num_workers(object()) == expected
        assert embeddings.default_num_workers(SimpleNamespace(num_workers=3)) == 3
        assert embeddings.default_num_workers(SimpleNamespace(num_workers=0)) == 0
