"""Many secondaries: measure + report time of one precomputed job, this code against a reference
commit (default: main), same data, same machine, same run.

    .venv/bin/python benchmarks/many.py                  # 50 secondaries x 150 x 64-D, vs main
    .venv/bin/python benchmarks/many.py --ref HEAD~3 --secondaries 20 --repeats 3

Each side is one `python -m worker run job.yaml --log-format json` subprocess; the stage lines
of its log give the `measure` and `report` seconds. The reference code is exported with
`git archive <ref>` into a temp folder (no worktree, the repository is not changed). Goal
(issue 15): measure + report at least 3x faster than main. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_job(folder: Path, secondaries: int, rows: int, dim: int, seed: int = 0) -> Path:
    """P and `secondaries` sets of `rows` vectors each; S_k shifted by k/secondaries."""
    rng = np.random.default_rng(seed)
    emb = folder / "emb"
    emb.mkdir(parents=True, exist_ok=True)
    np.save(emb / "P.npy", rng.normal(size=(rows, dim)))
    lines = [
        "version: 1",
        "seed: 0",
        "model: {name: precomputed}",
        "cache: {enabled: false}",
        "datasets:",
        "  primary: {name: P, embeddings: emb/P.npy}",
        "  secondary:",
    ]
    for k in range(secondaries):
        shift = np.zeros(dim)
        shift[k % dim] = 2.0 * (k + 1) / secondaries
        np.save(emb / f"S{k:02d}.npy", rng.normal(size=(rows, dim)) + shift)
        lines.append(f"    - {{name: S{k:02d}, embeddings: emb/S{k:02d}.npy}}")
    job = folder / "job.yaml"
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


def export(ref: str, dest: Path) -> Path:
    """The tree of `ref` unpacked into dest (git archive | tar -x)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def timed_run(code: Path, job: Path, out: Path) -> dict[str, float]:
    """Stage seconds of one run of `job` with the worker at `code`."""
    env = dict(os.environ, PYTHONPATH=str(code), WORKER_TEMPLATES=str(code / "templates"))
    start = time.perf_counter()
    command = [sys.executable, "-m", "worker", "run", str(job), "--out", str(out)]
    proc = subprocess.run(
        [*command, "--log-format", "json"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{code}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    stages: dict[str, float] = {"wall": wall}
    for line in proc.stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "stage" in entry and "duration_s" in entry:
            stages[entry["stage"]] = stages.get(entry["stage"], 0.0) + entry["duration_s"]
    pages = None
    try:
        from pypdf import PdfReader

        pages = len(PdfReader(str(out / "latest" / "report.pdf")).pages)
    except Exception:  # noqa: BLE001 - the page count is informative only
        pass
    stages["pages"] = pages
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="main", help="reference commit (default: main)")
    ap.add_argument("--secondaries", type=int, default=50)
    ap.add_argument("--rows", type=int, default=150)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; best kept")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        tmp = Path(tmp)
        job = write_job(tmp / "data", args.secondaries, args.rows, args.dim)
        old = export(args.ref, tmp / "ref")
        rows: dict[str, dict] = {}
        runs = 0
        for _ in range(args.repeats):  # alternate the sides so that load drifts hit both
            for label, code in (("reference " + args.ref, old), ("this tree", ROOT)):
                st = timed_run(code, job, tmp / f"out-{runs}")
                runs += 1
                total = st.get("measure", 0.0) + st.get("report", 0.0)
                best = rows.get(label)
                if best is None or total < best.get("measure", 0.0) + best.get("report", 0.0):
                    rows[label] = st
    print(
        f"{args.secondaries} secondaries x {args.rows} x {args.dim}-D precomputed, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, best of {args.repeats}\n"
    )
    print("| code | measure (s) | report (s) | measure + report (s) | wall (s) | PDF pages |")
    print("|---|---|---|---|---|---|")
    totals = {}
    for label, st in rows.items():
        total = st.get("measure", 0.0) + st.get("report", 0.0)
        totals[label] = total
        print(
            f"| {label} | {st.get('measure', 0):.2f} | {st.get('report', 0):.2f} | {total:.2f} "
            f"| {st['wall']:.2f} | {st['pages']} |"
        )
    ref, new = totals.values()
    print(f"\nspeed-up (measure + report): {ref / new:.2f}x")


if __name__ == "__main__":
    main()
