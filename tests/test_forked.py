"""Figures drawn in forked processes: the same PNG bytes as a serial run, a child's failure
raised in the parent (nothing published), and the serial fallback."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures.process import BrokenProcessPool

import pytest

from tests.conftest import write_job
from tests.test_report import make_extras
from worker.job import load_job
from worker.pipeline import run
from worker.report import figures as figmod
from worker.report import forked
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
    from tests.test_report import make_report

    raw = make_report()
    report = Report.model_validate(raw)
    serial = figmod.make_figures(report, make_extras(raw), tmp_path / "serial", processes=1)
    forked_ = figmod.make_figures(report, make_extras(raw), tmp_path / "forked", processes=3)
    assert list(forked_) == list(serial)  # same keys in the same order
    assert len(serial) >= 8
    for key, path in serial.items():
        assert forked_[key] == tmp_path / "forked" / path.name
        assert forked_[key].read_bytes() == path.read_bytes(), key


@needs_fork
def test_tasks_run_in_children_and_meanwhile_here():
    here = os.getpid()
    calls = []
    pids = forked.run_tasks([_pid, _pid, _pid], processes=2, meanwhile=lambda: calls.append(1))
    assert calls == [1]
    assert here not in pids and len(set(pids)) <= 2


def test_one_process_runs_the_tasks_here():
    calls = []
    pids = forked.run_tasks([_pid, _pid], processes=1, meanwhile=lambda: calls.append(1))
    assert pids == [os.getpid()] * 2 and calls == [1]


@needs_fork
def test_a_failing_task_raises_its_error_in_the_parent():
    with pytest.raises(ValueError, match="figure 2 cannot be drawn") as err:
        forked.run_tasks([_pid, _fail, _pid], processes=2)
    assert "_fail" in str(err.value.__cause__)  # the child's traceback


@needs_fork
def test_a_dying_child_raises_broken_pool():
    with pytest.raises(BrokenProcessPool):
        forked.run_tasks([_die, _pid], processes=2)


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


@needs_fork
def test_a_figure_failing_in_a_child_fails_the_run_and_publishes_nothing(
    embedding_job, monkeypatch
):
    folder, job, _ = embedding_job

    def broken(report, path):
        raise RuntimeError("violin exploded")

    monkeypatch.setattr(figmod, "plot_violin_overview", broken)
    monkeypatch.setattr(forked, "default_processes", lambda n: 2)
    out = folder / "out"
    with pytest.raises(RuntimeError, match="violin exploded"):
        run(load_job(write_job(folder, job)), out_dir=str(out))
    runs = out / "runs"
    assert not (out / "report.json").exists() and not (out / "latest").exists()
    assert not runs.exists() or not any(runs.iterdir())
