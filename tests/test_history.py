"""History across runs (worker/history.py, pure over typed Reports): three synthetic runs
with added, removed and renamed images, hand-computed deltas, baselines by run id and by path;
the history stage (worker.pipeline.attach_history) reading earlier runs through the one store
reader (worker.store) over a local folder and over S3 (moto server); the Jinja fragment and
the figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.history import N_P, R1, R2, R3, report_json, three_runs, write_store
from tests.helpers.reports import report_dict
from worker.errors import JobError
from worker.history import (
    History,
    build_history,
    gate_reason,
    gate_value,
    image_diff,
)
from worker.job import GATE_METRICS, parse_job
from worker.pipeline import attach_history
from worker.results import Report, SecondaryResult
from worker.store import list_runs, load_report, load_run

ROOT = Path(__file__).resolve().parents[1]


def _sec_of(h: History, name: str):
    return next(s for s in h.secondaries if s.name == name)


# ----------------------------------------------------------------------------- pure


def test_history_three_runs_hand_computed():
    r1, r2, r3 = three_runs()
    h = build_history(r3, [r1, r2], None, (0.6, 1.0))
    assert h.run_id == R3 and h.previous_run == R2 and h.baseline is None
    assert h.runs == [R1, R2, R3]
    assert h.removed_secondaries == ["S3"]
    assert h.warnings == []

    s1 = _sec_of(h, "S1")
    assert s1.status == "kept"
    assert [p.run_id for p in s1.series] == [R1, R2, R3]
    # o_dist: run 1 (10+20+30)/3 = 20, run 2 (10+20+40+25)/4 = 23.75, run 3 136/5 = 27.2
    assert [p.o_dist for p in s1.series] == pytest.approx([20.0, 23.75, 27.2], abs=1e-12)
    assert [p.o_dist_mean for p in s1.series] == pytest.approx([2.0, 2.375, 2.72], abs=1e-12)
    assert [p.count for p in s1.series] == [3, 4, 5]
    assert [p.mmd_p_value for p in s1.series] == [0.5, 0.25, 0.01]
    assert s1.series[-1].finished == "2026-01-03T02:10:00Z"

    vp = s1.vs_previous
    assert vp.reference == R2
    assert vp.o_dist_mean_abs == pytest.approx(0.345, abs=1e-12)
    assert vp.o_dist_mean_rel == pytest.approx(0.345 / 2.375, abs=1e-12)
    assert vp.count_abs == 1 and vp.count_rel == pytest.approx(0.25)
    # I_dist p90, numpy linear: run 2 [10,20,25,40] -> 25 + 0.7*15 = 35.5;
    # run 3 [10,16,20,40,50] -> 40 + 0.6*10 = 46
    assert vp.i_dist_p90_abs == pytest.approx(46.0 - 35.5)
    assert vp.i_dist_p90_rel == pytest.approx(10.5 / 35.5)
    assert vp.mmd_p_value_abs == pytest.approx(0.01 - 0.25)
    assert s1.vs_baseline is None
    assert s1.o_dist_mean_change == pytest.approx(0.345 / 2.375)

    # new since run 2, by hash: f and g (b_renamed has b's hash); e removed
    ni = s1.new_images
    assert ni.by == "sha256" and ni.previous_run == R2
    assert (ni.count, ni.removed, ni.seen) == (2, 1, 3)
    assert h.new_ids["S1"] == ["f", "g"]
    # run 3 scaled: (x - 10) / 40 -> f = 1.0, g = 0.15: one of the two in [0.6, 1]
    assert ni.far_count == 1 and ni.far_fraction == 0.5
    assert [(f.id, f.i_dist, f.i_dist_scaled) for f in ni.far] == [("f", 50.0, 1.0)]
    # new [50, 16]: mean 33, std 17, p90 16 + 0.9 * 34 = 46.6
    new = ni.i_dist_new
    assert (new.count, new.mean, new.std, new.min, new.max) == (2, 33.0, 17.0, 16.0, 50.0)
    assert new.p50 == pytest.approx(33.0) and new.p90 == pytest.approx(46.6)
    # seen [10, 20, 40]: mean 70/3, std sqrt(1400/9), p50 20, p90 20 + 0.8 * 20 = 36
    seen = ni.i_dist_seen
    assert seen.count == 3 and seen.mean == pytest.approx(70 / 3)
    assert seen.std == pytest.approx(math.sqrt(1400 / 9)) and seen.p90 == pytest.approx(36.0)

    # S2 was not in run 2: 'added', every image new, no change vs previous
    s2 = _sec_of(h, "S2")
    assert s2.status == "added"
    assert [p.run_id for p in s2.series] == [R1, R3]
    assert s2.vs_previous is None and s2.o_dist_mean_change is None
    assert s2.new_images.count == 3 and s2.new_images.removed == 0
    assert h.new_ids["S2"] == ["x", "y", "w"]
    # scaled (x - 5) / 20: x 0, y 0.5, w 1.0 -> 1 of 3 far
    assert s2.new_images.far_fraction == pytest.approx(1 / 3)

    assert gate_value(h, "o_dist_mean_change", "S1") == pytest.approx(0.345 / 2.375)
    assert gate_value(h, "new_images_far_fraction", "S1") == 0.5
    assert gate_value(h, "o_dist_mean_change", "S2") is None
    assert "previous run" in gate_reason(h, "o_dist_mean_change", "S2")
    assert gate_value(h, "o_dist_mean_change", "nope") is None
    assert gate_reason(h, "o_dist_mean_change", "S1") is None


def test_history_baseline_changes_and_gate():
    r1, r2, r3 = three_runs()
    h = build_history(r3, [r1, r2], r1, (0.6, 1.0))
    s1 = _sec_of(h, "S1")
    assert h.baseline == R1
    vb = s1.vs_baseline
    assert vb.reference == R1
    assert vb.o_dist_mean_abs == pytest.approx(0.72) and vb.o_dist_mean_rel == pytest.approx(0.36)
    assert vb.count_abs == 2 and vb.count_rel == pytest.approx(2 / 3)
    # the gate measures against the baseline when there is one
    assert gate_value(h, "o_dist_mean_change", "S1") == pytest.approx(0.36)
    # S2 is in the baseline (run 1): (25/3*... ) o_dist 10 -> 15, o_dist_mean 1.0 -> 1.5
    assert _sec_of(h, "S2").vs_baseline.o_dist_mean_rel == pytest.approx(0.5)
    assert gate_value(h, "o_dist_mean_change", "S2") == pytest.approx(0.5)


def test_first_run_and_empty_band():
    _, _, r3 = three_runs()
    h = build_history(r3, [], None, (0.6, 1.0))
    assert h.previous_run is None and h.runs == [R3] and h.new_ids == {}
    s1 = _sec_of(h, "S1")
    assert s1.status == "first run" and s1.new_images is None and len(s1.series) == 1
    assert gate_value(h, "new_images_far_fraction", "S1") is None
    assert "first run" in gate_reason(h, "new_images_far_fraction", "S1")
    with pytest.raises(ValueError):
        build_history(r3, [], None, (0.9, 0.1))
    with pytest.raises(ValueError):
        gate_value(h, "o_dist", "S1")


def test_no_new_images_gives_zero_far_fraction():
    r1, _, _ = three_runs()
    h = build_history(r1, [r1], None)
    assert all(s.new_images.count == 0 and s.new_images.far_fraction == 0.0 for s in h.secondaries)
    assert all(s.o_dist_mean_change == 0.0 for s in h.secondaries)


def _imgs(*pairs):
    sec = {"name": "S", "images": [{"id": i, "sha256": h} for i, h in pairs]}
    return SecondaryResult.model_validate(report_dict({"secondaries": [sec]})["secondaries"][0])


def test_image_diff_falls_back_to_ids_without_hashes():
    cur = _imgs(("a", None), ("b2", None))
    prev = _imgs(("a", "h1"), ("b", "h2"))
    assert image_diff(cur, prev) == (["b2"], ["b"], "id")
    cur = _imgs(("a", "h1"), ("b2", "h2"))
    assert image_diff(cur, prev) == ([], [], "sha256")
    # same id, new content: new by hash (and the old content is removed)
    cur = _imgs(("a", "h9"), ("b", "h2"))
    assert image_diff(cur, prev) == (["a"], ["a"], "sha256")


@pytest.mark.parametrize(
    "change, said",
    [
        ({"model": {"name": "dinov2"}}, "model name 'dinov2'"),
        ({"model": {"name": "hog", "image_size": 128}}, "model image_size 128"),
        ({"pca": {"dims": 10}}, "PCA dims 10, this run 25"),
        ({"primary": {"name": "P2", "count": N_P}}, "primary 'P2'"),
    ],
)
def test_incomparable_previous_run_fails_the_change_gate_with_why(change, said):
    r1, r2, r3 = three_runs()
    r2 = r2.model_copy(
        update={
            k: type(getattr(r2, k)).model_validate({**getattr(r2, k).model_dump(), **v})
            for k, v in change.items()
        }
    )
    h = build_history(r3, [r1, r2], None)
    assert any("not comparable" in w and R2 in w and said in w for w in h.warnings)
    assert said in h.not_comparable
    assert gate_value(h, "o_dist_mean_change", "S1") is None
    assert said in gate_reason(h, "o_dist_mean_change", "S1")
    # the new-image fraction is this run's own measure: still computed
    assert gate_value(h, "new_images_far_fraction", "S1") == 0.5
    # a comparable baseline decides instead
    hb = build_history(r3, [r1, r2], r1)
    assert hb.not_comparable is None and gate_value(hb, "o_dist_mean_change", "S1") is not None


def test_history_json_round_trip():
    r1, r2, r3 = three_runs()
    h = build_history(r3, [r1, r2], r1)
    text = h.model_dump_json()
    assert History.model_validate_json(text) == h
    assert "NaN" not in text
    # every field is described (the lead's schema is generated from these)
    schema = History.model_json_schema()
    for name, d in schema["$defs"].items():
        for field, prop in d["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


# ----------------------------------------------------------------------------- job


def test_job_history_config_and_gate_metrics():
    assert {"o_dist_mean_change", "new_images_far_fraction"} <= set(GATE_METRICS)
    base = {
        "datasets": {
            "primary": {"name": "P", "path": "p"},
            "secondary": [{"name": "S", "path": "s"}],
        }
    }
    job = parse_job(base, Path("."))
    assert job.history.max_runs == 30 and job.history.baseline is None
    job = parse_job(
        {
            **base,
            "history": {"max_runs": 5, "baseline": R1},
            "gates": [{"metric": "o_dist_mean_change", "max": 0.2}],
        },
        Path("."),
    )
    assert job.history.max_runs == 5 and job.history.baseline == R1
    for bad, field in (
        ({"max_runs": -1}, "history.max_runs"),
        ({"baseline": " "}, "history.baseline"),
        ({"keep": 3}, "history.keep"),
    ):
        with pytest.raises(JobError, match=field.replace(".", r"\.")):
            parse_job({**base, "history": bad}, Path("."))


# ----------------------------------------------------------------------------- store reader


def _job(tmp_path: Path, **history) -> object:
    base = {
        "datasets": {
            "primary": {"name": "P", "path": "p"},
            "secondary": [{"name": "S", "path": "s"}],
        },
        "history": history,
    }
    return parse_job(base, tmp_path)


def collect(store: str, current: Report, tmp_path: Path, **history) -> History | None:
    """The history stage of run() on `current` (a copy): its history block."""
    report = current.model_copy(deep=True)
    attach_history(report, _job(tmp_path, **history), store)
    return report.history


def test_local_store_reader_and_history_stage(tmp_path):
    r1, r2, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1, r2])
    assert list_runs(str(store)) == [R1, R2]
    assert list_runs(str(tmp_path / "nothing")) == []
    assert load_run(str(store), R1).run.run_id == R1
    with pytest.raises(JobError, match="not a run id"):
        load_run(str(store), "../etc")

    h = collect(str(store), r3, tmp_path)
    assert h.runs == [R1, R2, R3]
    assert gate_value(h, "o_dist_mean_change", "S1") == pytest.approx(0.345 / 2.375)
    # max_runs bounds the earlier runs read (the newest are kept)
    h1 = collect(str(store), r3, tmp_path, max_runs=1)
    assert h1.runs == [R2, R3] and [p.run_id for p in _sec_of(h1, "S1").series] == [R2, R3]
    assert collect(str(store), r3, tmp_path, max_runs=0) is None  # nothing to compare
    # runs newer than this one (a concurrent run) are not its history
    assert collect(str(store), r1, tmp_path) is None

    # baseline by run id
    hb = collect(str(store), r3, tmp_path, baseline=R1)
    assert hb.baseline == R1 and gate_value(hb, "o_dist_mean_change", "S1") == pytest.approx(0.36)
    # baseline by path, relative to the job folder
    (tmp_path / "golden.json").write_text(report_json(r1))
    hp = collect(str(store), r3, tmp_path, baseline="golden.json")
    assert hp.baseline == R1  # labelled by the run id the report carries
    assert gate_value(hp, "o_dist_mean_change", "S1") == pytest.approx(0.36)
    (tmp_path / "golden2.json").write_text(report_json(r1, run_id=False))
    hp2 = collect(str(store), r3, tmp_path, baseline="golden2.json")
    assert hp2.baseline == "golden2.json"
    assert _sec_of(hp2, "S1").vs_baseline.o_dist_mean_rel == pytest.approx(0.36)

    with pytest.raises(JobError, match="history.baseline"):
        collect(str(store), r3, tmp_path, baseline="20250101T000000Z-aaaaaa")
    with pytest.raises(JobError, match="history.baseline"):
        collect(str(store), r3, tmp_path, baseline="missing.json")


def test_history_stage_keeps_one_full_report(tmp_path, monkeypatch):
    """Earlier runs but the newest are read for their trend points only: their per-image
    lists are dropped as they are read, and the history equals the one built from the full
    reports (a store of 30 large nightly runs must not hold 30 reports' images at once)."""
    import worker.history as history

    r1, r2, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1, r2])
    seen = []
    real = history.build_history

    def spy(current, previous, *args, **kwargs):
        seen.append([[len(s.images) for s in r.secondaries] for r in previous])
        return real(current, previous, *args, **kwargs)

    monkeypatch.setattr(history, "build_history", spy)
    h = collect(str(store), r3, tmp_path)
    full = real(r3, [load_run(str(store), R1), load_run(str(store), R2)], run_id=R3)
    assert h.model_dump() == full.model_dump()
    older, newest = seen[0]
    assert older == [0] * len(older)
    assert newest == [len(s.images) for s in r2.secondaries] and sum(newest) > 0


