"""Independent tasks in worker processes forked from this one (the figures of report.pdf).

`run_tasks(tasks, processes, meanwhile)` calls every zero-argument callable of `tasks` and
returns their results in task order. With 2 or more processes the tasks run in children
forked from this process: they inherit the tasks (closures over the report and decoded
pictures), nothing is pickled on the way in; results and exceptions come back pickled. A
task's exception is raised here with the child's traceback as its cause; a child that dies
raises BrokenProcessPool. `meanwhile` runs in this process while the children work.

Fork copies one thread only, so a task must not use what other threads of this process may
hold (torch, CUDA, OpenMP, Ray): the figure tasks use matplotlib, numpy and PIL only.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

MAX_PROCESSES = 8  # forks beyond this cost more than the few dozen figures of a report save

_TASKS: Sequence[Callable[[], Any]] = ()  # set in each child by _adopt, never in the parent


def default_processes(n_tasks: int) -> int:
    """Worker processes for `n_tasks`: one per usable core up to MAX_PROCESSES; 1 (run here)
    for a single task, a single core, or where fork is unavailable (fork only on Linux)."""
    if n_tasks < 2 or not sys.platform.startswith("linux"):
        return 1
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(n_tasks, len(os.sched_getaffinity(0)), MAX_PROCESSES))


def _adopt(tasks: Sequence[Callable[[], Any]]) -> None:
    global _TASKS
    _TASKS = tasks


def _run(index: int) -> Any:
    return _TASKS[index]()


def run_tasks(
    tasks: Sequence[Callable[[], Any]],
    processes: int | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> list[Any]:
    """Every task's result, in order. processes: None picks default_processes; 1 runs the
    tasks here (after `meanwhile`)."""
    tasks = list(tasks)
    n = default_processes(len(tasks)) if processes is None else min(processes, len(tasks))
    if n <= 1:
        if meanwhile is not None:
            meanwhile()
        return [task() for task in tasks]
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        n, mp_context=multiprocessing.get_context("fork"), initializer=_adopt, initargs=(tasks,)
    )
    try:
        futures = [pool.submit(_run, i) for i in range(len(tasks))]
        if meanwhile is not None:
            meanwhile()
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
