"""Backend registry: which kernels run for a given device, block size and request.

Each backend is one module providing :class:`~sparcl_kernels.backends.protocol.KernelBackend`
(checked when it loads: a module that breaks the protocol is a ``TypeError``, not a silently
missing kernel). A module whose native code cannot load raises ``ImportError`` on import; the
registry turns that into a visible, warn-once fallback for automatic selection and into an
error for explicit requests. Block sizes a backend's kernels do not take run on the reference
kernels, with a one-time warning, decided here for every backend.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType
from typing import Any

import torch

from sparcl_kernels.backends.protocol import check_backend

BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "SPARCL_BACKEND"

# Preferred backend per device type when the caller does not choose.
_AUTO_ORDER = {"cpu": "cpu", "cuda": "triton"}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for explicitly but cannot run here."""


@functools.cache
def _load(name: str) -> ModuleType | str:
    """The backend module, or the reason it cannot load (cached: each backend loads once)."""
    try:
        module = importlib.import_module(f"sparcl_kernels.backends.{name}")
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    check_backend(module)
    return module


def get_backend(name: str) -> ModuleType:
    """The module of backend ``name``; raises :class:`BackendUnavailableError` if it cannot load."""
    module = _load(_check_name(name, "backend"))
    if isinstance(module, str):
        raise BackendUnavailableError(f"backend {name!r} is not available: {module}")
    return module


def _check_name(name: str, argument: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"{argument} must be one of {BACKEND_NAMES} or None, got {name!r}")
    return name


@functools.cache
def _warn_fallback(device_type: str, wanted: str, reason: str) -> None:
    warnings.warn(
        f"sparcl_kernels: the {wanted!r} backend for {device_type} tensors is unavailable "
        f"({reason}); falling back to the slow 'reference' backend. "
        "sparcl_kernels.backend_info() shows what loaded.",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_backend(requested: str | None, device: torch.device) -> str:
    """The backend that will run for tensors on ``device``.

    Order: the ``backend=`` argument, then ``$SPARCL_BACKEND``, then the device's default.
    An explicit choice that cannot run raises; the automatic choice falls back to
    ``reference`` with a one-time warning.
    """
    forced = os.environ.get(ENV_VAR) or None
    if requested is None and forced is not None:
        requested = _check_name(forced, f"${ENV_VAR}")
    if requested is not None:
        module = get_backend(_check_name(requested, "backend"))
        if not module.supports_device(device):
            raise ValueError(f"backend {requested!r} cannot run on {device.type} tensors")
        return requested
    wanted = _AUTO_ORDER.get(device.type, "reference")
    module = _load(wanted)
    if isinstance(module, str):
        _warn_fallback(device.type, wanted, module)
        return "reference"
    if not module.supports_device(device):
        _warn_fallback(device.type, wanted, "it does not support this device")
        return "reference"
    return wanted


@functools.cache
def _warn_block_fallback(name: str, block_size: tuple[int, int]) -> None:
    warnings.warn(
        f"sparcl_kernels: the {name!r} kernels do not take block size {block_size}; it runs on "
        "the slow 'reference' kernels instead.",
        RuntimeWarning,
        stacklevel=5,
    )


def backend_for_block_size(name: str, block_size: tuple[int, int]) -> str:
    """``name``, or ``"reference"`` (warned once) when its kernels do not take ``block_size``."""
    if get_backend(name).supports_block_size(tuple(block_size)):
        return name
    _warn_block_fallback(name, tuple(block_size))
    return "reference"


def backend_info() -> dict[str, Any]:
    """What each backend can do here, and which one each device type gets by default.

    The result is plain data (JSON-serialisable) so that it can go into experiment records.
    """
    backends: dict[str, Any] = {}
    for name in BACKEND_NAMES:
        module = _load(name)
        if isinstance(module, str):
            backends[name] = {"available": False, "reason": module}
        else:
            backends[name] = {"available": True, **module.describe()}
    defaults = {}
    for device_type, wanted in _AUTO_ORDER.items():
        ok = backends[wanted]["available"]
        defaults[device_type] = wanted if ok else "reference"
    return {
        "forced": os.environ.get(ENV_VAR) or None,
        "default": defaults,
        "backends": backends,
    }
