"""Hostile files on disk: locations, listing, precomputed arrays, --junit, EXIF, determinism.

Refused cases assert exit 2, the field or file named, and the output folder unchanged; listing
cases assert what is used and that what is not is reported with its reason.
"""

from __future__ import annotations

import copy
import io
import os
import signal
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.hostile import (
    image_job,
    images,
    png,
    precomputed_job,
    refused,
    report,
    run_cli,
    seed_output,
    snapshot,
)
from worker.sources import ListingPolicy, list_images

# --- locations, checked before any computation --------------------------------------------


def _loc(tmp: Path, job: dict, case: str) -> tuple[dict, list[str], list[str]]:
    """(job, extra CLI args, subjects) for one location case; "--out" in extra is the
    output folder (else tmp/out), ["--out", ""] means output.dir of the job applies."""
    extra: list[str] = []
    if case == "primary-is-job-folder":
        job["datasets"]["primary"]["path"] = "."
        return job, extra, ["datasets.S.path", "inside datasets.P.path"]
    if case == "secondary-inside-primary":
        images(tmp / "P" / "sub", 3, 9)
        job["datasets"]["secondary"][0]["path"] = "P/sub"
        return job, extra, ["datasets.S.path", "datasets.P.path"]
    if case == "masks-inside-images":
        (tmp / "S" / "masks").mkdir()
        job["datasets"]["secondary"][0]["masks"] = "S/masks"
        return job, extra, ["datasets.S.masks", "datasets.S.path"]
    if case == "output-dir-inside-dataset":
        job["output"] = {"dir": "P/out"}
        return job, ["--out", ""], ["output.dir", "inside datasets.P.path"]
    if case == "out-inside-dataset":
        return job, ["--out", str(tmp / "S" / "reports")], ["--out", "datasets.S.path"]
    if case == "out-is-dataset":
        return job, ["--out", str(tmp / "S")], ["--out", "datasets.S.path"]
    if case == "out-under-a-file":
        (tmp / "blocker").write_text("x")
        return job, ["--out", str(tmp / "blocker" / "o")], ["output.dir", "blocker"]
    if case == "out-is-a-file":
        (tmp / "plain").write_text("x")
        return job, ["--out", str(tmp / "plain")], ["output.dir", "plain"]
    if case == "junit-is-a-folder":
        (tmp / "j").mkdir()
        return job, ["--junit", str(tmp / "j")], ["--junit", "is a folder"]
    if case == "junit-under-a-file":
        (tmp / "jf").write_text("x")
        return job, ["--junit", str(tmp / "jf" / "g.xml")], ["--junit", "jf"]
    if case == "junit-empty":
        return job, ["--junit", " "], ["--junit"]
    if case == "missing-folder":
        job["datasets"]["secondary"][0]["path"] = "nowhere"
        return job, extra, ["datasets.S.path", "nowhere", "folder not found"]
    if case == "path-is-a-file":
        (tmp / "f.txt").write_text("x")
        job["datasets"]["secondary"][0]["path"] = "f.txt"
        return job, extra, ["datasets.S.path", "not a folder"]
    if case == "embeddings-is-a-folder":
        (tmp / "emb.npy").mkdir()
        job["datasets"]["secondary"][0] = {"name": "S", "embeddings": "emb.npy"}
        return job, extra, ["datasets.S.embeddings", "not a file"]
    if case == "embeddings-missing":
        job["datasets"]["secondary"][0] = {"name": "S", "embeddings": "gone.npy"}
        return job, extra, ["datasets.S.embeddings", "file not found"]
    if case == "masks-missing":
        job["datasets"]["secondary"][0]["masks"] = "no_masks"
        return job, extra, ["datasets.S.masks", "no_masks"]
    if case == "negatives-missing":
        job["adaptation"] = {"enabled": True, "negatives": {"path": "nonegs"}}
        return job, extra, ["adaptation.negatives.path", "nonegs"]
    if case == "parent-path-forbidden":
        outside = tmp.parent / f"{tmp.name}_outside"
        images(outside, 2, 3)
        job["datasets"]["secondary"][0]["path"] = f"../{outside.name}"
        job["allow_outside_paths"] = False
        return job, extra, ["datasets.S.path", "outside the job folder"]
    if case == "embeddings-symlink-outside":
        outside = tmp.parent / f"{tmp.name}_emb.npy"
        np.save(outside, np.ones((3, 4)))
        os.symlink(outside, tmp / "e.npy")
        job["datasets"]["secondary"][0] = {"name": "S", "embeddings": "e.npy"}
        job["allow_outside_paths"] = False
        return job, extra, ["datasets.S.embeddings", "outside the job folder"]
    raise AssertionError(case)


