"""Crash safety with real processes: SIGKILL mid-embedding then a re-run; SIGTERM; secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

SIZE = 320


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory) -> Path:
    """120 large noise images: embedding takes seconds, long enough to be killed in."""
    root = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(0)
    for name, count, shift in (("P", 60, 0), ("S", 60, 60)):
        (root / name).mkdir()
        for i in range(count):
            arr = np.clip(rng.normal(100 + shift, 50, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:03d}.png", compress_level=0)
    job = {
        "seed": 0,
        "model": {"name": "hog", "image_size": SIZE, "batch_size": 4, "num_workers": 1},
        "pca": {"dims": 8, "sweep": [4, 8]},
        "datasets": {
            "primary": {"name": "P", "path": "P"},
            "secondary": [{"name": "S", "path": "S"}],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10},
        "selection": {"counts": [2]},
        "cache": {"dir": "cache"},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return root


def _start(job: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "run", str(job), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _cache_entries(root: Path) -> int:
    from worker.cache import EmbeddingCache

    return EmbeddingCache(str(root / "cache")).count()


def _wait_for_entries(proc: subprocess.Popen, root: Path, at_least: int) -> None:
    deadline = time.time() + 120
    while _cache_entries(root) < at_least:
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)


def _numbers(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    report.pop("run")
    report.pop("job")  # names the job file, which differs between the two folders
    return report


def test_sigkill_then_rerun_gives_same_numbers(slow_job, tmp_path):
    proc = _start(slow_job / "job.yaml", slow_job / "killed")
    _wait_for_entries(proc, slow_job, 8)
    proc.kill()
    proc.wait()
    assert not (slow_job / "killed" / "report.json").exists()
    done_before = _cache_entries(slow_job)
    assert 8 <= done_before < 120

    resumed = _start(slow_job / "job.yaml", slow_job / "resumed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert _cache_entries(slow_job) == 120

    fresh_root = tmp_path / "fresh"
    fresh_root.mkdir()
    job = yaml.safe_load((slow_job / "job.yaml").read_text())
    job["cache"] = {"enabled": False}
    for name in ("P", "S"):
        os.symlink(slow_job / name, fresh_root / name)
    (fresh_root / "job.yaml").write_text(yaml.safe_dump(job))
    fresh = _start(fresh_root / "job.yaml", fresh_root / "out")
    assert fresh.wait(timeout=600) == 0, fresh.stderr.read()
    assert _numbers(slow_job / "resumed") == _numbers(fresh_root / "out")


def test_sigterm_stops_cleanly_and_says_where(slow_job, tmp_path):
    job = yaml.safe_load((slow_job / "job.yaml").read_text())
    job["cache"] = {"dir": str(tmp_path / "cache")}
    for name in ("P", "S"):
        os.symlink(slow_job / name, tmp_path / name)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    proc = _start(tmp_path / "job.yaml", tmp_path / "out")
    _wait_for_entries(proc, tmp_path, 4)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read()
    assert "interrupted" in err and "embed" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_planted_secret_never_appears_in_outputs(tmp_path):
    """A fake credential in the environment shows up in no log, report or error."""
    secret = "AKIAFAKESECRET1234567890abcdef"
    rng = np.random.default_rng(1)
    np.save(tmp_path / "P.npy", rng.normal(size=(10, 4)))
    np.save(tmp_path / "S.npy", rng.normal(size=(8, 4)))
    job = {
        "model": {"name": "precomputed"},
        "pca": {"dims": 3, "sweep": [2]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [
                {"name": "S", "embeddings": "S.npy"},
                {"name": "T", "embeddings": "s3://no-such-bucket-xyz/T.npy"},
            ],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10},
        "storage": {"s3": {"endpoint_url": "http://127.0.0.1:9"}},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = dict(
        os.environ,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_ACCESS_KEY_ID="AKIAFAKEID",
        AWS_MAX_ATTEMPTS="1",
        WORKER_S3_MAX_ATTEMPTS="1",
    )
    proc = _start(tmp_path / "job.yaml", tmp_path / "out", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "s3://no-such-bucket-xyz/T.npy" in err
    assert secret not in out + err
    job["datasets"]["secondary"].pop()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "run",
            str(tmp_path / "job.yaml"),
            "--out",
            str(tmp_path / "ok"),
            "--log-format",
            "json",
            "--junit",
            str(tmp_path / "ok" / "gates.xml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for line in proc.stderr.splitlines():
        json.loads(line)  # one JSON object per line
    assert any(json.loads(line).get("stage") == "embed" for line in proc.stderr.splitlines())
    for f in (tmp_path / "ok").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


@pytest.fixture(scope="module")
def small_image_job(tmp_path_factory) -> Path:
    """A real job on images (decode, HOG, PCA, statistics, figures and PDF in forked report
    helpers) that takes a few seconds: long enough to be interrupted anywhere in it."""
    root = tmp_path_factory.mktemp("interrupts")
    rng = np.random.default_rng(3)
    for name, count, shift in (("P", 24, 0), ("S", 24, 40)):
        (root / name).mkdir()
        for i in range(count):
            arr = np.clip(rng.normal(100 + shift, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:02d}.png")
    job = {
        "seed": 0,
        "model": {"name": "hog", "image_size": 64, "batch_size": 4},
        "pca": {"dims": 4, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "path": "P"},
            "secondary": [{"name": "S", "path": "S"}],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10},
        "selection": {"counts": [2]},
        "cache": {"enabled": False},
        "output": {"dir": "out", "keep": 2},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return root


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _interrupt_at_random_moments(job_root: Path, count: int, seed: int) -> None:
    """`count` runs of a real job, each sent SIGINT or SIGTERM at a random moment (start-up
    and imports included) to its whole process group, as a terminal's Ctrl-C is, so forked
    helpers get it too: exit 0/1 (it had finished) or 130 with a message that names the
    signal, never a traceback from any process; no process of the group outlives the run;
    the store always shows one complete latest run, or none."""
    rng = np.random.default_rng(seed)
    out = job_root / "out"
    stopped = 0
    for k in range(count):
        sig = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", str(job_root / "job.yaml"), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=job_root,
            start_new_session=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        time.sleep(float(rng.uniform(0.0, 6.0)))
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass  # it had finished
        _, err = proc.communicate(timeout=180)
        assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
        assert proc.returncode in (0, 1, 130), (proc.returncode, err[-3000:])
        if proc.returncode == 130:
            stopped += 1
            name = "SIGINT (Ctrl-C)" if sig == signal.SIGINT else "SIGTERM"
            assert f"interrupted by {name}" in err and "()" not in err, err[-2000:]
        deadline = time.time() + 30
        while _group_alive(proc.pid):  # forked helpers die with their parent
            assert time.time() < deadline, "a process of the run outlived it"
            time.sleep(0.1)
        latest = out / "latest"
        if latest.is_symlink():
            assert json.loads((latest / "report.json").read_text())["schema_version"]
            assert (out / "report.json").is_file()
    assert stopped >= 1  # at least one run was stopped mid-way, not only finished ones


def test_three_interrupts_at_random_moments_leave_no_traceback(small_image_job):
    _interrupt_at_random_moments(small_image_job, 3, seed=1)


@pytest.mark.slow
def test_twenty_interrupts_at_random_moments_leave_no_traceback(small_image_job):
    _interrupt_at_random_moments(small_image_job, 20, seed=2)
