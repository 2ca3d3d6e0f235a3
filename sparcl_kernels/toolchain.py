"""How the native code is built: the C++ standard, the CUDA toolkit and the CUDA targets.

Torch-free on purpose: ``setup.py`` loads this file before torch's ``cpp_extension`` is
imported (that module fixes its ``CUDA_HOME`` at import time), and the tests that compile the
sources by hand use the same answers, so each decision lives here once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

# torch 2.14's headers refuse anything older (`#error C++20 or later ...`); 2.13's build with it,
# and so do the nvcc releases of the CUDA versions those torch builds use (12.x, 13.x).
CXX_STANDARD = "c++20"

BUILD_CUDA_VAR = "SPARCL_BUILD_CUDA"
_BUILD_CUDA_VALUES = {"1": "on", "on": "on", "0": "off", "off": "off", "auto": "auto", "": "auto"}

# The kernels need sm_75 (plan.h). One entry per architecture family users run, PTX for the
# newest so that later GPUs JIT-compile it; CUDA 12.8 added Blackwell (10.0, 12.0).
_ARCHS = ("7.5", "8.0", "8.6", "8.9", "9.0")
_BLACKWELL_ARCHS = ("10.0", "12.0")


def build_cuda_mode(environ: Mapping[str, str] = os.environ) -> str:
    """``"on"``, ``"off"`` or ``"auto"`` from ``$SPARCL_BUILD_CUDA`` (unset: ``"auto"``)."""
    raw = environ.get(BUILD_CUDA_VAR, "")
    mode = _BUILD_CUDA_VALUES.get(raw.strip().lower())
    if mode is None:
        raise ValueError(f"${BUILD_CUDA_VAR} must be 1, 0 or auto, got {raw!r}")
    return mode


def _is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").is_file() and (path / "include" / "cuda_runtime.h").is_file()


def _toolkit_named_by_nvcc(nvcc: str) -> Path | None:
    """The toolkit an ``nvcc`` on PATH belongs to, asked of nvcc itself.

    Distribution and cluster ``nvcc`` commands are often wrapper scripts or module shims outside
    the toolkit, so the guess "one folder above nvcc" (torch's) lands in the wrong place; nvcc's
    dry run prints the folder its real binary runs from.
    """
    resolved = Path(os.path.realpath(nvcc)).parent.parent
    if _is_toolkit(resolved):
        return resolved
    try:
        dry_run = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^#\$ _HERE_=(.+)$", dry_run.stdout + dry_run.stderr, re.MULTILINE)
    if found is None:
        return None
    home = Path(found.group(1).strip()).parent
    return home if _is_toolkit(home) else None


def find_cuda_home(
    environ: Mapping[str, str] = os.environ, which: Callable[[str], str | None] = shutil.which
) -> Path | None:
    """The CUDA toolkit's folder: ``$CUDA_HOME`` or ``$CUDA_PATH`` if set, else the toolkit of
    the ``nvcc`` on PATH, else ``/usr/local/cuda``; ``None`` when there is none."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(variable):
            return Path(environ[variable])
    nvcc = which("nvcc")
    if nvcc is not None:
        home = _toolkit_named_by_nvcc(nvcc)
        if home is not None:
            return home
    default = Path("/usr/local/cuda")
    return default if _is_toolkit(default) else None


def default_cuda_arch_list(cuda_version: str) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for a portable build with CUDA ``cuda_version`` ("13.0")."""
    major, minor = (int(part) for part in cuda_version.split(".")[:2])
    archs = list(_ARCHS)
    if (major, minor) >= (12, 8):
        archs += _BLACKWELL_ARCHS
    return ";".join(archs) + "+PTX"
