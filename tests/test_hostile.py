"""Hostile inputs: each case asserts the exit code, the message and that no report is left.

docs/reliability.md lists every case and what the worker does with it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.hostile import SIZE, image_job, precomputed_job
from tests.helpers.hostile import images as _images
from tests.helpers.hostile import png as _png


@pytest.fixture
def base(tmp_path: Path):
    """A small image job (hog, 12 + 10 images) that runs cleanly; cases break one thing."""
    job = image_job(tmp_path)
    job["max_skipped_fraction"] = 0.2
    return tmp_path, job


def _run(folder: Path, job: dict | str, *extra: str) -> subprocess.CompletedProcess:
    """The command line, in this process (fast): exit code, stdout and stderr."""
    import contextlib

    from worker.__main__ import main

    path = folder / "job.yaml"
    path.write_text(job if isinstance(job, str) else yaml.safe_dump(job), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    args = ["run", str(path), "--out", str(folder / "out"), "--quiet", *extra]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _refused(res: subprocess.CompletedProcess, folder: Path, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)
    assert not (folder / "out" / "report.json").exists()
    assert not (folder / "out").exists() or not any((folder / "out").iterdir())


def _report(folder: Path) -> dict:
    return json.loads((folder / "out" / "report.json").read_text())


# --- the job file ------------------------------------------------------------------------


def test_malformed_yaml(base):
    folder, _ = base
    _refused(_run(folder, "datasets: {primary: [oops\n"), folder, "malformed YAML at line")


def test_empty_job_file(base):
    folder, _ = base
    _refused(_run(folder, ""), folder, "must be a YAML mapping")


def test_wrong_type(base):
    folder, job = base
    job["seed"] = "zero"
    _refused(_run(folder, job), folder, "seed")


def test_unknown_top_level_key(base):
    folder, job = base
    job["pcaa"] = {"dims": 3}
    _refused(_run(folder, job), folder, "pcaa", "unknown key")


def test_unknown_nested_key(base):
    folder, job = base
    job["datasets"]["primary"]["colour"] = "red"
    _refused(_run(folder, job), folder, "datasets.primary.colour", "unknown key")


def test_negative_pca_dims(base):
    folder, job = base
    job["pca"]["dims"] = -1
    _refused(_run(folder, job), folder, "pca.dims")


def test_too_large_pca_dims_is_clamped_with_warning(base):
    folder, job = base
    job["pca"]["dims"] = 5000
    res = _run(folder, job)
    assert res.returncode == 0, res.stderr
    report = _report(folder)
    assert report["pca"]["dims"] <= 22 and report["pca"]["requested_dims"] == 5000
    assert any("5000" in w for w in report["warnings"])


def test_duplicate_dataset_names(base):
    folder, job = base
    job["datasets"]["secondary"][0]["name"] = "P"
    _refused(_run(folder, job), folder, "repeated: P")


def test_both_path_and_embeddings(base):
    folder, job = base
    job["datasets"]["secondary"][0]["embeddings"] = "x.npy"
    _refused(_run(folder, job), folder, "exactly one of 'path' or 'embeddings'")


def test_gate_on_unknown_dataset(base):
    folder, job = base
    job["gates"] = [{"metric": "o_dist", "dataset": "T", "max": 1}]
    _refused(_run(folder, job), folder, "'T'")


# --- datasets ----------------------------------------------------------------------------


def test_missing_dataset_folder(base):
    folder, job = base
    job["datasets"]["secondary"][0]["path"] = "nowhere"
    _refused(_run(folder, job), folder, "nowhere", "folder not found")


def test_dataset_path_is_a_file(base):
    folder, job = base
    (folder / "file.txt").write_text("x")
    job["datasets"]["secondary"][0]["path"] = "file.txt"
    _refused(_run(folder, job), folder, "file.txt", "not a folder")


def test_empty_dataset_folder(base):
    folder, job = base
    (folder / "empty").mkdir()
    job["datasets"]["secondary"][0]["path"] = "empty"
    _refused(_run(folder, job), folder, "datasets.S.path", "no images found")


def test_one_image_datasets(base):
    folder, job = base
    _images(folder / "P1", 1, 3)
    _images(folder / "S1", 1, 4)
    job["datasets"]["primary"]["path"] = "P1"
    job["datasets"]["secondary"][0]["path"] = "S1"
    res = _run(folder, job)
    assert res.returncode == 0, res.stderr
    report = _report(folder)
    sec = report["secondaries"][0]
    assert sec["count"] == 1
    # one image each: PCA of two points is a rotation (method.md §1.2), so O_dist is the raw
    # distance between the two images' hog features
    from tests.helpers import reference as R
    from worker.extractors.hog import HogExtractor
    from worker.images import decode_image

    ext = HogExtractor(image_size=SIZE)
    p, s = (
        ext.embed([decode_image((folder / d / "img_00.png").read_bytes())]) for d in ("P1", "S1")
    )
    assert sec["o_dist"] == pytest.approx(R.o_dist(s, p), rel=1e-6)
    assert sec["o_dist"] > 0
    assert report["primary"]["diversity"] is None


def test_precomputed_model_with_image_folder(base):
    folder, job = base
    job["model"] = {"name": "precomputed"}
    _refused(_run(folder, job), folder, "datasets.P", "needs 'embeddings'")


def test_symlink_escaping_job_folder_when_forbidden(base, tmp_path_factory):
    folder, job = base
    outside = tmp_path_factory.mktemp("outside")
    _images(outside / "imgs", 3, 5)
    os.symlink(outside / "imgs", folder / "link")
    job["datasets"]["secondary"][0]["path"] = "link"
    job["allow_outside_paths"] = False
    _refused(_run(folder, job), folder, "datasets.S.path", "outside the job folder")


# --- images ------------------------------------------------------------------------------


def _one_bad(
    folder: Path, job: dict, name: str, data: bytes
) -> tuple[subprocess.CompletedProcess, dict]:
    (folder / "S" / name).write_bytes(data)
    res = _run(folder, job)
    assert res.returncode == 0, res.stderr
    return res, _report(folder)


def test_corrupt_image_is_skipped_and_listed(base):
    folder, job = base
    _, report = _one_bad(folder, job, "bad.png", b"\x89PNG\r\n\x1a\n garbage")
    assert (
        report["skipped"][0]["id"] == "bad.png"
        and "cannot decode" in report["skipped"][0]["reason"]
    )
    assert report["secondaries"][0]["count"] == 10


def test_truncated_image_is_skipped(base):
    folder, job = base
    data = _png(np.zeros((64, 64, 3), np.uint8) + 50)
    _, report = _one_bad(folder, job, "cut.png", data[: len(data) // 2])
    assert [s["id"] for s in report["skipped"]] == ["cut.png"]


def test_zero_byte_image_is_skipped(base):
    folder, job = base
    _, report = _one_bad(folder, job, "zero.png", b"")
    assert report["skipped"][0]["reason"].startswith("empty file")


def test_cmyk_image_is_used(base):
    folder, job = base
    buf = io.BytesIO()
    Image.new("CMYK", (SIZE, SIZE), (10, 200, 30, 5)).save(buf, format="JPEG")
    _, report = _one_bad(folder, job, "cmyk.jpg", buf.getvalue())
    assert report["skipped"] == [] and report["secondaries"][0]["count"] == 11


def test_16bit_image_is_used(base):
    folder, job = base
    arr = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 60).astype(np.uint16)
    _, report = _one_bad(folder, job, "deep.png", _png(arr))
    assert report["skipped"] == [] and report["secondaries"][0]["count"] == 11


def test_palette_image_is_used(base):
    folder, job = base
    img = Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    _, report = _one_bad(folder, job, "pal.png", buf.getvalue())
    assert report["skipped"] == []


def test_decompression_bomb_is_skipped(base):
    folder, job = base
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")  # 144 MP, a few KB on disk
    _, report = _one_bad(folder, job, "bomb.png", buf.getvalue())
    assert (
        report["skipped"][0]["id"] == "bomb.png" and "too large" in report["skipped"][0]["reason"]
    )


def test_too_many_skipped_images_fails(base):
    folder, job = base
    for i in range(5):
        (folder / "S" / f"bad_{i}.png").write_bytes(b"nope")
    _refused(_run(folder, job), folder, "datasets.S", "max_skipped_fraction")


# --- precomputed embeddings ---------------------------------------------------------------


def test_nan_embeddings(base):
    folder, job = base
    s = np.ones((4, 6))
    s[2, 1] = np.nan
    _refused(_run(folder, precomputed_job(folder, job, s)), folder, "S.npy", "NaN or inf")


def test_inf_embeddings(base):
    folder, job = base
    s = np.ones((4, 6))
    s[0, 0] = np.inf
    _refused(_run(folder, precomputed_job(folder, job, s)), folder, "NaN or inf", "rows 0")


def test_wrong_width_embeddings(base):
    folder, job = base
    _refused(
        _run(folder, precomputed_job(folder, job, np.ones((4, 7)))), folder, "feature widths differ"
    )


def test_npz_without_embeddings_array(base):
    folder, job = base
    res = _run(folder, precomputed_job(folder, job, np.ones((4, 6)), "S.npz"))
    _refused(res, folder, "S.npz", "no array named 'embeddings'")


def test_garbage_embeddings_file(base):
    folder, job = base
    _refused(
        _run(folder, precomputed_job(folder, job, b"hello")), folder, "S.npy", "not a readable .npy"
    )


def test_one_dimensional_embeddings(base):
    folder, job = base
    _refused(_run(folder, precomputed_job(folder, job, np.ones(6))), folder, "2-D array")


# --- output ------------------------------------------------------------------------------


def test_output_location_not_writable(base):
    folder, job = base
    (folder / "blocker").write_text("a file where a folder should be")
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "run",
            str(path),
            "--out",
            str(folder / "blocker" / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "output.dir" in res.stderr and "Traceback" not in res.stderr


def test_disk_full_on_output(base):
    """Writes fail with EFBIG past a 64 KiB file-size limit, as on a full disk."""
    import resource

    folder, job = base
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    res = subprocess.run(
        [sys.executable, "-m", "worker", "run", str(path), "--out", str(folder / "out"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    _refused(res, folder, "output.dir", "free disk space")
