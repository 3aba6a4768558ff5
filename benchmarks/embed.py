"""Embedding-stage benchmarks (issue 33): every ratio against a baseline measured in the
same run, on the same files.

    python benchmarks/embed.py [--parts prep,stage,threads,cache,reduce,big] [--images 256]
                               [--device cpu|cuda] [--workers 2] [--batch-size 32]
                               [--big-n 20000] [--big-dim 200000] [--out embed.json]

No download: a small random DINOv2 is built from its config class, saved with
save_pretrained (with the published dinov2-base processor: shortest edge 256, centre crop
224, ImageNet normalisation) and loaded through worker.extractors. Images are 640 x 480
JPEGs (quality 90) in two sets: real photographs shipped with scikit-image (skimage.data:
astronaut, coffee, chelsea, rocket, ...; 4:3 crops at varying position and scale, resized
with Lanczos), the representative case; and synthetic gradients plus uniform noise, whose
entropy makes libjpeg's decoding about 1.5x slower, the worst case.

- prep: CPU ms per image on one core (time.process_time, torch at 1 thread) to turn a
  640 x 480 JPEG into the model's float32 input at image_size 448, per image set.
  Baselines: session 6's path (full decode, resize to 448, then the checkpoint's processor
  with its own resize and crop), the exact path (the processor with resize and crop off),
  session 7's fast path (PIL decode, copy out of PIL, torch uint8 resize to (H, W, 3), the
  affine map per batch of 32 as one op on a fresh NCHW tensor). The fast path: decode_pixels
  (libjpeg-turbo straight into an array), torch's uint8 resize to channel planes, the affine
  map per image into the extractor's reused batch buffer; its parts are timed alone too.
  Target: fast <= 3 ms on the photographs. Also printed: the CPU part when the model runs on
  a GPU, for the route a GPU takes now (decode_pixels, then `prepare`, which passes the
  decoded pixels on: the resize and the affine map run on the device) and for the former one
  (decode, CPU resize; only the affine map on the device), each against the CPU's fast path,
  and the main thread's copy of each decoded image into pinned (here: plain) host memory
  before its upload. With --device cuda the GPU route's extractor is a real CUDA one.
- stage: embed_items on the photographs on --workers decode threads (2, the job's setting
  on this machine) on --device, against bare
  single-core PIL decoding (Image.open + load) of the same files: target >= 0.5x. Printed
  beside it: the model alone on pre-made inputs (torch at 2 threads), stage / model-only,
  and the ideal rate 1 / (t_model + t_prep / 2) of two cores sharing the model and the
  preparation. Run for the "tiny" model (hidden 64, 2 layers, 2 heads; at 448 its forward
  pass bounds the stage) and a "nano" one (hidden 32, 1 layer, 1 head: forward pass about
  a tenth of the preparation, so the ratio measures the stage's own overhead), each with
  torch at 2 and at 1 intra-op thread beside the 2 decode threads.
- threads: the stage without the model (a zero-cost embed_prepared) on 2 threads against 1.
  Target >= 1.8x.
- cache: a cached re-run against the cold run that filled the cache, tiny model at
  image_size 392 with flatten pooling (785 tokens x 64 = 50,240 floats per image).
  Target >= 20x.
- reduce: the effect of model.reduce (random projection to 4096 and 1024 dims) on I_dist,
  O_dist and the ranking: a precomputed job on planted 20,000-float features (P and four
  secondaries at growing shift, 200 rows each), with and without the projection, same seed.
- big: a precomputed job at n = m = --big-n with --big-dim float32 features per image, as
  memory-mapped .npy files, with model.reduce to 4096: wall time and the job process's peak
  RSS (benchmarks/e2e.py's launcher). Target: <= 8 GB. Needs 2 x n x dim x 4 bytes of disk.

Machine load (`os.getloadavg`) is printed beside every part: other processes share the
cores, so compare ratios (measured interleaved, best of --repeats) rather than rates.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from worker.cache import EmbeddingCache  # noqa: E402
from worker.embeddings import embed_items  # noqa: E402
from worker.extractors import get_extractor  # noqa: E402
from worker.extractors.hf import resize_uint8  # noqa: E402
from worker.images import decode_image, decode_pixels, resize_square  # noqa: E402
from worker.job import ModelConfig  # noqa: E402
from worker.sources import list_images  # noqa: E402

MODELS = {
    # name: (hidden, layers, heads, patch); DINOv2's patch is 14
    # nano: 257 tokens at 448 (patch 28), a forward pass far cheaper than the preparation of
    # the same 448 x 448 input, so a stage with it measures the stage's own overhead
    "nano": (32, 1, 1, 28),
    "tiny": (64, 2, 2, 14),
    "small": (192, 4, 3, 14),
    "base": (768, 12, 12, 14),  # the shape of facebook/dinov2-base (random weights)
}


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def build_model(kind: str, folder: Path) -> Path:
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    hidden, layers, heads, patch = MODELS[kind]
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=16 * patch,  # 16 x 16 position embeddings, as DINOv2's 224 / 14
        patch_size=patch,
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


#: colour photographs that ship with scikit-image (no download)
PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "color.png",
)


def _jpeg(arr: np.ndarray | Image.Image) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo_jpegs(count: int, width: int = 640, height: int = 480) -> list[bytes]:
    """Real photographs (skimage.data), 4:3 crops of varying position and scale (every
    second round mirrored), resized to width x height, JPEG quality 90."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    sources = [Image.open(folder / name).convert("RGB") for name in PHOTOS]
    out = []
    for i in range(count):
        src, rnd = sources[i % len(sources)], i // len(sources)
        w, h = src.size
        cw = min(w, h * 4 / 3) * (0.75 + 0.25 * (rnd % 4) / 3)
        ch = cw * 3 / 4
        x0, y0 = (w - cw) * (i * 37 % 11) / 10, (h - ch) * (i * 53 % 7) / 6
        crop = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.LANCZOS)
        if rnd % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(_jpeg(crop))
    return out