@pytest.mark.parametrize(
    "damage, said",
    [
        ('{"truncated": ', "not valid JSON"),
        ("", "empty file"),
        ("text", "count"),
        ("no id", "images[0].id"),
        ("wrong block", "statistics"),
    ],
)
def test_damaged_earlier_run_is_skipped_with_a_warning_and_gate_reason(tmp_path, damage, said):
    r1, r2, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1, r2], extra_junk=False)
    body = json.loads(report_json(r2))
    if damage == "text":
        body["secondaries"][0]["count"] = "twelve"
    elif damage == "no id":
        del body["secondaries"][0]["images"][0]["id"]
    elif damage == "wrong block":
        body["secondaries"][0]["statistics"] = [1, 2]
    text = json.dumps(body) if damage in ("text", "no id", "wrong block") else damage
    (store / "runs" / R2 / "report.json").write_text(text)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    report = r3.model_copy(deep=True)
    attach_history(report, _job(tmp_path), str(store))
    h = report.history
    assert h.runs == [R1, R3] and h.previous_run == R1  # compared with the older run
    assert len(h.skipped_runs) == 1 and R2 in h.skipped_runs[0] and said in h.skipped_runs[0]
    assert any(R2 in w and said in w for w in report.warnings)
    reason = gate_reason(h, "o_dist_mean_change", "S1")
    assert R2 in reason and "skipped" in reason and R1 in reason
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_only_run_damaged_first_run_gate_says_so(tmp_path):
    r1, _, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1], extra_junk=False)
    (store / "runs" / R1 / "report.json").write_text("")
    report = r3.model_copy(deep=True)
    attach_history(report, _job(tmp_path), str(store))
    reason = gate_reason(report.history, "o_dist_mean_change", "S1")
    assert "first run" in reason and R1 in reason and "empty file" in reason


