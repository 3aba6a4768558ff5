"""One rule for every device setting (model.device, compute.device, adaptation.device).

`resolve_device(name, field)`: 'auto' (or None) -> CUDA when torch sees a GPU, else CPU;
'cpu'; 'cuda' / 'cuda:N' only when that device exists. Anything else raises JobError naming
`field`, so every stage refuses an impossible device the same way.
"""

from __future__ import annotations

import torch

from worker.errors import JobError


def resolve_device(name: str | torch.device | None = "auto", field: str = "device") -> torch.device:
    """The torch.device a job's `field` setting names (see the module docstring)."""
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