def noise_jpegs(count: int, width: int = 640, height: int = 480) -> list[bytes]:
    """Smooth gradients plus uniform noise in [0, 40): the worst case for decoding."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(count):
        base = (xx * (i % 7 + 1) + yy * (i % 5 + 1)) % 256
        noise = rng.integers(0, 40, size=(height, width, 3))
        out.append(_jpeg(np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)))
    return out


def write_images(folder: Path, files: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(files):
        (folder / f"img_{i:05d}.jpg").write_bytes(data)
    return folder


def clocked(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best(repeats: int, fn, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def extractor(folder: Path, image_size: int, batch_size: int = 32, **kw):
    cfg = ModelConfig(
        name="dinov2", checkpoint=str(folder), image_size=image_size, batch_size=batch_size, **kw
    )
    return get_extractor(cfg)


def gpu_route(folder: Path, image_size: int, device: str):
    """The extractor of a model on a GPU: a CUDA one, or without a GPU a CPU one switched to
    the GPU's route (its host part, decode_pixels + prepare, is the same code)."""
    ex = extractor(folder, image_size, device=device)
    if ex.device.type != "cuda":
        ex._device_resize = True
    return ex


# --------------------------------------------------------------------------- parts


def part_prep(model: Path, sets: dict[str, list[bytes]], repeats: int, device: str) -> dict:
    torch.set_num_threads(1)
    ex = extractor(model, 448)
    gpu = gpu_route(model, 448, device)
    proc, size, draft = ex.image_processor, ex.image_size, ex.decode_size
    scale, shift = ex._scale, ex._shift

    def model_input(batch: list[np.ndarray]) -> None:
        with ex._lock:  # the CPU path of embed_prepared, without the model
            ex._cpu_input(batch)

    def timed(files: list[bytes]) -> dict:
        def old() -> None:  # session 6: the processor's own resize (256) and crop (224) won
            for data in files:
                proc(images=[resize_square(decode_image(data), size)], return_tensors="np")

        def exact() -> None:
            for data in files:
                ex.exact_input(resize_square(decode_image(data), size))

        def session7() -> None:  # PIL decode, copy out, (H, W, 3) resize, one batched op
            batch = []
            for data in files:
                pixels = np.array(decode_image(data, draft=draft), dtype=np.uint8)
                batch.append(resize_uint8(pixels, size).transpose(1, 2, 0))
                if len(batch) == 32:
                    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
                    x = x.to(torch.float32, memory_format=torch.contiguous_format)
                    x.mul_(scale).add_(shift)
                    batch = []

        def fast() -> None:  # what embed_items does per image, then per batch
            batch = []
            for data in files:
                batch.append(ex.prepare(decode_pixels(data, draft)))
                if len(batch) == 32:
                    model_input(batch)
                    batch = []

        def gpu_host() -> None:  # the loader threads' work when the model is on a GPU
            for data in files:
                gpu.prepare(decode_pixels(data, draft))

        def staging() -> None:  # the main thread's copy of each image before its upload
            for px in decoded:
                np.copyto(pinned[px.shape], px)

        n = len(files) // 32 * 32 or len(files)  # whole batches
        files = files[:n]
        decoded = [decode_pixels(data, draft) for data in files]
        resized = [ex.prepare(px) for px in decoded]
        pinned = {px.shape: np.empty_like(px) for px in decoded}
        steps = {
            "old": old,
            "exact": exact,
            "session7": session7,
            "fast": fast,
            "gpu_host": gpu_host,
            "staging": staging,
            "decode_pil": lambda: [decode_image(d) for d in files],
            "decode_turbo": lambda: [decode_pixels(d, draft) for d in files],
            "resize": lambda: [ex.prepare(px) for px in decoded],
            "normalise": lambda: [model_input(resized[i : i + 32]) for i in range(0, n, 32)],
        }
        out: dict = {}
        for _ in range(repeats):  # interleaved rounds
            for name, fn in steps.items():
                ms = best(1, fn, time.process_time) * 1000 / n
                out[name] = min(out.get(name, np.inf), ms)
        out["fast_on_gpu"] = out["fast"] - out["normalise"]  # the former GPU route's host part
        out["gpu_host_vs_fast"] = out["fast"] / out["gpu_host"]
        out["gpu_host_vs_fast_on_gpu"] = out["fast_on_gpu"] / out["gpu_host"]
        out["fast_vs_old"] = out["old"] / out["fast"]
        out["fast_vs_session7"] = out["session7"] / out["fast"]
        return out

    where = gpu.device if gpu.device.type == "cuda" else "its host part run on this CPU"
    results = {}
    for label, files in sets.items():
        r = results[label] = timed(files)
        print(
            f"prep, {label} (CPU ms per 640x480 JPEG at 448, one core; {load()}): "
            f"fast {r['fast']:.2f} (target <= 3 ms) = decode {r['decode_turbo']:.2f} + resize "
            f"{r['resize']:.2f} + normalise {r['normalise']:.2f}. Model on a GPU ({where}): "
            f"host part (decode + prepare; resized and normalised there) {r['gpu_host']:.2f}, "
            f"{r['gpu_host_vs_fast']:.2f}x less than fast, {r['gpu_host_vs_fast_on_gpu']:.2f}x "
            f"less than the former GPU route (CPU resize, normalised there) "
            f"{r['fast_on_gpu']:.2f}; plus the copy into pinned memory {r['staging']:.2f}. "
            f"Baselines: session 7's fast {r['session7']:.2f} "
            f"({r['fast_vs_session7']:.2f}x), session 6's path {r['old']:.2f} "
            f"({r['fast_vs_old']:.2f}x), exact {r['exact']:.2f}; PIL decode alone "
            f"{r['decode_pil']:.2f}"
        )
    torch.set_num_threads(os.cpu_count() or 1)
    return results


