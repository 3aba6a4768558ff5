"""Whole-job benchmark (issue 18): fused passes, precision, start-up, end-to-end, scale.

    python benchmarks/e2e.py [--n N] [--big N] [--parts start_up,end_to_end] [--device cuda]
                             [--out e2e.json]

Every ratio is measured in this one run against a named baseline:

- fused: engine.pair_pass (I_dist at z = 5, 10, 15, 20, 25 and nearest P, one pass) against
  the separate calls it replaces (5 x row_distance_sums + nearest_distances).
- precision: float32 tiles with float64 accumulation against float64, on PCA-projected
  features (joint PCA to 25 of 128 decaying-variance columns), n = m = 20k: the largest
  relative error of I_dist over all rows and prefixes, O_dist, nearest distance / index.
- end-to-end: `python -m worker run` of a precomputed job (default metrics, pca.dims 25)
  at n = m = 20k and at 50, each a fresh process; baseline: scikit-learn's
  `pairwise_distances_chunked` row sums (I_dist alone) on the same projected data, also a
  fresh process, in interleaved rounds (baseline, small job, big job). Target:
  sklearn / (job(20k) - job(50)) >= 3.
- start-up: `worker run` of the 50-row job against `python -c "import torch"`
  (target <= 2x), and the heavy modules the job imported (-X importtime).
- routes: the CPU's numpy tiles against the torch tiles (the CUDA route's code run on the
  CPU), fused pass, nearest and I_dist, alternating, with the numbers' difference.
- nearest neighbours: ours against sklearn NearestNeighbors and faiss-cpu IndexFlatL2
  (exact) when installed.
- --big N: the same job at n = m = N: wall time and peak RSS of the job process.

The results are written as JSON (--out); benchmarks/RESULTS.md holds their account.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}
FEATURES = 128
DIMS = 25
SWEEP = [5, 10, 15, 20, 25]


def features(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """P and S (n, 128) float32 with variance 1/k on column k; S shifted by 0.05."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(np.arange(1, FEATURES + 1))
    p = (rng.normal(size=(n, FEATURES)) * scale).astype(np.float32)
    s = (rng.normal(size=(n, FEATURES)) * scale + 0.05).astype(np.float32)
    return p, s


def projected(n: int) -> tuple[np.ndarray, np.ndarray]:
    from worker.pca import joint_pca

    p, s = features(n)
    (pl, sl), _ = joint_pca([p, s], DIMS)
    return pl, sl


#: compute.device written into the jobs (--device); None leaves the default ("auto")
JOB_DEVICE: str | None = None


def write_job(folder: Path, n: int, precision: str | None = None) -> Path:
    p, s = features(n)
    np.save(folder / f"P{n}.npy", p)
    np.save(folder / f"S{n}.npy", s)
    settings = [f"precision: {precision}"] if precision else []
    settings += [f"device: {JOB_DEVICE}"] if JOB_DEVICE else []
    compute = f"compute: {{{', '.join(settings)}}}\n" if settings else ""
    job = folder / f"job{n}_{precision or 'default'}.yaml"
    job.write_text(
        "version: 1\nseed: 0\nmodel: {name: precomputed}\n"
        f"pca: {{dims: {DIMS}}}\n{compute}"
        f"datasets:\n  primary: {{name: P, embeddings: P{n}.npy}}\n"
        f"  secondary:\n    - {{name: S, embeddings: S{n}.npy}}\n"
        f"output: {{dir: out{n}_{precision or 'default'}}}\n"
    )
    return job