def test_load_report_references(tmp_path):
    r1, r2, _ = three_runs()
    store = write_store(tmp_path / "out", [r1, r2])
    assert load_report("latest", store=str(store)).run.run_id == R2
    assert load_report("previous", store=str(store)).run.run_id == R1
    assert load_report(R1, store=str(store)).run.run_id == R1
    assert load_report(str(store / "runs" / R1)).run.run_id == R1  # a folder
    with pytest.raises(JobError, match="--store"):
        load_report(R1, source="A")
    with pytest.raises(JobError, match="no such complete run"):
        load_report("20260104T020000Z-dddddd", store=str(store), source="B")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(JobError, match=r"A \(.*x\.json\): not a report\.json"):
        load_report(str(tmp_path / "x.json"), source="A")


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_store(monkeypatch_module):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }.items():
        monkeypatch_module.setenv(k, v)
    monkeypatch_module.delenv("AWS_PROFILE", raising=False)
    from worker.sources import s3

    s3.clear_clients()
    client = s3.get_client(None)
    client.create_bucket(Bucket="hist")
    r1, r2, _ = three_runs()
    for r in (r1, r2):
        client.put_object(
            Bucket="hist", Key=f"nightly/runs/{r.run.run_id}/report.json", Body=report_json(r)
        )
    client.put_object(
        Bucket="hist", Key="nightly/runs/20260104T020000Z-dddddd/report.pdf", Body=b"x"
    )
    client.put_object(Bucket="hist", Key="nightly/latest.json", Body=json.dumps({"run_id": R2}))
    yield "s3://hist/nightly"
    s3.clear_clients()
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_s3_store_reader(s3_store, tmp_path):
    _, _, r3 = three_runs()
    assert list_runs(s3_store) == [R1, R2]
    assert load_run(s3_store, R2).run.run_id == R2
    h = collect(s3_store, r3, tmp_path, baseline=R1)
    assert h.runs == [R1, R2, R3]
    assert gate_value(h, "o_dist_mean_change", "S1") == pytest.approx(0.36)
    assert load_report(f"{s3_store}/runs/{R1}/report.json").run.run_id == R1
    assert load_report("latest", store=s3_store).run.run_id == R2
    with pytest.raises(JobError, match="no such complete run"):
        load_report("20260104T020000Z-dddddd", store=s3_store)


