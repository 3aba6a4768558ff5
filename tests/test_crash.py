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
