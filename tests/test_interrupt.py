"""The one stop helper (worker/interrupt.py) and the long loops that use it: each loop raises
Interrupted at its next iteration once a signal asked for a stop, and never in a forked
helper. The real processes (a stop during permutations, training, the report stage) are in
tests/test_crash.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

from worker import comparison, engine, interrupt, selection, stats
from worker.adapt import noise
from worker.adapt.names import BASELINE
from worker.engine import planning, tiles
from worker.report import forked


@pytest.fixture
def stop(monkeypatch):
    """This process is the one that installed the handler; `stop.ask()` records a SIGINT as
    the handler would."""
    requested: list[int] = []
    monkeypatch.setattr(interrupt, "_REQUESTED", requested)
    monkeypatch.setattr(interrupt, "_OWNER", [os.getpid()])

    class Stop:
        @staticmethod
        def ask(signum: int = signal.SIGINT) -> None:
            requested.append(signum)

    return Stop


def test_stoppable_yields_until_a_stop_then_raises_naming_the_signal(stop):
    seen = []
    with pytest.raises(interrupt.Interrupted) as caught:
        for k in interrupt.stoppable(range(10)):
            seen.append(k)
            if k == 3:
                stop.ask(signal.SIGTERM)
    assert seen == [0, 1, 2, 3]  # the item after the request never starts
    assert caught.value.signum == signal.SIGTERM and str(caught.value) == "interrupted by SIGTERM"
    assert list(interrupt.stoppable([])) == []


def test_stoppable_never_raises_in_a_forked_helper(stop, monkeypatch):
    monkeypatch.setattr(interrupt, "_OWNER", [os.getpid() + 1])  # a child of the owner
    stop.ask()
    assert list(interrupt.stoppable(range(3))) == [0, 1, 2]


def test_wait_returns_when_ready_and_raises_on_a_stop(stop):
    calls = []

    def ready(timeout: float) -> bool:
        calls.append(timeout)
        return len(calls) == 3

    interrupt.wait(ready, step=0.01)
    assert calls == [0.01, 0.01, 0.01]
    threading.Timer(0.2, stop.ask).start()
    start = time.monotonic()
    with pytest.raises(interrupt.Interrupted):
        interrupt.wait(lambda t: time.sleep(t) or False, step=0.05)
    assert time.monotonic() - start < 5


def _train() -> None:
    import torch

    from worker.adapt.segmenters import build_segmenter
    from worker.adapt.train import train_segmenter

    x = torch.zeros((4, 3, 16, 16), dtype=torch.uint8)
    y = torch.zeros((4, 1, 16, 16), dtype=torch.bool)
    train_segmenter(
        build_segmenter("unet", width=2, depth=1), x, y, epochs=1, batch_size=2, lr=1e-3
    )


RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(40, 3)), RNG.normal(size=(30, 3)) + 0.5
LONG_LOOPS = {
    "mmd permutations": lambda: stats.mmd_test(X, Y, 100, 0),
    "energy permutations": lambda: stats.energy_test(X, Y, 100, 0),
    "null repeats": lambda: stats.null_o_dist_means(X, 5, 0),
    "kid subsets": lambda: stats.kid(X, Y, 0, subsets=5, subset_size=10),
    "random subsets": lambda: selection.random_subsets(np.arange(30), 3, 50, 0),
    "covering radii": lambda: selection.covering_radii(
        Y, np.full(30, np.inf), np.eye(3, dtype=int)
    ),
    "separation permutations": lambda: comparison.separation_test(
        X[:, 0], Y[:, 0], permutations=50
    ),
    "k-center picks": lambda: engine.kcenter_greedy(X, 5),
    "report tasks here": lambda: forked.run_tasks([lambda: 1, lambda: 2], processes=1),
    "training steps": lambda: _train(),
    "model-choice bootstrap": lambda: noise.bootstrap_draws(
        {("a", 0, BASELINE, "d"): np.ones((3, 4, 3))}, {"d": None}, ["a"], [0], ["d"], None
    ),
}


@pytest.mark.parametrize("call", LONG_LOOPS.values(), ids=LONG_LOOPS.keys())
def test_every_long_loop_stops_at_its_next_iteration(stop, call):
    call()  # no stop asked: runs to its end
    stop.ask()
    with pytest.raises(interrupt.Interrupted):
        call()


def test_engine_row_blocks_stop_after_the_blocks_running_now(stop):
    """A stop asked for during a CPU call: the blocks not started never run (a 200k pass
    would otherwise finish first), with 1 and 2 row-block threads."""
    for workers in (1, 2):
        ran = []

        def block(s, e, buf, ran=ran):
            ran.append(s)
            if s == 5:
                stop.ask()

        with pytest.raises(interrupt.Interrupted):
            planning.run_row_blocks(
                400,
                planning.Plan(tile_rows=1, tile_cols=4, workers=workers),
                tiles.NUMPY_TILES,
                lambda: None,
                block,
            )
        assert 6 <= len(ran) < 20, (workers, len(ran))
        interrupt._REQUESTED.clear()


def _sleep_long() -> int:
    time.sleep(60)
    return 0


def test_forked_report_tasks_are_killed_on_a_stop(stop):
    """The report stage's pool: a stop while the children work kills them at once instead
    of waiting for their figures."""
    threading.Timer(0.5, stop.ask).start()
    start = time.monotonic()
    with pytest.raises(interrupt.Interrupted):
        forked.run_tasks([_sleep_long, _sleep_long], processes=2)
    assert time.monotonic() - start < 15
    assert not multiprocessing.active_children()


def test_the_pdf_child_is_killed_on_a_stop(stop):
    threading.Timer(0.5, stop.ask).start()
    start = time.monotonic()
    with pytest.raises(interrupt.Interrupted):
        with forked.Child(lambda: None, lambda x: _sleep_long(), fork=True) as child:
            child.result(1)
    assert time.monotonic() - start < 15
    assert not multiprocessing.active_children()
