"""Figures drawn and the PDF printed in forked processes: the same PNG bytes as a serial
run, a child's failure raised in the parent (nothing published), the serial fallback."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import types
from concurrent.futures.process import BrokenProcessPool

import pytest

from tests.helpers.jobs import write_job
from tests.helpers.sample_report import make_extras
from worker.job import load_job
from worker.pipeline import run
from worker.report import distance_figures, forked
from worker.report import figures as figmod
from worker.results import Report

needs_fork = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods(),
    reason="figures are drawn in forked processes on Linux only",
)


def _pid() -> int:
    return os.getpid()


def _fail() -> None:
    raise ValueError("figure 2 cannot be drawn")


def _die() -> None:
    os._exit(7)


@needs_fork
def test_parallel_figures_are_the_serial_figures(tmp_path):
    from tests.helpers.sample_report import make_report

    raw = make_report()
    report = Report.model_validate(raw)
    serial = figmod.make_figures(report, make_extras(raw), tmp_path / "serial", processes=1)
    forked_ = figmod.make_figures(report, make_extras(raw), tmp_path / "forked", processes=3)
    assert list(forked_) == list(serial)  # same keys in the same order
    assert len(serial) >= 3
    for key, path in serial.items():
        assert forked_[key] == tmp_path / "forked" / path.name
        assert forked_[key].read_bytes() == path.read_bytes(), key


@needs_fork
def test_tasks_run_in_children():
    pids = forked.run_tasks([_pid, _pid, _pid], processes=2)
    assert os.getpid() not in pids and len(set(pids)) <= 2


def test_one_process_runs_the_tasks_here():
    assert forked.run_tasks([_pid, _pid], processes=1) == [os.getpid()] * 2


@needs_fork
def test_a_failing_task_raises_its_error_in_the_parent():
    with pytest.raises(ValueError, match="figure 2 cannot be drawn") as err:
        forked.run_tasks([_pid, _fail, _pid], processes=2)
    assert "_fail" in str(err.value.__cause__)  # the child's traceback


@needs_fork
def test_a_dying_child_raises_broken_pool():
    with pytest.raises(BrokenProcessPool):
        forked.run_tasks([_die, _pid], processes=2)


def _pid_plus(x: int) -> tuple[int, int]:
    return os.getpid(), x + 1


@pytest.mark.parametrize("fork", [pytest.param(True, marks=needs_fork), False])
def test_child_prepares_at_once_and_finishes_with_what_it_is_given(tmp_path, fork):
    marker = tmp_path / "prepared"
    with forked.Child(marker.touch, _pid_plus, fork=fork) as child:
        if fork:
            for _ in range(500):  # prepare runs before result() is called
                if marker.exists():
                    break
                time.sleep(0.01)
            assert marker.exists()
        pid, value = child.result(41)
    assert value == 42 and (pid != os.getpid()) == fork
    assert marker.exists()


@pytest.mark.parametrize("fork", [pytest.param(True, marks=needs_fork), False])
def test_child_finishes_while_this_process_works_after_send(tmp_path, fork):
    """send(x) returns at once; in the child finish(x) runs meanwhile, before result() is
    called; without a child it runs at result()."""
    marker = tmp_path / "finished"

    def finish(x: int) -> tuple[int, int]:
        marker.touch()
        return _pid_plus(x)

    with forked.Child(lambda: None, finish, fork=fork) as child:
        child.send(41)
        for _ in range(500 if fork else 0):  # this process's own work meanwhile
            if marker.exists():
                break
            time.sleep(0.01)
        assert marker.exists() == fork
        pid, value = child.result()
    assert value == 42 and (pid != os.getpid()) == fork and marker.exists()


@needs_fork
def test_child_failure_is_raised_here_with_its_traceback():
    with forked.Child(lambda: None, lambda x: _fail()) as child:
        with pytest.raises(ValueError, match="figure 2 cannot be drawn") as err:
            child.result(1)
    assert isinstance(err.value.__cause__, forked.RemoteTraceback)
    assert "_fail" in str(err.value.__cause__)


@needs_fork
def test_child_whose_prepare_fails_says_why_even_for_a_large_input():
    with forked.Child(_fail, _pid_plus) as child:
        with pytest.raises(ValueError, match="figure 2 cannot be drawn"):
            child.result(b"x" * 1_000_000)  # more than a pipe holds


@needs_fork
def test_child_that_dies_raises_a_clear_error():
    with forked.Child(lambda: None, lambda x: _die()) as child:
        with pytest.raises(RuntimeError, match=r"report process died \(exit code 7\)"):
            child.result(1)


@needs_fork
def test_leaving_early_kills_the_child(tmp_path):
    with pytest.raises(KeyError):
        with forked.Child(lambda: None, _pid_plus) as child:
            raise KeyError("a figure failed")
    assert child._proc.exitcode is not None  # killed, not left waiting for its input


def test_default_processes_falls_back_to_serial(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert forked.default_processes(10) == 4
    assert forked.default_processes(3) == 3
    assert forked.default_processes(1) == 1  # a single figure: no fork
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert forked.default_processes(100) == forked.MAX_PROCESSES
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert forked.default_processes(10) == 1  # a single core
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert forked.default_processes(10) == 1  # no fork
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(sys, "platform", "darwin")
    assert forked.default_processes(10) == 1  # fork only on Linux
    monkeypatch.setattr(sys, "platform", "linux")
    assert forked.can_fork()
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert not forked.can_fork()  # a Ray driver never forks


@needs_fork
def test_a_figure_failing_in_a_child_fails_the_run_and_publishes_nothing(
    embedding_job, monkeypatch
):
    folder, job, _ = embedding_job

    def broken(report, path):
        raise RuntimeError("violin exploded")

    monkeypatch.setattr(distance_figures, "plot_violin_overview", broken)
    monkeypatch.setattr(forked, "default_processes", lambda n: 2)
    out = folder / "out"
    with pytest.raises(RuntimeError, match="violin exploded"):
        run(load_job(write_job(folder, job)), out_dir=str(out))
    runs = out / "runs"
    assert not (out / "report.json").exists() and not (out / "latest").exists()
    assert not runs.exists() or not any(runs.iterdir())
