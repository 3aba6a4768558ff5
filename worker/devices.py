"""One rule for every device setting (model.device, compute.device, adaptation.device).

`resolve_device(name, field)`: 'auto' (or None) -> CUDA when torch sees a GPU, else CPU;
'cpu'; 'cuda' / 'cuda:N' only when that device exists. Anything else raises JobError naming
`field`, so every stage refuses an impossible device the same way.

`device_name(name, field)` gives the same answer as a string ('cpu', 'cuda:0', ...) without
importing torch where it is certain ('cpu', or 'auto' on a machine without a GPU device
node), so a CPU job that needs no model never pays torch's import; `is_cpu` reads it.
`usable_cores()`: the CPU cores a thread or process pool of this process may use.
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

from worker.errors import JobError

if TYPE_CHECKING:
    import torch

#: device nodes without which no CUDA device can be visible (Linux; /dev/dxg under WSL)
GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/dxg")


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (a
    container's cpuset), else os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _gpu_node_present() -> bool:
    return any(glob.glob(pattern) for pattern in GPU_NODES)


def device_name(name: str | torch.device | None = "auto", field: str = "device") -> str:
    """str(resolve_device(name, field)); imports torch only when the setting could name a GPU
    that exists."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "cpu" or (text == "auto" and not _gpu_node_present()):
        return "cpu"
    return str(resolve_device(name, field))


def is_cpu(name: str | torch.device | None = "auto", field: str = "device") -> bool:
    """True when `name` resolves to the CPU (device_name)."""
    return device_name(name, field) == "cpu"


def resolve_device(name: str | torch.device | None = "auto", field: str = "device") -> torch.device:
    """The torch.device a job's `field` setting names (see the module docstring)."""
    import torch

    if isinstance(name, torch.device):
        dev = name
    else:
        text = "auto" if name is None else str(name).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise JobError(
                f"{field}: unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from None
    if dev.type not in ("cpu", "cuda"):
        raise JobError(f"{field}: {name!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise JobError(
                f"{field}: {name!r} asks for a CUDA GPU but none is visible to torch; "
                "use 'auto' or 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise JobError(
                f"{field}: {name!r} does not exist ({torch.cuda.device_count()} CUDA device(s) "
                "visible); use cuda:0 .. cuda:N-1 or 'auto'"
            )
    return dev
