"""An embedded demo dataset: procedural crack images with masks, and clearly different sets.

P   : dark thin cracks (random walks) on a smooth grey concrete-like texture
S1  : the same kind of cracks on a slightly different texture (near P)
S2  : cracks drawn over scikit-image's brick texture (farther)
S3  : crops of scikit-image's grass and gravel textures with no cracks (far)
Every image has a mask (crack pixels = 255), so the adaptation stage can run on it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96

DEMO_JOB = """\
# Demo job written by `python -m worker demo`; see config.example.yaml for every option.
version: 1
seed: 0
output: {{dir: {out}}}
model: {{name: hog, image_size: 96}}
pca: {{dims: 25, sweep: [5, 10, 15, 20, 25]}}
datasets:
  primary: {{name: P-concrete, path: data/P/images, masks: data/P/masks}}
  secondary:
    - {{name: S1-concrete-b, path: data/S1/images, masks: data/S1/masks}}
    - {{name: S2-brick, path: data/S2/images, masks: data/S2/masks}}
    - {{name: S3-grass-gravel, path: data/S3/images, masks: data/S3/masks}}
metrics: {{null_repeats: 10, mmd_permutations: 200, robustness: true}}
selection: {{strategy: [band, farthest, kcenter], counts: [1, 3, 7], band: [0.6, 1.0]}}
cache: {{dir: .cache}}
adaptation:            # a few CPU epochs of a small UNet: the paper's experiment in miniature
  enabled: true
  model: unet
  counts: [1, 3, 7]
  selection: band
  epochs: 4
  image_size: 96
  batch_size: 8
  lr: 0.003
gates:
  - {{metric: o_dist_scaled, dataset: S1-concrete-b, max: 0.5}}
  - {{metric: i_dist_scaled_p90, dataset: "*", max: 0.95}}
"""


def texture(
    rng: np.random.Generator, mean: float, rough: float, smooth: int, size: int = SIZE
) -> np.ndarray:
    """A size x size grey texture: Gaussian noise box-smoothed over `smooth` pixels, scaled to
    standard deviation `rough` around `mean`, clipped to 0..255 (float)."""
    noise = rng.normal(0.0, 1.0, (size + smooth, size + smooth))
    kernel = np.ones(smooth) / smooth
    noise = np.apply_along_axis(lambda r: np.convolve(r, kernel, "valid"), 1, noise)
    noise = np.apply_along_axis(lambda c: np.convolve(c, kernel, "valid"), 0, noise)
    noise = noise[:size, :size]
    noise = (noise - noise.mean()) / (noise.std() + 1e-9)
    return np.clip(mean + rough * noise, 0, 255)


def _crack_mask(rng: np.random.Generator, width: int = 2) -> np.ndarray:
    """A random-walk crack across the image, `width` pixels thick."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    horizontal = rng.random() < 0.5
    pos = rng.uniform(0.2, 0.8) * SIZE
    drift = rng.normal(0, 0.6)
    for t in range(SIZE):
        drift = 0.9 * drift + rng.normal(0, 0.5)
        pos = float(np.clip(pos + drift, 2, SIZE - 3))
        lo, hi = int(pos) - width // 2, int(pos) + (width + 1) // 2
        if horizontal:
            mask[lo:hi, t] = True
        else:
            mask[t, lo:hi] = True
    return mask


def crops(
    image: np.ndarray, rng: np.random.Generator, count: int, size: int = SIZE
) -> list[np.ndarray]:
    """`count` random square crops of a photograph (grey or RGB), each resized to size x size
    RGB uint8."""
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    h, w = image.shape[:2]
    out = []
    for _ in range(count):
        side = int(rng.integers(size, min(h, w) // 2))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        crop = Image.fromarray(image[y : y + side, x : x + side].astype(np.uint8))
        out.append(np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)))
    return out


def _save(folder: Path, index: int, rgb: np.ndarray, mask: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "images" / f"{index:03d}.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "masks" / f"{index:03d}.png")


def _cracked(background: np.ndarray, rng: np.random.Generator, darkness: float) -> tuple:
    mask = _crack_mask(rng, width=int(rng.integers(1, 4)))
    rgb = background.astype(np.float64).copy()
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    rgb[mask] *= darkness
    return rgb, mask


def make_demo_data(root: Path, seed: int = 0, per_set: int = 24) -> None:
    """Write P, S1, S2, S3 (images + masks) under root; deterministic for a seed."""
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    for i in range(per_set):
        bg = texture(rng, mean=150, rough=12, smooth=5)
        _save(root / "P", i, *_cracked(bg, rng, darkness=0.35))
    for i in range(per_set):
        bg = texture(rng, mean=135, rough=18, smooth=3)
        _save(root / "S1", i, *_cracked(bg, rng, darkness=0.45))
    for i, crop in enumerate(crops(skdata.brick(), rng, per_set)):
        _save(root / "S2", i, *_cracked(crop, rng, darkness=0.4))
    textures = crops(skdata.grass(), rng, per_set // 2) + crops(skdata.gravel(), rng, per_set // 2)
    for i, crop in enumerate(textures):
        rgb = crop if crop.ndim == 3 else np.stack([crop] * 3, axis=-1)
        _save(root / "S3", i, rgb, np.zeros((SIZE, SIZE), dtype=bool))


def write_demo(root: Path, seed: int = 0) -> Path:
    """Demo data plus its job file under root; returns the job file's path."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data" / "S3" / "masks").exists():
        make_demo_data(root / "data", seed=seed)
    job = root / "job.yaml"
    job.write_text(DEMO_JOB.format(out="out"), encoding="utf-8")
    return job
