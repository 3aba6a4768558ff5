"""End to end on precomputed embeddings: every report number against numpy/scikit-learn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import reference as R
from tests.helpers.jobs import write_job
from tests.helpers.pdf import pdf_text
from worker.job import load_job
from worker.pipeline import run


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The embedding job run with dims 5 and with dims null."""
    out = {}
    rng = np.random.default_rng(7)
    base = tmp_path_factory.mktemp("pipe")
    p = rng.normal(size=(30, 12))
    s1 = rng.normal(size=(20, 12)) + 0.3
    s2 = rng.normal(size=(25, 12)) * 1.5 + 2.0
    np.save(base / "P.npy", p)
    np.save(base / "S1.npy", s1)
    np.save(base / "S2.npy", s2)
    for dims in (5, None):
        job = {
            "seed": 3,
            "model": {"name": "precomputed"},
            "pca": {"dims": dims, "sweep": [2, 5, 8]},
            "datasets": {
                "primary": {"name": "P", "embeddings": "P.npy"},
                "secondary": [
                    {"name": "S1", "embeddings": "S1.npy"},
                    {"name": "S2", "embeddings": "S2.npy"},
                ],
            },
            "metrics": {"null_repeats": 3, "mmd_permutations": 20},
            "compute": {"precision": "float64"},  # compared at 1e-9 (the default is float32)
            "selection": {"strategy": ["farthest", "band", "kcenter"], "counts": [1, 3]},
        }
        path = write_job(base, job, f"job_{dims}.yaml")
        result = run(load_job(path), out_dir=str(base / f"out_{dims}"))
        out[dims] = (result, json.loads((base / f"out_{dims}" / "report.json").read_text()))
    return out, {"P": p, "S1": s1, "S2": s2}


@pytest.mark.parametrize("dims", [5, None])
def test_distances_match_float64_reference(reports, dims):
    (runs, data) = reports
    _, report = runs[dims]
    o = {}
    for sec in report["secondaries"]:
        pl, sl = R.joint_pca([data["P"], data[sec["name"]]], dims)
        i_dist = R.pairwise(sl, pl).sum(1)
        got = np.array([im["i_dist"] for im in sec["images"]])
        np.testing.assert_allclose(got, i_dist, rtol=1e-9)
        assert sec["o_dist"] == pytest.approx(i_dist.mean(), rel=1e-9)
        assert sec["o_dist_mean"] == pytest.approx(i_dist.mean() / len(pl), rel=1e-9)
        scaled = (i_dist - i_dist.min()) / (i_dist.max() - i_dist.min())
        np.testing.assert_allclose([im["i_dist_scaled"] for im in sec["images"]], scaled, atol=1e-9)
        assert sec["i_dist_scaled_p90"] == pytest.approx(np.percentile(scaled, 90), abs=1e-9)
        assert sec["i_dist"]["std"] == pytest.approx(i_dist.std(), rel=1e-9)
        assert sec["i_dist"]["p90"] == pytest.approx(np.percentile(i_dist, 90), rel=1e-9)
        halves = np.array_split(np.sort(i_dist), 2)
        for part, ref in zip(sec["splits"]["halves"], halves, strict=True):
            assert part["count"] == len(ref)
            assert part["mean"] == pytest.approx(ref.mean(), rel=1e-9)
            assert part["std"] == pytest.approx(ref.std(), rel=1e-9)
        assert len(sec["splits"]["thirds"]) == 3
        div = R.nearest_other(sl)
        assert sec["diversity"]["mean"] == pytest.approx(div.mean(), rel=1e-9)
        assert sec["diversity"]["max"] == pytest.approx(div.max(), rel=1e-9)
        cov = R.pairwise(sl, pl).min(1)
        assert sec["coverage_by_primary"]["mean"] == pytest.approx(cov.mean(), rel=1e-9)
        assert sec["coverage_by_primary"]["max"] == pytest.approx(cov.max(), rel=1e-9)
        far = [s for s in sec["selections"] if s["strategy"] == "farthest" and s["count"] == 3][0]
        ids = [im["id"] for im in sec["images"]]
        assert far["ids"] == [ids[i] for i in np.argsort(-i_dist, kind="stable")[:3]]
        chosen = [ids.index(i) for i in far["ids"]]
        cov_sel = R.pairwise(sl, sl[chosen]).min(1)
        assert far["coverage"]["max"] == pytest.approx(cov_sel.max(), rel=1e-9)
        o[sec["name"]] = i_dist.mean()
    total = sum(o.values())
    for name, value in o.items():
        assert report["o_dist_scaled"][name] == pytest.approx(value / total, rel=1e-9)


