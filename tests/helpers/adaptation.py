"""Adaptation worlds: synthetic crack images with masks, HOG I_dist by the reference, the
band and farthest selections, and a job on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import reference as R
from worker.job import parse_job

SIZE = 64


TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def crack_image(
    rng: np.random.Generator,
    *,
    orientation: str = "h",
    background: float = 180.0,
    crack: float = 50.0,
    lines: int = 2,
    texture: float = 18.0,
    size: int = SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, bool mask): `lines` thin wandering lines on a textured background."""
    yy, xx = np.mgrid[0:size, 0:size]
    bg = background + texture * rng.standard_normal((size, size))
    bg += 10 * np.sin(xx / rng.uniform(3, 7) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(4, 9))
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(lines):
        pos = rng.uniform(8, size - 8)
        slope = rng.uniform(-0.25, 0.25)
        for t in range(size):
            pos += slope + rng.normal(0, 0.4)
            pos = float(np.clip(pos, 2, size - 3))
            a, b = int(round(pos)), int(round(pos)) + int(rng.random() < 0.5)
            if orientation == "h":
                mask[a : b + 1, t] = True
            else:
                mask[t, a : b + 1] = True
    grey = np.where(mask, crack + 8 * rng.standard_normal((size, size)), bg)
    tint = rng.uniform(0.9, 1.1, size=3)
    rgb = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    return rgb, mask


def write_set(root: Path, name: str, specs: list[dict], seed: int, masks: bool = True) -> Path:
    """Images (and masks, 0/255 PNG) for a list of crack_image keyword dicts."""
    rng = np.random.default_rng(seed)
    img_dir = root / name / "images"
    img_dir.mkdir(parents=True)
    if masks:
        (root / name / "masks").mkdir()
    for k, spec in enumerate(specs):
        rgb, mask = crack_image(rng, **spec)
        Image.fromarray(rgb).save(img_dir / f"{name.lower()}_{k:03d}.png")
        if masks:
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                root / name / "masks" / f"{name.lower()}_{k:03d}.png"
            )
    return root / name


def hog_i_dist(primary: Path, secondary: Path) -> tuple[dict, dict]:
    """Raw and min-max scaled I_dist (sum of Euclidean distances, HOG features, no PCA)."""
    from worker.extractors.hog import HogExtractor

    ext = HogExtractor(image_size=SIZE, pixels_per_cell=16)

    def feats(folder: Path):
        files = sorted((folder / "images").glob("*.png"))
        return [f.name for f in files], ext.embed([Image.open(f).convert("RGB") for f in files])

    _, p = feats(primary)
    ids, s = feats(secondary)
    d = R.i_dist(s, p)
    scaled = (d - d.min()) / (d.max() - d.min())
    return dict(zip(ids, d.tolist(), strict=True)), dict(zip(ids, scaled.tolist(), strict=True))


def band_select(scaled: dict, q: int, seed: int, band=(0.6, 1.0)) -> list[str]:
    ids = sorted(i for i, v in scaled.items() if band[0] <= v <= band[1])
    rng = np.random.default_rng(seed)
    return [ids[k] for k in sorted(rng.permutation(len(ids))[:q])]


def farthest(scaled: dict, q: int) -> list[str]:
    return sorted(scaled, key=lambda i: -scaled[i])[:q]


def make_job(root: Path, adaptation: dict, secondary: list[dict], **extra):
    data = {
        "version": 1,
        "seed": 0,
        "output": {"dir": "out", "save_checkpoints": extra.pop("save_checkpoints", False)},
        "model": {"name": "hog"},
        "datasets": {
            "primary": {"name": "P", "path": "P/images", "masks": "P/masks"},
            "secondary": secondary,
        },
        "cache": {"dir": ".cache/embeddings"},
        "adaptation": {"enabled": True, "model": "unet", "image_size": SIZE, **adaptation},
        **extra,
    }
    return parse_job(data, root)


def tiny_segformer(folder: Path, num_labels: int) -> Path:
    """A tiny random SegFormer (two 8/16-channel stages) saved with save_pretrained."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    return folder
