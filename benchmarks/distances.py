"""Distance engine benchmark (docs/method.md §8): I_dist sums, nearest neighbours, k-center.

    .venv/bin/python benchmarks/distances.py            # full run (~10-15 min on 2 cores)
    .venv/bin/python benchmarks/distances.py --quick    # n = m = 2k and 20k, z = 25 only

For n = m in {2k, 20k, 100k} and z in {25, 768} it times worker.engine against
scikit-learn ``pairwise_distances_chunked`` + sum, scipy ``cdist`` + sum, scikit-learn
``NearestNeighbors`` (and faiss-cpu ``IndexFlatL2`` when installed) and a straightforward
numpy k-center, and writes ``benchmarks/RESULTS.md``.

Method, so the numbers can be trusted:
- Every measurement runs in its own fresh subprocess with the same imports and the same
  seeded data. Memory: just before the call the process resets its peak-RSS counter
  (``/proc/self/clear_refs`` = 5) and reads VmRSS; after the call it reads VmHWM. The table
  shows ``VmHWM - VmRSS_before``: the extra resident memory the call needed at its peak.
- Time is wall clock (``time.perf_counter``) of one call after a small warm-up call; calls
  under 10 s are repeated three times and the best is kept.
- Where a baseline (or, at 100k x 768, our engine) would take far too long, it runs on the
  first m' rows of S against all of P and its time is scaled by m / m' (every method here is
  linear in m); such cells are marked with ``*``. scipy's ``cdist`` materialises the whole
  m' x n matrix; it runs only where that matrix stays under 4 GiB.
- Errors: the first 64 rows of S against a float64 reference by direct differences
  (numpy, no ``|a|^2 + |b|^2 - 2ab`` trick); max relative error over those rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REF_ROWS = 64
SCIPY_MAX_BYTES = 4 * 2**30
KCENTER_K = 64
KCENTER_CENTRES = 1000
BUDGET_MB = 256

# rows of S actually used (m'), per (method, n, z); missing -> all rows
SUBSAMPLE = {
    ("sklearn", 100_000, 25): 10_000,
    ("sklearn", 100_000, 768): 2_500,
    ("sklearn", 20_000, 768): 10_000,
    ("scipy", 20_000, 768): 1_000,
    ("scipy", 100_000, 25): 2_000,
    ("scipy", 100_000, 768): 200,
    ("ours_f32", 100_000, 768): 5_000,
    ("ours_f64", 100_000, 768): 2_500,
    ("sk_nn", 100_000, 25): 10_000,
    ("sk_nn", 100_000, 768): 2_500,
    ("sk_nn", 20_000, 768): 10_000,
    ("nn_f32", 100_000, 768): 5_000,
    ("nn_f64", 100_000, 768): 2_500,
    ("faiss", 100_000, 768): 5_000,
}


# --------------------------------------------------------------------------- data


def make_data(n: int, m: int, z: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PCA-like data: centred Gaussian columns with decaying scales; S slightly shifted."""
    rng = np.random.default_rng(seed + 1000 * z + n)
    scales = np.linspace(3.0, 0.3, z)
    p = rng.standard_normal((n, z)) * scales
    s = rng.standard_normal((m, z)) * scales + 0.1
    return p, s


def reference(s_rows: np.ndarray, p: np.ndarray) -> dict:
    """float64 direct-difference I_dist and nearest distance/index for a few rows of S."""
    sums, mins, idx = [], [], []
    for row in s_rows:
        diff = p - row
        d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        sums.append(d.sum())
        mins.append(d.min())
        idx.append(int(d.argmin()))
    return {"sum": np.array(sums), "min": np.array(mins), "idx": np.array(idx)}


# --------------------------------------------------------------------------- child side


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def numpy_kcenter(x: np.ndarray, k: int, centres: np.ndarray) -> list[int]:
    """What one would write with numpy: GEMM-trick init in chunks, then a plain loop."""
    min_d = np.empty(len(x))
    cc = (centres**2).sum(1)
    for s in range(0, len(x), 2048):
        xs = x[s : s + 2048]
        d2 = (xs**2).sum(1)[:, None] + cc[None, :] - 2 * xs @ centres.T
        min_d[s : s + 2048] = np.sqrt(np.maximum(d2, 0).min(1))
    chosen = []
    for _ in range(k):
        j = int(np.argmax(min_d))
        chosen.append(j)
        min_d = np.minimum(min_d, np.linalg.norm(x - x[j], axis=1))
        min_d[j] = -1.0
    return chosen


