"""Nightly change that sees dilution (method.md §12.7): the images new since the previous run
tested against that run's images, end to end through the run store, and how the previous
run's embeddings are found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.jobs import write_job
from worker.__main__ import main
from worker.analysis import change_test, previous_vectors
from worker.embeddings import EmbeddedSet
from worker.job import parse_job


def _night(folder: Path, job: dict, s: np.ndarray, ids: list[str], store: Path) -> dict:
    np.savez(folder / "emb" / "S.npz", embeddings=s, ids=np.array(ids))
    code = main(["run", str(write_job(folder, job)), "--out", str(store), "--quiet"])
    assert code in (0, 1)
    return json.loads((store / "latest" / "report.json").read_text())


def test_a_third_from_a_new_domain_fails_the_change_gates(tmp_path):
    """Night 1: S drawn like P (first run: change gates pass with the reason). Night 2: a third
    of S replaced by a new domain; o_dist_mean moves little, but the change test of the 30 new
    images against night 1's is significant and far more than 5% of them are novel: both
    gates fail."""
    rng = np.random.default_rng(5)
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "P.npy", rng.normal(size=(90, 6)))
    job = {
        "seed": 0,
        "model": {"name": "precomputed"},
        "pca": {"dims": None, "sweep": []},
        "datasets": {
            "primary": {"name": "P", "embeddings": "emb/P.npy"},
            "secondary": [{"name": "S", "embeddings": "emb/S.npz"}],
        },
        "metrics": {"statistics": False, "duplicates": False, "energy_permutations": 199},
        "selection": {"strategy": ["farthest"], "counts": [1]},
        "gates": [
            {"metric": "change_p_value", "dataset": "S", "min": 0.01},
            {"metric": "change_novel_fraction", "dataset": "S", "max": 0.2},
        ],
    }
    store = tmp_path / "store"
    s = rng.normal(size=(90, 6))
    ids = [f"s{i:03d}" for i in range(90)]
    first = _night(tmp_path, job, s, ids, store)
    assert first["passed"] and all("first run" in g["reason"] for g in first["gates"])

    diluted = np.vstack([s[:60], rng.normal(size=(30, 6)) + np.array([3.0, 0, 0, 0, 0, 0])])
    second = _night(tmp_path, job, diluted, ids[:60] + [f"new{i:02d}" for i in range(30)], store)
    change = second["history"]["secondaries"][0]["change"]
    assert change["previous_run"] == first["run"]["run_id"]
    assert (change["previous_images"], change["previous_missing"]) == (60, 30)  # by id
    assert change["new_images"] == 30
    assert change["p_value"] == pytest.approx(1 / 200) and change["min_p_value"] == 1 / 200
    assert change["novel_fraction"] > 0.25 and change["base_rate"] == pytest.approx(0.05)
    assert change["novelty_p_value"] < 1e-4
    gates = {g["metric"]: g for g in second["gates"]}
    assert not gates["change_p_value"]["passed"] and not gates["change_novel_fraction"]["passed"]
    assert second["passed"] is False


def test_previous_embeddings_by_content_hash_then_the_cache():
    """A previous image whose content this run still has takes this run's vector; a removed
    one comes from the cache by its hash; one in neither is counted missing; no hash: by id."""
    current = EmbeddedSet("S", ["a", "b"], np.array([[1.0, 0.0], [2.0, 0.0]]), hashes=["ha", "hb"])
    cache = {"hc": np.array([3.0, 0.0])}
    previous = [("old-name-of-b", "hb"), ("c", "hc"), ("d", "hd")]
    vectors, missing = previous_vectors(previous, current, cache.get)
    assert vectors.tolist() == [[2.0, 0.0], [3.0, 0.0]] and missing == 1
    vectors, missing = previous_vectors([("a", None), ("z", None)], current)
    assert vectors.tolist() == [[1.0, 0.0]] and missing == 1


def test_change_test_reasons(tmp_path):
    job = parse_job(
        {
            "model": {"name": "precomputed"},
            "datasets": {
                "primary": {"name": "P", "embeddings": "p.npy"},
                "secondary": [{"name": "S", "embeddings": "s.npy"}],
            },
        },
        tmp_path,
    )
    x = np.random.default_rng(0).normal(size=(10, 3))
    nothing = change_test(x, x[:0], job, previous_run="r1")
    assert nothing.energy_distance is None and "no image is new" in nothing.reason
    few = change_test(x[:1], x, job, previous_run="r1")
    assert few.p_value is None and "only 1 embeddings" in few.reason