#: a small launcher between this process and the measured one: Linux carries a process's
#: peak RSS across exec, so a child forked straight from this (large) benchmark process would
#: report this process's size when it is the larger; the launcher's grandchild starts clean.
LAUNCHER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - t0, os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def child_peak_rss(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and the child's own peak RSS (MB), measured by wait4 in a small launcher
    (LAUNCHER)."""
    with tempfile.TemporaryFile() as log:
        done = subprocess.run(
            [PY, "-c", LAUNCHER, *args],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            check=False,
        )
        log.seek(0)
        err = log.read().decode(errors="replace")
    # the measured process's own output goes to the launcher's stdout: the last line is ours
    wall, code, maxrss_kb = done.stdout.strip().splitlines()[-1].split()
    if int(code) not in (0, 1):
        raise RuntimeError(f"{args} failed ({code}): {err[-2000:]}")
    return float(wall), int(maxrss_kb) / 1024.0


SKLEARN_CHILD = """
import sys, time, numpy as np
sys.path[:0] = [{root!r}, {root!r} + "/benchmarks"]
from e2e import projected
from sklearn.metrics import pairwise_distances_chunked
pl, sl = projected({n})
t = time.perf_counter()
out = np.concatenate([c.sum(axis=1) for c in pairwise_distances_chunked(sl, pl)])
print(time.perf_counter() - t)
"""


def sklearn_idist(n: int) -> float:
    code = SKLEARN_CHILD.format(root=str(ROOT), n=n)
    done = subprocess.run([PY, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def best(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def fused_and_precision(n: int) -> dict:
    from worker import engine

    pl, sl = projected(n)
    out: dict = {"n": n}
    res = {}
    for prec in ("float32", "float64"):
        kw = {"precision": prec}
        engine.pair_pass(sl[:64], pl, prefixes=SWEEP, nearest=True, **kw)  # warm-up

        def fused(kw=kw) -> None:
            res[kw["precision"]] = engine.pair_pass(sl, pl, prefixes=SWEEP, nearest=True, **kw)

        t_fused = best(fused)

        def separate(kw=kw) -> None:
            for z in SWEEP:
                engine.row_distance_sums(sl[:, :z], pl[:, :z], **kw)
            engine.nearest_distances(sl, pl, **kw)

        t_sep = best(separate)
        t_one = best(lambda kw=kw: engine.row_distance_sums(sl, pl, **kw))
        out[prec] = {"fused_s": t_fused, "separate_s": t_sep, "single_idist_s": t_one}
    r32, r64 = res["float32"], res["float64"]
    out["rel_err_idist"] = max(
        float(np.max(np.abs(r32.i_dist[z] - r64.i_dist[z]) / r64.i_dist[z])) for z in SWEEP
    )
    out["rel_err_odist"] = max(
        abs(r32.i_dist[z].mean() - r64.i_dist[z].mean()) / r64.i_dist[z].mean() for z in SWEEP
    )
    out["nn_same_index"] = float(np.mean(r32.nearest_index == r64.nearest_index))
    out["nn_rel_err"] = float(
        np.max(np.abs(r32.nearest_distance - r64.nearest_distance) / r64.nearest_distance)
    )
    # self pass (diversity) in both precisions
    d32 = engine.self_pass(pl, precision="float32").distance
    d64 = engine.self_pass(pl, precision="float64").distance
    out["diversity_rel_err"] = float(np.max(np.abs(d32 - d64) / np.maximum(d64, 1e-300)))
    return out


def cpu_routes(n: int, alternations: int = 2) -> dict:
    """The CPU's numpy tiles against the torch tiles (the CUDA route's code on the CPU), on
    the same projected data in this process, alternating the routes: best of 3 per call."""
    from worker import engine

    pl, sl = projected(n)
    calls = {
        "fused": lambda kw: engine.pair_pass(sl, pl, prefixes=SWEEP, nearest=True, **kw),
        "nearest": lambda kw: engine.nearest_distances(sl, pl, **kw)[1],
        "i_dist": lambda kw: engine.row_distance_sums(sl, pl, **kw),
    }
    out: dict = {}
    results: dict = {}

    def timed(route: str, prec: str, name: str) -> float:
        def run() -> None:
            results[(route, prec, name)] = calls[name]({"precision": prec})

        engine.tiles.CPU_TILES = route
        return best(run, 3)

    for _ in range(alternations):
        for route in ("torch", "numpy"):
            for prec in ("float32", "float64"):
                for name in calls:
                    key = f"{route}_{prec}_{name}_s"
                    out[key] = min(out.get(key, np.inf), timed(route, prec, name))
    engine.tiles.CPU_TILES = "numpy"
    for prec in ("float32", "float64"):
        a, b = results[("torch", prec, "fused")], results[("numpy", prec, "fused")]
        out[f"{prec}_fused_rel_diff"] = max(
            float(np.max(np.abs(a.i_dist[z] - b.i_dist[z]) / a.i_dist[z])) for z in SWEEP
        )
        same = results[("torch", prec, "nearest")] == results[("numpy", prec, "nearest")]
        out[f"{prec}_nearest_same_index"] = float(np.mean(same))
    return out


def nearest_neighbours(n: int) -> dict:
    from sklearn.neighbors import NearestNeighbors

    from worker import engine

    pl, sl = projected(n)
    out = {}
    out["ours_f32_s"] = best(lambda: engine.nearest_distances(sl, pl, precision="float32"))
    out["ours_f64_s"] = best(lambda: engine.nearest_distances(sl, pl, precision="float64"))
    out["sklearn_s"] = best(lambda: NearestNeighbors(n_neighbors=1).fit(pl).kneighbors(sl), 1)
    try:
        import faiss
    except ImportError:
        out["faiss_s"] = None
        return out
    ref_d, ref_i = engine.nearest_distances(sl, pl)

    def run_faiss():
        index = faiss.IndexFlatL2(pl.shape[1])
        index.add(np.ascontiguousarray(pl, dtype=np.float32))
        return index.search(np.ascontiguousarray(sl, dtype=np.float32), 1)

    out["faiss_s"] = best(run_faiss)
    d2, idx = run_faiss()
    out["faiss_same_index"] = float(np.mean(idx[:, 0] == ref_i))
    out["faiss_rel_err"] = float(np.max(np.abs(np.sqrt(np.maximum(d2[:, 0], 0)) - ref_d) / ref_d))
    return out


def end_to_end(
    folder: Path, n_small: int, n_big: int, precisions: list[str | None], repeats: int = 1
) -> dict:
    """`repeats` rounds, each: scikit-learn's I_dist twice, then per precision the small job
    twice and the big job twice, every one a fresh process, the better of each pair kept (the
    first run after another process's large allocations pays page faults here: scikit-learn
    2.8 s warm, 4.3-5.3 s right after a job). Interleaved, so a change in the machine's load
    reaches baseline and jobs alike; reported: the best of each (ratio from the bests) and
    every round's own ratio. The big job's peak RSS is the largest seen."""
    jobs = {
        prec: (write_job(folder, n_small, prec), write_job(folder, n_big, prec))
        for prec in precisions
    }
    run = [PY, "-m", "worker", "run"]
    sklearn_s: list[float] = []
    small_s: dict = {prec: [] for prec in precisions}
    big: dict = {prec: [] for prec in precisions}
    for _ in range(repeats):
        sklearn_s.append(min(sklearn_idist(n_big) for _ in range(2)))
        for prec, (small, large) in jobs.items():
            small_s[prec].append(
                min(child_peak_rss([*run, str(small)], folder)[0] for _ in range(2))
            )
            pair = [child_peak_rss([*run, str(large)], folder) for _ in range(2)]
            big[prec].append((min(t for t, _ in pair), max(r for _, r in pair)))
    out: dict = {"sklearn_idist_s": min(sklearn_s), "sklearn_rounds_s": sklearn_s}
    for prec in precisions:
        t_big = [t for t, _ in big[prec]]
        extra = min(t_big) - min(small_s[prec])
        out_dir = folder / f"out{n_big}_{prec or 'default'}"
        report = json.loads((out_dir / "report.json").read_text())
        out[prec or "default"] = {
            "job_small_s": min(small_s[prec]),
            "job_big_s": min(t_big),
            "extra_s": extra,
            "ratio": min(sklearn_s) / extra,
            "round_ratios": [
                sk / (b - sm) for sk, sm, b in zip(sklearn_s, small_s[prec], t_big, strict=True)
            ],
            "peak_rss_mb": max(r for _, r in big[prec]),
            "o_dist": report["secondaries"][0]["o_dist"],
        }
    return out


def start_up(folder: Path) -> dict:
    job = write_job(folder, 50)
    torch_s = min(child_peak_rss([PY, "-c", "import torch"], folder)[0] for _ in range(3))
    job_s = min(child_peak_rss([PY, "-m", "worker", "run", str(job)], folder)[0] for _ in range(3))
    done = subprocess.run(
        [PY, "-X", "importtime", "-m", "worker", "run", str(job)],
        cwd=folder,
        env=ENV,
        capture_output=True,
        text=True,
    )
    cumulative = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = (x.strip() for x in line[len("import time:") :].split("|"))
            if cum.isdigit() and "." not in name:
                cumulative[name] = int(cum) / 1e6
    heavy = {
        k: round(cumulative[k], 2)
        for k in ("torch", "transformers", "sklearn", "scipy", "weasyprint", "matplotlib")
        if k in cumulative
    }
    return {"torch_s": torch_s, "job50_s": job_s, "imports_s": heavy}


PARTS = ("start_up", "fused", "routes", "nearest", "end_to_end")


def main() -> None:
    global JOB_DEVICE
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--big", type=int, default=0, help="also run the job at n = m = BIG")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "e2e.json"))
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
    ap.add_argument("--device", default=None, help="compute.device of the jobs (default: auto)")
    ap.add_argument("--repeats", type=int, default=1, help="end_to_end: best of this many runs")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from {PARTS}")
    JOB_DEVICE = args.device
    sys.path.insert(0, str(ROOT))
    started = time.time()
    results: dict = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "job_device": args.device or "auto",
        "repeats": args.repeats,
        "load_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        folder = Path(tmp)
        steps = {
            "start_up": lambda: start_up(folder),
            "fused": lambda: fused_and_precision(args.n),
            "routes": lambda: cpu_routes(args.n),
            "nearest": lambda: nearest_neighbours(args.n),
            "end_to_end": lambda: end_to_end(folder, 50, args.n, [None, "float64"], args.repeats),
        }
        for part in parts:
            results[part] = steps[part]()
            print(json.dumps({part: results[part]}), flush=True)
        if args.big:
            job = write_job(folder, args.big)
            wall, rss = child_peak_rss([PY, "-m", "worker", "run", str(job)], folder)
            results["big"] = {"n": args.big, "job_s": wall, "peak_rss_mb": rss}
            print(json.dumps(results["big"]), flush=True)
    results["load_end"] = os.getloadavg()[0]
    results["total_s"] = time.time() - started
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