def child(spec: dict) -> dict:
    import scipy.spatial.distance as ssd
    import sklearn.metrics
    import sklearn.neighbors
    import torch

    from worker import engine

    n, m, z, method = spec["n"], spec["m"], spec["z"], spec["method"]
    rows = spec["rows"]
    p, s = make_data(n, m, z)
    s_used = np.ascontiguousarray(s[:rows])
    budget = spec.get("budget", BUDGET_MB)

    def run(x_s):
        if method in ("ours_f32", "ours_f64"):
            prec = "float32" if method == "ours_f32" else "float64"
            return engine.row_distance_sums(x_s, p, precision=prec, memory_budget_mb=budget)
        if method == "sklearn":
            chunks = sklearn.metrics.pairwise_distances_chunked(x_s, p)
            return np.concatenate([c.sum(axis=1) for c in chunks])
        if method == "scipy":
            return ssd.cdist(x_s, p).sum(axis=1)
        if method in ("nn_f32", "nn_f64"):
            prec = "float32" if method == "nn_f32" else "float64"
            return engine.nearest_distances(x_s, p, precision=prec, memory_budget_mb=budget)
        if method == "sk_nn":
            nn = sklearn.neighbors.NearestNeighbors(n_neighbors=1).fit(p)
            d, i = nn.kneighbors(x_s)
            return d[:, 0], i[:, 0]
        if method == "faiss":
            import faiss

            index = faiss.IndexFlatL2(z)
            index.add(np.ascontiguousarray(p, dtype=np.float32))
            d2, i = index.search(np.ascontiguousarray(x_s, dtype=np.float32), 1)
            return np.sqrt(np.maximum(d2[:, 0], 0)), i[:, 0]
        if method == "kc_ours":
            return engine.kcenter_greedy(x_s, KCENTER_K, p[:KCENTER_CENTRES])
        if method == "kc_numpy":
            return numpy_kcenter(x_s, KCENTER_K, p[:KCENTER_CENTRES])
        raise ValueError(method)

    run(s_used[: min(64, rows)])  # warm-up: thread pools, BLAS init, imports
    times = []
    hwm_ok = _reset_peak()
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = run(s_used)
    times.append(time.perf_counter() - t0)
    peak = _status_kb("VmHWM") if hwm_ok else -1
    while len(times) < 3 and times[-1] < 10.0:
        t0 = time.perf_counter()
        run(s_used)
        times.append(time.perf_counter() - t0)
    res = {
        "time": min(times),
        "delta_mb": (peak - rss0) / 1024 if peak > 0 else None,
        "torch_threads": torch.get_num_threads(),
    }
    if isinstance(out, tuple):
        res["min"] = np.asarray(out[0][:REF_ROWS], dtype=float).tolist()
        res["idx"] = np.asarray(out[1][:REF_ROWS]).tolist()
    elif isinstance(out, list):
        res["picks"] = out
    else:
        res["sum"] = np.asarray(out[:REF_ROWS], dtype=float).tolist()
    return res


# --------------------------------------------------------------------------- parent side


