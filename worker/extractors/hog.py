"""A classical descriptor that needs no download: HOG on the grey image plus an RGB histogram.

HOG (Dalal & Triggs 2005) captures edge orientation layout, the colour histogram captures
tone. It is a fast, deterministic baseline for offline runs and demos; it is not a learned
embedding and will not capture semantics the way CLIP or DINOv2 do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.feature import hog

from worker.images import DECODE_VERSION, resize_square

COLOUR_BINS = 16


class HogExtractor:
    def __init__(self, image_size: int = 128, pixels_per_cell: int = 16) -> None:
        self.image_size = image_size
        self.pixels_per_cell = pixels_per_cell
        self.cache_key = (
            f"hog-v1|size={image_size}|ppc={pixels_per_cell}|bins={COLOUR_BINS}"
            f"|decode={DECODE_VERSION}"
        )
        cells = image_size // pixels_per_cell
        dim = max(cells - 1, 0) ** 2 * 4 * 9 + 3 * COLOUR_BINS
        self.info = {
            "name": "hog",
            "checkpoint": None,
            "revision": None,
            "feature_dim": dim,
            "pooling": None,
            "image_size": image_size,
        }

    def embed_one(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(resize_square(image, self.image_size), dtype=np.float64) / 255.0
        grey = rgb @ np.array([0.299, 0.587, 0.114])
        h = hog(
            grey,
            orientations=9,
            pixels_per_cell=(self.pixels_per_cell, self.pixels_per_cell),
            cells_per_block=(2, 2),
            block_norm="L2-Hys",
            feature_vector=True,
        )
        colour = [
            np.histogram(rgb[..., c], bins=COLOUR_BINS, range=(0.0, 1.0))[0] / grey.size
            for c in range(3)
        ]
        return np.concatenate([h, *colour]).astype(np.float32)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.info["feature_dim"]), dtype=np.float32)
        return np.stack([self.embed_one(im) for im in images])
