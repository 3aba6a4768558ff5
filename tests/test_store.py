"""The run store (worker/store.py): atomic publishing into runs/<run_id>/, `latest`, the flat
paths, retention, failures (ENOSPC, blocked paths), signals at named points of publishing
(real processes), concurrent runs; locally and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.s3 import cli_env, storage_config
from worker import store
from worker.errors import JobError

ROOT = Path(__file__).resolve().parents[1]


#: every test here runs with planted AWS credentials and no AWS config (tests/helpers/s3.py)
pytestmark = pytest.mark.usefixtures("aws_env")


# ------------------------------------------------------------------ helpers


def make_staging(folder: Path, tag: str, figures: tuple[str, ...] = ("S1.png",)) -> Path:
    """A finished output folder as the pipeline leaves it: report.json names `tag`."""
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"tag": tag, "passed": True}))
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 " + tag.encode() * 50)
    (folder / "figures").mkdir()
    for name in figures:
        (folder / "figures" / name).write_bytes(f"{tag}:{name}".encode())
    return folder


def read_raw(uri: str, ref: str = "latest", storage=None) -> dict:
    """The raw report.json of a run (these tests publish small stand-in reports, not ones a
    typed Report would accept): "latest" or a run id, read through the store's interface."""
    run_id = store.latest_run(uri, storage) if ref == "latest" else ref
    return json.loads(store.open_store(uri, storage).read(run_id))


