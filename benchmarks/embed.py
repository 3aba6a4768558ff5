"""Embedding throughput: the whole pipeline (read + decode + resize + processor + forward)
against the model alone on pre-loaded tensors, same model and same run; and a cached re-run
against a cold run.

No download: a small random DINOv2 (ViT-S-like, fewer layers) is built from its config class,
saved with save_pretrained and loaded through worker.extractors (the real from_pretrained
path). Images are synthetic JPEGs written to a temp folder.

    .venv/bin/python benchmarks/embed.py                     # defaults: 256 images, 2 workers
    .venv/bin/python benchmarks/embed.py --images 512 --workers 4 --device cuda

Goals: pipeline / model-only >= 0.9 on a GPU; cached re-run >= 20x faster than cold.
Every timing is the best of --repeats runs (other processes share the machine).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cache import EmbeddingCache  # noqa: E402
from worker.embeddings import embed_items  # noqa: E402
from worker.extractors import get_extractor  # noqa: E402
from worker.images import decode_image  # noqa: E402
from worker.job import ModelConfig  # noqa: E402
from worker.sources import list_images  # noqa: E402

MODELS = {
    # name: (hidden, layers, heads); patch 14 at 224 -> 257 tokens, as DINOv2
    "tiny": (64, 2, 2),
    "small": (192, 4, 3),
    "base": (768, 12, 12),  # the shape of facebook/dinov2-base (random weights)
}


def build_model(kind: str, folder: Path) -> Path:
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    hidden, layers, heads = MODELS[kind]
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=224,
        patch_size=14,
    )
    Dinov2Model(config).eval().save_pretrained(folder)
    # dinov2-base's processor: shortest edge 256 (bicubic), centre crop 224, ImageNet norm
    BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def write_images(folder: Path, count: int, width: int, height: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        base = (xx * (i % 7 + 1) + yy * (i % 5 + 1)) % 256
        noise = rng.integers(0, 40, size=(height, width, 3))
        arr = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        (folder / f"img_{i:05d}.jpg").write_bytes(buf.getvalue())


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=448, help="model.image_size (paper: 448)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        tmp = Path(tmp)
        build_model(args.model, tmp / "model")
        write_images(tmp / "images", args.images, args.width, args.height)
        ex = get_extractor(
            ModelConfig(
                name="dinov2",
                checkpoint=str(tmp / "model"),
                image_size=args.image_size,
                batch_size=args.batch_size,
                num_workers=args.workers,
                device=args.device,
                dtype=args.dtype,
            )
        )
        items = list_images(str(tmp / "images"))
        n = len(items)
        print(
            f"model: random DINOv2 '{args.model}' {MODELS[args.model]} on {ex.info['device']} "
            f"({ex.info['dtype']}), {n} JPEGs {args.width}x{args.height}, "
            f"batch {args.batch_size}, workers {args.workers}, torch threads "
            f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load avg "
            f"{os.getloadavg()[0]:.1f}"
        )

        # Model only: inputs decoded and processed beforehand, forward passes timed.
        prepared = [ex.prepare(decode_image(Path(it.uri).read_bytes())) for it in items]
        ex.embed_prepared(prepared[: args.batch_size])  # warm-up

        def model_only():
            ex.embed_prepared(prepared)
            if ex.device.type == "cuda":
                torch.cuda.synchronize()

        t_model = best_of(args.repeats, model_only)

        def pipeline(workers: int, cache=None):
            return lambda: embed_items(
                "bench", items, ex, cache=cache, batch_size=args.batch_size, num_workers=workers
            )

        t_seq = best_of(args.repeats, pipeline(0))
        t_par = best_of(args.repeats, pipeline(args.workers))

        # Cold run into a fresh cache (forward + writes), then cached re-runs.
        cache_dir = tmp / "cache"
        start = time.perf_counter()
        cold = embed_items(
            "bench",
            items,
            ex,
            cache=EmbeddingCache(str(cache_dir)),
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        t_cold = time.perf_counter() - start
        warm_cache = EmbeddingCache(str(cache_dir))
        t_cached = best_of(args.repeats, pipeline(args.workers, warm_cache))
        assert warm_cache.stats["misses"] == 0, warm_cache.stats
        again = embed_items("bench", items, ex, cache=warm_cache, batch_size=args.batch_size)
        np.testing.assert_array_equal(again.vectors, cold.vectors)

        def rate(t: float) -> str:
            return f"{n / t:8.1f} img/s  ({t:6.2f} s)"

        print(f"model only (pre-loaded tensors)      {rate(t_model)}")
        print(f"pipeline, sequential (0 workers)     {rate(t_seq)}")
        print(f"pipeline, {args.workers} decode threads          {rate(t_par)}")
        print(f"pipeline, cold run into a new cache  {rate(t_cold)}")
        print(f"pipeline, cached re-run              {rate(t_cached)}")
        print(f"ratio pipeline / model-only          {t_model / t_par:6.3f}  (goal >= 0.9 on GPU)")
        print(f"ratio sequential / model-only        {t_model / t_seq:6.3f}")
        print(f"ratio cold / cached re-run           {t_cold / t_cached:6.1f}x (goal >= 20x)")
        print(f"feature dim {cold.vectors.shape[1]}, cache entries {warm_cache.stats['hits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