def measure(method: str, n: int, z: int, log) -> dict:
    rows = SUBSAMPLE.get((method, n, z), n)
    if method == "scipy" and rows * n * 8 > SCIPY_MAX_BYTES:
        rows = SCIPY_MAX_BYTES // (n * 8)
    spec = {"method": method, "n": n, "m": n, "z": z, "rows": rows}
    busy0, kids0, t0 = _busy_seconds(), _children_seconds(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    # CPU seconds spent by other processes while the cell ran, per second: 0 = quiet machine
    other = ((_busy_seconds() - busy0) - (_children_seconds() - kids0)) / wall
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        log(f"  {method:9s} n={n} z={z}: FAILED {msg}")
        return {"error": msg}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["rows"] = rows
    res["scaled"] = rows < n
    res["time_full"] = res["time"] * n / rows
    res["other_load"] = max(0.0, other)
    log(
        f"  {method:9s} n={n:>6} z={z:>3} rows={rows:>6}: {res['time']:8.3f} s"
        + (f" (x{n / rows:.0f} -> {res['time_full']:.1f} s)" if rows < n else "")
        + f"  dRSS {res['delta_mb'] or float('nan'):7.1f} MB  other load {other:.2f}"
    )
    return res


def _busy_seconds() -> float:
    """Machine-wide busy CPU seconds (all processes) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rel_err(values, ref) -> float:
    v = np.asarray(values, dtype=float)
    r = ref[: len(v)]
    return float(np.max(np.abs(v - r) / np.abs(r)))


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401

        return True
    except ImportError:
        return False


def machine() -> dict:
    info = {"python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "L2 cache", "L3 cache", "Flags"):
                info[key.strip()] = val.strip()
    except OSError:
        pass
    if "Flags" in info:
        flags = info.pop("Flags").split()
        info["SIMD"] = " ".join(f for f in ("avx2", "fma", "avx512f") if f in flags)
    try:
        with open("/proc/meminfo") as f:
            info["memory"] = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    import scipy
    import sklearn
    import torch

    info.update(
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        numpy=np.__version__,
        scikit_learn=sklearn.__version__,
        scipy=scipy.__version__,
        cuda=torch.cuda.is_available(),
    )
    return info


def fmt_t(res: dict | None) -> str:
    if not res or "error" in res:
        return "n/a"
    return f"{res['time_full']:.2f}{'*' if res['scaled'] else ''}"


def fmt_mb(res: dict | None) -> str:
    if not res or "error" in res or res.get("delta_mb") is None:
        return "n/a"
    return f"{res['delta_mb']:.0f}{'*' if res['scaled'] else ''}"


def ratio(base: dict | None, ours: dict | None) -> str:
    if not base or not ours or "error" in base or "error" in ours:
        return "n/a"
    return f"{base['time_full'] / ours['time_full']:.1f}x"


def subsampled(row: dict, methods, n: int, z: int) -> list[str]:
    """Which cells of one table row ran on m' < m rows of S (marked `*`)."""
    return [
        f"{k} at n={n}, z={z}: m'={row[k]['rows']}"
        for k in methods
        if row[k] and row[k].get("scaled")
    ]


def footnote(subs: list[str]) -> list[str]:
    """The lines closing a table: a blank line, then the subsampled cells if any."""
    return [""] + (["Subsampled (`*`): " + "; ".join(subs) + ".", ""] if subs else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2k and 20k at z = 25 only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    start = time.time()
    load0 = os.getloadavg()
    sizes = [(2_000, 25), (20_000, 25)] if args.quick else [
        (2_000, 25), (2_000, 768), (20_000, 25), (20_000, 768), (100_000, 25), (100_000, 768)
    ]  # fmt: skip
    faiss_ok = have_faiss()
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    results: dict = {}
    for n, z in sizes:
        log(f"n = m = {n}, z = {z}")
        p, s = make_data(n, n, z)
        ref = reference(s[:REF_ROWS], p)
        del p, s
        r = {"ref": ref}
        for method in ("ours_f32", "ours_f64", "sklearn", "scipy"):
            r[method] = measure(method, n, z, log)
        for method in ("nn_f32", "nn_f64", "sk_nn") + (("faiss",) if faiss_ok else ()):
            r[method] = measure(method, n, z, log)
        for method in ("kc_ours", "kc_numpy"):
            r[method] = measure(method, n, z, log)
        results[(n, z)] = r

    elapsed = time.time() - start
    load1 = os.getloadavg()
    info = machine()

    def err(res, key, ref):
        if not res or "error" in res or key not in res:
            return "n/a"
        return f"{rel_err(res[key], ref):.1e}"

    lines.append("# Distance engine benchmark")
    lines.append("")
    lines.append(
        f"Written by `benchmarks/distances.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}, total run time {elapsed / 60:.1f} min."
    )
    lines.append("")
    lines.append("## Machine")
    lines.append("")
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    lines.append(
        f"- load average (1 min) at start / end: {load0[0]:.2f} / {load1[0]:.2f}. The machine "
        "is shared with other work; the last table shows how busy it was during each cell"
    )
    lines.append("")
    lines.append("## Method")
    lines.append("")
    lines.append(
        "- Each cell is one fresh subprocess: same imports, same seeded data (PCA-like "
        "centred Gaussian columns, S shifted by 0.1), a warm-up call on 64 rows, then the timed "
        "call (best of 3 when under 10 s). Wall-clock time of the "
        "whole call, in seconds."
    )
    lines.append(
        "- `*`: measured on the first m' rows of S against all n rows of P and scaled by m/m' "
        "(all methods are linear in m); m' is listed below each table. Memory cells marked `*` "
        "are those of the m' run. Scaling multiplies fixed per-call costs too (for ours, "
        "converting P), so scaled times slightly overstate ours."
    )
    lines.append(
        "- dRSS: peak resident memory during the call minus resident memory just before it "
        "(peak counter reset through `/proc/self/clear_refs`, read from VmHWM), in MB. Input "
        "arrays are allocated before the call and not counted."
    )
    lines.append(
        f"- Error: max relative error over the first {REF_ROWS} rows of S against float64 "
        "direct differences in numpy (no GEMM trick)."
    )
    lines.append(
        f"- Ours: `worker.engine`, memory_budget_mb={BUDGET_MB}, CPU, torch threads = "
        f"{info['torch_threads']}. sklearn: `pairwise_distances_chunked` (default working "
        "memory) + row sums, float64. scipy: `cdist` (full m' x n matrix, single-threaded C "
        f"loop) + row sums; only where the matrix stays under {SCIPY_MAX_BYTES / 2**30:.0f} GiB."
    )
    lines.append(
        "- Run-to-run variation on this shared 2-vCPU VM is large (up to about 2x for one "
        "cell between runs on the same day), partly from noise the competing-load table "
        "cannot see (other tenants of the host); ratios within one run are steadier than "
        "absolute times."
    )
    lines.append("")

    lines.append("## I_dist (row sums of the m x n distance matrix)")
    lines.append("")
    lines.append(
        "| n = m | z | ours f32 (s) | ours f64 (s) | sklearn (s) | scipy (s) "
        "| f32 vs sklearn | f64 vs sklearn | f32 vs scipy "
        "| dRSS f32 / f64 / sklearn / scipy (MB) | rel. error f32 / f64 / sklearn / scipy |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    subs = []
    for (n, z), r in results.items():
        ref = r["ref"]["sum"]
        lines.append(
            f"| {n} | {z} | {fmt_t(r['ours_f32'])} | {fmt_t(r['ours_f64'])} "
            f"| {fmt_t(r['sklearn'])} | {fmt_t(r['scipy'])} "
            f"| {ratio(r['sklearn'], r['ours_f32'])} | {ratio(r['sklearn'], r['ours_f64'])} "
            f"| {ratio(r['scipy'], r['ours_f32'])} "
            f"| {' / '.join(fmt_mb(r[k]) for k in ('ours_f32', 'ours_f64', 'sklearn', 'scipy'))} "
            f"| {' / '.join(err(r[k], 'sum', ref) for k in ('ours_f32', 'ours_f64', 'sklearn', 'scipy'))} |"  # noqa: E501
        )
        subs += subsampled(r, ("ours_f32", "ours_f64", "sklearn", "scipy"), n, z)
    lines += footnote(subs)

    flat = [
        f"{n}: {fmt_mb(r['ours_f32'])} MB"
        for (n, z), r in results.items()
        if z == 25 and r["ours_f32"] and "error" not in r["ours_f32"]
    ]
    if flat:
        lines.append(
            "Peak extra memory of ours (f32, z = 25, budget "
            f"{BUDGET_MB} MB) as n = m grows: " + ", ".join(flat) + ". It holds the "
            "tiles (within the budget) and one working-precision copy of both inputs, "
            "(n + m)(z + 2) values; sklearn and scipy grow with the chunk or the m x n matrix."
        )
        lines.append("")
    tgt = results.get((20_000, 25))
    if tgt:
        lines.append(
            "Target (docs/method.md §8): >= 6x scikit-learn for I_dist at n = m = 20k, z = 25; "
            f"measured {ratio(tgt['sklearn'], tgt['ours_f32'])} (float32) and "
            f"{ratio(tgt['sklearn'], tgt['ours_f64'])} (float64). At z = 768 ours and "
            "sklearn are both dominated by the same GEMM, so the gain there is what float32 "
            "GEMM gives over float64 (about 2x); float64 mode is on par."
        )
        lines.append("")

    lines.append("## Nearest neighbour (each row of S to its nearest row of P)")
    lines.append("")
    nn_methods = ["nn_f32", "nn_f64", "sk_nn"] + (["faiss"] if faiss_ok else [])
    lines.append(
        "| n = m | z | ours f32 (s) | ours f64 (s) | sklearn NearestNeighbors (s) "
        + ("| faiss IndexFlatL2 (s) " if faiss_ok else "")
        + "| f32 vs sklearn | f64 vs sklearn | dRSS "
        + " / ".join(nn_methods)
        + " (MB) | distance rel. error "
        + " / ".join(nn_methods)
        + " | same index as reference |"
    )
    lines.append("|---|---|---|---|---|" + ("---|" if faiss_ok else "") + "---|---|---|---|---|")
    subs = []
    for (n, z), r in results.items():
        ref = r["ref"]
        same = []
        for k in nn_methods:
            res = r[k]
            if res and "idx" in res:
                got = np.asarray(res["idx"])
                same.append(f"{int((got == ref['idx'][: len(got)]).sum())}/{len(got)}")
            else:
                same.append("n/a")
        lines.append(
            f"| {n} | {z} | "
            + " | ".join(fmt_t(r[k]) for k in nn_methods)
            + f" | {ratio(r['sk_nn'], r['nn_f32'])} | {ratio(r['sk_nn'], r['nn_f64'])} | "
            + " / ".join(fmt_mb(r[k]) for k in nn_methods)
            + " | "
            + " / ".join(err(r[k], "min", ref["min"]) for k in nn_methods)
            + " | "
            + " / ".join(same)
            + " |"
        )
        subs += subsampled(r, nn_methods, n, z)
    lines += footnote(subs)
    if not faiss_ok:
        lines.append("faiss-cpu is not installed in this environment, so it is not compared.")
        lines.append("")

    lines.append(
        f"## k-center greedy (k = {KCENTER_K}, candidates = all m rows of S, "
        f"pre-chosen centres = the first {KCENTER_CENTRES} rows of P)"
    )
    lines.append("")
    lines.append(
        "The numpy baseline initialises the min-distance vector with the usual chunked "
        "`|a|^2 + |b|^2 - 2ab` and then loops `np.minimum(min_d, np.linalg.norm(x - x[j], "
        "axis=1))`. Ours: float64, fused `cdist` per pick. Both are O(k N) after the init."
    )
    lines.append("")
    lines.append(
        "| n = m | z | ours (s) | numpy (s) | speed-up | dRSS ours / numpy (MB) "
        "| identical leading picks |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for (n, z), r in results.items():
        a, b = r["kc_ours"], r["kc_numpy"]
        same = "n/a"
        if a and b and "picks" in a and "picks" in b:
            lead = 0
            for x, y in zip(a["picks"], b["picks"], strict=True):
                if x != y:
                    break
                lead += 1
            same = f"{lead}/{len(a['picks'])}"
        lines.append(
            f"| {n} | {z} | {fmt_t(a)} | {fmt_t(b)} | {ratio(b, a)} "
            f"| {fmt_mb(a)} / {fmt_mb(b)} | {same} |"
        )
    lines.append("")

    lines.append("## Competing load")
    lines.append("")
    lines.append(
        "CPU seconds per second used by *other* processes while each cell ran (machine-wide "
        "busy time from `/proc/stat` minus the benchmark's own children), so 0 = quiet, "
        "2 = both cores busy with someone else. Cells with a high value are slowed down."
    )
    lines.append("")
    methods = [k for k in next(iter(results.values())) if k != "ref"]
    lines.append("| n = m | z | " + " | ".join(methods) + " |")
    lines.append("|---|---|" + "---|" * len(methods))
    for (n, z), r in results.items():
        cells = [
            f"{r[k]['other_load']:.2f}" if r[k] and "other_load" in r[k] else "n/a" for k in methods
        ]
        lines.append(f"| {n} | {z} | " + " | ".join(cells) + " |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
