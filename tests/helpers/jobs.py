"""Job builders: the one small job on precomputed embeddings the unit tests vary, the job
on embeddings behind the `embedding_job` fixture, and writing a job to YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml


def write_job(folder: Path, job: dict, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


def labelling_job(primary: str, secondary: str, out: str, **selection) -> dict:
    """A small image job (hog at 32 px) of P and one secondary S, for the labelling loop:
    novel and kcenter selections of 2 and 4 images; `selection` adds or replaces settings."""
    return {
        "version": 1,
        "seed": 0,
        "model": {"name": "hog", "image_size": 32},
        "pca": {"dims": 4, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "path": primary},
            "secondary": [{"name": "S", "path": secondary}],
        },
        "metrics": {"statistics": False, "duplicates": False, "null_repeats": 2},
        "selection": {"strategy": ["novel", "kcenter"], "counts": [2, 4], **selection},
        "output": {"dir": out},
        "cache": {"enabled": False},
    }


def embeddings_job(*secondaries: str, primary: str = "P", **over) -> dict:
    """A job dict on precomputed embeddings `<name>.npy` (primary, then each secondary);
    `over` replaces top-level blocks. The files are not written: tests that run the job write
    them, unit tests hand the embedded sets to the stage directly."""
    return {
        "version": 1,
        "seed": 0,
        "model": {"name": "precomputed"},
        "datasets": {
            "primary": {"name": primary, "embeddings": f"{primary}.npy"},
            "secondary": [{"name": s, "embeddings": f"{s}.npy"} for s in secondaries],
        },
        **over,
    }


def write_embedding_job(folder: Path) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """A job on precomputed embeddings: P (30 x 12) and two shifted secondaries, written under
    `folder`/emb. Returns (folder, job dict, {name: vectors})."""
    rng = np.random.default_rng(7)
    p = rng.normal(size=(30, 12))
    s1 = rng.normal(size=(20, 12)) + 0.3
    s2 = rng.normal(size=(25, 12)) * 1.5 + 2.0
    emb = folder / "emb"
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
    return folder, job, {"P": p, "S1": s1, "S2": s2}
