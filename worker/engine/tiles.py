"""Tile operations: numpy arrays on the CPU, torch tensors on CUDA (one small table each).

The kernels (worker.engine.pair, worker.engine.kcenter) are written once against these
operations; `tile_ops(device)` picks the table. CPU_TILES = "torch" runs the CUDA route's
torch code on the CPU (the tests do, so the CUDA kernels are covered without a GPU).
A CPU job never imports torch: `torch` here is imported by the first call that runs on CUDA.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from worker.devices import is_cpu
from worker.engine.planning import cpu_count


class _Torch:
    """torch, imported on first use (the module global is then the real module)."""

    def __getattr__(self, name: str) -> Any:
        import torch as module

        globals()["torch"] = module
        return getattr(module, name)


torch = _Torch()

#: the CPU's tile route: "numpy" (the default; no torch import) or "torch" (the CUDA route's
#: torch code on the CPU: the tests run it so the CUDA kernels are covered without a GPU)
CPU_TILES = "numpy"

_POOL_LOCK = threading.RLock()
_OUTER_THREADS: list[int] = []  # thread counts saved by nested single_threaded blocks


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available) -> torch.device, by the one
    device rule of worker.devices (errors name compute.device)."""
    from worker.devices import resolve_device as resolve

    return resolve(device, "compute.device")


@contextmanager
def no_tf32(device: torch.device) -> Iterator[None]:
    """Disable TF32 for matmuls on CUDA for the duration of the block, then restore it."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@contextmanager
def _torch_single_threaded(device: torch.device) -> Iterator[None]:
    """On CPU run torch with one intra-op thread for the block, then restore the count.

    Small ops with several OpenMP threads cost milliseconds of wake-ups when the cores are
    shared with other processes; one thread per tile (or per memory-bound pass) does not.
    """
    if device.type != "cpu":
        yield
        return
    with _POOL_LOCK:
        old = torch.get_num_threads()
        _OUTER_THREADS.append(old)
        try:
            torch.set_num_threads(1)
            yield
        finally:
            _OUTER_THREADS.pop()
            torch.set_num_threads(old)


def _available_threads() -> int:
    """torch's thread count as the caller set it (not the 1 used inside engine calls)."""
    return max(1, _OUTER_THREADS[0] if _OUTER_THREADS else torch.get_num_threads())


@functools.lru_cache(maxsize=64)
def _constant(n: int, kind: str, dtype: str) -> np.ndarray:
    """A read-only np.ones(n) or np.arange(n) in `dtype`, made once per size (the tiles'
    row-sum vector and gather rows)."""
    out = np.ones(n, dtype=dtype) if kind == "ones" else np.arange(n, dtype=dtype)
    out.flags.writeable = False
    return out


