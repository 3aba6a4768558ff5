"""`python -m worker compare A B` (worker/runs_compare.py): deltas on two reports with a known
change (hand-computed), the same result in both argument orders (older -> newer, said plainly
when A is the newer), ranking changes (closest first), images added and removed, threshold
gates (count two-sided) and exit codes, reports that measured different things, the --json
shape, JUnit, run ids in a store (`latest` follows the link), bad inputs (exit 2 naming the
argument), and every shipped CI example passing on two identical nights."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers.history import R1, R2, R3, report_json, three_runs, write_store
from tests.helpers.reports import typed_report
from worker.__main__ import main
from worker.results import SecondaryResult
from worker.runs_compare import compare_gates, compare_reports, ranking

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def two_reports(tmp_path):
    """A = run 1, B = run 3 of the synthetic history (see tests/test_history.py)."""
    r1, _, r3 = three_runs()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(report_json(r1))
    b.write_text(report_json(r3))
    return a, b


def test_compare_reports_known_change():
    r1, _, r3 = three_runs()
    c = compare_reports(r1, r3, (0.6, 1.0))
    assert (c.a, c.b) == (R1, R3)
    assert [s.name for s in c.secondaries] == ["S1", "S2"]
    assert c.secondaries_added == [] and c.secondaries_removed == ["S3"]
    s1, s2 = c.secondaries
    # o_dist_mean 2.0 -> 2.72 (o_dist 20 -> 27.2, |P| = 10)
    assert (s1.o_dist_mean.a, s1.o_dist_mean.b) == pytest.approx((2.0, 2.72))
    assert s1.o_dist_mean.abs == pytest.approx(0.72) and s1.o_dist_mean.rel == pytest.approx(0.36)
    assert (s1.count.a, s1.count.b, s1.count.abs) == (3, 5, 2)
    assert s1.count.rel == pytest.approx(2 / 3)
    # I_dist p90 (numpy linear): [10, 20, 30] -> 28; [10, 16, 20, 40, 50] -> 46
    assert (s1.i_dist_p90.a, s1.i_dist_p90.b) == pytest.approx((28.0, 46.0))
    assert s1.i_dist_p90.rel == pytest.approx(18 / 28)
    assert s1.mmd_p_value.abs == pytest.approx(-0.49)
    # by content hash: b_renamed is b; d, f, g added; c removed
    assert s1.matched_by == "sha256"
    assert s1.images_added == ["d", "f", "g"] and s1.images_removed == ["c"]
    # scaled in B: d 0.75, f 1.0, g 0.15 -> 2 of 3 in [0.6, 1]
    assert s1.new_images_far_fraction == pytest.approx(2 / 3)
    assert s2.o_dist_mean.rel == pytest.approx(0.5)
    assert s2.images_added == ["w"] and s2.images_removed == []
    assert s2.new_images_far_fraction == 1.0
    # ranking by o_dist_mean, closest first: A S3 0.2 < S2 1.0 < S1 2.0; B S2 1.5 < S1 2.72
    assert c.ranking_a == ["S3", "S2", "S1"] and c.ranking_b == ["S2", "S1"]
    assert (s1.rank_a, s1.rank_b, s2.rank_a, s2.rank_b) == (3, 2, 2, 1)
    assert c.ranking_changed is False
    assert c.swapped is False and c.not_comparable == []


def test_both_argument_orders_give_the_same_changes_older_to_newer(two_reports, capsys):
    r1, _, r3 = three_runs()
    forward, backward = compare_reports(r1, r3), compare_reports(r3, r1, label_a="x")
    assert backward.swapped is True and forward.swapped is False
    assert backward.model_dump(exclude={"swapped"}) == forward.model_dump(exclude={"swapped"})
    a, b = map(str, two_reports)
    outs = []
    for argv in ([a, b], [b, a]):
        assert main(["compare", *argv, "--json", "--max-count-change", "1"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[1]["swapped"] is True and outs[0]["swapped"] is False
    assert {k: v for k, v in outs[0].items() if k != "swapped"} == {
        k: v for k, v in outs[1].items() if k != "swapped"
    }
    assert (outs[1]["a"], outs[1]["b"]) == (R1, R3)
    assert main(["compare", b, a]) == 0
    text = capsys.readouterr().out
    assert f"A ({R3}) is newer than B ({R1})" in text and "older to the newer" in text
    assert "- c" in text and "+ d" in text  # removed stays removed, whatever the order


def test_ranking_change_and_added_secondary():
    r1, _, r3 = three_runs()
    r3.secondaries[1].o_dist_mean = 3.0  # S2 now farther than S1
    s9 = typed_report({"secondaries": [{"name": "S9", "o_dist_mean": None}]}).secondaries[0]
    assert isinstance(s9, SecondaryResult)
    r3.secondaries.append(s9)
    c = compare_reports(r1, r3)
    assert c.ranking_b == ["S1", "S2", "S9"]  # closest first, nulls last
    assert c.ranking_changed is True  # A: S2 closer than S1
    s2 = next(s for s in c.secondaries if s.name == "S2")
    assert (s2.rank_a, s2.rank_b) == (2, 2)
    assert c.secondaries_added == ["S9"]
    assert ranking(typed_report({"secondaries": []})) == []


def test_compare_gates_values_and_bounds():
    r1, _, r3 = three_runs()
    c = compare_reports(r1, r3)
    gates = compare_gates(c, {"o_dist_mean_change": 0.4, "mmd_p_value": 0.05})
    by = {(g.metric, g.dataset): g.model_dump() for g in gates}
    assert by[("o_dist_mean_change", "S1")]["passed"] is True  # 0.36 <= 0.4
    assert by[("o_dist_mean_change", "S2")]["passed"] is False  # 0.5 > 0.4
    assert by[("o_dist_mean_change", "S2")]["max"] == 0.4
    assert by[("mmd_p_value", "S1")] == {
        "metric": "mmd_p_value",
        "dataset": "S1",
        "model": None,
        "value": 0.01,
        "min": 0.05,
        "passed": False,
    }
    assert by[("mmd_p_value", "S2")]["passed"] is True
    # a value that cannot be computed fails with a reason that says why
    r1.secondaries[0].o_dist_mean = None
    g = compare_gates(compare_reports(r1, r3), {"o_dist_mean_change": 1.0})[0]
    assert g.value is None and g.passed is False
    assert g.reason == "o_dist_mean_change: S1 has no o_dist_mean in the older report"


def test_count_change_gate_is_two_sided():
    r1, _, r3 = three_runs()
    # S1 3 -> 5 images (+67%), S2 2 -> 3 (+50%); the other way -40% and -33%
    up = {g.dataset: g for g in compare_gates(compare_reports(r1, r3), {"count_change": 0.2})}
    assert up["S1"].value == pytest.approx(2 / 3) and not up["S1"].passed
    r3.run.started, r1.run.started = r1.run.started, r3.run.started  # r3 is now the older
    down = {g.dataset: g for g in compare_gates(compare_reports(r3, r1), {"count_change": 0.2})}
    assert down["S1"].value == pytest.approx(2 / 5) and not down["S1"].passed  # lost 40%
    assert down["S2"].value == pytest.approx(1 / 3) and not down["S2"].passed
    ok = compare_gates(compare_reports(r3, r1), {"count_change": 0.45})
    assert [g.passed for g in ok] == [True, True]


@pytest.mark.parametrize(
    "change, said",
    [
        ({"model": {"name": "dinov2"}}, "model name"),
        ({"model": {"name": "hog", "image_size": 224}}, "model image_size"),
        ({"pca": {"dims": 5}}, "PCA dims 25, this run 5"),
        ({"primary": {"name": "Other", "count": 10}}, "primary"),
    ],
)
def test_incomparable_reports_fail_distance_gates_with_why(change, said):
    r1, _, r3 = three_runs()
    for key, value in change.items():
        setattr(r3, key, getattr(r3, key).model_copy(update=value))
    c = compare_reports(r1, r3)
    assert len(c.not_comparable) == 1 and said in c.not_comparable[0]
    gates = compare_gates(c, {"o_dist_mean_change": 10.0, "count_change": 10.0})
    dist = [g for g in gates if g.metric == "o_dist_mean_change"]
    assert all(not g.passed and g.value is None and said in g.reason for g in dist)
    assert all(g.passed for g in gates if g.metric == "count_change")  # counts still compare


def test_threshold_with_no_common_secondary_fails(tmp_path, capsys):
    r1, _, r3 = three_runs()
    for sec in r3.secondaries:
        sec.name = "other-" + sec.name
    (tmp_path / "a.json").write_text(report_json(r1))
    (tmp_path / "b.json").write_text(report_json(r3))
    argv = ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert main([*argv, "--max-o-dist-mean-change", "1"]) == 1
    assert "no secondary is in both reports" in capsys.readouterr().out


def test_cli_exit_codes_and_text(two_reports, capsys):
    a, b = map(str, two_reports)
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "+36.0%" in out and "+50.0%" in out  # S1 and S2 o_dist_mean change
    assert "secondaries removed: S3" in out
    assert "+ d" in out and "- c" in out
    assert "ranking by o_dist_mean (closest first): unchanged" in out

    assert main(["compare", a, b, "--max-o-dist-mean-change", "0.6"]) == 0
    assert "gates: all passed" in capsys.readouterr().out
    assert main(["compare", a, b, "--max-o-dist-mean-change", "0.4"]) == 1
    out = capsys.readouterr().out
    assert "gate failed: o_dist_mean_change[S2] = 0.5" in out and "S1] =" not in out
    assert main(["compare", a, b, "--min-mmd-p-value", "0.05"]) == 1
    assert main(["compare", a, b, "--max-new-images-far-fraction", "0.5"]) == 1  # 2/3 and 1
    assert main(["compare", a, b, "--max-new-images-far-fraction", "1.0"]) == 0
    capsys.readouterr()
    # a narrower band: only f (1.0) and w (1.0) are far -> S1 1/3, S2 1
    assert main(["compare", a, b, "--band", "0.9", "1.0", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["band"] == [0.9, 1.0]
    assert j["secondaries"][0]["new_images_far_fraction"] == pytest.approx(1 / 3)
    # reversing A and B changes nothing but the note: the older report is the reference
    assert main(["compare", b, a, "--max-o-dist-mean-change", "0.4"]) == 1
    assert "is newer than" in capsys.readouterr().out


def test_cli_json_shape_and_junit(two_reports, tmp_path, capsys):
    a, b = map(str, two_reports)
    junit = tmp_path / "ci" / "compare.xml"
    code = main(
        ["compare", a, b, "--json", "--junit", str(junit), "--max-o-dist-mean-change", "0.4"]
    )
    assert code == 1
    j = json.loads(capsys.readouterr().out)
    assert set(j) == {
        "a",
        "b",
        "swapped",
        "not_comparable",
        "band",
        "secondaries",
        "secondaries_added",
        "secondaries_removed",
        "ranking_a",
        "ranking_b",
        "ranking_changed",
        "gates",
        "passed",
    }
    assert (j["a"], j["b"], j["passed"]) == (R1, R3, False)
    s1 = j["secondaries"][0]
    assert set(s1["o_dist_mean"]) == {"a", "b", "abs", "rel"}
    assert s1["o_dist_mean"]["rel"] == pytest.approx(0.36)
    assert s1["images_added"] == ["d", "f", "g"]
    assert [(g["dataset"], g["passed"]) for g in j["gates"]] == [("S1", True), ("S2", False)]
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "1")
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == [
        "o_dist_mean_change[S1] <= 0.4",
        "o_dist_mean_change[S2] <= 0.4",
    ]
    assert cases[0].find("failure") is None and cases[1].find("failure") is not None


def test_cli_run_ids_in_a_store(tmp_path, capsys):
    r1, r2, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1, r2, r3])
    assert main(["compare", "previous", "latest", "--store", str(store), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert (j["a"], j["b"]) == (R2, R3)
    assert j["secondaries"][0]["o_dist_mean"]["rel"] == pytest.approx(0.345 / 2.375)
    assert main(["compare", R1, R3, "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["a"] == R1
    # a report.json inside a run folder knows its run id from the folder
    path_b = str(store / "runs" / R3 / "report.json")
    assert main(["compare", R1, path_b, "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["b"] == R3


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["missing.json", "B"], "A (missing.json)"),
        (["A", "notjson.txt"], "B (notjson.txt): not valid JSON at line 1"),
        (["A", "other.json"], "B (other.json): not a report.json"),
        (["A", R2], "B (" + R2 + "): a run id needs the store"),
        (["A", "latest", "--store", "emptystore"], "B (latest): emptystore: no published run"),
        (["A", "latest", "--store", "afile"], "afile is a file, not a run store"),
        (["A", "A", "--junit", "A"], "--junit: A is report A"),
        (["A", "A", "--band", "0.9", "0.1"], "--band"),
    ],
)
def test_cli_bad_inputs_exit_2(tmp_path, monkeypatch, capsys, argv, needle):
    r1, _, _ = three_runs()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "A").write_text(report_json(r1))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notjson.txt").write_text("not json")
    (tmp_path / "other.json").write_text(json.dumps({"secondaries": "no"}))
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


def test_cli_argparse_errors_exit_2(two_reports, capsys):
    a, _ = map(str, two_reports)
    with pytest.raises(SystemExit) as exc:
        main(["compare", a])  # B missing
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["compare", a, a, "--max-o-dist-mean-change", "much"])
    assert exc.value.code == 2
    assert "--max-o-dist-mean-change" in capsys.readouterr().err


def test_python_m_worker_compare_subprocess(two_reports):
    a, b = map(str, two_reports)
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "compare", a, b, "--max-o-dist-mean-change", "0.4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "gate failed: o_dist_mean_change[S2]" in proc.stdout


# ----------------------------------------------------------------------------- docs examples


def _latest_store(root: Path, reports: list) -> Path:
    return write_store(root, reports, extra_junk=False)


def test_k8s_compare_cronjob_runs_against_a_local_store(tmp_path, capsys):
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "docs" / "k8s-compare-cronjob.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["CronJob", "CronJob"]
    run_args = docs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert run_args[:2] == ["run", "/job/job.yaml"] and "--out" in run_args
    pod = docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[0] == "compare" and "/out/latest/report.json" in args
    _, _, r3 = three_runs()
    _, r2, _ = three_runs()
    store = _latest_store(tmp_path / "out", [r2, r3])
    argv = [a.replace("/out", str(store)) for a in args]
    assert main(argv) == 0  # S1 +14.5% <= 20%; half of S1's new images far <= 0.5
    j = json.loads(capsys.readouterr().out)
    assert (j["a"], j["b"]) == (R2, R3)  # the stable path resolves to the newest run
    assert {g["metric"] for g in j["gates"]} == {"o_dist_mean_change", "new_images_far_fraction"}


def test_github_compare_workflow_command(tmp_path, monkeypatch, capsys):
    import shlex

    import yaml

    wf = yaml.safe_load((ROOT / "docs" / "github-actions-compare.yml").read_text())
    steps = wf["jobs"]["compare"]["steps"]
    script = next(s["run"] for s in steps if s.get("name") == "Compare with last night")
    words = shlex.split(script.replace("\\\n", " "))
    argv = words[words.index("$IMAGE") + 1 :]
    assert argv[0] == "compare" and argv[2] == "out/latest/report.json"
    _, r2, r3 = three_runs()
    nightly = tmp_path / "nightly"
    nightly.mkdir()
    (nightly / "report.json").write_text(report_json(r2))
    _latest_store(tmp_path / "out", [r3])
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("$NIGHTLY", str(nightly)) for a in argv]
    assert main(argv) == 1  # S1 moved +14.5% > 10%
    assert "gate failed: o_dist_mean_change[S1]" in capsys.readouterr().out
    assert (tmp_path / "out" / "compare.xml").is_file()