def test_primary_diversity_uses_pca_on_p_alone(reports):
    (runs, data) = reports
    _, report = runs[5]
    pl = R.sk_pca(data["P"], 5).transform(data["P"])
    assert report["primary"]["diversity"]["mean"] == pytest.approx(
        R.nearest_other(pl).mean(), rel=1e-9
    )


def test_pca_sweep_matches_refits(reports):
    (runs, data) = reports
    _, report = runs[5]
    for row in report["pca_sweep"]:
        o = {}
        for name in ("S1", "S2"):
            pl, sl = R.joint_pca([data["P"], data[name]], row["dims"])
            o[name] = R.pairwise(sl, pl).sum(1).mean()
        total = sum(o.values())
        for name in o:
            assert row["o_dist_scaled"][name] == pytest.approx(o[name] / total, rel=1e-8)
    assert [r["dims"] for r in report["pca_sweep"]] == [2, 5, 8]


def test_reports_written_and_pdf_names_datasets(reports):
    (runs, _) = reports
    result, report = runs[5]
    out = Path(result.out_dir)
    assert (out / "report.pdf").stat().st_size > 1000
    text = pdf_text(out / "report.pdf")
    for name in ("P", "S1", "S2"):
        assert name in text
    assert report["schema_version"].startswith("1.")
    assert report["passed"] is True


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_exit_codes_and_determinism(embedding_job):
    folder, job, _ = embedding_job
    path = write_job(folder, job)
    first = _cli("run", str(path), "--out", str(folder / "a"), "--quiet")
    assert first.returncode == 0, first.stderr
    second = _cli("run", str(path), "--out", str(folder / "b"), "--quiet")
    assert second.returncode == 0, second.stderr
    a = json.loads((folder / "a" / "report.json").read_text())
    b = json.loads((folder / "b" / "report.json").read_text())
    a.pop("run"), b.pop("run")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    job["gates"] = [{"metric": "o_dist_scaled", "dataset": "S2", "max": 0.01}]
    failing = _cli("run", str(write_job(folder, job, "fail.yaml")), "--out", str(folder / "c"))
    assert failing.returncode == 1
    assert "gate failed: o_dist_scaled[S2]" in failing.stdout
    report = json.loads((folder / "c" / "report.json").read_text())
    assert report["passed"] is False
    assert [g["passed"] for g in report["gates"]] == [False]


def test_invalid_job_exits_2_and_writes_nothing(embedding_job):
    folder, job, _ = embedding_job
    job["pca"]["dims"] = 0
    res = _cli("run", str(write_job(folder, job)), "--out", str(folder / "never"))
    assert res.returncode == 2
    assert "pca.dims" in res.stderr
    assert not (folder / "never").exists()


def test_missing_embeddings_file_exits_2(embedding_job):
    folder, job, _ = embedding_job
    job["datasets"]["secondary"][0]["embeddings"] = "emb/absent.npy"
    res = _cli("run", str(write_job(folder, job)), "--out", str(folder / "never"))
    assert res.returncode == 2
    assert "absent.npy" in res.stderr and "S1" in res.stderr
    assert not (folder / "never").exists()


def test_wrong_width_and_nan_embeddings_exit_2(embedding_job):
    folder, job, data = embedding_job
    np.save(folder / "emb" / "wide.npy", np.zeros((5, 13)))
    job["datasets"]["secondary"][1]["embeddings"] = "emb/wide.npy"
    res = _cli("run", str(write_job(folder, job)), "--out", str(folder / "never"))
    assert res.returncode == 2 and "feature widths differ" in res.stderr
    bad = data["S2"].copy()
    bad[3, 2] = np.nan
    np.save(folder / "emb" / "nan.npy", bad)
    job["datasets"]["secondary"][1]["embeddings"] = "emb/nan.npy"
    res = _cli("run", str(write_job(folder, job)), "--out", str(folder / "never"))
    assert res.returncode == 2 and "NaN or inf" in res.stderr and "rows 3" in res.stderr
    assert not (folder / "never").exists()


def test_schema_command_prints_json_schema():
    res = _cli("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert "secondaries" in schema["properties"]
