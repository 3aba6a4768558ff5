"""Earlier runs for the history and compare tests: three hand-made typed reports (run ids
R1-R3, |P| = N_P) and a local store holding them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers.reports import typed_report
from worker.results import Report

R1, R2, R3 = "20260101T020000Z-aaaaaa", "20260102T020000Z-bbbbbb", "20260103T020000Z-cccccc"


N_P = 10  # |P|: o_dist_mean = o_dist / N_P


def image_entry(id_, sha, i_dist, scaled):
    return {"id": id_, "sha256": sha, "i_dist": i_dist, "i_dist_scaled": scaled}


def secondary_entry(name, images, mmd_p=None):
    """A secondaries[] entry whose numbers follow from its images (as the pipeline makes them)."""
    d = np.array([im["i_dist"] for im in images], dtype=np.float64)
    lo, hi = d.min(), d.max()
    for im in images:
        if im["i_dist_scaled"] is None:
            im["i_dist_scaled"] = float((im["i_dist"] - lo) / (hi - lo))
    o = float(d.mean())
    return {
        "name": name,
        "count": len(images),
        "o_dist": o,
        "o_dist_mean": o / N_P,
        "i_dist": {"p90": float(np.percentile(d, 90))},
        "i_dist_scaled_p90": None,
        "images": images,
        "statistics": {"mmd": {"p_value": mmd_p}, "o_dist_ratio": None},
    }


def report_entry(run_id, secondaries, finished):
    return typed_report(report_sketch(run_id, secondaries, finished))


def report_sketch(run_id, secondaries, finished):
    return {
        "run": {"run_id": run_id, "started": finished, "finished": finished},
        "model": {"name": "hog", "checkpoint": None, "pooling": None, "image_size": 64},
        "primary": {"name": "P", "count": N_P},
        "pca": {"dims": 25},
        "secondaries": secondaries,
    }


def report_json(report: Report, run_id: bool = True) -> str:
    body = report.model_dump(mode="json")
    if not run_id:
        del body["run"]["run_id"]
    return json.dumps(body)


def three_runs():
    """Run 1: S1 {a,b,c}, S2 {x,y}, S3 {z}. Run 2: S1 {a,b,d,e} (c removed), S3 {z}.
    Run 3: S1 {a, b renamed (same hash), d, f, g} (e removed), S2 {x,y,w} (S2 back)."""
    r1 = report_entry(
        R1,
        [
            secondary_entry(
                "S1",
                [
                    image_entry("a", "ha", 10.0, None),
                    image_entry("b", "hb", 20.0, None),
                    image_entry("c", "hc", 30.0, None),
                ],
                0.5,
            ),
            secondary_entry(
                "S2", [image_entry("x", "hx", 5.0, None), image_entry("y", "hy", 15.0, None)], 0.2
            ),
            secondary_entry(
                "S3", [image_entry("z1", "hz1", 1.0, None), image_entry("z2", "hz2", 3.0, None)]
            ),
        ],
        "2026-01-01T02:10:00Z",
    )
    r2 = report_entry(
        R2,
        [
            secondary_entry(
                "S1",
                [
                    image_entry("a", "ha", 10.0, None),
                    image_entry("b", "hb", 20.0, None),
                    image_entry("d", "hd", 40.0, None),
                    image_entry("e", "he", 25.0, None),
                ],
                0.25,
            ),
            secondary_entry(
                "S3", [image_entry("z1", "hz1", 1.0, None), image_entry("z2", "hz2", 3.0, None)]
            ),
        ],
        "2026-01-02T02:10:00Z",
    )
    r3 = report_entry(
        R3,
        [
            secondary_entry(
                "S1",
                [
                    image_entry("a", "ha", 10.0, None),
                    image_entry("b_renamed", "hb", 20.0, None),
                    image_entry("d", "hd", 40.0, None),
                    image_entry("f", "hf", 50.0, None),
                    image_entry("g", "hg", 16.0, None),
                ],
                0.01,
            ),
            secondary_entry(
                "S2",
                [
                    image_entry("x", "hx", 5.0, None),
                    image_entry("y", "hy", 15.0, None),
                    image_entry("w", "hw", 25.0, None),
                ],
                0.3,
            ),
        ],
        "2026-01-03T02:10:00Z",
    )
    return r1, r2, r3


def write_store(root: Path, reports: list[Report], extra_junk: bool = True) -> Path:
    for r in reports:
        d = root / "runs" / r.run.run_id
        d.mkdir(parents=True)
        # the reader fills run.run_id in from the folder name
        (d / "report.json").write_text(report_json(r, run_id=False))
    if reports:
        (root / "latest").symlink_to(f"runs/{reports[-1].run.run_id}")
    if extra_junk:
        (root / "runs" / "20260104T020000Z-dddddd").mkdir()  # incomplete: no report.json
        (root / "runs" / "not-a-run").mkdir()
        (root / "runs" / "not-a-run" / "report.json").write_text("{}")
    return root
