"""One SIGINT/SIGTERM handler for the command line: the first signal asks for a clean stop.

`install()` (the first thing `python -m worker` does, before its other imports) makes both
signals only *record* the request: no exception is raised at a random bytecode (that is what
printed "Exception ignored in ... WeakSet ... KeyboardInterrupt" and broke process pools).
The run stops at the next safe point, where `check()` raises `Interrupted` naming the signal:
when a stage starts or ends (worker.logs.stage), after each embedded batch, and in every long
loop, which iterates through `stoppable()` (the engine's row blocks, training steps, each batch
of permutations, bootstrap replicates and random subsets, k-center picks) or waits through
`wait()` (the report stage's forked helpers): a stop takes effect within one iteration, about
a second at most. Inside those loops `check()` is cheap (one list test). A second signal
stops at once (exit 130, nothing published; a later run removes what the stopped one left in
the store). Forked report helpers inherit the handler, so a Ctrl-C sent to the whole process
group never raises in them either; they die with their parent (worker.report.forked).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
WAIT_STEP_S = 0.1  # how often wait() looks for a stop while it blocks

EXIT_INTERRUPTED = 130
_REQUESTED: list[int] = []  # signal numbers received, in order
_OWNER: list[int] = []  # pid of the process that installed the handler


class Interrupted(BaseException):  # noqa: N818 - it is a stop request, not an error
    """A stop asked for by a signal, raised at a safe point (not an Exception: a broad
    `except Exception` in a stage must not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.stage: str | None = None  # the innermost stage it stopped (worker.logs.stage)

    @property
    def name(self) -> str:
        return signal_name(self.signum)

    def __str__(self) -> str:
        return f"interrupted by {self.name}"


def signal_name(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def _handler(signum: int, frame) -> None:  # noqa: ARG001
    if _OWNER and os.getpid() != _OWNER[0]:
        return  # a forked helper: its parent decides; it dies with the parent
    _REQUESTED.append(signum)
    if len(_REQUESTED) > 1:
        os.write(2, f"\n{signal_name(signum)} again: stopping now (exit 130)\n".encode())
        os._exit(EXIT_INTERRUPTED)


def install() -> None:
    """Route SIGINT and SIGTERM to the recording handler (main thread only)."""
    _OWNER[:] = [os.getpid()]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


def requested() -> int | None:
    """The first signal received, or None."""
    return _REQUESTED[0] if _REQUESTED else None


def check() -> None:
    """Raise Interrupted when a stop was asked for (a safe point)."""
    if _REQUESTED and (not _OWNER or os.getpid() == _OWNER[0]):
        raise Interrupted(_REQUESTED[0])


def stoppable(items: Iterable[T]) -> Iterator[T]:
    """Each item of `items`, with a safe point (check()) before it: how a long loop lets a
    stop take effect within one iteration. In a forked helper it never raises (its parent
    stops, and the helper dies with it)."""
    for item in items:
        check()
        yield item


def wait(ready: Callable[[float], object], step: float = WAIT_STEP_S) -> None:
    """Block until `ready(timeout)` is true, with a safe point every `step` seconds: `ready`
    waits at most `timeout` seconds for what it waits on (a pipe's poll, futures.wait) and
    says whether it came."""
    while True:
        check()
        if ready(step):
            return