LOCATION_CASES = [
    "primary-is-job-folder",
    "secondary-inside-primary",
    "masks-inside-images",
    "output-dir-inside-dataset",
    "out-inside-dataset",
    "out-is-dataset",
    "out-under-a-file",
    "out-is-a-file",
    "junit-is-a-folder",
    "junit-under-a-file",
    "junit-empty",
    "missing-folder",
    "path-is-a-file",
    "embeddings-is-a-folder",
    "embeddings-missing",
    "masks-missing",
    "negatives-missing",
    "parent-path-forbidden",
    "embeddings-symlink-outside",
]


@pytest.mark.parametrize("case", LOCATION_CASES)
def test_location_refused_before_computing(tmp_path, case, monkeypatch):
    job, extra, subjects = _loc(tmp_path, copy.deepcopy(image_job(tmp_path)), case)
    no_out = extra[:2] == ["--out", ""]
    cli_out = extra[:1] == ["--out"] and not no_out
    if no_out:
        extra, out = extra[2:], tmp_path / "P" / "out"
    elif extra[:1] == ["--out"]:
        extra, out = extra[2:], Path(extra[1])
    else:
        out = tmp_path / "out"
    try:  # an output folder holding a previous run's reports, where one can exist
        before = snapshot(out) if out.exists() else seed_output(out)
    except OSError:
        before = snapshot(out)
    blocker = tmp_path / ("plain" if case == "out-is-a-file" else "blocker")
    blocker_before = blocker.read_bytes() if blocker.is_file() else None

    def no_compute(*a, **k):
        raise AssertionError("computation started before the location was checked")

    monkeypatch.setattr("worker.pipeline.embed_all", no_compute)
    res = run_cli(tmp_path, job, *extra, out=out, no_out=no_out)
    refused(res, out, before, *subjects)
    assert (blocker.read_bytes() if blocker.is_file() else None) == blocker_before
    if "--junit" not in extra and not cli_out:
        # validate refuses the same location (it has no --out: those cases are run-only)
        val = run_cli(tmp_path, job, command="validate")
        assert val.returncode == 2 and subjects[0] in val.stderr, val.stderr


# --- --junit -------------------------------------------------------------------------------


def test_junit_not_written_for_a_run_that_wrote_nothing(tmp_path):
    job = image_job(tmp_path)
    job["datasets"]["secondary"][0]["path"] = "nowhere"
    junit = tmp_path / "gates.xml"
    res = run_cli(tmp_path, job, "--junit", str(junit))
    assert res.returncode == 2 and not junit.exists()


def test_junit_not_written_when_a_late_stage_fails(tmp_path, monkeypatch):
    """A failure after computing (here: publishing) leaves no JUnit file behind."""
    from worker.errors import JobError

    def fail(*a, **k):
        raise JobError("output.dir: simulated publishing failure")

    monkeypatch.setattr("worker.pipeline.publish_run", fail)
    junit = tmp_path / "gates.xml"
    res = run_cli(tmp_path, image_job(tmp_path), "--junit", str(junit))
    assert res.returncode == 2 and not junit.exists(), res.stderr


def test_junit_written_after_a_complete_run(tmp_path):
    job = image_job(tmp_path)
    job["gates"] = [{"metric": "o_dist_scaled", "dataset": "S", "max": 2}]
    junit = tmp_path / "ci" / "gates.xml"
    res = run_cli(tmp_path, job, "--junit", str(junit))
    assert res.returncode == 0, res.stderr
    text = junit.read_text()
    assert 'tests="1"' in text and "o_dist_scaled[S]" in text and "<failure" not in text


# --- listing: never blocks, never hides ------------------------------------------------------


def _alarm(seconds: int):
    def boom(*_):
        raise TimeoutError("listing or reading blocked")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    return old


def _listed(root: Path, **policy) -> tuple[list[str], dict[str, str], list[str]]:
    old = _alarm(20)
    try:
        found = list_images(str(root), policy=ListingPolicy(**policy))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return [it.id for it in found], {s["id"]: s["reason"] for s in found.skipped}, found.warnings


def _pic(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(np.full((8, 8, 3), value, np.uint8)))


