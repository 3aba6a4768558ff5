"""A job on image folders with the built-in hog extractor: the demo data end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import kendalltau

from tests.helpers import reference as R
from tests.helpers.pdf import pdf_text
from worker.demo import make_demo_data, write_demo
from worker.extractors.hog import HogExtractor
from worker.images import decode_image


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo(root)
    return root


def test_demo_data_is_deterministic(tmp_path):
    make_demo_data(tmp_path / "a", seed=1, per_set=3)
    make_demo_data(tmp_path / "b", seed=1, per_set=3)
    for f in sorted((tmp_path / "a").rglob("*.png")):
        twin = tmp_path / "b" / f.relative_to(tmp_path / "a")
        assert f.read_bytes() == twin.read_bytes()


def test_hog_feature_dim_and_determinism(demo_dir):
    ext = HogExtractor(image_size=96)
    img = decode_image((demo_dir / "data/P/images/000.png").read_bytes())
    a, b = ext.embed([img, img])
    assert a.shape == (ext.info["feature_dim"],)
    np.testing.assert_array_equal(a, b)


def test_demo_job_runs_and_ranks_far_sets_farther(demo_dir):
    bad = demo_dir / "data/S1/images/zzz_corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # the preflight wants a mask for every image of a masked set; the image itself is corrupt
    bad_mask = demo_dir / "data/S1/masks/zzz_corrupt.png"
    bad_mask.write_bytes((demo_dir / "data/S1/masks/000.png").read_bytes())
    job = yaml.safe_load((demo_dir / "job.yaml").read_text())
    job["max_skipped_fraction"] = 0.1
    (demo_dir / "job2.yaml").write_text(yaml.safe_dump(job))
    res = subprocess.run(
        [sys.executable, "-m", "worker", "run", str(demo_dir / "job2.yaml"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode in (0, 1), res.stderr
    report = json.loads((demo_dir / "out/report.json").read_text())
    assert (demo_dir / "out/report.pdf").exists()
    assert [(s["dataset"], s["id"]) for s in report["skipped"]] == [
        ("S1-concrete-b", "zzz_corrupt.png")
    ]
    assert "cannot decode" in report["skipped"][0]["reason"]
    o = {s["name"]: s["o_dist_mean"] for s in report["secondaries"]}
    assert o["S1-concrete-b"] < o["S2-brick"] and o["S1-concrete-b"] < o["S3-grass-gravel"]
    assert report["primary"]["count"] == 24
    assert [s["count"] for s in report["secondaries"]] == [24, 24, 24]
    bad.unlink()
    bad_mask.unlink()


def test_robustness_probe_matches_independent_computation(tmp_path):
    from worker.images import perturb_image
    from worker.job import load_job
    from worker.pipeline import run

    make_demo_data(tmp_path / "data", seed=2, per_set=8)
    job = {
        "model": {"name": "hog", "image_size": 64},
        "pca": {"dims": 4, "sweep": [4]},
        "datasets": {
            "primary": {"name": "P", "path": "data/P/images"},
            "secondary": [
                {"name": "S1", "path": "data/S1/images"},
                {"name": "S2", "path": "data/S2/images"},
                {"name": "S3", "path": "data/S3/images"},
            ],
        },
        "metrics": {"robustness": True, "statistics": False, "duplicates": False},
        "cache": {"enabled": False},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    report = run(load_job(tmp_path / "job.yaml"), out_dir=str(tmp_path / "out")).report
    report = report.model_dump(mode="json")
    ext = HogExtractor(image_size=64)

    def feats(name, kind=None):
        files = sorted((tmp_path / "data" / name / "images").glob("*.png"))
        imgs = [decode_image(f.read_bytes()) for f in files]
        return ext.embed([perturb_image(i, kind) if kind else i for i in imgs]).astype(np.float64)

    p = feats("P")
    clean = {name: R.pair_i_dist(p, feats(name), 4) for name in ("S1", "S2", "S3")}
    for kind in ("brighten", "darken", "blur"):
        o, per_image = {}, {}
        for name in ("S1", "S2", "S3"):
            per_image[name] = R.pair_i_dist(p, feats(name, kind), 4)
            o[name] = float(per_image[name].mean())
        got = report["robustness"][kind]["o_dist_scaled"]
        for name, value in R.scaled(o).items():
            assert got[name] == pytest.approx(value, rel=1e-4)
        # Kendall tau of clean vs perturbed O_dist over the secondaries (method.md §4.5)
        names = list(o)
        tau = kendalltau([clean[n].mean() for n in names], [o[n] for n in names]).statistic
        assert report["robustness"][kind]["kendall_tau"] == pytest.approx(tau, abs=1e-12)
        for sec in report["secondaries"]:
            ref = kendalltau(clean[sec["name"]], per_image[sec["name"]]).statistic
            assert sec["robustness"][kind] == pytest.approx(ref, abs=1e-12), sec["name"]
        assert set(report["secondaries"][0]["robustness"]) == {"brighten", "darken", "blur"}


def test_planted_leak_is_listed_drawn_and_gated(tmp_path):
    import shutil

    from worker.job import load_job
    from worker.pipeline import run

    make_demo_data(tmp_path / "data", seed=3, per_set=6)
    leak = tmp_path / "data/S2/images/leak.png"
    shutil.copy(tmp_path / "data/P/images/002.png", leak)
    job = {
        "model": {"name": "hog", "image_size": 64},
        "pca": {"dims": 4, "sweep": [4]},
        "datasets": {
            "primary": {"name": "P", "path": "data/P/images"},
            "secondary": [{"name": "S2", "path": "data/S2/images"}],
        },
        "cache": {"enabled": False},
        "gates": [{"metric": "duplicates_with_primary", "dataset": "S2", "max": 0}],
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    result = run(load_job(tmp_path / "job.yaml"), out_dir=str(tmp_path / "out"))
    dupes = result.report.model_dump(mode="json")["secondaries"][0]["duplicates"]
    [found] = dupes["with_primary"]
    assert (found["id"], found["primary_id"], found["exact"]) == ("leak.png", "002.png", True)
    assert found["distance"] == pytest.approx(0.0, abs=1e-9)
    assert result.exit_code == 1 and result.report.gates[0].value == 1
    text = pdf_text(tmp_path / "out/report.pdf")
    assert "Duplicate pairs of S2" in text and "leak.png vs P:002.png" in text
