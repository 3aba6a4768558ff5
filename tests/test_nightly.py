"""Nightly loop end to end: three runs of one job into one store (run store + history +
change gates + compare), with images added and removed between nights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.jobs import write_job
from worker.__main__ import main
from worker.store import list_runs as store_runs


def _night(folder: Path, job: dict, s1: np.ndarray, ids: list[str], store: Path) -> dict:
    np.savez(folder / "emb" / "S1.npz", embeddings=s1, ids=np.array(ids))
    code = main(["run", str(write_job(folder, job)), "--out", str(store), "--quiet"])
    assert code in (0, 1)
    return json.loads((store / "latest" / "report.json").read_text())


def test_three_nights_history_gates_and_compare(embedding_job, capsys):
    folder, job, data = embedding_job
    job["gates"] = [
        {"metric": "o_dist_mean_change", "dataset": "S1", "max": 0.05},
        {"metric": "new_images_far_fraction", "dataset": "S1", "max": 1.0},
    ]
    store = folder / "store"
    rng = np.random.default_rng(11)
    s1 = data["S1"]
    ids = [f"s1_{i:02d}" for i in range(len(s1))]

    first = _night(folder, job, s1, ids, store)
    assert "history" not in first  # nothing to compare with: no block, gates pass with reason
    assert first["passed"] and all("first run" in g["reason"] for g in first["gates"])
    assert first["run"]["run_id"] and (store / "runs" / first["run"]["run_id"]).is_dir()

    # night 2: five far images arrive, two old ones are gone
    far = rng.normal(size=(5, s1.shape[1])) * 1.5 + 4.0
    s1_2 = np.vstack([s1[2:], far])
    ids_2 = ids[2:] + [f"new_{k}" for k in range(5)]
    second = _night(folder, job, s1_2, ids_2, store)
    hist = second["history"]
    assert hist["previous_run"] == first["run"]["run_id"]
    sec = next(s for s in hist["secondaries"] if s["name"] == "S1")
    new = sec["new_images"]
    assert (new["count"], new["removed"], new["seen"]) == (5, 2, len(ids) - 2)
    o1 = next(s for s in first["secondaries"] if s["name"] == "S1")["o_dist_mean"]
    o2 = next(s for s in second["secondaries"] if s["name"] == "S1")["o_dist_mean"]
    assert sec["vs_previous"]["o_dist_mean_abs"] == pytest.approx(o2 - o1, rel=1e-12)
    assert sec["o_dist_mean_change"] == pytest.approx((o2 - o1) / o1, rel=1e-12)
    images = next(s for s in second["secondaries"] if s["name"] == "S1")["images"]
    assert sorted(im["id"] for im in images if im["new"]) == [f"new_{k}" for k in range(5)]
    assert sum(1 for im in images if im["new"] is False) == len(ids) - 2
    # the far images raise o_dist_mean by more than 5%: the change gate fails the night
    change = next(g for g in second["gates"] if g["metric"] == "o_dist_mean_change")
    assert o2 > o1 * 1.05 and change["passed"] is False and second["passed"] is False
    scaled = {im["id"]: im["i_dist_scaled"] for im in images}
    lo, hi = job.get("selection", {}).get("band", [0.6, 1.0])
    in_band = [k for k in range(5) if lo <= scaled[f"new_{k}"] <= hi]
    assert new["far_fraction"] == pytest.approx(len(in_band) / 5)

    # night 3: unchanged data; the series has three points, oldest first
    third = _night(folder, job, s1_2, ids_2, store)
    series = next(s for s in third["history"]["secondaries"] if s["name"] == "S1")["series"]
    assert [p["run_id"] for p in series] == [
        first["run"]["run_id"],
        second["run"]["run_id"],
        third["run"]["run_id"],
    ]
    assert series[2]["o_dist_mean"] == pytest.approx(series[1]["o_dist_mean"], rel=1e-12)
    assert len(store_runs(str(store))) == 3

    # compare the first and second nights by run id, with a threshold as a gate
    capsys.readouterr()
    code = main(
        [
            "compare",
            first["run"]["run_id"],
            second["run"]["run_id"],
            "--store",
            str(store),
            "--json",
            "--max-o-dist-mean-change",
            "0.05",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    row = next(r for r in out["secondaries"] if r["name"] == "S1")
    assert code == 1 and out["passed"] is False
    assert row["o_dist_mean"]["abs"] == pytest.approx(o2 - o1, rel=1e-12)


def _shell_words(text: str) -> list[str]:
    import shlex

    return shlex.split(text.replace("\\\n", " "))


@pytest.mark.slow
def test_every_shipped_ci_example_passes_on_two_identical_nights(embedding_job, capsys):
    """The docs' CI examples (scheduling.md's history gates and compare lines, the Kubernetes
    compare CronJob, the GitHub compare workflow) on two nights where nothing changed: every
    one exits 0. The first night's change gates are JUnit skipped, with the reason."""
    import re
    import xml.etree.ElementTree as ET

    import yaml

    root = Path(__file__).resolve().parents[1]
    folder, job, data = embedding_job
    store = folder / "out"
    sched = (root / "docs" / "scheduling.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", sched, re.S) if "history:" in b)
    shipped = yaml.safe_load(block)
    job["gates"] = shipped["gates"]
    junit1, junit2 = folder / "n1.xml", folder / "n2.xml"
    path = write_job(folder, job)
    assert main(["run", str(path), "--out", str(store), "--quiet", "--junit", str(junit1)]) == 0
    night1 = json.loads((store / "latest" / "report.json").read_text())
    cases = ET.parse(junit1).getroot().findall(".//testcase")
    assert cases and all(c.find("skipped") is not None for c in cases)
    assert all("first run" in c.find("skipped").get("message") for c in cases)
    assert ET.parse(junit1).getroot().find("testsuite").get("skipped") == str(len(cases))

    job["history"] = {**shipped["history"], "baseline": night1["run"]["run_id"]}
    path = write_job(folder, job)
    assert main(["run", str(path), "--out", str(store), "--quiet", "--junit", str(junit2)]) == 0
    night2 = json.loads((store / "latest" / "report.json").read_text())
    assert night2["passed"] and all(g["value"] is not None for g in night2["gates"])
    assert ET.parse(junit2).getroot().find("testsuite").get("skipped") == "0"
    nightly = store / "runs" / night1["run"]["run_id"]

    def local(word: str) -> str:
        for shipped_path, here in (
            ("s3://my-reports/dataset-distance/nightly", str(nightly)),
            ("$NIGHTLY", str(nightly)),
            ("out/compare.xml", str(folder / "compare.xml")),
            ("out/", f"{store}/"),
            ("/out/", f"{store}/"),
            ("/out", str(store)),
        ):
            if word.startswith(shipped_path):
                return here + word[len(shipped_path) :]
        return word

    commands = []
    for line in re.findall(r"^python -m worker (compare .*?)(?<!\\)$", sched, re.M | re.S):
        commands.append(_shell_words(line))
    docs = list(yaml.safe_load_all((root / "docs" / "k8s-compare-cronjob.yaml").read_text()))
    pod = docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    commands.append(pod["containers"][0]["args"])
    wf = yaml.safe_load((root / "docs" / "github-actions-compare.yml").read_text())
    step = next(
        s for s in wf["jobs"]["compare"]["steps"] if s.get("name") == "Compare with last night"
    )
    words = _shell_words(step["run"])
    commands.append(words[words.index("$IMAGE") + 1 :])
    assert len(commands) == 4 and all(c[0] == "compare" for c in commands)
    for argv in commands:
        capsys.readouterr()
        code = main([local(w) for w in argv])
        out = capsys.readouterr()
        assert code == 0, (argv, out.out[-2000:], out.err[-2000:])
        assert any(w.startswith("--m") for w in argv)  # each example gates on something
