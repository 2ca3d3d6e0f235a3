"""Resident memory of this process (Linux; None elsewhere), and what a baseline must include."""

from __future__ import annotations

from sparcl_kernels.measure import current_rss_mb, peak_rss_mb

__all__ = ["current_rss_mb", "load_torch_runtime", "peak_rss_mb"]


def load_torch_runtime() -> None:
    """Load what a training step loads lazily from torch, so that a baseline measured after
    this counts it as runtime, not as training: torch.optim's first optimizer imports
    torch._dynamo (and triton behind it), about 140 MB here."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