def part_stage(
    models: dict[str, Path],
    images: Path,
    repeats: int,
    image_size: int,
    device: str = "cpu",
    workers: int = 2,
    batch_size: int = 32,
) -> dict:
    items = list_images(str(images))
    paths = [Path(it.uri) for it in items]
    files = [p.read_bytes() for p in paths]
    n, cores = len(items), os.cpu_count() or 1

    def bare() -> None:
        for p in paths:
            with Image.open(p) as im:
                im.load()

    out: dict = {"image_size": image_size, "images": n}
    for kind, folder in models.items():
        ex = extractor(folder, image_size, batch_size, num_workers=workers, device=device)
        prepared: list[np.ndarray] = []

        def prep(ex=ex, prepared=prepared) -> None:  # the CPU work the stage adds per image
            torch.set_num_threads(1)
            prepared[:] = [ex.prepare(decode_pixels(d, ex.decode_size)) for d in files]
            for i in range(0, n, batch_size) if ex.device.type == "cpu" else ():
                with ex._lock:
                    ex._cpu_input(prepared[i : i + batch_size])
            torch.set_num_threads(cores)

        prep()
        ex.embed_prepared(prepared[:batch_size])  # warm-up

        def stage(ex=ex) -> None:
            embed_items("bench", items, ex, batch_size=batch_size, num_workers=workers)

        def model_only(ex=ex, prepared=prepared) -> None:
            ex.embed_prepared(prepared)

        variants = (cores, 1) if cores > 1 else (1,)  # torch's intra-op threads
        runs = [("bare", bare, cores)] + [
            (f"{name}{th}", fn, th)
            for th in variants
            for name, fn in (("model", model_only), ("stage", stage))
        ]
        t = {name: np.inf for name, _, _ in runs}  # wall seconds, best of the rounds
        c = dict(t)  # CPU seconds of the process, best of the rounds
        t_prep = np.inf
        for _ in range(repeats):  # interleaved rounds
            t_prep = min(t_prep, best(1, prep, time.process_time) / n)
            for name, fn, th in runs:
                torch.set_num_threads(th)
                wall, cpu = clocked(fn)
                t[name], c[name] = min(t[name], wall), min(c[name], cpu)
            torch.set_num_threads(cores)
        # the job's setting: torch's default intra-op threads (one per core)
        t_stage, t_model = t[f"stage{cores}"], t[f"model{cores}"]
        ideal = 1 / (min(t[f"model{th}"] for th in variants) / n + t_prep / cores)
        parts_cpu = t_prep + c["model1"] / n  # preparation + forward pass, no threads
        r = out[kind] = {
            "model": MODELS[kind],
            "attention": ex.model.config._attn_implementation,
            "bare_decode_img_s": n / t["bare"],
            "stage_img_s": n / t_stage,
            "model_only_img_s": n / t_model,
            **{f"stage_img_s_torch{th}": n / t[f"stage{th}"] for th in variants},
            **{f"model_only_img_s_torch{th}": n / t[f"model{th}"] for th in variants},
            **{f"stage_cpu_ms_torch{th}": c[f"stage{th}"] * 1000 / n for th in variants},
            "bare_decode_cpu_ms": c["bare"] * 1000 / n,
            "prep_cpu_ms": t_prep * 1000,
            "model_cpu_ms_torch1": c["model1"] * 1000 / n,
            "ideal_img_s": ideal,
            "ratio": t["bare"] / t_stage,
            # the ratio if the stage had all its cores and bare decoding its one (CPU time)
            "ratio_cpu": cores * c["bare"] / c[f"stage{cores}"],
            "stage_vs_model": t_model / t_stage,
            "stage_vs_ideal": (n / t_stage) / ideal,
            "stage_cpu_vs_parts": c[f"stage{cores}"] / n / parts_cpu,
        }
        by = ", ".join(
            f"{th}: stage {n / t[f'stage{th}']:.0f} img/s ({c[f'stage{th}'] * 1000 / n:.2f} ms "
            f"CPU per image), model {n / t[f'model{th}']:.0f} img/s"
            for th in variants
        )
        print(
            f"stage, {kind} DINOv2 {MODELS[kind]} at {image_size} ({r['attention']} attention), "
            f"on {ex.device} ({'resize there' if ex._device_resize else 'CPU resize'}), "
            f"{workers} decode threads, batch {batch_size}, torch threads {cores} ({load()}): "
            f"{n / t_stage:.0f} img/s; bare "
            f"single-core PIL decode {r['bare_decode_img_s']:.0f} img/s: {r['ratio']:.2f}x "
            f"(target >= 0.5x; in CPU time, {cores} cores against one: {r['ratio_cpu']:.2f}x). "
            f"Model alone {n / t_model:.0f} img/s: stage / model {r['stage_vs_model']:.2f}. "
            f"Prep {r['prep_cpu_ms']:.2f} ms CPU per image, ideal 1 / (t_model + t_prep / "
            f"{cores}) = {ideal:.0f} img/s: stage / ideal {r['stage_vs_ideal']:.2f}. Stage CPU "
            f"per image / (prep + model at 1 thread, {parts_cpu * 1000:.2f} ms): "
            f"{r['stage_cpu_vs_parts']:.2f}. By torch threads: {by}"
        )
    return out


