"""Feature extractor registry. An extractor turns a batch of RGB PIL images into (B, d) features.

Every extractor has:
- `info`: dict for report.json (name, checkpoint, revision, feature_dim, pooling, image_size)
- `cache_key`: string that changes whenever the features would (model, revision, pooling,
  image size, prompt); the embedding cache keys on (image bytes hash, cache_key)
- `embed(images) -> np.ndarray` of shape (B, d), float32
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from worker.job import ModelConfig


class Extractor(Protocol):
    info: dict
    cache_key: str

    def embed(self, images: list[Image.Image]) -> np.ndarray: ...


def get_extractor(cfg: ModelConfig) -> Extractor:
    """Build the extractor a job's `model:` names."""
    if cfg.name == "precomputed":
        raise ValueError("'precomputed' has no extractor: every dataset must give 'embeddings'")
    if cfg.name == "hog":
        from worker.extractors.hog import HogExtractor

        extractor = HogExtractor(image_size=cfg.image_size or 128)
    else:
        from worker.extractors import hf

        extractor = hf.build(cfg)
    if cfg.reduce is not None:  # model.reduce: projected as embedded, cached projected
        from worker.reduce import ReducedExtractor

        extractor = ReducedExtractor(extractor, cfg.reduce.dims, cfg.reduce.seed)
    return extractor


class PerturbedExtractor:
    """Another extractor applied to perturbed images (the robustness probe)."""

    def __init__(self, base: Extractor, kind: str) -> None:
        from worker.images import perturb_image

        self.base, self.kind, self._perturb = base, kind, perturb_image
        self.info = dict(base.info)
        self.cache_key = f"{base.cache_key}|perturb={kind}"
        self.num_workers = getattr(base, "num_workers", None)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return self.base.embed([self._perturb(im, self.kind) for im in images])
