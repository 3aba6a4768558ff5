"""The labelling loop end to end (issue 31): selections remembered across runs of one store,
labelled images never proposed, exports naming exactly the selected images (local and S3)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.jobs import labelling_job as _job
from tests.helpers.jobs import write_job
from tests.helpers.s3 import REGION
from worker import exports
from worker.job import load_job
from worker.pipeline import run

#: every test here runs with planted AWS credentials and no AWS config (tests/helpers/s3.py)
pytestmark = pytest.mark.usefixtures("aws_env")


def _png(rng: np.random.Generator, bright: float, rough: float) -> bytes:
    img = np.clip(bright + rough * rng.normal(size=(32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _image_sets(seed: int = 0) -> dict[str, bytes]:
    """Relative path -> PNG bytes: P (16 smooth grey images) and S (8 like P, 12 rough ones
    of varied brightness: novel)."""
    rng = np.random.default_rng(seed)
    files = {f"P/p{i:02d}.png": _png(rng, 120, 6) for i in range(16)}
    files |= {f"S/a/s{i:02d}.png": _png(rng, 120, 6) for i in range(8)}
    files |= {f"S/b/n{i:02d}.png": _png(rng, 40 + 15 * i, 40) for i in range(12)}
    return files


def _selected(report: dict) -> dict[tuple[str, int], list[str]]:
    sec = report["secondaries"][0]
    return {(s["strategy"], s["count"]): s["ids"] for s in sec["selections"]}


def _all_ids(report: dict) -> set[str]:
    return {i for ids in _selected(report).values() for i in ids}


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    for rel, data in _image_sets().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return tmp_path


def _run(folder: Path, job: dict, name: str) -> tuple[dict, Path]:
    result = run(load_job(write_job(folder, job, name)))
    run_dir = Path(result.run_dir)
    return json.loads((run_dir / "report.json").read_text()), run_dir


@pytest.mark.slow  # three runs of a job
def test_two_nights_propose_disjoint_images_and_never_labelled_ones(image_folder):
    labelled = ["S/b/n00.png", "S/b/n01.png"]  # already labelled: never proposed
    job = _job("P", "S", "store", labelled=["b/n00.png", str(image_folder / "S/b/n01.png")])
    first, _ = _run(image_folder, job, "night1.yaml")
    second, _ = _run(image_folder, job, "night2.yaml")
    ids1, ids2 = _all_ids(first), _all_ids(second)
    assert ids1 and ids2 and not ids1 & ids2  # nothing proposed twice
    for report in (first, second):
        assert not {i.removeprefix("S/") for i in labelled} & _all_ids(report)
        assert report["secondaries"][0]["selection_pool"]["labelled"] == 2
    pool = second["secondaries"][0]["selection_pool"]
    assert pool["earlier_selected"] == len(ids1)
    assert pool["candidates"] == 20 - 2 - len(ids1)
    assert second["selection"]["earlier_runs"] == 1 and first["selection"]["earlier_runs"] == 0
    assert second["selection"]["paper_strategy"] == "band"
    # every selection is judged against random, in numbers and in words
    for sel in first["secondaries"][0]["selections"]:
        assert sel["verdict"].startswith(f"{sel['strategy']} {sel['count']}: ")
        decisive = [j for j in sel["against_random"] if j["decides"]]
        assert decisive and all(j["random"]["mean"] is not None for j in decisive)
    # the default picks novel images (the rough ones) first
    assert all(i.startswith("b/") for i in _selected(first)[("novel", 4)])

    # exclude_previous: false repeats the paper's protocol: the first night's ids again
    job["selection"]["exclude_previous"] = False
    third, _ = _run(image_folder, job, "night3.yaml")
    assert _selected(third) == _selected(first)
    assert "earlier_selected" in third["secondaries"][0]["selection_pool"]
    assert third["secondaries"][0]["selection_pool"]["earlier_selected"] == 0


def _check_exports(report: dict, files: dict[str, bytes], location) -> None:
    """The three files name exactly the largest selection of each strategy."""
    sel = _selected(report)
    expected = {s: ids for (s, c), ids in sel.items() if c == max(c2 for _, c2 in sel)}
    rows = list(csv.DictReader(io.StringIO(files["selection.csv"].decode())))
    assert tuple(rows[0]) == exports.CSV_COLUMNS
    for strategy, ids in expected.items():
        mine = [r for r in rows if r["strategy"] == strategy]
        assert [r["id"] for r in mine] == ids
        assert [int(r["rank"]) for r in mine] == list(range(1, len(ids) + 1))
        assert [r["file"] for r in mine] == [location(i) for i in ids]
        assert all(float(r["i_dist"]) > 0 for r in mine)
    distinct = {i for ids in expected.values() for i in ids}
    tasks = json.loads(files["label-studio.json"])
    assert isinstance(tasks, list) and len(tasks) == len(distinct)
    assert all(set(t) == {"data"} and isinstance(t["data"]["image"], str) for t in tasks)
    assert {t["data"]["image"] for t in tasks} == {location(i) for i in distinct}
    novelty = {im["id"]: im["novelty"] for im in report["secondaries"][0]["images"]}
    assert all(t["data"]["novelty"] == novelty[t["data"]["id"]] for t in tasks)
    assert all(0.0 <= float(r["novelty"]) <= 1.0 for r in rows)
    manifest = json.loads(files["fiftyone.json"])
    assert manifest["media_type"] == "image"
    assert {s["filepath"] for s in manifest["samples"]} == {location(i) for i in distinct}


def test_exports_local_name_exactly_the_selected_images(image_folder):
    job = _job("P", "S", "out", export=["csv", "label-studio", "fiftyone"])
    report, run_dir = _run(image_folder, job, "job.yaml")
    assert report["selection"]["exports"] == ["selection.csv", "label-studio.json", "fiftyone.json"]
    files = {n: (run_dir / n).read_bytes() for n in report["selection"]["exports"]}
    _check_exports(report, files, lambda i: str((image_folder / "S" / i).resolve()))
    # the store's flat names point at the latest run's exports too
    assert (image_folder / "out" / "selection.csv").read_bytes() == files["selection.csv"]


@pytest.mark.slow  # two runs against the moto server
def test_exports_into_an_s3_store_with_s3_images(admin, bucket, moto_endpoint, tmp_path):  # noqa: F811
    for rel, data in _image_sets().items():
        admin.put_object(Bucket=bucket, Key=f"data/{rel}", Body=data)
    job = _job(
        f"s3://{bucket}/data/P",
        f"s3://{bucket}/data/S",
        f"s3://{bucket}/store",
        export=["csv", "label-studio", "fiftyone"],
    )
    job["storage"] = {"s3": {"endpoint_url": moto_endpoint, "region": REGION}}
    first = run(load_job(write_job(tmp_path, job)))
    second = run(load_job(write_job(tmp_path, job)))

    def fetch(run_uri: str, name: str) -> bytes:
        key = run_uri.removeprefix(f"s3://{bucket}/") + "/" + name
        return admin.get_object(Bucket=bucket, Key=key)["Body"].read()

    reports = [json.loads(fetch(r.run_dir, "report.json")) for r in (first, second)]
    assert not _all_ids(reports[0]) & _all_ids(reports[1])  # remembered through S3
    for result, report in zip((first, second), reports, strict=True):
        files = {n: fetch(result.run_dir, n) for n in exports.FILES.values()}
        _check_exports(report, files, lambda i: f"s3://{bucket}/data/S/{i}")


@pytest.mark.slow  # trains four small models
def test_held_out_split_is_the_same_for_every_model_and_holds_far_images(tmp_path):
    from worker.demo import make_demo_data
    from worker.job import parse_job

    make_demo_data(tmp_path / "data", per_set=15)
    job = parse_job(
        {
            "model": {"name": "hog", "image_size": 64},
            "pca": {"dims": 5, "sweep": [2, 5]},
            "datasets": {
                "primary": {"name": "P", "path": "data/P/images", "masks": "data/P/masks"},
                "secondary": [{"name": "S3", "path": "data/S3/images", "masks": "data/S3/masks"}],
            },
            "metrics": {"statistics": False, "duplicates": False, "null_repeats": 2},
            "selection": {"strategy": "farthest", "counts": [1, 3, 7]},
            "cache": {"enabled": False},
            "output": {"dir": "out"},
            "adaptation": {
                "enabled": True,
                "model": "unet",
                "selection": "farthest",
                "counts": [1, 3, 7],
                "epochs": 1,
                "image_size": 32,
                "batch_size": 8,
                "held_out": 0.2,
            },
        },
        tmp_path,
    )
    report = run(job).report.model_dump(mode="json")
    ad, sec = report["adaptation"], report["secondaries"][0]
    scaled = {im["id"]: im["i_dist_scaled"] for im in sec["images"]}
    split = ad["held_out"]["splits"][0]
    held = split["ids"]
    assert len(held) == 3 == sec["selection_pool"]["held_out"]  # round(0.2 * 15)
    # chosen before selection: never selected, never trained on, even by farthest-first
    trained = {i for m in ad["models"] for i in m["train_ids"]}
    assert not {f"S3/{i}" for i in held} & trained and not set(held) & _all_ids(report)
    # one image from each I_dist stratum: the top stratum's is among the 5 farthest
    order = sorted(scaled, key=scaled.get)
    assert max(order.index(i) for i in held) >= 10
    assert split["i_dist_scaled_max"] == max(scaled[i] for i in held)
    assert split["far_count"] >= 1
    rows = [r for r in ad["held_out"]["results"] if r["dataset"] == "S3"]
    assert [r["model"] for r in rows] == ["M", "M1", "M3", "M7"]
    for r in rows:  # the same images for every model
        assert [p["id"] for p in r["per_image"]] == held and r["count"] == 3
    # the images left after selection are scored too, the held-out ones among them
    left = next(r for r in ad["results"] if r["model"] == "M")
    assert set(held) <= {p["id"] for p in left["per_image"]}


@pytest.mark.parametrize(
    ("selection", "field"),
    [
        ({"export": ["cvat"]}, "selection.export"),
        ({"labelled": [" "]}, "selection.labelled"),
        ({"random_subsets": 0}, "selection.random_subsets"),
        ({"strategy": ["novel", "nearest"]}, "selection.strategy"),
    ],
)
def test_bad_selection_settings_name_the_field(tmp_path, selection, field):
    from worker.errors import JobError
    from worker.job import parse_job

    job = _job("P", "S", "out", **selection)
    with pytest.raises(JobError, match=field.replace(".", r"\.")):
        parse_job(job, tmp_path)
    assert not (tmp_path / "out").exists()


def test_held_out_setting_is_checked(tmp_path):
    from worker.errors import JobError
    from worker.job import parse_job

    job = _job("P", "S", "out")
    job["adaptation"] = {"held_out": 1.0}
    with pytest.raises(JobError, match=r"adaptation\.held_out"):
        parse_job(job, tmp_path)


def test_a_set_with_everything_labelled_proposes_nothing(embedding_job):
    from worker.job import parse_job

    folder, job, _ = embedding_job
    job["selection"] = {"strategy": ["novel", "band"], "counts": [1, 3], "labelled": []}
    job["selection"]["labelled"] = [f"s1_{i:02d}" for i in range(20)]  # all of S1
    report = run(parse_job(job, folder)).report
    s1 = report.secondary("S1")
    assert s1.selection_pool.candidates == 0 and s1.selection_pool.labelled == 20
    assert all(sel.ids == [] and sel.beats_random is None for sel in s1.selections)
    assert all(sel.verdict.endswith("nothing to judge.") for sel in s1.selections)
    assert all(sel.ids for sel in report.secondary("S2").selections)  # the other set is served
