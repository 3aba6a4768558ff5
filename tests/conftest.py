"""Shared fixtures: small embedding and image datasets written to a temp folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml


def write_job(folder: Path, job: dict, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def embedding_job(tmp_path: Path):
    """A job on precomputed embeddings: P (30 x 12) and two shifted secondaries."""
    rng = np.random.default_rng(7)
    p = rng.normal(size=(30, 12))
    s1 = rng.normal(size=(20, 12)) + 0.3
    s2 = rng.normal(size=(25, 12)) * 1.5 + 2.0
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "P.npy", p)
    np.savez(emb / "S1.npz", embeddings=s1, ids=np.array([f"s1_{i:02d}" for i in range(20)]))
    np.save(emb / "S2.npy", s2)
    job = {
        "version": 1,
        "seed": 0,
        "output": {"dir": "out"},
        "model": {"name": "precomputed"},
        "pca": {"dims": 5, "sweep": [2, 5, 8]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "emb/P.npy"},
            "secondary": [
                {"name": "S1", "embeddings": "emb/S1.npz"},
                {"name": "S2", "embeddings": "emb/S2.npy"},
            ],
        },
        "metrics": {"null_repeats": 5, "mmd_permutations": 50},
        "selection": {"strategy": ["band", "farthest", "kcenter"], "counts": [1, 3]},
        "gates": [{"metric": "o_dist_scaled", "dataset": "S1", "max": 0.9}],
    }
    return tmp_path, job, {"P": p, "S1": s1, "S2": s2}
