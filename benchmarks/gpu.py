"""GPU benchmark (issue 18): the CUDA fused pass at n = m = 200k and embedding throughput.

    python benchmarks/gpu.py [--n 200000] [--images 2048] [--out benchmarks/GPU.md]

One prepared script for a GPU machine; every ratio is measured in this one run.

1. Fused S x P pass (engine.pair_pass: I_dist at z = 5, 10, 15, 20, 25 and each row's
   nearest P, one pass) on CUDA at n = m = --n, float32 (the default) and float64, against
   two baselines on the same data in the same run: the naive GPU route (torch.cdist in row
   chunks, one call per prefix plus one for the nearest row) and our engine on this machine's
   CPU cores (the first m' rows of S, scaled by m / m'). Error of float32 against float64.
2. Self pass (diversity: nearest other row of P) on CUDA at n.
3. Embedding: benchmarks/embed.py's prep, stage and cache parts on CUDA (small random
   DINOv2 through the real from_pretrained path; the GPU's route: the decode threads only
   read and decode, each image is resized and normalised on the GPU): the host CPU ms per
   image of that route against the CPU's, the whole pipeline's images/s against the model
   alone on pre-decoded images, and a cached re-run against a cold run.

Writes a Markdown report (--out) with the card's name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from e2e import SWEEP, projected  # noqa: E402

from worker import engine  # noqa: E402

BUDGETS = (1024, 4096)  # compute.memory_budget_mb values tried besides the default
DEVICE = "cuda"  # --device cpu: a smoke test of this script on a machine without a GPU


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def synced(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def cdist_baseline(sl: np.ndarray, pl: np.ndarray, chunk: int = 4096) -> dict[int, np.ndarray]:
    """The naive GPU route: torch.cdist row chunks, one pass per prefix and one for argmin."""
    a = torch.from_numpy(sl).float().to(DEVICE)
    b = torch.from_numpy(pl).float().to(DEVICE)
    out: dict[int, np.ndarray] = {}
    for z in SWEEP:
        sums = torch.empty(len(a), dtype=torch.float64, device=DEVICE)
        for s in range(0, len(a), chunk):
            sums[s : s + chunk] = torch.cdist(a[s : s + chunk, :z], b[:, :z]).sum(
                1, dtype=torch.float64
            )
        out[z] = sums.cpu().numpy()
    idx = torch.empty(len(a), dtype=torch.int64, device=DEVICE)
    for s in range(0, len(a), chunk):
        idx[s : s + chunk] = torch.cdist(a[s : s + chunk], b).argmin(1)
    out[-1] = idx.cpu().numpy()
    return out


def fused(n: int, cpu_rows: int) -> tuple[list[str], dict]:
    t0 = time.perf_counter()
    pl, sl = projected(n)
    lines = [
        f"Data: joint PCA to 25 of 128 decaying-variance columns, n = m = {n:,} "
        f"(made in {time.perf_counter() - t0:.1f} s on the CPU)."
    ]
    engine.pair_pass(sl[:256], pl[:4096], prefixes=SWEEP, nearest=True, device=DEVICE)  # warm-up
    res, times = {}, {}
    for prec in ("float32", "float64"):

        def run(prec=prec):
            res[prec] = engine.pair_pass(
                sl, pl, prefixes=SWEEP, nearest=True, precision=prec, device=DEVICE
            )

        times[prec] = synced(run)
        times[prec + "_again"] = synced(run)
    one = synced(lambda: engine.row_distance_sums(sl, pl, precision="float32", device=DEVICE))
    cdist_baseline(sl[:256], pl[:4096])  # warm-up
    base = {}
    times["cdist"] = synced(lambda: base.update(cdist_baseline(sl, pl)))
    # CPU engine on this machine's cores, first cpu_rows rows of S, scaled to m
    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    engine.pair_pass(sl[:cpu_rows], pl, prefixes=SWEEP, nearest=True, precision="float32")
    times["cpu"] = (time.perf_counter() - t) * n / cpu_rows
    # where the fused pass spends its time: one prefix alone, and larger tile budgets
    for z in (5, 25):
        times[f"only{z}"] = synced(
            lambda z=z: engine.pair_pass(sl, pl, prefixes=[z], precision="float32", device=DEVICE)
        )
    for budget in BUDGETS:
        times[f"budget{budget}"] = synced(
            lambda b=budget: engine.pair_pass(
                sl,
                pl,
                prefixes=SWEEP,
                nearest=True,
                memory_budget_mb=b,
                precision="float32",
                device=DEVICE,
            )
        )
    t = time.perf_counter()
    div = engine.self_pass(pl, precision="float32", device=DEVICE)
    sync()
    times["self"] = time.perf_counter() - t
    r32, r64 = res["float32"], res["float64"]
    err = max(float(np.max(np.abs(r32.i_dist[z] - r64.i_dist[z]) / r64.i_dist[z])) for z in SWEEP)
    err_cdist = max(float(np.max(np.abs(base[z] - r64.i_dist[z]) / r64.i_dist[z])) for z in SWEEP)
    same = int(np.sum(r32.nearest_index == r64.nearest_index))
    same_cdist = int(np.sum(base[-1] == r64.nearest_index))
    best32 = min(times["float32"], times["float32_again"])
    best64 = min(times["float64"], times["float64_again"])
    lines += [
        "",
        "| route | time (s) | vs ours float32 | I_dist rel. error vs ours float64 "
        "| same nearest index |",
        "|---|---|---|---|---|",
        f"| ours, {DEVICE}, float32 (default) | {best32:.2f} | 1.0x | {err:.1e} "
        f"| {same:,} / {n:,} |",
        f"| ours, {DEVICE}, float64 | {best64:.2f} | {best64 / best32:.1f}x slower | 0 "
        f"| {n:,} / {n:,} |",
        f"| torch.cdist chunks, CUDA float32 (naive GPU baseline) | {times['cdist']:.2f} | "
        f"{times['cdist'] / best32:.1f}x slower | {err_cdist:.1e} | {same_cdist:,} / {n:,} |",
        f"| ours, CPU, {os.cpu_count()} cores, float32 (m' = {cpu_rows:,}, scaled) | "
        f"{times['cpu']:.1f} | {times['cpu'] / best32:.0f}x slower | - | - |",
        "",
        f"First call (float32, includes CUDA set-up of the shapes): {times['float32']:.2f} s; "
        f"float64 first call {times['float64']:.2f} s. One I_dist at z = 25 alone (float32): "
        f"{one:.2f} s. Distances per second in the fused pass (float32, 5 prefixes): "
        f"{n * n / best32 / 1e9:.1f} G pairs/s.",
        f"One prefix alone (float32): z = 5 {times['only5']:.2f} s, z = 25 "
        f"{times['only25']:.2f} s. Fused pass with a larger tile budget (compute."
        "memory_budget_mb, default 256): "
        + ", ".join(f"{b} MB {times[f'budget{b}']:.2f} s" for b in BUDGETS)
        + ".",
        f"Self pass (nearest other row of P, diversity) at n = {n:,}, CUDA float32: "
        f"{times['self']:.2f} s (min distance {float(div.distance.min()):.3g}).",
    ]
    return lines, times


def tile_budgets(n: int) -> list[str]:
    """--quick: one prefix alone (z = 5, z = 25) and the five-prefix pass with the nearest P,
    each with the former 256 MB tiles and with compute.memory_budget_mb auto (best of 2)."""
    pl, sl = projected(n)
    auto = engine.auto_memory_budget_mb(DEVICE)
    engine.pair_pass(sl[:256], pl[:4096], prefixes=SWEEP, nearest=True, device=DEVICE)
    lines = [f"card {torch.cuda.get_device_name(0) if DEVICE == 'cuda' else 'cpu'}, n = m = {n:,}"]
    for budget in (256, auto):
        for prefixes, near in (([5], False), ([25], False), (SWEEP, True)):
            kw = {"prefixes": prefixes, "nearest": near, "memory_budget_mb": budget}

            def run(kw=kw):
                engine.pair_pass(sl, pl, precision="float32", device=DEVICE, **kw)

            best = min(synced(run) for _ in range(2))
            lines.append(
                f"budget {budget:.0f} MB, prefixes {prefixes}, nearest {near}: {best:.2f} s"
            )
            print(lines[-1], flush=True)
    return lines


def embedding(images: int, workers: int, models: list[str]) -> list[str]:
    import embed

    lines = []
    for model in models:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            embed.main(
                [
                    "--parts",
                    "prep,stage,cache",
                    "--device",
                    DEVICE,
                    "--images",
                    str(images),
                    "--model",
                    model,
                    "--workers",
                    str(workers),
                    "--batch-size",
                    "64",
                    "--repeats",
                    "2",
                ]
            )
        print(buf.getvalue(), flush=True)
        lines += [
            f"### DINOv2 '{model}' (random weights)",
            "",
            "```",
            buf.getvalue().rstrip(),
            "```",
            "",
        ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--cpu-rows", type=int, default=4000)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--models", default="small,base", help="embed.py models ('' skips)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="only the tile-budget grid, printed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "GPU.md"))
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 2
    if args.quick:
        tile_budgets(args.n)
        return 0
    start = time.perf_counter()
    card = "none (smoke test on the CPU)"
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        card = (
            f"{torch.cuda.get_device_name(0)} ({props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB); nvidia-smi: {smi}"
        )
    head = [
        "# GPU benchmark",
        "",
        f"Written by `benchmarks/gpu.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- card: {card}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPU cores",
        "",
        f"## Fused S x P pass: I_dist at z = {', '.join(map(str, SWEEP))} and nearest P, one pass",
        "",
    ]
    lines, _ = fused(args.n, args.cpu_rows)
    print("\n".join(head + lines), flush=True)
    emb = embedding(args.images, args.workers, args.models.split(",")) if args.models else []
    text = (
        "\n".join(
            head
            + lines
            + [
                "",
                "## Embedding: whole pipeline against the model alone (`benchmarks/embed.py`)",
                "",
                f"{args.images} JPEGs 640 x 480, model.image_size 448, batch 64, {args.workers} "
                "decode threads. 'model only' (embed_prepared) runs on images decoded "
                "beforehand: their upload, resize and normalisation on the device and the "
                "forward passes; 'stage' is embed_items (read and decode in the threads, then "
                "the same, in order). Goal: stage / model-only >= 0.9.",
                "",
                *emb,
                f"Total benchmark time {time.perf_counter() - start:.0f} s.",
            ]
        )
        + "\n"
    )
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