class _NoModel:
    """An extractor whose forward pass costs nothing: the stage's own work only."""

    def __init__(self, ex) -> None:
        self.prepare, self.cache_key, self.num_workers = ex.prepare, ex.cache_key, 2
        self.info = dict(ex.info)

    def embed_prepared(self, inputs) -> np.ndarray:
        return np.zeros((len(inputs), 1), np.float32)


def part_threads(model: Path, images: Path, repeats: int) -> dict:
    items = list_images(str(images))
    free = _NoModel(extractor(model, 448))
    n = len(items)
    t, c = {1: np.inf, 2: np.inf}, {1: np.inf, 2: np.inf}
    torch.set_num_threads(1)  # the decode threads' own work, no intra-op threads beside them
    for _ in range(repeats):
        for w in (1, 2):
            wall, cpu = clocked(lambda w=w: embed_items("b", items, free, num_workers=w))
            t[w], c[w] = min(t[w], wall), min(c[w], cpu)
    torch.set_num_threads(os.cpu_count() or 1)
    out = {
        "one_img_s": n / t[1],
        "two_img_s": n / t[2],
        "ratio": t[1] / t[2],
        "one_cpu_ms": c[1] * 1000 / n,
        "two_cpu_ms": c[2] * 1000 / n,
    }
    print(
        f"threads (read + decode + prepare, no model; {load()}): 1 thread {n / t[1]:.0f} "
        f"img/s, 2 threads {n / t[2]:.0f} img/s: {out['ratio']:.2f}x (target >= 1.8x); CPU "
        f"per image {out['one_cpu_ms']:.2f} ms and {out['two_cpu_ms']:.2f} ms"
    )
    return out


