"""Embedding cache and the parallel embedding stage, on a tiny DINOv2 loaded from disk."""

from __future__ import annotations

import hashlib
import io
import json
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
    # The full key is recorded next to the shards, for people; one shard for the batch.
    key_files = list((tmp_path / "c").glob("*/KEY"))
    assert [p.read_text().strip() for p in key_files] == [KEY]
    assert (
        len(list((tmp_path / "c").glob("*/*.f32")))
        == len(list((tmp_path / "c").glob("*/*.idx")))
        == 1
    )
    assert cache.count() == cache.count(KEY) == 3


def test_reopened_cache_reads_shards_memory_mapped(tmp_path):
    vecs = np.random.default_rng(0).normal(size=(5, 300)).astype(np.float32)
    EmbeddingCache(str(tmp_path)).put_many([_hash(i) for i in range(3)], KEY, vecs[:3])
    EmbeddingCache(str(tmp_path)).put_many([_hash(i) for i in range(3, 5)], KEY, vecs[3:])
    reopened = EmbeddingCache(str(tmp_path))
    got = [reopened.get(_hash(i), KEY) for i in range(5)]
    np.testing.assert_array_equal(np.stack(got), vecs)
    assert isinstance(got[0].base, np.memmap) or isinstance(got[0], np.memmap)
    assert reopened.count(KEY) == 5


def _shard_files(root: Path) -> tuple[Path, Path]:
    (data,) = root.glob("*/*.f32")
    return data, data.with_suffix(".idx")


@pytest.mark.parametrize(
    "damage",
    [
        "truncate",
        "flip_payload",
        "flip_index",
        "garbage_index",
        "empty",
        "other_key",
        "nan",
        "no_payload",
    ],
)
def test_damaged_shard_is_a_miss(tmp_path, damage):
    vecs = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)
    EmbeddingCache(str(tmp_path)).put_many([_hash(1), _hash(2)], KEY, vecs)
    data, index = _shard_files(tmp_path)
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-5])
    elif damage == "flip_payload":
        raw = bytearray(data.read_bytes())
        raw[-3] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "flip_index":
        index.write_text(index.read_text().replace('"bytes": 512', '"bytes": 511'))
    elif damage == "garbage_index":
        index.write_bytes(b"not an index at all")
    elif damage == "empty":
        data.write_bytes(b"")
    elif damage == "other_key":  # a valid shard of another key, copied into this folder
        other = EmbeddingCache(str(tmp_path / "other"))
        other.put_many([_hash(1), _hash(2)], "other-key", vecs)
        odata, oindex = _shard_files(tmp_path / "other")
        data.write_bytes(odata.read_bytes())
        index.write_bytes(oindex.read_bytes())
    elif damage == "nan":  # consistent index and checksum, but NaN inside
        bad = vecs.copy()
        bad[0, 3] = np.nan
        header = json.loads(index.read_text())
        header["sha256"] = hashlib.sha256(bad.tobytes()).hexdigest()
        data.write_bytes(bad.tobytes())
        index.write_text(json.dumps(header))
    elif damage == "no_payload":
        data.unlink()
    cache = EmbeddingCache(str(tmp_path))
    assert cache.get(_hash(1), KEY) is None
    assert cache.stats["rejected"] == 1
    if damage != "nan":  # the whole shard is refused; with NaN only that row
        assert cache.get(_hash(2), KEY) is None
    # recomputed rows are written again and read back
    cache.put_many([_hash(1)], KEY, vecs[:1])
    np.testing.assert_array_equal(EmbeddingCache(str(tmp_path)).get(_hash(1), KEY), vecs[0])


def test_bad_arguments(tmp_path):
    cache = EmbeddingCache(str(tmp_path))
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd", KEY)
    with pytest.raises(ValueError):
        cache.put_many([_hash(1), _hash(2)], KEY, np.zeros((3, 4), np.float32))
    cache.put_many([], KEY, np.zeros((0, 4), np.float32))  # nothing to do, no error
    assert not list(tmp_path.iterdir())


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
    ex = get_extractor(ModelConfig(name="dinov2", checkpoint=str(model_dir), image_size=64))
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
    (victim,) = (tmp_path / "cache").glob("*/*.f32")  # 4 images: one shard
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x55
    victim.write_bytes(bytes(data))

    extractor.forwarded = 0
    cache = EmbeddingCache(str(tmp_path / "cache"))
    again = _embed(images, extractor, cache)
    assert extractor.forwarded == 4 and cache.stats["rejected"] == 4  # each entry
    np.testing.assert_allclose(again.vectors, first.vectors, rtol=1e-5, atol=1e-5)
    reread = EmbeddingCache(str(tmp_path / "cache"))
    assert reread.get(first.hashes[2], extractor.cache_key) is not None  # rewritten, valid


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
    done = _embed(images, extractor, EmbeddingCache(str(tmp_path / "cache")), batch_size=3)
    assert extractor.forwarded == 5 and done.count == 8
    # the same numbers as a run that was never interrupted
    np.testing.assert_array_equal(done.vectors, _embed(images, extractor, None).vectors)


def test_shards_gather_batches_up_to_shard_rows(tmp_path, extractor, monkeypatch):
    """Batches of 2 are written as shards of 4 rows (SHARD_ROWS), the rest at the end."""
    from worker import embeddings

    monkeypatch.setattr(embeddings, "SHARD_ROWS", 4)
    images = tmp_path / "images"
    _write_images(images, 9)
    cache = EmbeddingCache(str(tmp_path / "cache"))
    first = _embed(images, extractor, cache, batch_size=2)
    idx = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/*.idx")]
    assert sorted(len(i["hashes"]) for i in idx) == [1, 4, 4]
    assert sorted(h for i in idx for h in i["hashes"]) == sorted(first.hashes)


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


def test_s3_cache_roundtrip_and_damage(monkeypatch, tmp_path):
    """cache.dir: s3://... on a moto server: shards written with one PUT each, read back
    whole, and a damaged payload is a miss."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from worker.job import S3Config, StorageConfig
    from worker.sources import s3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    s3.clear_clients()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="cache")
        storage = StorageConfig(s3=S3Config(endpoint_url=endpoint, region="us-east-1"))
        vecs = np.random.default_rng(3).normal(size=(6, 50)).astype(np.float32)
        writer = EmbeddingCache("s3://cache/nightly", storage=storage)
        writer.put_many([_hash(i) for i in range(4)], KEY, vecs[:4])
        writer.put_many([_hash(i) for i in range(4, 6)], KEY, vecs[4:])
        reader = EmbeddingCache("s3://cache/nightly", storage=storage)
        got = np.stack([reader.get(_hash(i), KEY) for i in range(6)])
        np.testing.assert_array_equal(got, vecs)
        assert reader.count() == 6 and reader.stats["hits"] == 6
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="cache")["Contents"]]
        assert (
            sum(k.endswith(".f32") for k in keys) == 2
            and sum(k.endswith(".idx") for k in keys) == 2
        )
        (small,) = [
            k for k in keys if k.endswith(".f32") and writer.shard_name([_hash(4), _hash(5)]) in k
        ]
        body = bytearray(client.get_object(Bucket="cache", Key=small)["Body"].read())
        body[0] ^= 0xFF
        client.put_object(Bucket="cache", Key=small, Body=bytes(body))
        fresh = EmbeddingCache("s3://cache/nightly", storage=storage)
        assert fresh.get(_hash(5), KEY) is None and fresh.get(_hash(1), KEY) is not None
    finally:
        s3.clear_clients()
        server.stop()
