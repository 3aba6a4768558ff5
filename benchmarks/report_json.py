"""report.json for a large secondary: build, validate and write it the old way (a hand-built
dict, cleaned, validated with jsonschema against the shipped schema, json.dumps) against the
typed way (worker.results models, validated as they are built, model_dump_json), same data,
same run.

    .venv/bin/python benchmarks/report_json.py            # 20,000 images, best of 3
    .venv/bin/python benchmarks/report_json.py --images 100000

Goal (typed report issue): the typed path at least 5x faster at 20k images. Prints seconds per
path and the ratio old / typed; the two files parse to the same JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker import metrics  # noqa: E402
from worker.report.model import SCHEMA_VERSION, write_report_json  # noqa: E402
from worker.results import (  # noqa: E402
    ImageResult,
    JobInfo,
    ModelInfo,
    ModelResult,
    PairPca,
    PcaSummary,
    PrimaryResult,
    Report,
    RunInfo,
    SecondaryResult,
    Splits,
    Summary,
)


def inputs(m: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    i_dist = rng.gamma(4.0, 10.0, size=m)
    return {
        "ids": [f"images/{k:07d}.jpg" for k in range(m)],
        "i_dist": i_dist,
        "scaled": metrics.min_max_scale(i_dist),
        "mean": i_dist / 1000.0,
        "hashes": [f"{k:064x}" for k in range(m)],
    }


def _common(x: dict) -> dict:
    i_dist = x["i_dist"]
    return {
        "name": "S",
        "count": len(i_dist),
        "o_dist": float(i_dist.mean()),
        "o_dist_scaled": 1.0,
        "o_dist_mean": float(x["mean"].mean()),
        "i_dist": metrics.summary_stats(i_dist),
        "i_dist_scaled_p90": float(np.percentile(x["scaled"], 90)),
        "splits": {"halves": metrics.sorted_splits(i_dist, 2),
                   "thirds": metrics.sorted_splits(i_dist, 3)},
        "pca": {"route": "exact", "dims": 25, "requested_dims": 25,
                "explained_variance_ratio": [0.04] * 25, "warnings": []},
        "diversity": None,
        "coverage_by_primary": None,
        "selections": [],
    }  # fmt: skip


RUN = {
    "started": "2026-01-01T00:00:00+00:00",
    "finished": "2026-01-01T00:00:01+00:00",
    "duration_s": 1.0,
    "host": "bench",
    "versions": {"worker": "bench"},
    "engine": {"engine": "local"},
}
MODEL = {
    "name": "precomputed",
    "checkpoint": None,
    "revision": None,
    "feature_dim": 25,
    "pooling": None,
    "image_size": None,
}


def _top(secondary, model, run, job, primary, pca, models) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "passed": True,
        "run": run,
        "job": job,
        "model": model,
        "primary": primary,
        "pca": pca,
        "o_dist_scaled": {"S": 1.0},
        "secondaries": [secondary],
        "pca_sweep": [],
        "pca_sweep_stable": True,
        "models": models,
        "gates": [],
        "skipped": [],
        "warnings": [],
    }


def dict_path(x: dict, out: Path) -> None:
    """The pre-typed way: a hand-built dict, cleaned and jsonschema-validated, json.dumps."""
    sec = _common(x)
    sec["images"] = [
        {"id": i, "i_dist": float(d), "i_dist_scaled": float(s), "i_dist_mean": float(a),
         "sha256": h}
        for i, d, s, a, h in zip(x["ids"], x["i_dist"], x["scaled"], x["mean"], x["hashes"],
                                 strict=True)
    ]  # fmt: skip
    model_entry = {"model": MODEL, "label": "precomputed", "o_dist": {"S": sec["o_dist"]},
                   "o_dist_scaled": {"S": 1.0}, "secondaries": []}  # fmt: skip
    report = _top(
        sec, MODEL, RUN, {"seed": 0, "source": "job.yaml"},
        {"name": "P", "count": 1000, "diversity": None},
        {"dims": 25, "requested_dims": 25, "route": "exact", "explained_variance_ratio": []},
        [model_entry],
    )  # fmt: skip
    write_report_json(report, out)


def typed_path(x: dict, out: Path) -> None:
    """The typed way: worker.results models (validated when built), model_dump_json."""
    common = _common(x)
    sec = SecondaryResult(
        **{k: v for k, v in common.items() if k not in ("i_dist", "splits", "pca")},
        i_dist=Summary(**common["i_dist"]),
        splits=Splits(**common["splits"]),
        pca=PairPca(**common["pca"]),
        images=[
            ImageResult(id=i, i_dist=float(d), i_dist_scaled=float(s), i_dist_mean=float(a),
                        sha256=h)
            for i, d, s, a, h in zip(x["ids"], x["i_dist"], x["scaled"], x["mean"],
                                     x["hashes"], strict=True)
        ],
    )  # fmt: skip
    model = ModelInfo(**MODEL)
    report = Report(
        **_top(
            sec, model, RunInfo(**RUN), JobInfo(seed=0, source="job.yaml"),
            PrimaryResult(name="P", count=1000), PcaSummary(dims=25, requested_dims=25,
            route="exact"), [ModelResult(model=model, label="precomputed",
            o_dist={"S": sec.o_dist}, o_dist_scaled={"S": 1.0})],
        )
    )  # fmt: skip
    write_report_json(report, out)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    x = inputs(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "dict.json", Path(tmp) / "typed.json"
        t_dict = best_of(lambda: dict_path(x, a), args.repeats)
        t_typed = best_of(lambda: typed_path(x, b), args.repeats)
        ja, jb = json.loads(a.read_bytes()), json.loads(b.read_bytes())
        same = ja == jb
        size = b.stat().st_size
    print(f"report.json, one secondary of {args.images:,} images ({size / 1e6:.1f} MB)")
    print("| path | build + validate + write (s) |")
    print("|---|---|")
    print(f"| dict + jsonschema (baseline) | {t_dict:.3f} |")
    print(f"| typed models | {t_typed:.3f} |")
    print(f"ratio baseline / typed: {t_dict / t_typed:.1f}x; same JSON: {same}")


if __name__ == "__main__":
    main()
