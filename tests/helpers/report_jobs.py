"""Jobs the report's page budget is measured on (issue 30): a 10-set image matrix job with two
groups (concrete-like textures against grass, gravel and brick crops)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.jobs import write_job
from worker.demo import crops, texture

SIZE = 64


def _texture(rng: np.random.Generator, mean: float, rough: float) -> np.ndarray:
    return np.stack([texture(rng, mean, rough, smooth=4, size=SIZE)] * 3, axis=-1)


def _crops(image: np.ndarray, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    return crops(image, rng, count, size=SIZE)


def matrix_job(folder: Path, per_set: int = 10) -> Path:
    """P and 9 secondaries of `per_set` images: concrete1-4 like P (group "concrete"), grass1-3,
    gravel and brick (group "other"); datasets.matrix on, every yardstick on."""
    from skimage import data as skdata

    rng = np.random.default_rng(3)
    sets: dict[str, list[np.ndarray]] = {
        "P": [_texture(rng, 150, 12) for _ in range(per_set)],
    }
    for k in range(1, 5):
        sets[f"concrete{k}"] = [_texture(rng, 150 - 4 * k, 12 + 2 * k) for _ in range(per_set)]
    for k in range(1, 4):
        sets[f"grass{k}"] = _crops(skdata.grass(), rng, per_set)
    sets["gravel"] = _crops(skdata.gravel(), rng, per_set)
    sets["brick"] = _crops(skdata.brick(), rng, per_set)
    for name, images in sets.items():
        root = folder / "data" / name
        root.mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(images):
            Image.fromarray(arr.astype(np.uint8)).save(root / f"{i:03d}.png")
    secondary = [
        {
            "name": n,
            "path": f"data/{n}",
            "group": "concrete" if n.startswith("concrete") else "other",
        }
        for n in sets
        if n != "P"
    ]
    job = {
        "seed": 0,
        "model": {"name": "hog", "image_size": SIZE},
        "cache": {"enabled": False},
        "pca": {"dims": 10, "sweep": [5, 10]},
        "datasets": {"primary": {"name": "P", "path": "data/P"}, "secondary": secondary,
                     "matrix": True},
        "metrics": {"null_repeats": 5, "mmd_permutations": 100, "group_permutations": 200},
        "selection": {"strategy": ["band", "kcenter"], "counts": [1, 3]},
        "gates": [{"metric": "o_dist_ratio", "dataset": "*", "max": 3.0}],
    }  # fmt: skip
    return write_job(folder, job)