class NumpyTiles:
    """Tile operations on numpy arrays: the CPU route. No torch import, and on these small
    tiles as fast as torch's CPU ops or faster (benchmarks/RESULTS.md, session 5). Row blocks
    run in a thread pool with BLAS single-threaded (numpy releases the GIL in GEMMs and
    ufuncs)."""

    cuda = False
    #: addmm goes through a scratch tile (numpy's matmul has no accumulate)
    addmm_scratch = True

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(name)

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return x

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def full(self, n: int, value: float, dtype) -> np.ndarray:
        return np.full(n, value, dtype=dtype)

    def empty(self, n: int, dtype) -> np.ndarray:
        return np.empty(n, dtype=dtype)

    def tile(self, buf: np.ndarray, r: int, c: int) -> np.ndarray:
        return buf[: r * c].reshape(r, c)

    def mm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out = a @ b.T (b holds the column side row-wise)."""
        np.matmul(a, b.T, out=out)

    def addmm(self, t: np.ndarray, a: np.ndarray, b: np.ndarray, scratch: np.ndarray) -> None:
        """t += a @ b.T, through `scratch` (same shape as t)."""
        np.matmul(a, b.T, out=scratch)
        t += scratch

    def row_min(self, t: np.ndarray) -> np.ndarray:
        return self.row_min_index(t)[0]

    def row_min_index(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's minimum and its first column: argmin, then a gather (on a 1024 x 256
        tile 2x faster than numpy's min along the rows)."""
        idx = t.argmin(axis=1)
        return t[_constant(len(idx), "arange", "int64"), idx], idx

    def sqrt_(self, t: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.sqrt(t, out=t if out is None else out)

    def row_sum(self, t: np.ndarray, out: np.ndarray) -> None:
        """out = t @ 1: BLAS's GEMV, 2-3x numpy's row sum on a tile; vector accumulators over
        at most CPU_TILE_COLS terms, the tiles' sums then accumulate in float64."""
        np.matmul(t, _constant(t.shape[1], "ones", t.dtype.name), out=out)

    def nonzero(self, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        return np.nonzero(mask)

    def argmin_rows(self, t: np.ndarray) -> np.ndarray:
        return t.argmin(axis=1)

    def sq_sum_rows(self, d: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", d, d)

    def fill_diagonal(self, t: np.ndarray, offset: int, value: float) -> None:
        i = np.arange(max(0, -offset), min(t.shape[0], t.shape[1] - offset))
        t[i, i + offset] = value

    def zero_through_diagonal(self, t: np.ndarray, offset: int) -> None:
        """t[i, j] = 0 where j <= i + offset (np.tri's part)."""
        t[np.tri(*t.shape, k=offset, dtype=bool)] = 0.0

    def point_distances(self, x: np.ndarray, point: np.ndarray) -> np.ndarray:
        """||x_i - point|| by direct differences in x's precision, as float64."""
        diff = x - point
        return np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float64)

    def argmax(self, x: np.ndarray) -> int:
        return int(np.argmax(x))

    def minimum_(self, x: np.ndarray, y: np.ndarray) -> None:
        np.minimum(x, y, out=x)

    @contextmanager
    def single_threaded(self) -> Iterator[None]:
        """BLAS on one thread for the call: the row-block pool gives the parallelism."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            yield

    def thread_setup(self) -> None:
        pass

    def workers(self) -> int:
        return cpu_count()

    @contextmanager
    def exact_matmul(self) -> Iterator[None]:
        yield


class TorchTiles:
    """The same operations on torch tensors: the CUDA route (and the CPU, when CPU_TILES is
    "torch", which runs the CUDA code path without a GPU)."""

    addmm_scratch = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def dtype(self, name: str) -> torch.dtype:
        return getattr(torch, name)

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    def full(self, n: int, value: float, dtype) -> torch.Tensor:
        return torch.full((n,), value, dtype=dtype, device=self.device)

    def empty(self, n: int, dtype) -> torch.Tensor:
        return torch.empty(n, dtype=dtype, device=self.device)

    def tile(self, buf: torch.Tensor, r: int, c: int) -> torch.Tensor:
        return buf[: r * c].view(r, c)

    def mm(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(a, b.t(), out=out)

    def addmm(self, t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scratch) -> None:
        t.addmm_(a, b.t())

    def row_min(self, t: torch.Tensor) -> torch.Tensor:
        return t.amin(dim=1)

    def row_min_index(self, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Row minima only: take_better finds the columns of the rows that improve."""
        return self.row_min(t), None

    def sqrt_(self, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return t.sqrt_() if out is None else torch.sqrt(t, out=out)

    def row_sum(self, t: torch.Tensor, out: torch.Tensor) -> None:
        torch.sum(t, dim=1, out=out)

    def nonzero(self, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.nonzero(mask, as_tuple=True)

    def argmin_rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.argmin(dim=1)

    def sq_sum_rows(self, d: torch.Tensor) -> torch.Tensor:
        return d.pow(2).sum(dim=1)

    def fill_diagonal(self, t: torch.Tensor, offset: int, value: float) -> None:
        t.diagonal(offset=offset).fill_(value)

    def zero_through_diagonal(self, t: torch.Tensor, offset: int) -> None:
        """t[i, j] = 0 where j <= i + offset."""
        t.triu_(offset + 1)

    def point_distances(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, point[None, :], compute_mode="donot_use_mm_for_euclid_dist")
        return d.squeeze(1).double()

    def argmax(self, x: torch.Tensor) -> int:
        return int(torch.argmax(x))

    def minimum_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        torch.minimum(x, y, out=x)

    def single_threaded(self):
        return _torch_single_threaded(self.device)

    def thread_setup(self) -> None:
        torch.set_num_threads(1)

    def workers(self) -> int:
        return _available_threads()

    def exact_matmul(self):
        return no_tf32(self.device)


NUMPY_TILES = NumpyTiles()


def tile_ops(device: str | torch.device) -> NumpyTiles | TorchTiles:
    """The tile operations for `device` (compute.device): numpy on the CPU (unless CPU_TILES
    says torch), torch on CUDA."""
    if CPU_TILES == "numpy" and is_cpu(device, "compute.device"):
        return NUMPY_TILES
    return TorchTiles(resolve_device(device))


def cpu_single_threaded(fn: Callable) -> Callable:
    """Run the whole call with single-threaded ops in the calling thread (torch intra-op
    threads, or BLAS threads for numpy); the parallelism comes from the row-block pool."""

    @functools.wraps(fn)
    def wrapper(*args, device: str = "cpu", **kwargs):
        with tile_ops(device).single_threaded():
            return fn(*args, device=device, **kwargs)

    return wrapper
