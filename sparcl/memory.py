"""Resident memory of this process, from /proc/self/status (Linux; None elsewhere)."""

from __future__ import annotations


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    """Resident memory of this process now (MB)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB).

    VmHWM belongs to this process's address space; ``ru_maxrss`` would carry the parent's
    peak over fork + exec on Linux, so children started to measure memory read this instead.
    """
    return _status_mb("VmHWM")


def load_torch_runtime() -> None:
    """Load what a training step loads lazily from torch, so that a baseline measured after
    this counts it as runtime, not as training: torch.optim's first optimizer imports
    torch._dynamo (and triton behind it), about 140 MB here."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