def part_cache(
    model: Path, images: Path, tmp: Path, repeats: int, device: str = "cpu", workers: int = 2
) -> dict:
    items = list_images(str(images))
    ex = extractor(model, 392, num_workers=workers, device=device)  # 785 x 64 = 50,240 floats
    folder = tmp / "cache"
    start = time.perf_counter()
    cold = embed_items("b", items, ex, cache=EmbeddingCache(str(folder)), num_workers=workers)
    t_cold = time.perf_counter() - start
    warm = EmbeddingCache(str(folder))
    t_warm = best(repeats, lambda: embed_items("b", items, ex, cache=warm, num_workers=workers))
    again = embed_items("b", items, ex, cache=EmbeddingCache(str(folder)), num_workers=workers)
    np.testing.assert_array_equal(again.vectors, cold.vectors)
    assert warm.stats["misses"] == 0, warm.stats
    out = {
        "floats_per_image": int(cold.vectors.shape[1]),
        "cold_s": t_cold,
        "cached_s": t_warm,
        "ratio": t_cold / t_warm,
    }
    print(
        f"cache ({out['floats_per_image']} floats per image, {len(items)} images; {load()}): "
        f"cold {t_cold:.2f} s, cached re-run {t_warm:.2f} s: {out['ratio']:.1f}x "
        "(target >= 20x)"
    )
    return out


