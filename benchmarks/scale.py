"""engine: ray against engine: local on this machine, and the scaling that follows (docs/ray.md).

    .venv/bin/python benchmarks/scale.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/scale.py --quick    # smaller sizes, ~1-2 min

Baseline: the local engine (worker.engine with all torch threads; embed_items with its
loader threads) measured in the same run, on the same data. Printed ratios are Ray time /
local time on this one machine: the price of Ray here, where it cannot gain anything.

1. Distances: I_dist of S against P (n = m, z = 25, float64) through
   `RayDistanceBackend` for several block sizes, against `metrics.image_dataset_distances`.
2. Embedding: HOG features of the demo images through one Ray Data pipeline
   (`embed_items_ray`, cache off) against `embed_items`.
3. Cost model: from (1) the per-block compute cost (pairs per second of one task) and the
   per-task overhead (a no-op task's round trip), the expected time of the distance stage
   for W single-core workers: T(W) = T_driver + ceil(B / W) * (t_block + t_task), printed
   for a 1M x 1M job, with the worker count where Ray overtakes this machine's local run.

Writes benchmarks/SCALE.md with the same tables.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from worker import engine, metrics  # noqa: E402
from worker.demo import make_demo_data  # noqa: E402
from worker.distributed import RayDistanceBackend, embed_items_ray  # noqa: E402
from worker.embeddings import embed_items  # noqa: E402
from worker.extractors.hog import HogExtractor  # noqa: E402
from worker.sources import list_images  # noqa: E402

Z = 25
BIG = 1_000_000  # the modelled job: n = m = 1M images


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_distances(n: int, block_sizes: list[int]) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(0)
    p = rng.normal(size=(n, Z))
    s = rng.normal(size=(n, Z)) + 0.1
    metrics.image_dataset_distances(s[:64], p[:64])  # warm-up
    t_local, ref = best_of(lambda: metrics.image_dataset_distances(s, p))
    rows = []
    for block in block_sizes:
        backend = RayDistanceBackend(block_rows=block)

        def remote(backend=backend):
            with engine.distance_backend(backend):
                return metrics.image_dataset_distances(s, p)

        remote()  # warm-up: workers started, P and S in the object store
        t_ray, got = best_of(remote)
        err = float(np.max(np.abs(got - ref) / ref))
        rows.append(
            {
                "n": n,
                "block_rows": block,
                "tasks": math.ceil(n / block),
                "local_s": t_local,
                "ray_s": t_ray,
                "ratio": t_ray / t_local,
                "rel_err": err,
            }
        )
    # one block's compute cost in a single-threaded worker, and a no-op task's round trip
    one = ray.remote(_one_block).options(num_cpus=1)
    ref_p, ref_s = ray.put(p), ray.put(s)
    block = block_sizes[-1]
    ray.get(one.remote(ref_s, ref_p, block))
    t_block = min(ray.get(one.remote(ref_s, ref_p, block)) for _ in range(3))
    noop = ray.remote(_noop).options(num_cpus=1)
    ray.get([noop.remote() for _ in range(20)])
    t = time.perf_counter()
    ray.get([noop.remote() for _ in range(200)])
    t_task = (time.perf_counter() - t) / 200 * int(ray.cluster_resources()["CPU"])
    model = {
        "pairs_per_s_per_core": block * n / t_block,
        "t_task": t_task,
        "local_pairs_per_s": n * n / t_local,
        "cores": os.cpu_count(),
    }
    return rows, model


def _one_block(s, p, block: int) -> float:
    center = engine.call_center(s, p)
    t = time.perf_counter()
    engine.block_row_distance_sums(s[:block], p, center)
    return time.perf_counter() - t


def _noop() -> None:
    return None


def bench_embedding(sizes: list[int]) -> list[dict]:
    """HOG embedding of the demo images, local vs one Ray Data pipeline, at two sizes, so
    that the fixed cost and the per-image cost of each engine can be told apart."""
    rows = []
    for per_set in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_demo_data(Path(tmp), seed=0, per_set=per_set)
            names = ("P", "S1")
            datasets = {n: list_images(str(Path(tmp) / n / "images")) for n in names}
            ex = HogExtractor(image_size=128)

            def local(datasets=datasets, ex=ex):
                return [embed_items(k, v, ex, batch_size=32) for k, v in datasets.items()]

            def remote(datasets=datasets, ex=ex):
                return embed_items_ray(datasets, ex, batch_size=32, num_workers=2)

            local()
            t_local, a = best_of(local, 2)
            remote()
            t_ray, b = best_of(remote, 2)
            rows.append(
                {
                    "images": sum(len(v) for v in datasets.values()),
                    "local_s": t_local,
                    "ray_s": t_ray,
                    "ratio": t_ray / t_local,
                    "identical": all(np.array_equal(x.vectors, b[x.name].vectors) for x in a),
                }
            )
    return rows


def fixed_and_per_item(rows: list[dict], key: str) -> tuple[float, float]:
    """(fixed seconds, seconds per image) of a line through the two measured sizes."""
    (n0, t0), (n1, t1) = [(r["images"], r[key]) for r in (rows[0], rows[-1])]
    per = max((t1 - t0) / (n1 - n0), 1e-9)
    return max(t0 - per * n0, 0.0), per


def put_rate() -> float:
    """Bytes per second of ray.put for a 200 MB float64 array (the driver's fixed cost)."""
    x = np.ones((25_000_000,))
    ray.put(x)
    t, _ = best_of(lambda: ray.put(x))
    return x.nbytes / t


def scaling_table(model: dict, block: int, workers: list[int]) -> list[dict]:
    """Expected distance-stage time for a BIG x BIG job on W single-core Ray workers."""
    blocks = math.ceil(BIG / block)
    t_block = block * BIG / model["pairs_per_s_per_core"]
    t_local = BIG * BIG / model["local_pairs_per_s"]
    t_driver = 2 * BIG * Z * 8 / model["put_bytes_per_s"]  # P and S into the object store
    out = []
    for w in workers:
        t = t_driver + math.ceil(blocks / w) * (t_block + model["t_task"])
        out.append({"workers": w, "time_s": t, "speedup_vs_local": t_local / t})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 10_000 if args.quick else 30_000
    blocks = [1024, 4096] if args.quick else [1024, 4096, 16384]
    sizes = [10, 40] if args.quick else [20, 160]
    started = time.time()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        dist, model = bench_distances(n, blocks)
        model["put_bytes_per_s"] = put_rate()
        emb = bench_embedding(sizes)
        workers = [1, 2, 4, 8, 16, 32, 64, 128, 256]
        table = scaling_table(model, 4096, workers)
    finally:
        ray.shutdown()

    lines = [
        "# engine: ray vs engine: local",
        "",
        f"Written by `benchmarks/scale.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {(time.time() - started) / 60:.1f} min; "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, Ray {ray.__version__}, local "
        "cluster `ray.init(num_cpus=all)`. Baseline: the local engine in the same run.",
        "",
        f"## Distances: I_dist, n = m = {n}, z = {Z}, float64",
        "",
        "| block_rows | tasks | local (s) | ray (s) | ray / local | max rel. diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in dist:
        lines.append(
            f"| {r['block_rows']} | {r['tasks']} | {r['local_s']:.2f} | {r['ray_s']:.2f} | "
            f"{r['ratio']:.2f}x | {r['rel_err']:.1e} |"
        )
    lines += [
        "",
        "## Embedding: HOG (128 px) on the demo images (P and S1), batch 32, 2 actors",
        "",
        "| images | local (s) | ray (s) | ray / local | vectors identical |",
        "|---|---|---|---|---|",
        *[
            f"| {r['images']} | {r['local_s']:.2f} | {r['ray_s']:.2f} | {r['ratio']:.2f}x | "
            f"{r['identical']} |"
            for r in emb
        ],
        "",
        f"Fitted from the two sizes: local {fixed_and_per_item(emb, 'local_s')[0]:.2f} s fixed + "
        f"{fixed_and_per_item(emb, 'local_s')[1] * 1e3:.1f} ms per image; Ray "
        f"{fixed_and_per_item(emb, 'ray_s')[0]:.2f} s fixed (pipeline and actor start-up, one "
        f"model load per actor) + {fixed_and_per_item(emb, 'ray_s')[1] * 1e3:.1f} ms per image.",
        "",
        "## Expected scaling of the distance stage (cost model from the numbers above)",
        "",
        f"One task (block_rows = 4096) computes {model['pairs_per_s_per_core'] / 1e6:.0f}M "
        f"distances/s on one core; a task costs {model['t_task'] * 1e3:.1f} ms of overhead; "
        f"ray.put moves {model['put_bytes_per_s'] / 1e9:.1f} GB/s; "
        f"the local engine on this machine's {model['cores']} cores does "
        f"{model['local_pairs_per_s'] / 1e6:.0f}M/s. For n = m = {BIG:,} (z = {Z}):",
        "",
        "| single-core workers | expected time (s) | vs local on this machine |",
        "|---|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['workers']} | {r['time_s']:.0f} | {r['speedup_vs_local']:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "SCALE.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
