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

from worker.report.forked import can_fork

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


def _interrupt_at_random_moments(job_root: Path, count: int, seed: int) -> list[str]:
    """`count` runs of a real job, each sent SIGINT or SIGTERM at a random moment of it
    (uniform over the time one uninterrupted run takes: start-up and imports included, and
    the report stage's forked helpers) to its whole process group, as a terminal's Ctrl-C is,
    so forked helpers get it too: exit 0/1 (it had finished) or 130 with a message that names
    the signal, never a traceback from any process; no process of the group outlives the run;
    the store always shows one complete latest run, or none. Returns the stopped runs'
    messages."""
    rng = np.random.default_rng(seed)
    out = job_root / "out"
    argv = [sys.executable, "-m", "worker", "run", str(job_root / "job.yaml"), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.monotonic()
    subprocess.run(argv, cwd=job_root, env=env, check=True, capture_output=True)
    whole = time.monotonic() - start
    stopped = []
    for k in range(count):
        sig = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=job_root,
            start_new_session=True,
            env=env,
        )
        time.sleep(float(rng.uniform(0.0, whole)))
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass  # it had finished
        _, err = proc.communicate(timeout=180)
        assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
        # a signal in the interpreter's first milliseconds, before Python runs any code of
        # the worker, ends it by the signal's default action: silently, exit status 128 + n
        # in a shell (130 for Ctrl-C), nothing written
        assert proc.returncode in (0, 1, 130, -sig), (proc.returncode, err[-3000:])
        assert proc.returncode != -sig or err == "", err[-3000:]
        if proc.returncode == 130:
            stopped.append(err)
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
    assert stopped  # at least one run was stopped mid-way, not only finished ones
    return stopped


def test_three_interrupts_at_random_moments_leave_no_traceback(small_image_job):
    _interrupt_at_random_moments(small_image_job, 3, seed=1)


@pytest.mark.slow
def test_twenty_interrupts_at_random_moments_leave_no_traceback(small_image_job):
    """The report stage (about half of the run, its figures and PDF in forked helpers) is
    among the moments hit."""
    stopped = _interrupt_at_random_moments(small_image_job, 20, seed=2)
    assert any("during the render stage" in err for err in stopped), stopped


# --------------------------------------------------------------------- a stop inside long work


FORKS = pytest.mark.skipif(not can_fork(), reason="the report stage forks no helpers here")


def _launch(root: Path, *args: str) -> subprocess.Popen:
    """`python -m worker run job.yaml ARGS` in `root`, in a process group of its own, its
    stderr piped (text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "job.yaml", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def _read_until(proc: subprocess.Popen, text: str) -> list[str]:
    """The stderr lines up to the first one containing `text` (all of them if none does)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            break
    return seen


def _job_copy(job_root: Path, folder: Path) -> None:
    """The job of `job_root` in `folder`, its image folders linked, so runs there start
    from an empty store."""
    for name in ("P", "S"):
        os.symlink(job_root / name, folder / name)
    (folder / "job.yaml").write_text((job_root / "job.yaml").read_text())


def _stop_during(
    root: Path, after: str, sig: int, delay: float = 1.5, ready=None
) -> tuple[int, str, float]:
    """Start `python -m worker run job.yaml` in `root` (its own process group), wait until a
    stderr line contains `after`, then `delay` seconds more and until `ready(proc)` (when
    given), and send `sig` to the whole group (as a terminal's Ctrl-C does, forked helpers
    included). Returns (exit code, stderr, seconds from the signal to the exit); asserts that
    no process of the group outlives the run."""
    proc = _launch(root)
    seen = _read_until(proc, after)
    assert proc.poll() is None, "".join(seen)[-3000:]
    time.sleep(delay)
    if ready is not None:
        _wait_until(proc, ready)
    assert proc.poll() is None, "the run finished before it could be stopped"
    sent = time.monotonic()
    os.killpg(proc.pid, sig)
    _, rest = proc.communicate(timeout=300)
    latency = time.monotonic() - sent
    deadline = time.time() + 30
    while _group_alive(proc.pid):  # forked helpers die with their parent
        assert time.time() < deadline, "a process of the run outlived it"
        time.sleep(0.1)
    return proc.returncode, "".join(seen) + rest, latency


def _assert_clean_stop(code: int, err: str, sig: int, stage: str) -> None:
    name = "SIGINT (Ctrl-C)" if sig == signal.SIGINT else "SIGTERM"
    assert code == 130, (code, err[-3000:])
    assert f"interrupted by {name} during the {stage} stage; no report was published" in err, err
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert f"{stage} stopped after" in err and f"{stage} done in" not in err, err[-3000:]