def test_fifo_is_never_opened(tmp_path):
    _pic(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    ids, skipped, _ = _listed(tmp_path)
    assert ids == ["a.png"] and "FIFO" in skipped["pipe.png"]


def test_socket_is_never_opened(tmp_path):
    _pic(tmp_path / "a.png")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock.png"))
        ids, skipped, _ = _listed(tmp_path)
    assert ids == ["a.png"] and "socket" in skipped["sock.png"]


def test_device_behind_a_link_is_never_opened(tmp_path):
    _pic(tmp_path / "a.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    ids, skipped, _ = _listed(tmp_path)
    assert ids == ["a.png"] and "character device" in skipped["zero.png"]


def test_read_bytes_refuses_a_fifo_without_blocking(tmp_path):
    from worker.sources.local import read_bytes

    os.mkfifo(tmp_path / "late.png")  # a file replaced by a FIFO after listing
    old = _alarm(10)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            read_bytes(str(tmp_path / "late.png"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("hidden", [".git", ".ipynb_checkpoints", ".dvc", ".anything"])
def test_hidden_folders_are_not_data(tmp_path, hidden):
    _pic(tmp_path / "a.png")
    _pic(tmp_path / hidden / "b.png")
    _pic(tmp_path / "sub" / hidden / "c.png")
    ids, skipped, warnings = _listed(tmp_path)
    assert ids == ["a.png"] and not skipped
    assert sum(f"{hidden}/ not read: hidden folder" in w for w in warnings) == 2


def test_hidden_image_files_are_counted_in_a_warning(tmp_path):
    _pic(tmp_path / "a.png")
    _pic(tmp_path / "._a.png")
    ids, _, warnings = _listed(tmp_path)
    assert ids == ["a.png"] and any("1 hidden image file" in w for w in warnings)


def test_unreadable_subfolder_is_reported(tmp_path, monkeypatch):
    """As root, chmod does not stop reading: the refusal of the OS is simulated."""
    _pic(tmp_path / "a.png")
    _pic(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("worker.sources.local.os.scandir", scandir)
    ids, _, warnings = _listed(tmp_path)
    assert ids == ["a.png"]
    assert any("locked/ not read: cannot read it (Permission denied)" in w for w in warnings)


def test_folder_symlink_inside_is_followed_once(tmp_path):
    root = tmp_path / "data"
    _pic(root / "a.png")
    _pic(tmp_path / "elsewhere" / "b.png")
    os.symlink(tmp_path / "elsewhere", root / "link")
    ids, skipped, warnings = _listed(root, confine_to=str(tmp_path))
    assert ids == ["a.png", "link/b.png"] and not skipped and not warnings


def test_symlink_loop_is_detected(tmp_path):
    _pic(tmp_path / "sub" / "a.png")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    ids, _, warnings = _listed(tmp_path)
    assert ids == ["sub/a.png"]
    assert any("sub/loop/ not read: symlink loop" in w for w in warnings)


def test_two_links_to_one_folder_list_it_once(tmp_path):
    root = tmp_path / "data"
    _pic(tmp_path / "real" / "a.png")
    os.symlink(tmp_path / "real", root / "l1") if root.mkdir() is None else None
    os.symlink(tmp_path / "real", root / "l2")
    ids, _, warnings = _listed(root)
    assert ids == ["l1/a.png"] and any("l2/ not read: already listed" in w for w in warnings)


@pytest.mark.parametrize("allow", [True, False])
def test_file_symlink_leaving_the_job_folder(tmp_path, allow):
    job_dir, outside = tmp_path / "job", tmp_path / "outside"
    _pic(job_dir / "data" / "a.png")
    _pic(outside / "b.png")
    os.symlink(outside / "b.png", job_dir / "data" / "b.png")
    ids, skipped, _ = _listed(job_dir / "data", confine_to=None if allow else str(job_dir))
    if allow:
        assert ids == ["a.png", "b.png"] and not skipped
    else:
        assert ids == ["a.png"] and "outside the job folder" in skipped["b.png"]


@pytest.mark.parametrize("allow", [True, False])
def test_folder_symlink_leaving_the_job_folder(tmp_path, allow):
    job_dir, outside = tmp_path / "job", tmp_path / "outside"
    _pic(job_dir / "data" / "a.png")
    _pic(outside / "b.png")
    os.symlink(outside, job_dir / "data" / "ext")
    ids, _, warnings = _listed(job_dir / "data", confine_to=None if allow else str(job_dir))
    if allow:
        assert ids == ["a.png", "ext/b.png"] and not warnings
    else:
        assert ids == ["a.png"] and any("ext/ not read: symlink" in w for w in warnings)


def test_broken_symlink_is_skipped(tmp_path):
    _pic(tmp_path / "a.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dead.png")
    ids, skipped, _ = _listed(tmp_path)
    assert ids == ["a.png"] and skipped["dead.png"] == "broken symlink"


def test_non_utf8_file_name_is_skipped_with_a_printable_id(tmp_path):
    _pic(tmp_path / "a.png")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as f:
        f.write((tmp_path / "a.png").read_bytes())
    ids, skipped, _ = _listed(tmp_path)
    assert ids == ["a.png"] and skipped == {
        "caf\ufffd.png": "file name is not valid UTF-8; rename the file"
    }


def test_run_with_every_listing_hazard(tmp_path):
    """One run with a FIFO, a socket, a .git folder, a link loop and a non-UTF-8 name in S:
    it finishes (no hang), uses the good images, and lists the rest in `skipped`."""
    job = image_job(tmp_path)
    s = tmp_path / "S"
    os.mkfifo(s / "pipe.png")
    _pic(s / ".git" / "objects.png")
    _pic(s / ".ipynb_checkpoints" / "img_00-checkpoint.png")
    os.symlink(s, s / "loop")
    with open(os.path.join(os.fsencode(s), b"bad\xff.png"), "wb") as f:
        f.write((s / "img_00.png").read_bytes())
    job["max_skipped_fraction"] = 0.5
    old = _alarm(240)
    try:
        res = run_cli(tmp_path, job)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = report(tmp_path / "out")
    assert rep["secondaries"][0]["count"] == 10
    assert sorted(x["id"] for x in rep["skipped"]) == ["bad\ufffd.png", "pipe.png"]
    assert ".git/ not read" in res.stderr and "symlink loop" in res.stderr


# --- precomputed embeddings --------------------------------------------------------------------


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _bad_crc() -> bytes:
    data = bytearray(_npz(embeddings=np.arange(24.0).reshape(4, 6)))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[start] ^= 0xFF  # one payload byte: the CRC no longer matches
    return bytes(data)


E = np.random.default_rng(1).normal(size=(4, 6))
EMBEDDING_CASES = [
    ("complex", "S.npy", _npy(E + 1j), ["complex"]),
    ("bool", "S.npy", _npy(E > 0), ["dtype bool"]),
    ("strings", "S.npy", _npy(E.astype(str)), ["dtype <U"]),
    ("timedelta", "S.npy", _npy(E.astype("m8[s]")), ["timedelta64"]),
    ("structured", "S.npy", _npy(np.zeros((4, 6), dtype=[("a", "f8")])), ["dtype"]),
    ("object-npy", "S.npy", _npy(np.array([[1, "a"]], dtype=object)), ["not a readable"]),
    ("three-d", "S.npy", _npy(np.ones((2, 3, 6))), ["2-D array"]),
    ("zero-d", "S.npy", _npy(np.float64(3)), ["2-D array"]),
    ("no-rows", "S.npy", _npy(np.ones((0, 6))), ["non-empty"]),
    ("no-columns", "S.npy", _npy(np.ones((4, 0))), ["non-empty"]),
    ("huge", "S.npy", _npy(E * 1e200), ["largest magnitude"]),
    ("tiny", "S.npy", _npy(E * 1e-200), ["largest magnitude"]),
    ("nan", "S.npy", _npy(np.where(np.eye(4, 6) > 0, np.nan, E)), ["NaN or inf", "rows 0"]),
    ("longdouble-overflow", "S.npy", _npy(np.full((4, 6), 1e400, np.longdouble)), ["inf"]),
    ("garbage", "S.npy", b"hello", ["not a readable"]),
    ("empty-file", "S.npy", b"", ["not a readable"]),
    ("truncated-npy", "S.npy", _npy(E)[:100], ["not a readable"]),
    ("bad-crc", "S.npz", _bad_crc(), ["'embeddings'", "damaged"]),
    ("truncated-npz", "S.npz", _npz(embeddings=E)[:-60], ["S.npz"]),
    ("npz-no-embeddings", "S.npz", _npz(vectors=E), ["no array named 'embeddings'"]),
    ("npz-object-embeddings", "S.npz", _npz(embeddings=E.astype(object)), ["pickle"]),
    ("ids-object", "S.npz", _npz(embeddings=E, ids=np.array(list("abcd"), object)), ["'ids'"]),
    ("ids-zero-d", "S.npz", _npz(embeddings=E, ids=np.array("a")), ["'ids'", "1-D"]),
    ("ids-two-d", "S.npz", _npz(embeddings=E, ids=np.array([["a", "b"]] * 2)), ["'ids'"]),
    ("ids-float", "S.npz", _npz(embeddings=E, ids=np.arange(4.0)), ["'ids'", "float64"]),
    (
        "ids-bad-bytes",
        "S.npz",
        _npz(embeddings=E, ids=np.array([b"\xff", b"b", b"c", b"d"])),
        ["'ids'", "UTF-8"],
    ),
    ("ids-repeated", "S.npz", _npz(embeddings=E, ids=np.array(list("abca"))), ["repeated: a"]),
    ("ids-short", "S.npz", _npz(embeddings=E, ids=np.array(list("abc"))), ["3 entries"]),
    (
        "ids-empty-string",
        "S.npz",
        _npz(embeddings=E, ids=np.array(["a", "", "c", "d"])),
        ["empty id"],
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "subjects"),
    [c[1:] for c in EMBEDDING_CASES],
    ids=[c[0] for c in EMBEDDING_CASES],
)
def test_precomputed_refused(tmp_path, name, data, subjects):
    job = precomputed_job(tmp_path, image_job(tmp_path), data, name)
    out = tmp_path / "out"
    before = seed_output(out)
    refused(run_cli(tmp_path, job), out, before, name, *subjects)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int32", "uint8", "int64"])
def test_precomputed_real_dtypes_are_used(tmp_path, dtype):
    s = np.random.default_rng(3).integers(0, 50, size=(5, 6)).astype(dtype)
    job = precomputed_job(
        tmp_path, image_job(tmp_path), _npz(embeddings=s, ids=np.array(list("abcde"))), "S.npz"
    )
    res = run_cli(tmp_path, job)
    assert res.returncode == 0, res.stderr[-2000:]
    ids = [im["id"] for im in report(tmp_path / "out")["secondaries"][0]["images"]]
    assert sorted(ids) == list("abcde")


def test_precomputed_int_and_bytes_ids(tmp_path):
    from worker.embeddings import load_precomputed

    (tmp_path / "a.npz").write_bytes(_npz(embeddings=E, ids=np.arange(10, 14)))
    (tmp_path / "b.npz").write_bytes(_npz(embeddings=E, ids=np.array([b"w", b"x", b"y", b"z"])))
    assert load_precomputed("A", str(tmp_path / "a.npz")).ids == ["10", "11", "12", "13"]
    assert load_precomputed("B", str(tmp_path / "b.npz")).ids == ["w", "x", "y", "z"]


def test_check_embeddings_is_exact_on_accepted_values():
    from worker.embeddings import check_embeddings

    x = np.array([[1, 2], [3, 4]], dtype=np.int16)
    out = check_embeddings(x)
    assert out.dtype == np.float64 and np.array_equal(out, [[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(check_embeddings(np.zeros((2, 2))), np.zeros((2, 2)))  # all zero: ok
    with pytest.raises(ValueError, match="complex"):
        check_embeddings(np.ones((2, 2), complex))


# --- EXIF orientation ----------------------------------------------------------------------------


def _with_exif(arr: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


# orientation tag -> the numpy operation that shows the stored pixels upright (EXIF 2.3)
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(orientation):
    from worker.images import decode_image

    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    got = np.asarray(decode_image(_with_exif(arr, orientation)))
    assert np.array_equal(got, ORIENTATIONS[orientation](arr))


def test_exif_orientation_is_the_same_every_time():
    from worker.images import decode_image

    data = _with_exif(np.random.default_rng(0).integers(0, 255, (5, 7, 3), np.uint8), 6)
    first = np.asarray(decode_image(data))
    assert all(np.array_equal(first, np.asarray(decode_image(data))) for _ in range(3))


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_out_of_range_orientation_leaves_pixels(value):
    from worker.images import decode_image

    arr = np.random.default_rng(1).integers(0, 255, (3, 5, 3), np.uint8)
    assert np.array_equal(np.asarray(decode_image(_with_exif(arr, value))), arr)


# --- determinism ---------------------------------------------------------------------------------


def test_report_does_not_depend_on_how_the_job_path_is_spelled(tmp_path, monkeypatch):
    from worker.__main__ import main

    job = image_job(tmp_path)
    run_cli(tmp_path, job, command="validate")  # writes job.yaml
    monkeypatch.chdir(tmp_path)
    spellings = ["job.yaml", str(tmp_path / "job.yaml"), "./sub/../job.yaml"]
    (tmp_path / "sub").mkdir()
    reports = []
    for i, spelled in enumerate(spellings):
        assert main(["run", spelled, "--out", f"o{i}", "--quiet"]) == 0
        rep = report(tmp_path / f"o{i}")
        rep.pop("run")
        reports.append(rep)
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["job"]["source"] == "job.yaml"
