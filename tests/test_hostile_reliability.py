"""Issue 34's hostile round: the job file, files and data, store and history faults, gates and
CI. Every case asserts the exit code, that the message names its subject (the field, file or
run) and that nothing visible changed (the whole folder's files and bytes before and after)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.history import R1, R2, R3, report_json, three_runs, write_store
from worker.__main__ import main
from worker.job import parse_job
from worker.pipeline import attach_history

BASE = textwrap.dedent(
    """\
    model: {name: precomputed}
    pca: {dims: 3, sweep: [2, 3]}
    datasets:
      primary: {name: P, embeddings: emb/P.npy}
      secondary:
        - {name: S, embeddings: emb/S.npy}
    metrics: {null_repeats: 2, mmd_permutations: 10}
    """
)


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: files by bytes, links by target, folders as such."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "special"
    return out


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "P.npy", rng.normal(size=(12, 4)))
    np.save(tmp_path / "emb" / "S.npy", rng.normal(size=(10, 4)) + 0.5)
    return tmp_path


def refused(capsys, argv: list[str], root: Path, *needles: str) -> str:
    """Run the CLI; exit 2, every needle in the message, nothing under root changed."""
    before = tree(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert tree(root) == before
    return err


# ----------------------------------------------------------------------------- job file

JOB_FILE_CASES = {
    "duplicate top-level key": (BASE + "seed: 1\nseed: 2\n", ["duplicate key 'seed'", "line"]),
    "duplicate path in the primary": (
        BASE.replace("embeddings: emb/P.npy}", "embeddings: emb/P.npy, embeddings: emb/S.npy}"),
        ["duplicate key 'embeddings'"],
    ),
    "duplicate key in a list item": (
        BASE.replace("{name: S, embeddings: emb/S.npy}", "{name: S, name: T, embeddings: x}"),
        ["duplicate key 'name'"],
    ),
    "duplicate nested block": (BASE + "output: {dir: a}\noutput: {dir: b}\n", ["'output'"]),
    "keep: yes": (BASE + "output: {keep: yes}\n", ["output.keep", "yes/no"]),
    "keep: true": (BASE + "output: {keep: true}\n", ["output.keep", "number"]),
    "max_runs: no": (BASE + "history: {max_runs: no}\n", ["history.max_runs", "yes/no"]),
    "seed: true": (BASE + "seed: true\n", ["seed", "yes/no"]),
    "pca.dims: on": (BASE.replace("dims: 3", "dims: on"), ["pca.dims", "yes/no"]),
    "gate max: yes": (
        BASE + "gates: [{metric: o_dist_mean, dataset: S, max: yes}]\n",
        ["max", "yes/no"],
    ),
    "counts: [yes]": (BASE + "selection: {counts: [yes]}\n", ["selection.counts", "yes/no"]),
    "null_repeats: off": (
        BASE.replace("null_repeats: 2", "null_repeats: off"),
        ["metrics.null_repeats", "yes/no"],
    ),
    "batch_size: true": (
        BASE.replace("{name: precomputed}", "{name: hog, batch_size: true}"),
        ["model.batch_size", "yes/no"],
    ),
    "sweep: [yes, 2]": (BASE.replace("sweep: [2, 3]", "sweep: [yes, 2]"), ["pca.sweep"]),
    "malformed YAML": (BASE + "gates: [\n", ["malformed YAML at line", "column"]),
    "empty job": ("", ["YAML mapping"]),
    "a list, not a mapping": ("- a\n- b\n", ["YAML mapping"]),
    "tab indentation": (BASE + "output:\n\tdir: x\n", ["malformed YAML"]),
    "architecture label ../../x": (
        BASE
        + "adaptation: {enabled: true, models: [{name: unet, label: ../../x}]}\n"
        + "output: {save_checkpoints: true}\n",
        ["label '../../x'", "choose a plain name"],
    ),
    "architecture label with a backslash": (
        BASE + "adaptation: {enabled: true, models: [{name: unet, label: 'a\\b'}]}\n",
        ["label"],
    ),
    "architecture label ..": (
        BASE + "adaptation: {enabled: true, models: [{name: unet, label: '..'}]}\n",
        ["label '..'"],
    ),
}


@pytest.mark.parametrize("case", sorted(JOB_FILE_CASES))
@pytest.mark.parametrize("command", ["run", "validate"])
def test_job_file_refused_at_the_door(folder, capsys, case, command):
    text, needles = JOB_FILE_CASES[case]
    job = folder / "job.yaml"
    job.write_text(text, encoding="utf-8")
    argv = [command, str(job)] + (["--out", str(folder / "out")] if command == "run" else [])
    refused(capsys, argv, folder, "job.yaml", *needles)
    assert not (folder / "out").exists()


ENCODED = {
    "UTF-16 with a byte-order mark": (BASE.encode("utf-16"), ["UTF-16", "save it as UTF-8"]),
    "UTF-16 big-endian": (
        b"\xfe\xff" + BASE.encode("utf-16-be"),
        ["UTF-16", "save it as UTF-8"],
    ),
    "UTF-16 without a mark": (BASE.encode("utf-16-le"), ["NUL byte at line 1", "UTF-8"]),
    "UTF-32": (BASE.encode("utf-32"), ["UTF-32", "save it as UTF-8"]),
    "Latin-1": (
        (BASE + "# café\n").encode("latin-1"),
        ["byte 0xe9 at line 8, column 6", "save the file as UTF-8"],
    ),
    "Windows-1252 quote": ((BASE + "# \u201cx\u201d\n").encode("cp1252"), ["line 8", "UTF-8"]),
    "binary garbage": (bytes(range(256)), ["NUL byte", "UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(ENCODED))
def test_job_file_encodings_name_the_position(folder, capsys, case):
    data, needles = ENCODED[case]
    (folder / "job.yaml").write_bytes(data)
    refused(
        capsys, ["run", str(folder / "job.yaml"), "--out", str(folder / "out")], folder, *needles
    )


def test_utf8_with_a_byte_order_mark_is_fine(folder, capsys):
    (folder / "job.yaml").write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert main(["validate", str(folder / "job.yaml")]) == 0


@pytest.mark.parametrize("depth", [65, 20_000])
def test_deep_nesting_refused_without_recursion(folder, capsys, depth):
    (folder / "job.yaml").write_text(BASE + "x: " + "[" * depth + "]" * depth + "\n")
    refused(capsys, ["validate", str(folder / "job.yaml")], folder, "nested more than 64 levels")


def test_deep_block_mapping_refused(folder, capsys):
    lines = "".join(" " * i + f"k{i}:\n" for i in range(70))
    (folder / "job.yaml").write_text(BASE + lines + " " * 70 + "v: 1\n")
    refused(capsys, ["validate", str(folder / "job.yaml")], folder, "nested more than")


@pytest.mark.parametrize("kind", ["dev-zero link", "fifo", "folder", "too large", "missing"])
def test_job_file_that_is_not_a_small_regular_file(folder, capsys, kind):
    job = folder / "job.yaml"
    if kind == "dev-zero link":
        job.symlink_to("/dev/zero")
        needle = "not a regular file"
    elif kind == "fifo":
        os.mkfifo(job)
        needle = "not a regular file"
    elif kind == "folder":
        job.mkdir()
        needle = "is a folder"
    elif kind == "too large":
        job.write_text(BASE + "#" * (5 << 20) + "\n")
        needle = "more than a job file can be"
    else:
        needle = "job file not found"
    refused(capsys, ["run", str(job), "--out", str(folder / "out")], folder, "job.yaml", needle)


# ----------------------------------------------------------------------------- files and data


def _job(folder: Path, extra: str = "") -> Path:
    (folder / "job.yaml").write_text(BASE + extra)
    return folder / "job.yaml"


@pytest.mark.parametrize(
    "junit, needle",
    [
        ("job.yaml", "the job file"),
        ("emb/P.npy", "datasets.P.embeddings"),
        ("emb/S.npy", "datasets.S.embeddings"),
        ("out", "the run store"),
        ("out/report.json", "one of its own files"),
        ("out/runs/x.xml", "one of its own files"),
        ("out/latest", "one of its own files"),
        ("out/figures/a.xml", "one of its own files"),
    ],
)
def test_junit_may_not_overwrite_the_job_datasets_or_the_store(folder, capsys, junit, needle):
    job = _job(folder)
    (folder / "out").mkdir()
    argv = ["run", str(job), "--out", str(folder / "out"), "--junit", str(folder / junit)]
    refused(capsys, argv, folder, "--junit", needle)


def test_junit_beside_the_store_files_is_fine(folder, capsys):
    job = _job(folder)
    out = folder / "out"
    assert main(["run", str(job), "--out", str(out), "--junit", str(out / "junit.xml")]) == 0
    assert (out / "junit.xml").read_bytes().startswith(b"<?xml")


@pytest.mark.parametrize(
    "out, needle",
    [("job.yaml", "is a file"), ("emb/P.npy", "is a file"), ("emb", "inside the run store")],
)
def test_store_may_not_overwrite_the_job_or_a_dataset(folder, capsys, out, needle):
    job = _job(folder)
    refused(capsys, ["run", str(job), "--out", str(folder / out)], folder, needle)


def test_dataset_inside_the_store_is_refused(folder, capsys):
    (folder / "out" / "emb").mkdir(parents=True)
    np.save(folder / "out" / "emb" / "S.npy", np.ones((5, 4)))
    job = _job(folder)
    job.write_text(job.read_text().replace("emb/S.npy", "out/emb/S.npy"))
    refused(capsys, ["run", str(job)], folder, "datasets.S.embeddings", "inside the run store")


def _image_job(folder: Path, secondary: dict) -> Path:
    from PIL import Image

    for name in ("P", "S"):
        (folder / name).mkdir(exist_ok=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (i * 40, 9, 9)).save(folder / name / f"{i}.png")
    job = {
        "model": {"name": "hog", "image_size": 32},
        "pca": {"dims": 2, "sweep": [2]},
        "datasets": {"primary": {"name": "P", "path": "P"}, "secondary": [secondary]},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder / "job.yaml"


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    "key, where, needle",
    [
        ("predictions", "S/pred", "datasets.S.predictions"),
        ("masks", "S/masks", "datasets.S.masks"),
        ("boxes", "missing.json", "datasets.S.boxes"),
        ("predictions", "nowhere", "datasets.S.predictions"),
    ],
)
def test_validate_and_run_refuse_the_same_locations(tmp_path, capsys, command, key, where, needle):
    if where.startswith("S/"):
        (tmp_path / where).mkdir(parents=True)
    (tmp_path / "M").mkdir()
    secondary = {"name": "S", "path": "S", key: where}
    if key == "predictions":
        secondary["masks"] = "M"
    job = _image_job(tmp_path, secondary)
    argv = [command, str(job)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    refused(capsys, argv, tmp_path, needle)


def _remove_chain(top: Path) -> None:
    """Remove a chain of nested folders without recursion (shutil.rmtree, and so pytest's own
    clean-up of old temporary folders, recurses once per level and fails at 1,000)."""
    os.chdir(top)
    depth = 0
    while os.path.isdir("d"):
        os.chdir("d")
        depth += 1
    for _ in range(depth):
        for name in os.listdir("."):
            os.unlink(name)
        os.chdir("..")
        os.rmdir("d")


def test_image_a_thousand_folders_deep_is_listed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = _image_job(tmp_path, {"name": "S", "path": "S"})
    os.chdir(tmp_path / "S")
    try:
        for _ in range(1000):  # relative steps: the absolute path outgrows one call
            os.mkdir("d")
            os.chdir("d")
        (tmp_path / "S" / "0.png").rename("0.png")
        os.chdir(tmp_path)
        assert main(["validate", str(job)]) == 0
        assert "S: 4 images" in capsys.readouterr().out
    finally:
        _remove_chain(tmp_path / "S")
        os.chdir(tmp_path)
    assert not (tmp_path / "S" / "d").exists()


# ----------------------------------------------------------------------------- store and history

DAMAGE = {
    "a count that is text": (lambda b: b["secondaries"][0].update(count="twelve"), "count"),
    "an image without an id": (lambda b: b["secondaries"][0]["images"][0].pop("id"), ".id"),
    "a block of the wrong type": (
        lambda b: b["secondaries"][0].update(statistics=[1, 2]),
        "statistics",
    ),
    "secondaries not a list": (lambda b: b.update(secondaries={"S1": 1}), "not a report.json"),
    "an unknown field": (lambda b: b.update(surprise=1), "surprise"),
    "a NaN number": (lambda b: b["secondaries"][0].update(o_dist="NaN"), "o_dist"),
    "truncated": ("truncated", "not valid JSON"),
    "empty": ("empty", "empty file"),
    "not UTF-8": ("latin", "not UTF-8"),
    "a JSON list": ("list", "not a report.json"),
}


def _damage(path: Path, how) -> None:
    if how == "truncated":
        path.write_text(path.read_text()[:-40])
    elif how == "empty":
        path.write_text("")
    elif how == "latin":
        path.write_bytes(b'{"secondaries": ["caf\xe9"]}')
    elif how == "list":
        path.write_text("[1, 2]")
    else:
        body = json.loads(path.read_text())
        how(body)
        path.write_text(json.dumps(body))


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_compare_names_a_damaged_report_and_changes_nothing(tmp_path, capsys, case):
    how, needle = DAMAGE[case]
    store = write_store(tmp_path / "out", list(three_runs()))
    _damage(store / "runs" / R2 / "report.json", how)
    argv = ["compare", R2, "latest", "--store", str(store)]
    refused(capsys, argv, tmp_path, f"A ({R2})", R2, needle)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_history_skips_a_damaged_earlier_run_with_a_warning(tmp_path, capsys, case):
    how, needle = DAMAGE[case]
    r1, r2, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1, r2])
    _damage(store / "runs" / R2 / "report.json", how)
    before = tree(store)
    job = parse_job(yaml.safe_load(BASE), tmp_path)
    report = r3.model_copy(deep=True)
    attach_history(report, job, str(store))
    assert report.history.previous_run == R1 and R2 not in report.history.runs
    assert any(R2 in w and needle in w for w in report.warnings)
    assert any(R2 in w for w in report.history.skipped_runs)
    assert R2 in capsys.readouterr().err  # on stderr too
    assert tree(store) == before


def test_a_run_over_a_damaged_previous_run_succeeds_and_says_so(folder, capsys):
    job = _job(folder, "gates: [{metric: o_dist_mean_change, dataset: S, max: 0.5}]\n")
    out = folder / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    first = os.readlink(out / "latest").split("/")[-1]
    (out / "runs" / first / "report.json").write_text('{"secondaries": [')
    capsys.readouterr()
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"earlier run {first} skipped" in err
    report = json.loads((out / "latest" / "report.json").read_text())
    assert any(first in w and "not valid JSON" in w for w in report["warnings"])
    gate = report["gates"][0]
    assert gate["passed"] and first in gate["reason"] and "first run" in gate["reason"]


def test_compare_store_that_is_a_file(tmp_path, capsys):
    (tmp_path / "store").write_text("x")
    refused(
        capsys,
        ["compare", "latest", "previous", "--store", str(tmp_path / "store")],
        tmp_path,
        "is a file, not a run store",
    )


def test_compare_previous_needs_two_runs(tmp_path, capsys):
    r1, _, _ = three_runs()
    store = write_store(tmp_path / "out", [r1], extra_junk=False)
    refused(
        capsys,
        ["compare", "previous", "latest", "--store", str(store)],
        tmp_path,
        "'previous' needs two runs",
    )


def test_compare_latest_follows_the_link_not_the_newest_id(tmp_path, capsys):
    store = write_store(tmp_path / "out", list(three_runs()), extra_junk=False)
    (store / "latest").unlink()
    (store / "latest").symlink_to(f"runs/{R2}")  # a concurrent run finished last
    assert main(["compare", "previous", "latest", "--store", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["a"], out["b"]) == (R1, R2)


def test_compare_junit_may_not_overwrite_a_report(tmp_path, capsys):
    r1, _, r3 = three_runs()
    (tmp_path / "a.json").write_text(report_json(r1))
    (tmp_path / "b.json").write_text(report_json(r3))
    argv = ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    refused(capsys, [*argv, "--junit", str(tmp_path / "b.json")], tmp_path, "report B")


def test_compare_junit_may_not_land_in_the_store(tmp_path, capsys):
    store = write_store(tmp_path / "out", list(three_runs()), extra_junk=False)
    argv = ["compare", "previous", "latest", "--store", str(store)]
    refused(capsys, [*argv, "--junit", str(store / "runs" / "c.xml")], tmp_path, "own files")


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_plain_latest_in_the_store_is_refused_before_any_work(folder, capsys, kind):
    out = folder / "out"
    out.mkdir()
    if kind == "file":
        (out / "latest").write_text("my notes")
    else:
        (out / "latest").mkdir()
    refused(capsys, ["run", str(_job(folder)), "--out", str(out)], folder, f"plain {kind}")


# ----------------------------------------------------------------------------- gates and CI


def _pair(tmp_path: Path, change=None) -> list[str]:
    r1, _, r3 = three_runs()
    if change:
        change(r3)
    (tmp_path / "a.json").write_text(report_json(r1))
    (tmp_path / "b.json").write_text(report_json(r3))
    return ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]


def _same_night(tmp_path: Path) -> list[str]:
    _, _, r3 = three_runs()
    later = r3.model_copy(deep=True)
    later.run.run_id, later.run.started = "20260104T020000Z-eeeeee", "2026-01-04T02:00:00Z"
    (tmp_path / "a.json").write_text(report_json(r3))
    (tmp_path / "b.json").write_text(report_json(later))
    return ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]


@pytest.mark.parametrize(
    "flag",
    [
        "--max-o-dist-mean-change",
        "--max-i-dist-p90-change",
        "--max-count-change",
        "--max-new-images-far-fraction",
    ],
)
@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_a_night_when_nothing_changed_passes_every_change_gate(tmp_path, capsys, flag, order):
    argv = _same_night(tmp_path)
    if order == "newer first":
        argv[1], argv[2] = argv[2], argv[1]
    before = tree(tmp_path)
    assert main([*argv, flag, "0"]) == 0
    assert tree(tmp_path) == before


def test_losing_a_quarter_of_the_images_fails_the_count_gate(tmp_path, capsys):
    def lose(r):
        sec = r.secondaries[0]  # S1 5 -> 4 images against run 1's 3: +33%; make it 3 -> 2
        sec.count = 2

    argv = _pair(tmp_path, lose)
    assert main([*argv, "--max-count-change", "0.2"]) == 1
    out = capsys.readouterr().out
    assert "gate failed: count_change[S1]" in out


@pytest.mark.parametrize("what", ["pca", "model", "primary"])
def test_incomparable_reports_fail_a_distance_gate_with_why(tmp_path, capsys, what):
    def other(r):
        if what == "pca":
            r.pca = r.pca.model_copy(update={"dims": 5})
        elif what == "model":
            r.model = r.model.model_copy(update={"name": "dinov2"})
        else:
            r.primary = r.primary.model_copy(update={"name": "other"})

    argv = _pair(tmp_path, other)
    assert main([*argv, "--max-o-dist-mean-change", "10", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["not_comparable"] and all(not g["passed"] for g in out["gates"])
    assert all("measured different things" in g["reason"] for g in out["gates"])


def test_threshold_with_nothing_to_check_fails(tmp_path, capsys):
    def rename(r):
        for s in r.secondaries:
            s.name = "x" + s.name

    assert main([*_pair(tmp_path, rename), "--max-count-change", "1"]) == 1
    assert "no secondary is in both reports" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--band", "0.9", "0.1"], "--band"),
        (["--max-count-change", "nan"], "--max-count-change: not a number"),
    ],
)
def test_bad_compare_options_exit_2(tmp_path, capsys, extra, needle):
    argv = _pair(tmp_path)
    refused(capsys, [*argv, *extra], tmp_path, needle)


def test_first_run_change_gates_are_junit_skipped_with_the_reason(folder, capsys):
    import xml.etree.ElementTree as ET

    job = _job(folder, "gates: [{metric: o_dist_mean_change, dataset: S, max: 0.1}]\n")
    junit = folder / "gates.xml"
    assert main(["run", str(job), "--out", str(folder / "out"), "--junit", str(junit)]) == 0
    case = ET.parse(junit).getroot().find(".//testcase")
    assert "first run in the store" in case.find("skipped").get("message")
    assert case.find("failure") is None


def test_history_gate_reason_names_an_added_secondary(tmp_path):
    r1, r2, r3 = three_runs()
    store = write_store(tmp_path / "out", [r1, r2])
    job = parse_job(
        {**yaml.safe_load(BASE), "gates": [{"metric": "o_dist_mean_change", "max": 1.0}]},
        tmp_path,
    )
    report = r3.model_copy(deep=True)
    attach_history(report, job, str(store))
    from worker.history import gate_reason

    assert "was added since the previous run" in gate_reason(
        report.history, "o_dist_mean_change", "S2"
    )
    assert R3 == report.run.run_id


# ----------------------------------------------------------------------------- decoding


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_class_index_masks_0_2_are_read_as_the_class(tmp_path, capsys):
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 2  # class index 2 on background 0
    pred = np.where(mask > 0, 255, 0).astype(np.uint8)
    _png(tmp_path / "masks" / "a.png", mask)
    _png(tmp_path / "pred" / "a.png", pred)
    before = tree(tmp_path)
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks")]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ods_f"] == pytest.approx(1.0)
    assert tree(tmp_path) == before


def test_multi_class_masks_are_refused_naming_the_file(tmp_path, capsys):
    mask = np.zeros((8, 8), np.uint8)
    mask[:2], mask[2:4] = 1, 2
    _png(tmp_path / "masks" / "a.png", mask)
    _png(tmp_path / "pred" / "a.png", np.zeros((8, 8), np.uint8))
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks")]
    refused(capsys, argv, tmp_path, "a.png", "class indices 0, 1, 2", "binary mask")


def test_float_tiff_with_inf_is_skipped_with_the_reason():
    import io

    from PIL import Image

    from worker.images import ImageError, decode_image

    arr = np.ones((8, 8), np.float32)
    arr[0, 0] = np.inf
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    with pytest.raises(ImageError, match="1 pixel.*inf or NaN"):
        decode_image(buf.getvalue())


def test_animated_gif_is_listed_and_read_as_its_first_frame(tmp_path):
    from PIL import Image

    from worker.images import decode_image
    from worker.sources import list_images

    frames = [Image.new("RGB", (8, 8), (k * 80, 0, 0)) for k in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    listing = list_images(str(tmp_path))
    assert [it.id for it in listing] == ["a.gif"] and not listing.skipped
    assert decode_image((tmp_path / "a.gif").read_bytes()).getpixel((0, 0)) == (0, 0, 0)


def test_coco_duplicate_and_string_annotation_ids_are_skipped_with_why():
    from worker.sources.samples import parse_coco

    doc = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "car"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"id": "x9", "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]},
        ],
    }
    boxes, skipped = parse_coco(json.dumps(doc).encode(), "boxes.json")
    assert [b.key for b in boxes["a.png"]] == [7]
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert reasons["annotation 7"] == "duplicate annotation id 7"
    assert "'x9' is not a non-negative integer" in reasons["annotations[2]"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("names: [car, person\n", "not valid YAML at line"),
        ("names: car person\n", "'names' is one string"),
        ("names: {first: car}\n", "'names' must map class ids"),
    ],
)
def test_malformed_yolo_data_yaml_is_refused(tmp_path, capsys, text, needle):
    job = _image_job(tmp_path, {"name": "S", "path": "S", "boxes": "labels"})
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "0.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "labels" / "data.yaml").write_text(text)
    argv = ["run", str(job), "--out", str(tmp_path / "out"), "--quiet"]
    refused(capsys, argv, tmp_path, "data.yaml", needle)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_gate_that_can_never_be_computed_is_refused_by_both(folder, capsys, command):
    job = _job(folder, "gates: [{metric: estimated_f, dataset: S, min: 0.5}]\n")
    argv = [command, str(job)] + (["--out", str(folder / "out")] if command == "run" else [])
    refused(capsys, argv, folder, "gates[0]", "estimated_f can never be computed")


# ------------------------------------------------------------- audit: what was left untested


def test_gate_reasons_say_why_a_value_is_missing(folder, capsys):
    """FID and the p-values of a one-image secondary cannot exist: the gates fail (exit 1)
    with the report's reason ("needs at least 2 images in each set; ONE has 1"), in
    report.json and in the JUnit failure, never a bare "was not computed"."""
    import xml.etree.ElementTree as ET

    np.save(folder / "emb" / "ONE.npy", np.ones((1, 4)))
    job = _job(
        folder,
        "gates:\n"
        "  - {metric: fid, dataset: ONE, max: 10}\n"
        "  - {metric: energy_p_value, dataset: ONE, min: 0.01}\n"
        "  - {metric: mmd_p_value, dataset: ONE, min: 0.01}\n",
    )
    text = job.read_text().replace(
        "- {name: S, embeddings: emb/S.npy}",
        "- {name: S, embeddings: emb/S.npy}\n    - {name: ONE, embeddings: emb/ONE.npy}",
    )
    job.write_text(text)
    out, junit = folder / "out", folder / "gates.xml"
    code = main(["run", str(job), "--out", str(out), "--quiet", "--junit", str(junit)])
    assert code == 1, capsys.readouterr().err
    gates = json.loads((out / "report.json").read_text())["gates"]
    assert len(gates) == 3 and not any(g["passed"] for g in gates)
    for g in gates:
        assert g["value"] is None
        assert g["reason"] == f"{g['metric']}: needs at least 2 images in each set; ONE has 1"
    failures = [f.get("message", "") + (f.text or "") for f in ET.parse(junit).iter("failure")]
    assert len(failures) == 3 and all("ONE has 1" in f for f in failures)


def test_an_old_one_folder_layout_is_kept_as_a_run(folder, capsys):
    """A store folder holding the old one-folder layout (report.json, report.pdf, figures/
    as plain files, no runs/): the next run keeps those files, byte for byte, as a run of
    their own (runs/<id from report.json's time>/) and says so; nothing is deleted."""
    job = _job(folder)
    first = folder / "first"
    assert main(["run", str(job), "--out", str(first), "--quiet"]) == 0
    old = folder / "old"
    old.mkdir()
    for name in ("report.json", "report.pdf"):
        (old / name).write_bytes((first / "latest" / name).read_bytes())
    (old / "figures").mkdir()
    (old / "figures" / "scatter.png").write_bytes(b"an old figure")
    kept = tree(old)
    capsys.readouterr()
    assert main(["run", str(job), "--out", str(old)]) == 0
    err = capsys.readouterr().err
    runs = sorted(p for p in (old / "runs").iterdir() if not p.name.startswith("."))
    assert len(runs) == 2 and (old / "latest").is_symlink()
    legacy = next(r for r in runs if r.name != os.readlink(old / "latest").split("/")[-1])
    assert tree(legacy) == kept  # every old file, byte for byte
    assert f"kept as run {legacy.name}" in err and "one-folder layout" in err
    assert json.loads((old / "report.json").read_text())["run"]["run_id"] != legacy.name


@pytest.mark.parametrize("command", ["validate", "run"])
def test_boxes_below_crop_min_size_never_refuse_a_job_validate_accepted(tmp_path, capsys, command):
    """Half of S's boxes are 8x8, below crop.min_size 16: the job's own setting leaves them
    out (a warning naming min_size), they are not skipped images, so the skip limit (5%)
    never refuses the run that validate accepted."""
    job = _image_job(
        tmp_path, {"name": "S", "path": "S", "boxes": "ann.json", "crop": {"min_size": 16}}
    )
    annotations = []
    for i in range(4):
        for k, size in enumerate((8, 20)):
            bbox = [2, 2, size, size]
            annotations.append({"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": bbox})
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in range(4)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "crack"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    argv = [command, str(job)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    if command == "run":
        report = json.loads((tmp_path / "out" / "latest" / "report.json").read_text())
        sec = report["secondaries"][0]
        assert sec["count"] == 4 and not report.get("skipped")
        assert any("crop.min_size 16" in w for w in report["warnings"])