def test_a_stop_during_the_permutation_tests_takes_effect_within_a_batch(tmp_path):
    """Three secondaries of 1,000 rows with 10,000 MMD and 10,000 energy permutations each:
    minutes of permutations in the measure stage. SIGINT a second into it stops the run
    within a batch (seconds), not after the tests: exit 130, the stage named, no traceback,
    nothing left in the store."""
    from worker import stats

    rng = np.random.default_rng(5)
    names = ["S1", "S2", "S3"]
    for k, name in enumerate(["P", *names]):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(1000, 8)) + 0.05 * k)
    job = {
        "seed": 0,
        "model": {"name": "precomputed"},
        "pca": {"dims": 4, "sweep": [4]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": n, "embeddings": f"{n}.npy"} for n in names],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10000, "energy_permutations": 10000},
        "output": {"dir": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code, err, latency = _stop_during(tmp_path, "embed done", signal.SIGINT)
    _assert_clean_stop(code, err, signal.SIGINT, "measure")
    assert not (tmp_path / "out").exists()  # nothing staged or published is left
    # what the stop saved: the energy tests alone take 3 x 20 times 500 permutations
    x, y = np.load(tmp_path / "P.npy")[:, :4], np.load(tmp_path / "S1.npy")[:, :4]
    start = time.perf_counter()
    stats.energy_test(x, y, 500, 0)
    remaining = 3 * 20 * (time.perf_counter() - start) - 1.5
    assert latency < remaining / 4, (latency, remaining)


def test_a_stop_during_adaptation_training_takes_effect_within_a_step(tmp_path):
    """Adaptation with 10,000 epochs (minutes of training): SIGTERM once the first epoch is
    done stops within a training step: exit 130, the stage named, no traceback from the
    process or its threads, nothing in the store, no checkpoint published into it."""
    from tests.helpers.adaptation import write_set

    write_set(tmp_path, "P", [{"orientation": "h"}] * 6, seed=1)
    write_set(tmp_path, "S1", [{"orientation": "v"}] * 6, seed=2)
    job = {
        "seed": 0,
        "model": {"name": "hog"},
        "pca": {"dims": 4, "sweep": [4]},
        "datasets": {
            "primary": {"name": "P", "path": "P/images", "masks": "P/masks"},
            "secondary": [{"name": "S1", "path": "S1/images", "masks": "S1/masks"}],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10, "energy_permutations": 10},
        "selection": {"counts": [1]},
        "cache": {"dir": "cache"},  # also where each epoch's checkpoint goes
        "output": {"dir": "out", "save_checkpoints": True},
        "adaptation": {
            "enabled": True,
            "model": "unet",
            "image_size": 32,
            "epochs": 10000,
            "batch_size": 2,
            "counts": [1],
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    def training(proc: subprocess.Popen) -> bool:
        return any((tmp_path / "cache").rglob("last.pt"))

    # once an epoch is done (its checkpoint written): the imports are over, training runs
    code, err, latency = _stop_during(tmp_path, "measure done", signal.SIGTERM, 0.0, training)
    _assert_clean_stop(code, err, signal.SIGTERM, "adapt")
    assert not (tmp_path / "out").exists()
    assert latency < 15, latency  # 10,000 epochs of 6 images take minutes


@FORKS
def test_a_stop_in_the_report_stage_stops_its_forked_helpers(small_image_job, tmp_path):
    """Ctrl-C to the process group while the report stage's forked helpers draw the figures
    and print the PDF: the parent stops at its next wait (0.1 s), kills them, exits 130
    naming the render stage; no helper prints a traceback or outlives it; no run is
    published and the previous latest run is unchanged."""
    out = tmp_path / "out"
    _job_copy(small_image_job, tmp_path)
    subprocess.run(
        [sys.executable, "-m", "worker", "run", "job.yaml", "--quiet"], cwd=tmp_path, check=True
    )
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # once the figure pool is up beside the PDF child: the helpers are at work
    code, err, _ = _stop_during(tmp_path, "gates done", signal.SIGINT, 0.0, _helpers(2))
    _assert_clean_stop(code, err, signal.SIGINT, "render")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert len([p for p in (out / "runs").iterdir() if not p.name.startswith(".")]) == 1


def _wait_until(proc: subprocess.Popen, ready) -> None:
    """Until ready(proc) is true, while the run goes on (a minute at most)."""
    deadline = time.time() + 60
    while not ready(proc):
        assert proc.poll() is None and time.time() < deadline, "the awaited moment never came"
        time.sleep(0.02)


def _helpers(count: int):
    """ready(proc): the run's process group holds `count` helpers besides the run."""

    def ready(proc: subprocess.Popen) -> bool:
        return len(_group_members(proc.pid)) >= 1 + count

    return ready


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


@FORKS
def test_sigkill_of_the_parent_in_the_report_stage_takes_its_helpers_with_it(
    small_image_job, tmp_path
):
    """SIGKILL to the worker alone (not its group) while the report stage's forked helpers
    work: every helper dies with it (PR_SET_PDEATHSIG), none stays blocked on a pipe; no run
    is published; the next run removes the killed one's staging folder and publishes."""
    _job_copy(small_image_job, tmp_path)
    proc = _launch(tmp_path)
    _read_until(proc, "gates done")
    _wait_until(proc, _helpers(2))  # the PDF child and the figure pool are up
    proc.kill()  # the parent only
    proc.wait()
    deadline = time.time() + 30
    while _group_members(proc.pid):
        assert time.time() < deadline, f"helpers outlived their parent: {_group_members(proc.pid)}"
        time.sleep(0.1)
    runs = tmp_path / "out" / "runs"
    assert not (tmp_path / "out" / "latest").exists()
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "job.yaml", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert not [p for p in runs.iterdir() if p.name.endswith((".partial", ".writer"))]