# ----------------------------------------------------------------------------- page


def test_history_page_and_figures(tmp_path):
    import jinja2

    from worker.report.history_figures import make_history_figures

    r1, r2, r3 = three_runs()
    h = build_history(r3, [r1, r2], r1)
    figs = make_history_figures(h, tmp_path)
    assert set(figs) == {"history_trend", "history_new_images"}
    for p in figs.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("history.html.j2").render(
        history=h, figures={k: str(v) for k, v in figs.items()}
    )
    assert "Since last run" in html
    assert R2 in html and R1 in html
    assert "+14.5%" in html  # S1 o_dist_mean vs previous: 0.345 / 2.375
    assert "+36.0%" in html  # S1 vs baseline
    assert "S3" in html  # removed secondary
    assert ">f<" in html  # the far new image of S1
    # first run: renders, says so, no figures needed
    h0 = build_history(r3, [], None)
    html0 = env.get_template("history.html.j2").render(history=h0, figures={})
    assert "first run" in html0.lower()
    assert make_history_figures(h0, tmp_path / "none").keys() <= {"history_trend"}


def test_readme_short_form_job_is_valid_and_gates_on_change():
    import re

    import yaml

    text = (ROOT / "README.md").read_text()
    block = re.findall(r"```yaml\n(.*?)```", text, re.S)[0]
    job = parse_job(yaml.safe_load(block), Path("."), "README.md")
    metrics = [g.metric for g in job.gates]
    # with one secondary o_dist_scaled is always 1.0: the example must not gate on it
    assert "o_dist_scaled" not in metrics and "o_dist_mean_change" in metrics
    assert job.history.max_runs == 30
