"""Issue 18: the measure stage's planned passes give the numbers of the separate calls; a
precomputed job imports only what it uses; the robustness probe's embeddings are cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.jobs import embeddings_job, write_job
from worker import analysis, metrics, stats
from worker.embeddings import EmbeddedSet
from worker.job import parse_job
from worker.results import Duplicates

ROOT = Path(__file__).resolve().parents[1]


def _sets(rng, n=60, m=45, d=12):
    p = EmbeddedSet(name="P", ids=[f"p{i}" for i in range(n)], vectors=rng.normal(size=(n, d)))
    s_vec = rng.normal(size=(m, d)) + 0.4
    s_vec[3] = p.vectors[5]  # a leak
    s_vec[8] = s_vec[2]  # a duplicate inside S
    s = EmbeddedSet(name="S", ids=[f"s{i}" for i in range(m)], vectors=s_vec)
    return p, s


def _job(tmp_path: Path, **over) -> object:
    data = embeddings_job(
        "S",
        seed=3,
        pca={"dims": 6, "sweep": [2, 4, 6, 9]},
        compute={"precision": "float64"},
        selection={"strategy": ["band", "farthest"], "counts": [1, 3]},
        **over,
    )
    return parse_job(data, tmp_path)


def test_planned_passes_equal_the_separate_calls(tmp_path):
    """Every number the fused passes feed equals the direct computation (separate calls)."""
    rng = np.random.default_rng(1)
    primary, sec = _sets(rng)
    job = _job(tmp_path)
    done = analysis.analyse_secondary(primary, sec, job)
    entry, space = done.result.model_dump(), done.space
    p_l, s_l = space.primary, space.secondary
    ref_i = metrics.image_dataset_distances(s_l, p_l, precision="float64")
    got_i = np.array([im["i_dist"] for im in entry["images"]])
    np.testing.assert_allclose(got_i, ref_i, rtol=1e-9)
    for z in job.pca.sweep:  # sweep: nested prefixes of the widest fit
        zz = min(z, space.sweep_primary.shape[1])
        ref = metrics.image_dataset_distances(
            space.sweep_secondary[:, :zz], space.sweep_primary[:, :zz]
        )
        np.testing.assert_allclose(space.sweep_i_dist[z], ref, rtol=1e-9)
    div = metrics.diversity(s_l)
    assert entry["diversity"]["mean"] == pytest.approx(div["mean"], rel=1e-12)
    cov = metrics.coverage(s_l, p_l)
    assert entry["coverage_by_primary"]["max"] == pytest.approx(cov["max"], rel=1e-12)
    dup = stats.find_duplicates(s_l, p_l, ids=sec.ids, primary_ids=primary.ids)
    assert entry["duplicates"] == Duplicates.model_validate(dup).model_dump()
    assert [d["id"] for d in dup["with_primary"]] == ["s3"]
    for sel in entry["selections"]:
        idx = [sec.ids.index(i) for i in sel["ids"]]
        pool = metrics.diversity(np.vstack([p_l, s_l[idx]]))
        assert sel["pool_diversity"]["mean"] == pytest.approx(pool["mean"], rel=1e-12)
    st = entry["statistics"]
    assert st["null_subsample"] == {"size": 60, "of": 60, "repeats": 20}
    assert st["kid"]["subset_size"] == 45 and st["mmd"]["n_x"] == 60


def test_scatter_reuses_the_pair_fit_with_one_secondary(tmp_path):
    rng = np.random.default_rng(2)
    primary, sec = _sets(rng)
    job = _job(tmp_path)
    model = analysis.analyse_model(primary, [sec], job)
    fresh = analysis.scatter_points(primary, [sec], job.seed)  # its own 2-D fit
    for name in ("P", "S"):
        np.testing.assert_allclose(
            model.scatter.points[name], fresh.points[name], rtol=1e-9, atol=1e-9
        )


def test_precomputed_job_imports_only_what_it_uses(embedding_job):
    """No transformers, scikit-learn or scipy.stats for a precomputed job, and no torch when
    every distance call is small and no GPU can exist here (issue 18)."""
    from worker.devices import _gpu_node_present

    folder, data, _ = embedding_job
    job_path = write_job(folder, data)
    torch = "" if _gpu_node_present() else ", 'torch'"
    code = (
        "import sys, runpy; sys.argv = ['worker', 'run', sys.argv[1]];\n"
        "try:\n    runpy.run_module('worker', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"heavy = ['transformers', 'sklearn', 'scipy.stats', 'ray', 'boto3'{torch}]\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(job_path)],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("LOADED")]
    assert line, done.stderr[-2000:]
    assert line[0] == "LOADED []"
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["run"]["versions"]["transformers"]  # read from the package metadata


def test_robustness_rerun_embeds_nothing(tmp_path, monkeypatch):
    """The perturbed embeddings are cached like any other: a second run is all cache hits."""
    from PIL import Image

    from worker import pipeline
    from worker.extractors.hog import HogExtractor

    rng = np.random.default_rng(4)
    for d in ("P", "S"):
        (tmp_path / d).mkdir()
        for i in range(6):
            arr = (rng.random((24, 24, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(tmp_path / d / f"{i}.png")
    path = write_job(
        tmp_path,
        {
            "version": 1,
            "model": {"name": "hog", "image_size": 32},
            "pca": {"dims": 3, "sweep": [2, 3]},
            "cache": {"dir": "cache"},
            "metrics": {"robustness": True},
            "selection": {"counts": [1]},
            "datasets": {
                "primary": {"name": "P", "path": "P"},
                "secondary": [{"name": "S", "path": "S"}],
            },
        },
    )
    calls: list[int] = []
    for name in ("embed", "embed_prepared"):
        orig = getattr(HogExtractor, name, None)
        if orig is not None:

            def wrap(self, images, _orig=orig):
                calls.append(len(images))
                return _orig(self, images)

            monkeypatch.setattr(HogExtractor, name, wrap)
    from worker.report.model import write_report_json

    def json_only(report, inputs, folder):  # no figures or PDF: speed
        write_report_json(report, folder / "report.json")

    monkeypatch.setattr(pipeline, "render_outputs", json_only)
    from worker.job import load_job

    job = load_job(path)
    pipeline.run(job, out_dir=str(tmp_path / "out1"))
    first = sum(calls)
    assert first == 12 + 3 * 6  # clean P and S, then S brightened, darkened, blurred
    calls.clear()
    pipeline.run(job, out_dir=str(tmp_path / "out2"))
    assert sum(calls) == 0


def test_cpu_tiles_do_not_import_torch():
    """A CPU job's tiled calls (above SMALL_CALL_ELEMENTS) run in numpy: no torch import."""
    from worker.devices import _gpu_node_present

    if _gpu_node_present():
        pytest.skip("compute.device 'auto' may name a GPU here")
    code = (
        "import sys, numpy as np\n"
        "from worker import engine\n"
        "x = np.random.default_rng(0).standard_normal((600, 20))\n"
        "assert 600 * 600 * 20 > engine.planning.SMALL_CALL_ELEMENTS\n"
        "engine.row_distance_sums(x, x, device='auto')\n"
        "engine.nearest_distances(x, x, exclude_self=True)\n"
        "engine.pair_pass(x, x[:500], prefixes=[5, 20], nearest=10)\n"
        "engine.kcenter_greedy(x, 5, x[:400], precision='float32')\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
