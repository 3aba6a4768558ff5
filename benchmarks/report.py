"""The report stage's time (issue 30): the demo and the 10-set matrix job, this code against a
named baseline (a git ref, default: main), same inputs, same machine, same run.

    .venv/bin/python benchmarks/report.py                    # demo + matrix job, vs main
    .venv/bin/python benchmarks/report.py --ref HEAD~2 --repeats 3 --jobs demo
    .venv/bin/python benchmarks/report.py --profile demo     # cProfile of one render, here

Each job runs once through `worker.pipeline.run` (this code); the render stage's inputs (the
typed Report, the RenderInputs, the exports' arguments) are pickled as the stage receives them,
with the top-level modules loaded at that point. Each timing is then a fresh process of one
side (the reference exported with `git archive <ref>` into a temp folder, the repository
unchanged) that imports those modules, unpickles the inputs and runs the stage's two calls
(`write_exports`, `render_outputs`) into an empty folder: wall clock, and CPU seconds of the
process and of its forked children (`resource.getrusage`), and the CPU seconds of each part
(see critical_path: the stage's wall clock on a quiet 2-core machine, estimated from them,
which a shared machine's load hardly moves). Sides alternate; every wall clock is listed,
the other columns are of the run with the lowest estimate. Targets: demo <= 5 s, matrix job
<= 10 s on 2 cores. Prints a Markdown table with the load average (`os.getloadavg`).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"demo": 5.0, "matrix": 10.0}

TIMER = r"""
import importlib, json, os, pickle, resource, sys, tempfile, time
from pathlib import Path
state = pickle.loads(Path(sys.argv[1]).read_bytes())
for name in state["modules"]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
import importlib.abc
import importlib.machinery
from worker.pipeline import write_exports
from worker.report.render import render_outputs
args = pickle.loads(state["args"])
trace = Path(tempfile.mkdtemp()) / "trace.jsonl"
PARENT = os.getpid()

def record(**row):
    with open(trace, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), **row}) + "\n")

def timed(label, fn):
    def call(*a, **k):
        cpu = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            record(label=label, cpu=time.process_time() - cpu, end=time.process_time())
    return call

def patch_figures(m):
    import dataclasses
    real = m.figure_tasks
    def wrap(i, t):  # a FigureTask keeps its key and file (the PDF's plan); older: a closure
        if dataclasses.is_dataclass(t):
            return dataclasses.replace(t, draw=timed(f"task{i}", t.draw))
        return timed(f"task{i}", t)
    m.figure_tasks = lambda *a, **k: [wrap(i, t) for i, t in enumerate(real(*a, **k))]

def patch_forked(m):
    real = m.run_tasks
    def run(tasks, processes=None):
        n = m.default_processes(len(tasks)) if processes is None else processes
        record(label="before_tasks", cpu=time.process_time() - CPU0, workers=n)
        return real(tasks, processes)
    m.run_tasks = run
    if hasattr(m, "received"):  # the PDF's layout waits for the figures here
        real_received = m.received
        def received():
            record(label="wait_at", cpu=time.process_time())  # the child's CPU since its fork
            return real_received()
        m.received = received

def patch_pdf(m):
    m.prepare, m.render_pdf = timed("prepare", m.prepare), timed("pdf", m.render_pdf)

def patch_interactive(m):
    m.render_interactive = timed("html", m.render_interactive)

PATCHES = {"worker.report.figures": patch_figures, "worker.report.forked": patch_forked,
           "worker.report.pdf": patch_pdf, "worker.report.interactive": patch_interactive}

class Hook(importlib.abc.MetaPathFinder):
    # wraps the report modules' functions where they are first imported (as the stage does)
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            PATCHES[name](module)
        spec.loader.exec_module = exec_module
        return spec

for name, patch in PATCHES.items():
    if name in sys.modules:
        patch(sys.modules[name])
