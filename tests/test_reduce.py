"""model.reduce: the seeded very sparse random projection (worker/reduce.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.reduce import RandomProjection, jl_eps, reduce_sets


def _planted(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n points in d dims: a 10-dim signal (three clusters) plus isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(10, d))
    centres = rng.normal(scale=3.0, size=(3, 10))
    signal = centres[np.arange(n) % 3] + rng.normal(size=(n, 10))
    return (signal @ basis + rng.normal(scale=2.0, size=(n, d))).astype(np.float32)


def _sq_dists(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    g = x @ x.T
    sq = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
    return sq[np.triu_indices(len(x), 1)]


def test_the_same_seed_gives_the_same_projection_and_another_seed_another():
    x = _planted(8, 5000)
    a = RandomProjection(5000, 256, seed=1)
    b = RandomProjection(5000, 256, seed=1)
    assert (a.matrix != b.matrix).nnz == 0
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), RandomProjection(5000, 256, seed=2)(x))
    # the matrix is very sparse: about k sqrt(d) non-zeros, values +-sqrt(sqrt(d) / k)
    assert 0.8 * 256 * 5000**0.5 < a.matrix.nnz < 1.2 * 256 * 5000**0.5
    np.testing.assert_allclose(np.unique(np.abs(a.matrix.data)), [(5000**0.5 / 256) ** 0.5])
    # chunked application equals one product (a memory-mapped input is read in chunks)
    np.testing.assert_allclose(a(x, chunk=3), (a.matrix @ x.T).T, rtol=1e-6, atol=1e-5)


def test_jl_eps_inverts_the_dimension_formula():
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    for n, k in [(50, 1024), (1000, 4096), (40_000, 4096)]:
        eps = jl_eps(n, k)
        assert 0 < eps < 1
        assert johnson_lindenstrauss_min_dim(n, eps=eps) == pytest.approx(k, abs=1)


@pytest.mark.parametrize("d,k", [(20_000, 1024), (50_000, 4096)])
def test_distortion_on_a_planted_set_is_within_the_documented_bound(d, k):
    """Every pairwise squared distance of 60 planted points changes by at most jl_eps(60, k)
    (relative), and the projection really is lossy (not the identity by accident)."""
    x = _planted(60, d, seed=d)
    y = RandomProjection(d, k, seed=0)(x)
    ratio = _sq_dists(y) / _sq_dists(x)
    worst = float(np.abs(ratio - 1).max())
    assert worst <= jl_eps(60, k), (worst, jl_eps(60, k))
    assert worst > 0.1 * jl_eps(60, k)
    assert abs(float(ratio.mean()) - 1) < 0.02  # unbiased


def test_reduce_sets_projects_precomputed_sets_with_one_matrix(tmp_path):
    from worker.embeddings import EmbeddedSet

    x = _planted(30, 3000)
    path = tmp_path / "p.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    sets = [
        EmbeddedSet("P", [str(i) for i in range(20)], mapped[:20]),
        EmbeddedSet("S", [str(i) for i in range(10)], mapped[20:]),
    ]
    info = reduce_sets(sets, 128, seed=5)
    assert info == {"method": "random", "dims": 128, "seed": 5, "input_dim": 3000}
    full = RandomProjection(3000, 128, seed=5)(x)
    np.testing.assert_array_equal(np.vstack([s.vectors for s in sets]), full)


def test_reduced_extractor_caches_projected_vectors(tmp_path):
    """model.reduce on an image extractor: the features are the base features projected,
    the cache key names the projection and the cache holds the projected vectors."""
    from PIL import Image

    from worker.cache import EmbeddingCache
    from worker.embeddings import embed_items
    from worker.extractors import get_extractor
    from worker.job import ModelConfig
    from worker.sources import list_images

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / f"{i}.png")
    base = get_extractor(ModelConfig(name="hog", image_size=64))
    reduced = get_extractor(ModelConfig(name="hog", image_size=64, reduce={"dims": 16, "seed": 3}))
    assert reduced.cache_key.startswith(base.cache_key) and "reduce=random" in reduced.cache_key
    items = list_images(str(tmp_path / "imgs"))
    cache = EmbeddingCache(str(tmp_path / "cache"))
    got = embed_items("S", items, reduced, cache=cache, batch_size=2)
    plain = embed_items("S", items, base, batch_size=2)
    expected = RandomProjection(plain.vectors.shape[1], 16, seed=3)(plain.vectors)
    np.testing.assert_allclose(got.vectors, expected, rtol=1e-5, atol=1e-6)
    assert reduced.info["feature_dim"] == 16
    assert reduced.info["reduce"] == {
        "method": "random",
        "dims": 16,
        "seed": 3,
        "input_dim": plain.vectors.shape[1],
    }
    again = embed_items("S", items, reduced, cache=EmbeddingCache(str(tmp_path / "cache")))
    np.testing.assert_array_equal(again.vectors, got.vectors)
    assert EmbeddingCache(str(tmp_path / "cache")).count(reduced.cache_key) == 5


def test_precomputed_job_with_reduce_reports_it(tmp_path):
    from tests.helpers.jobs import write_job
    from worker.job import load_job
    from worker.pipeline import run

    rng = np.random.default_rng(1)
    np.save(tmp_path / "P.npy", rng.normal(size=(40, 2000)))
    np.save(tmp_path / "S.npy", rng.normal(size=(30, 2000)) + 0.5)
    job = {
        "seed": 0,
        "model": {"name": "precomputed", "reduce": {"method": "random", "dims": 256}},
        "pca": {"dims": 5, "sweep": [5]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": "S", "embeddings": "S.npy"}],
        },
        "metrics": {"statistics": False, "robustness": False},
    }
    run(load_job(write_job(tmp_path, job, "job.yaml")), out_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["reduce"] == {
        "method": "random",
        "dims": 256,
        "seed": 0,
        "input_dim": 2000,
    }
    assert report["model"]["feature_dim"] == 256


def test_large_npy_is_memory_mapped_and_checked(tmp_path, monkeypatch):
    """A local .npy over MMAP_MIN_BYTES stays a read-only memory map in its dtype, with the
    same checks (and messages) as the in-memory path."""
    from worker import embeddings
    from worker.errors import JobError

    monkeypatch.setattr(embeddings, "MMAP_MIN_BYTES", 1)
    x = _planted(50, 300)
    np.save(tmp_path / "x.npy", x)
    got = embeddings.load_precomputed("P", str(tmp_path / "x.npy"))
    assert isinstance(got.vectors, np.memmap) and got.vectors.dtype == np.float32
    np.testing.assert_array_equal(got.vectors, x)
    assert got.ids == [str(i) for i in range(50)]
    bad = x.copy()
    bad[37, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(JobError, match=r"NaN or inf \(rows 37\)"):
        embeddings.load_precomputed("P", str(tmp_path / "bad.npy"))
    np.save(tmp_path / "huge.npy", x * np.float32(1e30))
    with pytest.raises(JobError, match="largest magnitude"):
        embeddings.load_precomputed("P", str(tmp_path / "huge.npy"))