REDUCE_N, REDUCE_D = 200, 20_000  # per set; the unreduced job's PCA is the slow side


def _planted_sets(n: int, d: int, shifts: list[float], seed: int = 0) -> list[np.ndarray]:
    """P and secondaries: a 20-dim signal embedded in d dims plus noise; secondary k shifted
    by shifts[k] along a random signal direction, with its spread grown likewise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(20, d)) / np.sqrt(20)
    direction = rng.normal(size=20)
    out = []
    for shift in [0.0, *shifts]:
        z = rng.normal(size=(n, 20)) * (1 + 0.2 * shift) + shift * direction
        out.append((z @ basis + 0.5 * rng.normal(size=(n, d))).astype(np.float32))
    return out


def part_reduce(tmp: Path) -> dict:
    import yaml
    from scipy.stats import kendalltau

    from worker.job import load_job
    from worker.pipeline import run

    sets = _planted_sets(REDUCE_N, REDUCE_D, [0.3, 0.6, 0.9, 1.2])
    names = ["P"] + [f"S{i}" for i in range(1, len(sets))]
    for name, x in zip(names, sets, strict=True):
        np.save(tmp / f"{name}.npy", x)

    def job(reduce: dict | None) -> dict:
        model = {"name": "precomputed", **({"reduce": reduce} if reduce else {})}
        spec = {
            "seed": 0,
            "model": model,
            "pca": {"dims": 25, "sweep": [25]},
            "datasets": {
                "primary": {"name": "P", "embeddings": "P.npy"},
                "secondary": [{"name": n, "embeddings": f"{n}.npy"} for n in names[1:]],
            },
            "metrics": {"statistics": False, "robustness": False},
        }
        label = "none" if reduce is None else str(reduce["dims"])
        path = tmp / f"job_{label}.yaml"
        path.write_text(yaml.safe_dump(spec))
        start = time.perf_counter()
        run(load_job(path), out_dir=str(tmp / f"out_{label}"))
        wall = time.perf_counter() - start
        report = json.loads((tmp / f"out_{label}" / "report.json").read_text())
        return {"report": report, "wall_s": wall}

    base = job(None)
    out = {"n": REDUCE_N, "d": REDUCE_D, "secondaries": len(names) - 1, "runs": {}}
    ref = {s["name"]: s for s in base["report"]["secondaries"]}
    ranking = sorted(ref, key=lambda n: ref[n]["o_dist"])  # by O_dist, closest first
    for dims in (4096, 1024):
        got = job({"method": "random", "dims": dims, "seed": 0})
        rows = {s["name"]: s for s in got["report"]["secondaries"]}
        o_rel = [abs(rows[n]["o_dist"] / ref[n]["o_dist"] - 1) for n in ref]
        i_rel = [
            float(
                np.max(
                    np.abs(
                        np.array([im["i_dist"] for im in rows[n]["images"]])
                        / np.array([im["i_dist"] for im in ref[n]["images"]])
                        - 1
                    )
                )
            )
            for n in ref
        ]
        order = sorted(rows, key=lambda n: rows[n]["o_dist"])
        tau = kendalltau([ranking.index(n) for n in ref], [order.index(n) for n in ref])[0]
        out["runs"][dims] = {
            "o_dist_max_rel": max(o_rel),
            "i_dist_max_rel": max(i_rel),
            "ranking_same": order == ranking,
            "kendall_tau": float(tau),
            "wall_s": got["wall_s"],
        }
        same = out["runs"][dims]["ranking_same"]
        print(
            f"reduce to {dims} (planted {REDUCE_N} x {REDUCE_D} per set, {len(ref)} secondaries; "
            f"{load()}): O_dist max relative change {max(o_rel):.4f}, I_dist max "
            f"{max(i_rel):.4f}, ranking {'unchanged' if same else 'CHANGED'} "
            f"(tau {tau:.3f}); job {got['wall_s']:.1f} s vs {base['wall_s']:.1f} s unreduced"
        )
    return out


def part_big(tmp: Path, n: int, dim: int) -> dict:
    import yaml
    from e2e import child_peak_rss

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(16, dim)).astype(np.float32)
    noise = (0.3 * rng.normal(size=(257, dim))).astype(np.float32)
    start = time.perf_counter()
    for name, shift in (("P", 0.0), ("S", 0.4)):
        arr = np.lib.format.open_memmap(
            tmp / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, dim)
        )
        for s in range(0, n, 500):
            e = min(n, s + 500)
            z = rng.normal(size=(e - s, 16)).astype(np.float32) + shift
            arr[s:e] = z @ basis + noise[(np.arange(s, e) % 257)]
        arr.flush()
        del arr
    write_s = time.perf_counter() - start
    spec = {
        "seed": 0,
        "model": {"name": "precomputed", "reduce": {"method": "random", "dims": 4096}},
        "pca": {"dims": 25},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": "S", "embeddings": "S.npy"}],
        },
    }
    (tmp / "big.yaml").write_text(yaml.safe_dump(spec))
    wall, rss = child_peak_rss(
        [sys.executable, "-m", "worker", "run", str(tmp / "big.yaml"), "--quiet"], tmp
    )
    out = {"n": n, "dim": dim, "file_gb": 2 * n * dim * 4 / 1e9, "job_s": wall, "peak_rss_mb": rss}
    print(
        f"big ({n} + {n} x {dim} float32, {out['file_gb']:.1f} GB memory-mapped, reduce 4096; "
        f"{load()}): job {wall:.0f} s, peak RSS {rss / 1024:.2f} GB (target <= 8 GB); "
        f"writing the files took {write_s:.0f} s"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="prep,stage,threads,cache,reduce")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--image-size", type=int, default=448, help="for the stage part")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="model.device of prep, stage and cache")
    ap.add_argument("--workers", type=int, default=2, help="decode threads of stage and cache")
    ap.add_argument("--batch-size", type=int, default=32, help="for the stage part")
    ap.add_argument("--big-n", type=int, default=20_000)
    ap.add_argument("--big-dim", type=int, default=200_000)
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    results: dict = {"load_start": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, {load()}")
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        tmp = Path(tmp)
        model = build_model(args.model, tmp / "model")
        photos = photo_jpegs(args.images)
        images = write_images(tmp / "images", photos)
        if "prep" in parts:
            sets = {"photographs": photos, "noise (worst case)": noise_jpegs(min(args.images, 64))}
            results["prep"] = part_prep(model, sets, args.repeats, args.device)
        if "stage" in parts:
            models = {args.model: model}
            if args.model != "nano":
                models["nano"] = build_model("nano", tmp / "nano")
            results["stage"] = part_stage(
                models,
                images,
                args.repeats,
                args.image_size,
                args.device,
                args.workers,
                args.batch_size,
            )
        if "threads" in parts:
            results["threads"] = part_threads(model, images, args.repeats)
        if "cache" in parts:
            results["cache"] = part_cache(
                model, images, tmp, args.repeats, args.device, args.workers
            )
        if "reduce" in parts:
            (tmp / "reduce").mkdir()
            results["reduce"] = part_reduce(tmp / "reduce")
        if "big" in parts:
            (tmp / "big").mkdir()
            results["big"] = part_big(tmp / "big", args.big_n, args.big_dim)
    results["load_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