sys.meta_path.insert(0, Hook())
with tempfile.TemporaryDirectory() as folder:
    out = Path(folder)
    cpu0, kids0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU0 = cpu0
    t0 = time.perf_counter()
    write_exports(args["job"], args["report"], args["first"], out)
    render_outputs(args["report"], args["inputs"], out)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (kids.ru_utime + kids.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    pages = len(__import__("pypdf").PdfReader(str(out / "report.pdf")).pages)
print(json.dumps({"wall": wall, "cpu": cpu, "children": child, "pages": pages, "trace": rows,
                  "parent": PARENT}))
"""


def critical_path(got: dict) -> float:
    """The stage's wall clock on a quiet machine with enough cores, from the CPU seconds of
    its parts: this process until the figures start (A), then the figure tasks greedily on
    their workers in submission order (F), then the PDF (P) from when both the figures and
    the child's WeasyPrint import (C) are done, or, where the child lays out the PDF from
    the planned figures, its CPU up to where it waits for them (wait_at) and the rest after;
    this process's report.html (when not one of the tasks) and report.json run beside the
    PDF. Contention for the cores while the child and the figure workers overlap is not
    counted: a lower bound for 2 cores."""
    rows, parent = got["trace"], got["parent"]
    first = {r["label"]: r for r in reversed(rows)}
    a = first["before_tasks"]["cpu"]
    workers = [0.0] * max(1, first["before_tasks"]["workers"])
    for r in sorted((r for r in rows if r["label"].startswith("task")),
                    key=lambda r: int(r["label"][4:])):  # fmt: skip
        k = workers.index(min(workers))
        workers[k] += r["cpu"]
    figures_done = a + max(workers)
    pdf = first["pdf"]
    if "wait_at" in first:  # laid out from the planned figures, waiting for them at wait_at
        wait_at = first["wait_at"]["cpu"]
        pdf_end = max(wait_at, figures_done) + (pdf["end"] - wait_at)
    else:
        pdf_end = max(figures_done, first.get("prepare", {"cpu": 0.0})["cpu"]) + pdf["cpu"]
    beside = sum(r["cpu"] for r in rows if r["label"] == "html" and r["pid"] == parent)
    rest = got["cpu"] - a - beside  # this process after the figures (json, waiting is free)
    return max(pdf_end, figures_done + beside) + max(0.0, rest)


def _job(name: str, folder: Path) -> Path:
    if name == "demo":
        from worker.demo import write_demo

        return write_demo(folder / "demo")
    sys.path.insert(0, str(ROOT))
    from tests.helpers.report_jobs import matrix_job

    return matrix_job(folder)


def capture(name: str, folder: Path) -> tuple[Path, float]:
    """Run job `name` in `folder`; pickle its render stage's inputs. Returns (state file, the
    pipeline's own render-stage seconds)."""
    import worker.pipeline as pipeline
    from worker.job import load_job

    state = folder / "render.pickle"
    stage_s: dict[str, float] = {}
    real_exports, real_render = pipeline.write_exports, pipeline.render_outputs
    saved: dict = {}

    def exports(job, report, first, staging):
        saved.update(job=job, first=first)
        return real_exports(job, report, first, staging)

    def render(report, inputs, staging):
        saved.update(report=report, inputs=inputs)
        modules = sorted({m.split(".")[0] for m in list(sys.modules) if not m.startswith("_")})
        state.write_bytes(pickle.dumps({"modules": modules, "args": pickle.dumps(saved)}))
        t0 = time.perf_counter()
        try:
            return real_render(report, inputs, staging)
        finally:
            stage_s["render"] = time.perf_counter() - t0

    pipeline.write_exports, pipeline.render_outputs = exports, render
    try:
        pipeline.run(load_job(_job(name, folder)), out_dir=str(folder / "out"))
    finally:
        pipeline.write_exports, pipeline.render_outputs = real_exports, real_render
    return state, stage_s["render"]


def time_side(code: Path, state: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-c", TIMER, str(state)],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{code}: the timed render failed\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_ref(ref: str, into: Path) -> Path:
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def profile(state: Path, top: int) -> None:
    """cProfile of one render in this process, children run here too (processes=1)."""
    import cProfile
    import pstats

    import worker.report.forked as forked

    data = pickle.loads(state.read_bytes())
    args = pickle.loads(data["args"])
    forked.can_fork = lambda: False  # every task in this process, so the profile sees it
    from worker.pipeline import write_exports
    from worker.report.render import render_outputs

    with tempfile.TemporaryDirectory() as folder:
        prof = cProfile.Profile()
        prof.enable()
        write_exports(args["job"], args["report"], args["first"], Path(folder))
        render_outputs(args["report"], args["inputs"], Path(folder))
        prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="main", help="baseline git ref (default: main)")
    ap.add_argument("--jobs", default="demo,matrix")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", choices=sorted(TARGETS), help="cProfile one job's render")
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--trace", action="store_true", help="this code's parts' CPU, one run")
    ap.add_argument("--keep", help="folder for the jobs and their pickled inputs (reused)")
    opts = ap.parse_args()
    base = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="bench-report-"))
    jobs = [opts.profile] if opts.profile else opts.jobs.split(",")
    states, stage = {}, {}
    for name in jobs:
        folder = base / name
        state = folder / "render.pickle"
        if state.exists():
            states[name], stage[name] = state, None
            continue
        folder.mkdir(parents=True, exist_ok=True)
        states[name], stage[name] = capture(name, folder)
    if opts.profile:
        profile(states[opts.profile], opts.top)
        return
    if opts.trace:
        for side, code in (("this", ROOT),):
            got = time_side(code, states[jobs[0]])
            for row in got["trace"]:
                print(side, "parent" if row["pid"] == got["parent"] else row["pid"], row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"this": ROOT, opts.ref: export_ref(opts.ref, Path(tmp))}
        best: dict[tuple[str, str], dict] = {}
        walls: dict[tuple[str, str], list[float]] = {}
        load: dict[str, float] = {}
        for _ in range(opts.repeats):
            for name in jobs:
                for side, code in sides.items():
                    got = time_side(code, states[name])
                    load[name] = os.getloadavg()[0]
                    key = (name, side)
                    walls.setdefault(key, []).append(got["wall"])
                    if key not in best or critical_path(got) < critical_path(best[key]):
                        best[key] = got
    print(
        "| job | side | wall s (each run, best first) | quiet-machine estimate s "
        "| CPU s (process + children) "
        "| PDF CPU s | pages | target | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in jobs:
        for side in sides:
            r = best[(name, side)]
            cpu = f"{r['cpu']:.2f} + {r['children']:.2f}"
            pdf_cpu = next(x["cpu"] for x in r["trace"] if x["label"] == "pdf")
            wall = " / ".join(f"{w:.2f}" for w in sorted(walls[(name, side)]))
            print(
                f"| {name} | {side} | {wall} | {critical_path(r):.2f} | {cpu} | "
                f"{pdf_cpu:.2f} | {r['pages']} | <= {TARGETS[name]:g} s | {load[name]:.1f} |"
            )
        ratio = min(walls[(name, opts.ref)]) / min(walls[(name, "this")])
        est = critical_path(best[(name, opts.ref)]) / critical_path(best[(name, "this")])
        print(f"| {name} | {opts.ref} / this | {ratio:.2f}x | {est:.2f}x | | | | | |")
    for name, seconds in stage.items():
        if seconds is not None:
            print(f"\n{name}: render stage inside the capturing run {seconds:.2f} s")


if __name__ == "__main__":
    main()