def assert_complete(out: Path, tag: str, partials: bool = False) -> None:
    """`latest` and every flat path show one complete run whose report names `tag`; no
    .partial folder is left unless `partials` (a run was killed or is still writing)."""
    latest = out / "latest"
    assert latest.is_symlink() and store.is_run_id(Path(os.readlink(latest)).name)
    assert json.loads((latest / "report.json").read_text())["tag"] == tag
    assert json.loads((out / "report.json").read_text())["tag"] == tag
    assert (out / "report.pdf").read_bytes().endswith(tag.encode())
    for fig in (out / "figures").iterdir():
        assert fig.read_bytes().startswith(f"{tag}:".encode())
    if not partials:
        assert not [p for p in (out / "runs").iterdir() if p.name.endswith(".partial")]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file reachable through the flat paths and `latest` (links followed)."""
    files = {}
    for name in ("latest", "report.json", "report.pdf", "figures"):
        p = out / name
        if p.is_file():
            files[name] = p.read_bytes()
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    files[f"{name}/{f.relative_to(p)}"] = f.read_bytes()
    return files


def publish(
    tmp: Path, out: Path, tag: str, figures: tuple[str, ...] = ("S1.png",), **kw
) -> store.Published:
    staging = make_staging(tmp / f"staging-{tag}", tag, figures)
    return store.publish_run(staging, str(out), **kw)


# ------------------------------------------------------------------ run ids


def test_run_id_is_utc_start_time_plus_random_suffix_and_sorts():
    started = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    a, b = store.new_run_id(started), store.new_run_id(started)
    assert a.startswith("20260101T000000Z-") and len(a) == 23 and a != b
    assert store.is_run_id(a) and not store.is_run_id(".x.partial")
    assert store.run_id_time(a) == started
    later = store.new_run_id(started + 1)
    assert sorted([later, a]) == [a, later]


# ------------------------------------------------------------------ local store


def test_layout_latest_flat_links_and_reading(tmp_path):
    out = tmp_path / "out"
    first = publish(tmp_path, out, "one", started=1_767_225_600.0)
    make_staging(tmp_path / "s2", "two", figures=("S1.png",))
    # The first run had a figure of a secondary the second run no longer has.
    assert (out / "figures" / "S1.png").exists()
    second = store.publish_run(tmp_path / "s2", str(out), started=1_767_225_700.0)

    assert first.run_id < second.run_id
    assert os.readlink(out / "latest") == f"runs/{second.run_id}"
    for name in ("report.json", "report.pdf", "figures"):
        assert os.readlink(out / name) == f"latest/{name}"
    assert_complete(out, "two")
    assert store.list_runs(str(out)) == [first.run_id, second.run_id]
    assert store.latest_run(str(out)) == second.run_id
    assert read_raw(str(out), "latest")["tag"] == "two"
    assert read_raw(str(out), first.run_id)["tag"] == "one"
    # The first run is untouched and complete in its own folder.
    assert (out / "runs" / first.run_id / "figures" / "S1.png").read_bytes() == b"one:S1.png"
    assert second.report_uri == str(out / "runs" / second.run_id / "report.json")
    assert store.last_published() == second


def test_removed_secondary_figures_do_not_linger(tmp_path):
    out = tmp_path / "out"
    publish(tmp_path, out, "one", figures=("S1.png", "S2.png"))
    store.publish_run(make_staging(tmp_path / "s2", "two", figures=("S1.png",)), str(out))
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["S1.png"]


def test_read_run_errors_name_the_store(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(JobError, match="no published run"):
        store.load_run(str(out), "latest")
    assert store.list_runs(str(out)) == []
    publish(tmp_path, out, "one")
    with pytest.raises(JobError, match="not a run id"):
        store.load_run(str(out), "../etc")
    with pytest.raises(JobError, match="no such complete run"):
        store.load_run(str(out), "20200101T000000Z-abcdef")


def test_old_one_folder_layout_is_kept_as_a_run(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "S9.png").write_bytes(b"old")
    (out / "report.json").write_text('{"tag": "old"}')
    (out / "report.pdf").write_bytes(b"old pdf")
    (out / "junit.xml").write_text("<testsuite/>")  # not ours: left alone
    new = publish(tmp_path, out, "new")
    assert_complete(out, "new")
    assert (out / "junit.xml").read_text() == "<testsuite/>"
    assert sorted(p.name for p in out.iterdir()) == [
        "figures",
        "junit.xml",
        "latest",
        "report.json",
        "report.pdf",
        "runs",
    ]
    old = [r for r in store.list_runs(str(out)) if r != new.run_id]
    assert len(old) == 1  # the old outputs are a run of their own, not deleted
    kept = out / "runs" / old[0]
    assert read_raw(str(out), old[0]) == {"tag": "old"}
    assert (kept / "figures" / "S9.png").read_bytes() == b"old"
    assert (kept / "report.pdf").read_bytes() == b"old pdf"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_plain_latest_is_refused_not_replaced(tmp_path, kind):
    out = tmp_path / "out"
    first = publish(tmp_path, out, "one")
    (out / "latest").unlink()
    if kind == "file":
        (out / "latest").write_text("my notes")
    else:
        (out / "latest").mkdir()
        (out / "latest" / "keep.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(JobError, match=f"latest is a plain {kind}"):
        store.publish_run(make_staging(tmp_path / "s2", "two"), str(out))
    assert snapshot(out) == before and store.list_runs(str(out)) == [first.run_id]


def test_staging_lives_in_the_store_and_a_dead_writers_is_removed(tmp_path):
    out = tmp_path / "out"
    publish(tmp_path, out, "one")
    with store.staging_dir(str(out), "20300101T000000Z-aaaaaa") as staging:
        assert staging == out / "runs" / ".20300101T000000Z-aaaaaa.partial"
        (staging / "x").write_text("half")
        # as if this process had died: its record names a pid that is gone
        writer = out / "runs" / ".20300101T000000Z-aaaaaa.writer"
        writer.write_text(f"{socket.gethostname()} {_dead_pid()}\n")
        assert "20300101T000000Z-aaaaaa" not in store.list_runs(str(out))
        removed = store.clean_stale(str(out))
        assert ".20300101T000000Z-aaaaaa.partial" in removed and not staging.exists()
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with store.staging_dir(str(fresh), "20300101T000000Z-bbbbbb"):
            raise RuntimeError("a stage failed")
    assert not fresh.exists()  # the store folders it made are gone again


def test_enospc_while_copying_keeps_previous_run_visible(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = publish(tmp_path, out, "one")
    before = snapshot(out)
    real = store._copy_file
    calls = []

    def full_disk(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(store, "_copy_file", full_disk)
    with pytest.raises(JobError, match=r"output\.dir: .*No space left.*free disk space"):
        publish(tmp_path, out, "two")
    assert snapshot(out) == before
    assert store.list_runs(str(out)) == [first.run_id]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [".lock", first.run_id]


def test_enospc_on_a_first_run_leaves_no_output_folder(tmp_path, monkeypatch):
    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(store, "_copy_file", full_disk)
    with pytest.raises(JobError, match="output.dir"):
        publish(tmp_path, tmp_path / "out", "one")
    assert not (tmp_path / "out").exists()


def test_a_file_where_the_run_folder_goes_is_refused(tmp_path):
    """Root ignores chmod, so the 'not writable' case is a file where a folder must go."""
    out = tmp_path / "out"
    publish(tmp_path, out, "one")
    before = snapshot(out)
    run_id = store.new_run_id()
    (out / "runs" / f".{run_id}.partial").write_text("in the way")
    with pytest.raises(JobError, match=rf"output\.dir: cannot publish the run to {out}"):
        store.publish_run(make_staging(tmp_path / "s2", "two"), str(out), run_id=run_id)
    assert snapshot(out) == before
    assert len(store.list_runs(str(out))) == 1


def test_a_file_where_the_store_goes_is_refused(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(JobError, match=r"output\.dir: .*blocker"):
        publish(tmp_path, tmp_path / "blocker" / "out", "one")
    assert (tmp_path / "blocker").read_text() == "a file"


def test_a_plain_folder_at_latest_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    (out / "latest").mkdir(parents=True)
    (out / "latest" / "mine.txt").write_text("user data")
    with pytest.raises(JobError, match="latest"):
        publish(tmp_path, out, "one")
    assert (out / "latest" / "mine.txt").read_text() == "user data"
    assert store.list_runs(str(out)) == []


def test_failure_while_linking_flat_paths_puts_latest_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = publish(tmp_path, out, "one")
    before = snapshot(out)

    def denied(store_dir, run_dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(store_dir / "report.json"))

    monkeypatch.setattr(store, "_link_flat", denied)
    with pytest.raises(JobError, match="Permission denied"):
        publish(tmp_path, out, "two")
    assert store.latest_run(str(out)) == first.run_id
    assert snapshot(out) == before
    assert store.list_runs(str(out)) == [first.run_id]


def test_keep_prunes_the_oldest_complete_runs_after_publishing(tmp_path):
    out = tmp_path / "out"
    ids = [publish(tmp_path, out, f"r{i}", started=1_767_225_600.0 + i).run_id for i in range(4)]
    assert store.list_runs(str(out)) == ids
    pub = publish(tmp_path, out, "r4", started=1_767_225_700.0, keep=2)
    assert pub.pruned == ids[:3]
    assert store.list_runs(str(out)) == [ids[3], pub.run_id]
    assert_complete(out, "r4")
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_prune_never_removes_the_run_latest_names_nor_a_protected_one(tmp_path):
    out = tmp_path / "out"
    ids = [publish(tmp_path, out, f"r{i}", started=1_767_225_600.0 + i).run_id for i in range(3)]
    store._switch_latest(out, ids[0])  # e.g. a slower concurrent run finished last
    assert store.prune_runs(str(out), 1, protect=(ids[1],)) == []
    assert store.prune_runs(str(out), 1) == [ids[1]]
    assert store.list_runs(str(out)) == [ids[0], ids[2]]
    with pytest.raises(JobError, match="output.keep"):
        store.prune_runs(str(out), 0)


def test_keep_is_validated_in_the_job():
    from worker.job import parse_job

    base = {
        "model": {"name": "precomputed"},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": "S", "embeddings": "S.npy"}],
        },
    }
    assert parse_job({**base, "output": {"keep": 3}}, Path(".")).output.keep == 3
    assert parse_job(base, Path(".")).output.keep is None
    with pytest.raises(JobError, match="output.keep"):
        parse_job({**base, "output": {"keep": 0}}, Path("."))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_runs_are_removed_but_never_a_live_one(tmp_path):
    out = tmp_path / "out"
    publish(tmp_path, out, "one")
    runs = out / "runs"
    host = os.uname().nodename
    dead, live, old = (store.new_run_id() for _ in range(3))
    for run_id, pid in ((dead, _dead_pid()), (live, os.getpid()), (old, None)):
        (runs / f".{run_id}.partial" / "figures").mkdir(parents=True)
        if pid is not None:
            (runs / f".{run_id}.writer").write_text(f"{host} {pid}\n")
    hour_ago = time.time() - 2 * store.STALE_AFTER_S
    os.utime(runs / f".{old}.partial", (hour_ago, hour_ago))
    (runs / ".20200101T000000Z-aaaaaa.x1.deleting").mkdir()  # a prune that was killed

    publish(tmp_path, out, "two")
    left = sorted(p.name for p in runs.iterdir() if p.name.startswith("."))
    assert left == [f".{live}.partial", f".{live}.writer", ".lock"]
    assert read_raw(str(out))["tag"] == "two"


# ------------------------------------------------------------------ real processes


#: Pause points of publishing, injected into the child by wrapping store internals (the
#: shipped code has no test hook): the child writes TEST_PAUSE_FILE at the point named by
#: TEST_PAUSE_AT and waits until TEST_RELEASE_FILE exists.
PAUSES = textwrap.dedent(
    """\
    import os, sys, time
    from pathlib import Path
    import worker.outputs as _outputs
    import worker.store as _store
    from worker.sources import s3 as _s3

    def _pause(name):
        if os.environ.get("TEST_PAUSE_AT") != name:
            return
        Path(os.environ["TEST_PAUSE_FILE"]).write_text(f"{os.getpid()} {name}\\n")
        release, deadline = Path(os.environ["TEST_RELEASE_FILE"]), time.monotonic() + 120
        while time.monotonic() < deadline and not release.exists():
            time.sleep(0.02)

    def _at(fn, before, after=None, when=lambda *a: True):
        def wrapped(*args, **kwargs):
            hit = when(*args)
            if hit and before:
                _pause(before)
            out = fn(*args, **kwargs)
            if hit and after:
                _pause(after)
            return out
        return wrapped

    _store._copy_tree = _at(_store._copy_tree, None, "copied")  # .partial complete (copied)
    _store._fsync_tree = _at(_store._fsync_tree, None, "copied")  # .partial complete (in place)
    _store._switch_latest = _at(_store._switch_latest, "renamed")  # runs/<id>/ in place
    _store._link_flat = _at(_store._link_flat, "switched")  # latest names the new run
    _outputs.publish_outputs = _at(  # S3: runs/<id>/ uploaded, before latest.json
        _outputs.publish_outputs, None, "uploaded", lambda src, dest, *a: "/runs/" in dest
    )
    _s3.write_bytes = _at(  # S3: latest.json written, before the flat copy (signals held)
        _s3.write_bytes, None, "pointed", lambda uri, *a: uri.endswith("/latest.json")
    )
    """
)
PUBLISH_SCRIPT = PAUSES + textwrap.dedent(
    """\
    from worker.store import publish_run
    from worker.job import S3Config, StorageConfig
    staging, dest, endpoint = sys.argv[1:4]
    s3 = S3Config(endpoint_url=endpoint, region="us-east-1")
    storage = StorageConfig(s3=s3) if endpoint else None
    print(publish_run(staging, dest, storage).run_id)
    """
)
CLI_SCRIPT = (  # what `python -m worker` does, with the pause points injected
    "from worker import interrupt\ninterrupt.install()\n"
    + PAUSES
    + "from worker.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
)
PAUSE_ENV, PAUSE_FILE_ENV, RELEASE_FILE_ENV = (
    "TEST_PAUSE_AT",
    "TEST_PAUSE_FILE",
    "TEST_RELEASE_FILE",
)


def _env(tmp: Path, point: str | None, base: dict | None = None) -> dict:
    env = dict(base or os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    for key in (PAUSE_ENV, PAUSE_FILE_ENV, RELEASE_FILE_ENV):
        env.pop(key, None)
    if point:
        env[PAUSE_ENV] = point
        env[PAUSE_FILE_ENV] = str(tmp / f"paused-{point}")
        env[RELEASE_FILE_ENV] = str(tmp / f"release-{point}")
    return env


def _publisher(staging: Path, dest: str, env: dict, endpoint: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISH_SCRIPT, str(staging), dest, endpoint],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_paused(proc: subprocess.Popen, env: dict, timeout: float = 120) -> None:
    marker = Path(env[PAUSE_FILE_ENV])
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited before the pause point: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "never reached the pause point"
        time.sleep(0.02)


@pytest.mark.parametrize("point", ["copied", "renamed", "switched"])
def test_sigkill_at_each_point_of_publishing_leaves_a_complete_latest(tmp_path, point):
    out = tmp_path / "out"
    first = publish(tmp_path, out, "one")
    env = _env(tmp_path, point)
    proc = _publisher(make_staging(tmp_path / "s2", "two"), str(out), env)
    _wait_paused(proc, env)
    proc.kill()
    proc.wait()
    latest = store.latest_run(str(out))
    tag = "one" if point in ("copied", "renamed") else "two"
    assert_complete(out, tag, partials=True)
    if point == "copied":
        assert store.list_runs(str(out)) == [first.run_id]
    else:  # the new run was complete when killed; only `switched` made it latest
        assert len(store.list_runs(str(out))) == 2
        assert (latest == first.run_id) == (point == "renamed")
    # The next run cleans up whatever the killed one left and publishes normally.
    publish(tmp_path, out, "three")
    assert_complete(out, "three")
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".") and p.name != ".lock"]


@pytest.fixture(scope="module")
def small_job(tmp_path_factory) -> Path:
    """A precomputed-embeddings job that runs end to end in a few seconds."""
    root = tmp_path_factory.mktemp("store_job")
    rng = np.random.default_rng(0)
    np.save(root / "P.npy", rng.normal(size=(30, 6)))
    np.save(root / "S.npy", rng.normal(size=(20, 6)) + 1.0)
    job = {
        "version": 1,
        "seed": 0,
        "output": {"dir": "never-used"},
        "model": {"name": "precomputed"},
        "pca": {"dims": 3, "sweep": [2, 3]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": "S", "embeddings": "S.npy"}],
        },
        "metrics": {"null_repeats": 2, "mmd_permutations": 10},
        "selection": {"counts": [1]},
        "cache": {"enabled": False},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return root / "job.yaml"


def _default_sigint() -> None:
    """In the child before exec: SIGINT at its default, whatever this process inherited (a
    test suite started in the background of a non-interactive shell ignores SIGINT, and an
    ignored SIGINT stays ignored across exec, so the CLI would never see it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(job: Path, out: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLI_SCRIPT, "run", str(job), "--out", out, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=job.parent,
        preexec_fn=_default_sigint,
    )


@pytest.mark.parametrize(
    ("point", "sig", "published"),
    [
        ("copied", signal.SIGINT, False),
        ("renamed", signal.SIGINT, True),
        ("switched", signal.SIGTERM, True),
    ],
)
def test_cli_interrupted_while_publishing(small_job, tmp_path, point, sig, published):
    """`--out` is the store; a signal before the rename publishes nothing and says so; one
    held during the commit lands after it, and the message names the published run."""
    out = tmp_path / "out"
    first = publish(tmp_path, out, "one")
    before = snapshot(out)
    env = _env(tmp_path, point)
    proc = _cli(small_job, str(out), env)
    _wait_paused(proc, env)
    proc.send_signal(sig)
    Path(env[RELEASE_FILE_ENV]).write_text("go")
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "Traceback" not in err and "interrupted" in err
    runs = store.list_runs(str(out))
    if published:
        new = [r for r in runs if r != first.run_id]
        assert len(new) == 1 and f"after run {new[0]} was published" in err
        assert "no report" not in err
        report = json.loads((out / "report.json").read_text())
        assert report["schema_version"] and (out / "report.pdf").read_bytes()[:4] == b"%PDF"
        assert store.latest_run(str(out)) == new[0]
    else:
        assert "no report was published" in err
        assert runs == [first.run_id] and snapshot(out) == before
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_cli_run_publishes_a_run_and_prints_it(small_job, tmp_path):
    """output.dir (relative to the job) is the store; output.keep prunes the older run."""
    job = yaml.safe_load(small_job.read_text())
    job["output"] = {"dir": "store", "keep": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    for name in ("P.npy", "S.npy"):
        os.symlink(small_job.parent / name, tmp_path / name)
    out = tmp_path / "store"
    old = publish(tmp_path, out, "old", started=time.time() - 60)
    res = subprocess.run(
        [sys.executable, "-m", "worker", "run", str(tmp_path / "job.yaml"), "--quiet"],
        env=_env(tmp_path, None),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("run: "))
    run_id = line.split()[1]
    assert run_id != old.run_id and store.is_run_id(run_id)
    assert store.list_runs(str(out)) == [run_id]  # keep: 1
    assert store.latest_run(str(out)) == run_id
    report = json.loads((out / "report.json").read_text())
    assert report == read_raw(str(out), run_id) and "schema_version" in report
    assert (out / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert any((out / "figures").iterdir())


def test_two_concurrent_runs_both_complete_latest_is_the_last_to_finish(tmp_path):
    out = tmp_path / "out"
    publish(tmp_path, out, "zero", started=time.time() - 60)
    env = _env(tmp_path, "copied")
    slow = _publisher(make_staging(tmp_path / "slow", "slow"), str(out), env)
    _wait_paused(slow, env)  # started first, holds its complete .partial folder
    time.sleep(1.0)  # run ids sort by start second
    fast = _publisher(make_staging(tmp_path / "fast", "fast"), str(out), _env(tmp_path, None))
    assert fast.wait(timeout=120) == 0, fast.stderr.read()
    assert_complete(out, "fast", partials=True)  # the slow run's folder is not removed
    Path(env[RELEASE_FILE_ENV]).write_text("go")
    assert slow.wait(timeout=120) == 0, slow.stderr.read()
    slow_id, fast_id = slow.stdout.read().strip(), fast.stdout.read().strip()
    assert slow_id < fast_id  # ids sort by start time...
    assert store.latest_run(str(out)) == slow_id  # ...but latest is the last to finish
    assert_complete(out, "slow")
    assert store.list_runs(str(out))[-2:] == [slow_id, fast_id]


def _concurrent_publishers(tmp_path: Path, out: Path, keep_arg: str) -> list[str]:
    """Three processes each publishing 4 runs into `out` at once (publish_run(..., keep_arg));
    every process exits 0. Returns the run ids they printed."""
    script = PUBLISH_SCRIPT.replace(
        "print(publish_run(staging, dest, storage).run_id)",
        f"for _ in range(4): print(publish_run(staging, dest, storage{keep_arg}).run_id)",
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(make_staging(tmp_path / f"s{i}", f"p{i}")),
                str(out),
                "",
            ],
            env=_env(tmp_path, None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    ids = []
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
        ids += p.stdout.read().split()
    return ids


def test_many_concurrent_publishers_corrupt_nothing(tmp_path):
    out = tmp_path / "out"
    ids = _concurrent_publishers(tmp_path, out, "")
    assert sorted(ids) == store.list_runs(str(out)) and len(set(ids)) == 12
    tag = read_raw(str(out))["tag"]
    assert_complete(out, tag)
    for run_id in ids:
        report = read_raw(str(out), run_id)
        run = out / "runs" / run_id
        assert (run / "report.pdf").read_bytes().endswith(report["tag"].encode())
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".") and p.name != ".lock"]


# ------------------------------------------------------------------ S3 store


def _keys(admin, bucket: str, prefix: str = "") -> dict[str, bytes]:  # noqa: F811
    listed = admin.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def _visible_s3(admin, bucket: str) -> dict[str, bytes]:  # noqa: F811
    """What consumers read: latest.json, the run it names, the flat keys."""
    everything = _keys(admin, bucket, "store/")
    pointer = json.loads(everything["store/latest.json"])
    run = f"store/runs/{pointer['run_id']}/"
    return {k: v for k, v in everything.items() if k.startswith(run) or "/runs/" not in k}


def test_s3_store_pointer_flat_keys_listing_and_retention(bucket, admin, moto_endpoint, tmp_path):  # noqa: F811
    storage = storage_config(moto_endpoint)
    uri = f"s3://{bucket}/store"
    t0 = 1_767_225_600.0  # ids sort by start second; runs within one second sort at random
    one = store.publish_run(
        make_staging(tmp_path / "a", "one", figures=("S1.png", "S2.png")), uri, storage, started=t0
    )
    two = store.publish_run(make_staging(tmp_path / "b", "two"), uri, storage, started=t0 + 1)
    keys = _keys(admin, bucket, "store/")
    pointer = json.loads(keys["store/latest.json"])
    assert pointer["run_id"] == two.run_id
    assert pointer["report"] == f"{uri}/runs/{two.run_id}/report.json"
    assert pointer["finished"].endswith("+00:00")
    assert json.loads(keys["store/report.json"])["tag"] == "two"
    assert keys["store/report.pdf"].endswith(b"two")
    # The flat copy holds only the new run's figures; the old run keeps its own.
    assert [k for k in keys if k.startswith("store/figures/")] == ["store/figures/S1.png"]
    assert f"store/runs/{one.run_id}/figures/S2.png" in keys
    assert store.list_runs(uri, storage) == [one.run_id, two.run_id]
    assert store.latest_run(uri, storage) == two.run_id
    assert read_raw(uri, "latest", storage)["tag"] == "two"
    assert read_raw(uri, one.run_id, storage)["tag"] == "one"
    with pytest.raises(JobError, match="no such complete run"):
        store.load_run(uri, "20200101T000000Z-abcdef", storage)

    three = store.publish_run(
        make_staging(tmp_path / "c", "three"), uri, storage, started=t0 + 2, keep=1
    )
    assert three.pruned == [one.run_id, two.run_id]
    assert store.list_runs(uri, storage) == [three.run_id]
    assert not [k for k in _keys(admin, bucket, "store/runs/") if three.run_id not in k]
    assert store.list_runs(f"s3://{bucket}/empty", storage) == []
    with pytest.raises(JobError, match="no published run"):
        store.load_run(f"s3://{bucket}/empty", "latest", storage)


def test_s3_failed_upload_leaves_previous_latest_and_no_objects(
    bucket,  # noqa: F811
    admin,  # noqa: F811
    moto_endpoint,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from worker.sources import s3

    storage = storage_config(moto_endpoint)
    uri = f"s3://{bucket}/store"
    one = store.publish_run(make_staging(tmp_path / "a", "one"), uri, storage)
    before = _visible_s3(admin, bucket)
    real = s3.upload_file

    def denied(local, dest, storage=None):
        if dest.endswith("report.pdf"):
            raise JobError(f"{dest}: access denied")
        real(local, dest, storage)

    monkeypatch.setattr(s3, "upload_file", denied)
    with pytest.raises(JobError, match=r"output\.dir: .*access denied"):
        store.publish_run(make_staging(tmp_path / "b", "two"), uri, storage)
    assert _visible_s3(admin, bucket) == before
    assert store.list_runs(uri, storage) == [one.run_id]
    assert not [k for k in _keys(admin, bucket, "store/runs/") if one.run_id not in k]


@pytest.mark.parametrize("point", ["uploaded", "pointed"])
def test_s3_sigkill_while_publishing(bucket, admin, moto_endpoint, tmp_path, point):  # noqa: F811
    storage = storage_config(moto_endpoint)
    uri = f"s3://{bucket}/store"
    one = store.publish_run(make_staging(tmp_path / "a", "one"), uri, storage)
    before = _visible_s3(admin, bucket)
    env = _env(tmp_path, point, cli_env(moto_endpoint))
    proc = _publisher(make_staging(tmp_path / "b", "two"), uri, env, moto_endpoint)
    _wait_paused(proc, env)
    proc.kill()
    proc.wait()
    runs = store.list_runs(uri, storage)
    assert len(runs) == 2  # the new run was complete (report.json uploaded last)
    if point == "uploaded":
        assert _visible_s3(admin, bucket) == before
        assert store.latest_run(uri, storage) == one.run_id
    else:
        assert store.latest_run(uri, storage) == next(r for r in runs if r != one.run_id)
        assert read_raw(uri, "latest", storage)["tag"] == "two"


def test_s3_cli_sigint_before_the_pointer_publishes_nothing(
    bucket,  # noqa: F811
    admin,  # noqa: F811
    moto_endpoint,  # noqa: F811
    small_job,
    tmp_path,
):
    storage = storage_config(moto_endpoint)
    uri = f"s3://{bucket}/store"
    one = store.publish_run(make_staging(tmp_path / "a", "one"), uri, storage)
    before = _visible_s3(admin, bucket)
    env = _env(tmp_path, "uploaded", cli_env(moto_endpoint))
    proc = _cli(small_job, uri, env)
    _wait_paused(proc, env)
    proc.send_signal(signal.SIGINT)
    Path(env[RELEASE_FILE_ENV]).write_text("go")
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "no report was published" in err and "Traceback" not in err
    assert _visible_s3(admin, bucket) == before
    # The interrupted run's objects were removed on the way out.
    assert store.list_runs(uri, storage) == [one.run_id]
    assert not [k for k in _keys(admin, bucket, "store/runs/") if one.run_id not in k]


def test_concurrent_publishers_with_keep_1_never_leave_latest_dangling(tmp_path):
    """keep: 1 in three processes publishing at once: pruning and the switch of `latest` take
    one lock, so `latest` always names a run that exists (it used to name a pruned one)."""
    out = tmp_path / "out"
    _concurrent_publishers(tmp_path, out, ", keep=1")
    latest = store.latest_run(str(out))
    assert latest in store.list_runs(str(out))
    assert (out / "latest" / "report.json").is_file() and (out / "report.json").is_file()
    assert_complete(out, read_raw(str(out))["tag"])


def test_s3_run_killed_mid_render_leaves_a_staging_folder_the_next_run_removes(
    bucket,  # noqa: F811
    admin,  # noqa: F811
    moto_endpoint,  # noqa: F811
    small_job,
    tmp_path,
):
    """A run into an S3 store stages in $TMPDIR/worker-out-<run_id>.<pid>. SIGKILL it while
    the report stage draws (its forked helpers die with it): the store shows nothing of it;
    its staging folder stays until the next run, which removes it first thing (the writer's
    pid is gone) and publishes normally; a live run's folder is never touched."""
    uri = f"s3://{bucket}/store"
    storage = storage_config(moto_endpoint)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(cli_env(moto_endpoint), TMPDIR=str(tmp))
    argv = [sys.executable, "-m", "worker", "run", str(small_job), "--out", uri]
    subprocess.run(argv + ["--quiet"], env=env, check=True, capture_output=True)
    first = store.list_runs(uri, storage)
    before = _keys(admin, bucket)
    live = tmp / f"{store.STAGING_PREFIX}20300101T000000Z-aaaaaa.{os.getpid()}"
    live.mkdir()  # a live process's staging: kept

    proc = subprocess.Popen(
        argv,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    for line in proc.stderr:
        if "gates done" in line:
            break
    deadline = time.time() + 120
    staged = []
    while not staged:  # the report stage has written its first figure
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        staged = [
            p for p in tmp.glob(f"{store.STAGING_PREFIX}*.{proc.pid}") if any(p.rglob("*.png"))
        ]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (dead,) = staged
    assert dead.is_dir()  # nothing could remove it: the process was killed
    assert _keys(admin, bucket) == before and store.list_runs(uri, storage) == first

    done = subprocess.run(argv + ["--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not dead.exists() and live.is_dir()
    assert not [p for p in tmp.iterdir() if p != live]  # the new run's own staging is gone too
    runs = store.list_runs(uri, storage)
    assert len(runs) == 2 and runs[0] == first[0] and store.latest_run(uri, storage) == runs[1]
    killed_id = dead.name[len(store.STAGING_PREFIX) :].rpartition(".")[0]
    assert not [k for k in _keys(admin, bucket) if killed_id in k]
