"""Distributed backends: large calls go to a backend (worker.distributed.RayDistanceBackend)
inside `distance_backend(...)`; it splits the rows into blocks and runs each with the block_*
calls of worker.engine.pair, every block centred by the whole call's mean."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: a distributed backend for large calls, or None
_BACKEND: ContextVar = ContextVar("distance_backend", default=None)


@contextmanager
def distance_backend(backend: Any) -> Iterator[None]:
    """Route large row_distance_sums / nearest_distances / pair_pass / self_pass calls to
    `backend` in this block.

    `backend` has takes(m, n) -> bool and row_distance_sums, nearest_distances and pair_pass
    with the engine's signatures (pair_pass also takes exclude_self, for the self pass);
    worker.distributed.RayDistanceBackend runs them in row blocks with block_row_distance_sums,
    block_nearest_distances and block_pair_pass. The numbers stay those of the local engine:
    every block is centred by the whole call's mean.
    """
    token = _BACKEND.set(backend)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def delegate(m: int, n: int) -> Any:
    """The active backend if it takes an (m x n) call, else None."""
    backend = _BACKEND.get()
    return backend if backend is not None and backend.takes(m, n) else None
