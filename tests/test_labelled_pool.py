"""selection.labelled images outside S join the pool as if in P (issue 31): a folder, an
s3:// prefix or an embeddings file of labelled images is listed and embedded like a dataset,
projected into each pair's PCA without entering it, and covers the S images beside it, which
k-center then leaves alone; every distance, statistic and the PCA stay exactly the same."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

from tests.helpers.jobs import labelling_job, write_job
from tests.helpers.s3 import REGION
from worker import selection
from worker.__main__ import main
from worker.job import load_job, parse_job
from worker.pair_passes import project_pair
from worker.pipeline import run

#: the S3 test runs with planted AWS credentials and no AWS config (tests/helpers/s3.py)
pytestmark = pytest.mark.usefixtures("aws_env", "json_only")


@pytest.fixture
def json_only(monkeypatch):
    """report.json only, no figures or PDF (not under test here): speed."""
    from worker import pipeline
    from worker.report.model import write_report_json

    def render(report, inputs, folder):
        write_report_json(report, folder / "report.json")

    monkeypatch.setattr(pipeline, "render_outputs", render)


def _png(rng: np.random.Generator, kind: str) -> bytes:
    """32 x 32 grey PNG: 'flat' (P-like noise), 'h' (horizontal stripes of one period, random
    phase), 'v' (the same, vertical)."""
    y, x = np.mgrid[0:32, 0:32]
    noise = rng.normal(size=(32, 32))
    if kind == "flat":
        img = 120 + 6 * noise
    else:
        axis = y if kind == "h" else x
        img = 120 + 80 * np.sin(axis + rng.uniform(0, 2 * np.pi)) + 5 * noise
    img = np.clip(np.repeat(img[..., None], 3, axis=2), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _world() -> dict[str, bytes]:
    """P: 16 flat images. S: 8 flat, 6 horizontal stripes (S/h), 6 vertical (S/v): both
    stripe clusters are novel. L (outside S): 6 more horizontal stripes, already labelled."""
    rng = np.random.default_rng(0)
    files = {f"P/p{i:02d}.png": _png(rng, "flat") for i in range(16)}
    files |= {f"S/flat/s{i:02d}.png": _png(rng, "flat") for i in range(8)}
    files |= {f"S/h/h{i:02d}.png": _png(rng, "h") for i in range(6)}
    files |= {f"S/v/v{i:02d}.png": _png(rng, "v") for i in range(6)}
    files |= {f"L/h{i:02d}.png": _png(rng, "h") for i in range(6)}
    return files


@pytest.fixture
def world(tmp_path: Path) -> Path:
    for rel, data in _world().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return tmp_path


def _job(primary: str = "P", secondary: str = "S", out: str = "out", **selection_cfg) -> dict:
    """The labelling job (tests/helpers/jobs.py) selecting 3 images, each run on its own
    (no memory), with the statistics on (they must not change)."""
    job = labelling_job(
        primary, secondary, out, counts=[3], exclude_previous=False, **selection_cfg
    )
    job["metrics"]["statistics"] = True
    return job


def _picked(report) -> dict[str, list[str]]:
    return {s.strategy: s.ids for s in report.secondaries[0].selections}


def _paper_quantities(report) -> dict:
    """Everything of report.json that P and S define: per-image distances, O_dist, PCA,
    statistics, energy, novelty (the selection blocks and run facts left out)."""
    data = report.model_dump(mode="json")
    for sec in data["secondaries"]:
        for key in ("selections", "selection_pool"):
            sec.pop(key)
    for key in ("run", "selection", "warnings", "job"):
        data.pop(key)
    return data


def test_a_labelled_folder_outside_s_covers_the_s_images_beside_it(world):
    without = run(load_job(write_job(world, _job(out="plain"), "without.yaml"))).report
    # without labelled images the stripes beside L are among the first picks
    for ids in _picked(without).values():
        assert any(i.startswith("h/") for i in ids)
    job = _job(labelled=["L", "nope.png"])  # a folder outside S and an id matching nothing
    result = run(load_job(write_job(world, job, "with.yaml")))
    report = result.report
    for strategy, ids in _picked(report).items():
        assert len(ids) == 3 and not any(i.startswith("h/") for i in ids), (strategy, ids)
    assert report.selection.labelled_pool == 6
    pool = report.secondaries[0].selection_pool
    assert pool.labelled_outside == 6 and pool.labelled == 0 and pool.candidates == 20
    assert report.selection.labelled_unmatched == ["nope.png"]
    assert any("selection.labelled: nope.png matches no image" in w for w in report.warnings)
    data = json.loads((Path(result.run_dir) / "report.json").read_text())
    assert data["selection"]["labelled_pool"] == 6
    assert data["secondaries"][0]["selection_pool"]["labelled_outside"] == 6
    # the labelled images change no distance, statistic or PCA of the pair
    assert _paper_quantities(report) == _paper_quantities(without)


@pytest.mark.parametrize("folder", ["S/h", "h/", "h"])  # from the job folder, or ids of S
def test_labelled_images_in_s_are_matched_by_location_and_content(world, folder):
    # S/h is a folder of S: its images are S's own (never proposed, not extra pool rows); a
    # copy of S/v/v00.png outside S marks that S image labelled by its content
    (world / "copy").mkdir()
    (world / "copy" / "same.png").write_bytes((world / "S/v/v00.png").read_bytes())
    report = run(load_job(write_job(world, _job(labelled=[folder, "copy"])))).report
    pool = report.secondaries[0].selection_pool
    assert pool.labelled == 7 and pool.labelled_outside == 0
    assert report.selection.labelled_pool == 1 and report.selection.labelled_unmatched == []
    for ids in _picked(report).values():
        assert not any(i.startswith("h/") or i == "v/v00.png" for i in ids)


def test_a_labelled_s3_prefix_joins_the_pool(world, admin, bucket, moto_endpoint, capsys):
    for rel, data in _world().items():
        if rel.startswith("L/"):
            admin.put_object(Bucket=bucket, Key=f"done/{rel}", Body=data)
    admin.put_object(Bucket=bucket, Key="done/L/broken.png", Body=b"not a png")
    job = _job(labelled=[f"s3://{bucket}/done/L/"])
    job["storage"] = {"s3": {"endpoint_url": moto_endpoint, "region": REGION}}
    report = run(load_job(write_job(world, job))).report
    assert report.selection.labelled_pool == 6
    assert report.secondaries[0].selection_pool.labelled_outside == 6
    for ids in _picked(report).values():
        assert not any(i.startswith("h/") for i in ids)
    # the unreadable image is skipped and listed, as for a dataset
    skipped = [s for s in report.skipped if s.dataset == "selection.labelled"]
    assert [s.id for s in skipped] == [f"s3://{bucket}/done/L/broken.png"]
    # a prefix without objects is the S3 form of a missing folder: exit 2, nothing written
    job["selection"]["labelled"] = [f"s3://{bucket}/nothing/here"]
    job["output"]["dir"] = "out_missing"
    assert main(["run", str(write_job(world, job, "missing.yaml"))]) == 2
    err = capsys.readouterr().err
    assert f"selection.labelled: s3://{bucket}/nothing/here: no objects" in err
    assert "check the entry" in err
    assert not (world / "out_missing").exists()


def test_validate_lists_the_labelled_folders(world, capsys):
    assert main(["validate", str(write_job(world, _job(labelled=["L", "h/h00.png"])))]) == 0
    assert "selection.labelled: 6 images in 1 folder(s)" in capsys.readouterr().out


@pytest.mark.parametrize("entry", ["missing", "missing/", "./gone.png"])
def test_a_missing_labelled_folder_is_refused_before_any_work(world, capsys, entry):
    path = write_job(world, _job(labelled=[entry]))
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert "selection.labelled" in err and entry in err and "not found" in err
    assert not (world / "out").exists()


def test_an_empty_labelled_folder_is_a_warning(world):
    (world / "empty").mkdir()
    report = run(load_job(write_job(world, _job(labelled=["empty"])))).report
    assert report.selection.labelled_unmatched == ["empty"]
    assert any("selection.labelled: empty matches no image" in w for w in report.warnings)
    assert report.selection.labelled_pool == 0


def test_ids_of_an_s3_secondary_are_matched_once_listed(world):
    # S on s3: "later" may be a prefix of its ids, known only once listed: no error before
    # the run, and a warning when S holds no such image
    from worker.embeddings import EmbeddedSet
    from worker.errors import JobError
    from worker.labelled import entries, unmatched_ids

    job = load_job(write_job(world, _job(secondary="s3://bucket/S", labelled=["later", "h"])))
    assert [(e.given, e.kind) for e in entries(job)] == [("later", "id"), ("h", "id")]
    listed = EmbeddedSet("S", ["h/h00.png", "v/v00.png"], np.zeros((2, 3)))
    assert unmatched_ids(job, [listed], None) == ["later"]
    with pytest.raises(JobError, match=r"selection\.labelled: later: folder not found"):
        entries(load_job(write_job(world, _job(labelled=["later"]))))


# --------------------------------------------------------------------------- precomputed


def _vectors() -> dict[str, np.ndarray]:
    """P: 40 standard normal rows in 6-D. S: 10 like P, cluster A (5 rows at 8 e1) and
    cluster B (5 rows at 8 e2). The labelled rows sit at 8 e1, beside A."""
    rng = np.random.default_rng(3)
    e1, e2 = np.eye(6)[0] * 8, np.eye(6)[1] * 8
    s = np.vstack(
        [
            rng.normal(size=(10, 6)),
            e1 + 0.3 * rng.normal(size=(5, 6)),
            e2 + 0.3 * rng.normal(size=(5, 6)),
        ]
    )
    return {"P": rng.normal(size=(40, 6)), "S": s, "L": e1 + 0.3 * rng.normal(size=(5, 6))}


def _embedding_job(folder: Path, out: str = "out", **selection_cfg) -> dict:
    vec = _vectors()
    np.save(folder / "P.npy", vec["P"])
    np.savez(folder / "S.npz", embeddings=vec["S"], ids=np.array([f"s{i:02d}" for i in range(20)]))
    return {
        "version": 1,
        "seed": 0,
        "model": {"name": "precomputed"},
        "pca": {"dims": 4, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": "S", "embeddings": "S.npz"}],
        },
        "metrics": {"statistics": False, "duplicates": False, "null_repeats": 2},
        "selection": {"strategy": ["kcenter", "novel"], "counts": [2], **selection_cfg},
        "output": {"dir": out},
    }


def test_precomputed_labelled_embeddings_join_the_pool(tmp_path):
    cluster_a = {f"s{i:02d}" for i in range(10, 15)}
    without = run(parse_job(_embedding_job(tmp_path, "plain"), tmp_path)).report
    assert all(set(ids) & cluster_a for ids in _picked(without).values())
    np.save(tmp_path / "labelled.npy", _vectors()["L"])
    # a .npz with ids: a row whose id is an S image marks that image labelled
    np.savez(tmp_path / "named.npz", embeddings=_vectors()["S"][[19]], ids=np.array(["s19"]))
    job = _embedding_job(tmp_path, labelled=["labelled.npy", "named.npz", "s18"])
    report = run(parse_job(job, tmp_path)).report
    for ids in _picked(report).values():
        assert len(ids) == 2 and not set(ids) & (cluster_a | {"s18", "s19"})
    assert report.selection.labelled_pool == 6
    pool = report.secondaries[0].selection_pool
    assert pool.labelled == 2 and pool.labelled_outside == 5
    assert _paper_quantities(report) == _paper_quantities(without)


def test_precomputed_labelled_embeddings_are_reduced_like_the_datasets(tmp_path):
    np.save(tmp_path / "labelled.npy", _vectors()["L"])
    job = _embedding_job(tmp_path, labelled=["labelled.npy"])
    job["model"]["reduce"] = {"dims": 5, "seed": 1}  # the same random projection for all
    report = run(parse_job(job, tmp_path)).report
    assert report.model.reduce.dims == 5 and report.selection.labelled_pool == 5
    assert report.secondaries[0].selection_pool.labelled_outside == 5


def test_labelled_entries_the_model_cannot_use_are_refused(tmp_path, world):
    from worker.errors import JobError

    (tmp_path / "imgs").mkdir()
    with pytest.raises(JobError, match=r"selection\.labelled: imgs names images.*\.npz"):
        run(parse_job(_embedding_job(tmp_path, labelled=["imgs"]), tmp_path))
    np.save(world / "feats.npy", np.zeros((3, 6)))
    with pytest.raises(JobError, match=r"selection\.labelled: feats\.npy is an embeddings file"):
        run(load_job(write_job(world, _job(labelled=["feats.npy"]))))
    np.save(tmp_path / "narrow.npy", np.zeros((3, 5)))
    with pytest.raises(JobError, match=r"selection\.labelled: .*5 features, the datasets 6"):
        run(parse_job(_embedding_job(tmp_path, labelled=["narrow.npy"]), tmp_path))
    assert not (tmp_path / "out").exists() and not (world / "out").exists()


# --------------------------------------------------------------------------- units


def test_labelled_rows_are_projected_by_the_pair_fit_without_entering_it(embedding_job):
    folder, job_dict, vec = embedding_job
    job = parse_job({**job_dict, "pca": {"dims": 3, "sweep": [2, 5]}}, folder)
    rng = np.random.default_rng(1)
    extra = rng.normal(size=(7, 12)) + 3.0
    plain = project_pair(vec["P"], vec["S1"], job)
    space = project_pair(vec["P"], vec["S1"], job, extra)
    np.testing.assert_array_equal(space.primary, plain.primary)
    np.testing.assert_array_equal(space.secondary, plain.secondary)
    assert space.info == plain.info
    ref = PCA(n_components=3, svd_solver="full").fit(np.vstack([vec["P"], vec["S1"]]))
    # the same axes up to sign: compare through the P projection's signs
    signs = np.sign((ref.transform(vec["P"]) * space.primary).sum(axis=0))
    np.testing.assert_allclose(space.labelled, ref.transform(extra) * signs, atol=1e-10)


def test_pool_nearest_counts_the_labelled_rows_outside_s():
    rng = np.random.default_rng(2)
    s, p, lab = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)), rng.normal(size=(6, 4)) + 1
    exclude = np.zeros(30, dtype=bool)
    exclude[[3, 8]] = True
    got = selection.pool_nearest(s, cdist(s, p).min(axis=1), exclude, lab)
    want = cdist(s, np.vstack([p, lab, s[exclude]])).min(axis=1)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_labelled_outside_matches_by_content_hash_and_id():
    in_s, outside = selection.labelled_outside(
        ["a.png", "b.png", "c.png"], ["h1", "h2", "h3"], ["/x/1.png", "/x/2.png"], ["h2", "h9"]
    )
    assert in_s.tolist() == [False, True, False] and outside.tolist() == [False, True]
    in_s, outside = selection.labelled_outside(["s1", "s2"], [], ["s2", "lab#0"], [])
    assert in_s.tolist() == [False, True] and outside.tolist() == [False, True]


def test_readme_and_example_config_document_the_labelling_loop():
    import yaml

    from worker.job_sections import SelectionConfig

    root = Path(__file__).resolve().parents[1]
    example = yaml.safe_load((root / "config.example.yaml").read_text())
    assert set(example["selection"]) == set(SelectionConfig.model_fields)  # every setting
    assert set(example["selection"]["export"]) == {"csv", "label-studio", "fiftyone"}
    assert "held_out" in example["adaptation"]
    readme = " ".join((root / "README.md").read_text().split())
    for words in (
        "selection.exclude_previous",
        "selection.labelled",
        "selection.export",
        "selection.csv",
        "label-studio.json",
        "fiftyone.json",
        "adaptation.held_out",
        "`band` (the paper's",  # the paper's strategy, kept as an option
    ):
        assert words in readme, words
