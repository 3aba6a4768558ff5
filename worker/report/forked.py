"""Work of the report stage in processes forked from this one: the figures, the PDF.

`run_tasks(tasks, processes)` calls every zero-argument callable of `tasks` and returns
their results in task order. With 2 or more processes the tasks run in children forked
from this process: they inherit the tasks (closures over the report and decoded pictures),
nothing is pickled on the way in; results and exceptions come back pickled. A task's
exception is raised here with the child's traceback as its cause; a child that dies raises
BrokenProcessPool.

`Child(prepare, finish)` forks one child that runs `prepare()` at once (WeasyPrint's
import) and `finish(x)` once `send(x)` or `result(x)` hands it x (the figures' plan): the two
overlap with whatever this process does in between; finish may wait for later values
sent to it (`received()`): the PDF's layout starts with the figures' planned files and waits
for the figures themselves only where it needs their pixels.

Every child dies with this process (`die_with_parent`: prctl PR_SET_PDEATHSIG), so a
parent killed with SIGKILL leaves no helper behind. While this process waits for its children
it stops at a safe point every 0.1 s (worker.interrupt.wait): a stop asked for by a signal
kills the children at once instead of waiting for their figures.

Fork copies one thread only, so the children must not use what other threads of this
process may hold (torch, CUDA, OpenMP, Ray): they use matplotlib, numpy, PIL and WeasyPrint.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from worker.devices import usable_cores
from worker.interrupt import stoppable, wait

MAX_PROCESSES = 8  # forks beyond this cost more than the few dozen figures of a report save

_TASKS: Sequence[Callable[[], Any]] = ()  # set in each child by _adopt, never in the parent


def can_fork() -> bool:
    """Whether work may go to forked children: Linux with fork, more than one core, and no
    Ray connection in this process (a Ray driver that forks hangs in its next ray.get)."""
    if not sys.platform.startswith("linux"):
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return False
    return usable_cores() > 1


def default_processes(n_tasks: int) -> int:
    """Worker processes for `n_tasks`: one per usable core up to MAX_PROCESSES; 1 (run here)
    for a single task, a single core, or where fork is unavailable (fork only on Linux)."""
    if n_tasks < 2 or not can_fork():
        return 1
    return min(n_tasks, usable_cores(), MAX_PROCESSES)


def die_with_parent(parent: int) -> None:
    """In a forked child: be killed (SIGKILL) when the parent process `parent` dies (Linux
    prctl PR_SET_PDEATHSIG); exit at once if it is already gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _adopt(tasks: Sequence[Callable[[], Any]], parent: int) -> None:
    global _TASKS
    die_with_parent(parent)
    _TASKS = tasks


def _run(index: int) -> Any:
    return _TASKS[index]()


def run_tasks(tasks: Sequence[Callable[[], Any]], processes: int | None = None) -> list[Any]:
    """Every task's result, in order. processes: None picks default_processes; 1 runs the
    tasks here."""
    tasks = list(tasks)
    n = default_processes(len(tasks)) if processes is None else min(processes, len(tasks))
    if n <= 1:
        return [task() for task in stoppable(tasks)]
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import wait as futures_wait

    pool = ProcessPoolExecutor(
        n,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_adopt,
        initargs=(tasks, os.getpid()),
    )
    try:
        futures = [pool.submit(_run, i) for i in range(len(tasks))]
        wait(lambda timeout: not futures_wait(futures, timeout).not_done)
        return [f.result() for f in futures]
    except BaseException:  # a stop or a failed task: the other tasks' work is not wanted
        _kill_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _kill_workers(pool) -> None:
    """SIGKILL the worker processes of a ProcessPoolExecutor (Python 3.14 has
    kill_workers(); before it, the processes are only reachable as `_processes`)."""
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.kill()


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child (the cause of the one raised here)."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


_LATER: Callable[[], Any] | None = None  # received()'s source while a finish runs


def received() -> Any:
    """Inside finish(x): the next value this Child's parent sent after x (Child.send),
    waiting for it in a forked child. RuntimeError when none will come."""
    if _LATER is None:
        raise RuntimeError("received() is only for a Child's finish")
    return _LATER()


def _child_main(prepare, finish, inbox, outbox, parent: int, parent_ends) -> None:
    global _LATER
    die_with_parent(parent)
    for end in parent_ends:  # the parent's ends: holding them would hide its death (no EOF)
        end.close()

    def later() -> Any:
        try:
            return inbox.recv()
        except EOFError:
            raise RuntimeError("the report stage stopped sending") from None

    _LATER = later
    try:
        prepare()
        reply = (True, finish(inbox.recv()), None)
    except BaseException as err:  # every failure goes back to the parent, which raises it
        reply = (False, err, traceback.format_exc())
    try:
        outbox.send(reply)
    except Exception as err:  # an exception that cannot be pickled: its text instead
        outbox.send((False, RuntimeError(repr(reply[1])), f"{reply[2]}\n{err!r}"))


class Child:
    """`prepare()` now and `finish(x)` later in a forked child; in this process, both at
    `result(x)`, where can_fork() is false or `fork` is False. A context manager: leaving
    it early (an exception) kills the child."""

    def __init__(
        self, prepare: Callable[[], None], finish: Callable[[Any], Any], fork: bool | None = None
    ):
        self._prepare, self._finish = prepare, finish
        self._proc = None
        self._sent: list[Any] = []
        if not (can_fork() if fork is None else fork):
            return
        ctx = multiprocessing.get_context("fork")
        child_in, self._inbox = ctx.Pipe(duplex=False)
        self._outbox, child_out = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_child_main,
            args=(prepare, finish, child_in, child_out, os.getpid(), (self._inbox, self._outbox)),
            daemon=True,
        )
        self._proc.start()
        child_in.close()  # the child's ends: EOF here once it is gone
        child_out.close()

    def send(self, x: Any) -> None:
        """Hand x over and return at once: the first x is finish's argument (in the child,
        finish runs meanwhile), later ones are what finish gets from received()."""
        self._sent.append(x)
        if self._proc is None:
            return
        try:
            self._inbox.send(x)
        except BrokenPipeError:
            pass  # the child stopped before reading x (prepare failed): its reply says why

    def result(self, *x: Any) -> Any:
        """finish(x): its return value, or its exception raised here. x: the value handed
        to finish, unless send(x) handed it already."""
        global _LATER
        if x:
            self.send(*x)
        if self._proc is None:
            later = iter(self._sent[1:])
            _LATER = lambda: next(later)  # noqa: E731 - what was sent, in order
            try:
                self._prepare()
                return self._finish(self._sent[0])
            finally:
                _LATER = None
        self._inbox.close()
        try:
            wait(self._outbox.poll)  # a stop while the child works: __exit__ kills it
            ok, value, trace = self._outbox.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"a report process died (exit code {self._proc.exitcode})") from None
        self._proc.join()
        if ok:
            return value
        raise value from RemoteTraceback(trace)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
