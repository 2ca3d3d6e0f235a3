"""The memory allocator of a training process, chosen before torch loads.

glibc's malloc keeps freed heap memory at its high-water mark (and returns it to the OS in
ways that page-fault large tensors back in), so under it a block-sparse run's peak memory is
no lower than a dense run's although its live tensors are (bench/RESULTS.md, issues 6 and 19).
tcmalloc and jemalloc do not. ``sparcl train`` therefore re-executes itself once with one of
them preloaded, as ``python -m torch.backends.xeon.run_cpu`` does: ``--allocator auto`` (the
default) takes tcmalloc, then jemalloc, then glibc with a note on how to get the saving.

This module imports nothing heavy: it runs before torch is imported.
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

ALLOCATOR_CHOICES = ("auto", "glibc", "tcmalloc", "jemalloc")
# Set in the re-executed process: the allocator it was started with (also stops a second
# re-exec whatever happens to the preload).
ACTIVE_ENV = "SPARCL_ALLOCATOR"


@dataclass(frozen=True)
class Allocator:
    name: str
    library: str  # ctypes.util.find_library name
    debian_package: str


PRELOADABLE = (
    Allocator("tcmalloc", "tcmalloc_minimal", "libtcmalloc-minimal4"),
    Allocator("jemalloc", "jemalloc", "libjemalloc2"),
)


def installed_library(allocator: Allocator) -> str | None:
    """The shared-library name the dynamic linker finds for ``allocator``, or None."""
    return ctypes.util.find_library(allocator.library)


def choose(requested: str) -> tuple[str, str | None]:
    """(allocator name, library to preload or None) for ``--allocator requested``.

    Raises ``ValueError`` naming the Debian package when an explicit allocator is missing.
    """
    if requested not in ALLOCATOR_CHOICES:
        raise ValueError(f"--allocator must be one of {ALLOCATOR_CHOICES}, got {requested!r}")
    if requested == "glibc" or not sys.platform.startswith("linux"):
        return "glibc", None
    for allocator in PRELOADABLE:
        if requested not in ("auto", allocator.name):
            continue
        library = installed_library(allocator)
        if library:
            return allocator.name, library
        if requested == allocator.name:
            raise ValueError(
                f"--allocator {allocator.name}: the library is not installed "
                f"(Debian: apt-get install {allocator.debian_package})"
            )
    return "glibc", None


def _requested(argv: Sequence[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--allocator", default="auto")
    known, _ = parser.parse_known_args(list(argv))
    return known.allocator


def _is_allocator_library(entry: str) -> bool:
    name = os.path.basename(entry)
    return any(
        name.startswith(f"lib{a.library}.") or name == f"lib{a.library}" for a in PRELOADABLE
    )


def preload_value(library: str | None, inherited: str | None) -> str | None:
    """``LD_PRELOAD`` that preloads ``library`` (None: glibc's own malloc) and keeps whatever
    else was inherited, minus every other allocator: an inherited tcmalloc would otherwise
    serve a process labelled glibc. None when nothing is left to preload."""
    kept = [e for e in (inherited or "").replace(":", " ").split() if not _is_allocator_library(e)]
    entries = ([library] if library else []) + kept
    return " ".join(entries) or None


def environment_for(library: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) whose children run with ``library``
    preloaded, or with glibc's malloc when it is None (see :func:`preload_value`)."""
    env = dict(os.environ if environ is None else environ)
    value = preload_value(library, env.get("LD_PRELOAD"))
    if value is None:
        env.pop("LD_PRELOAD", None)
    else:
        env["LD_PRELOAD"] = value
    return env


def mapped_allocators() -> list[str]:
    """The preloadable allocators mapped into this process (read from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return []
    return [a.name for a in PRELOADABLE if f"/lib{a.library}." in text]


def reexec_with_allocator(argv: Sequence[str]) -> None:
    """For ``sparcl train``: re-execute this process once with the chosen allocator preloaded.

    Returns without doing anything for other commands, when already re-executed, or when the
    choice is glibc and no other allocator is inherited through ``LD_PRELOAD`` (then a
    one-line note says how to get the saving). The new process keeps the arguments,
    environment (torchrun's included, minus other allocators' preloads) and process id, so
    exit codes and supervisors see one process.
    """
    if "train" not in argv[:1] or ACTIVE_ENV in os.environ:
        return
    try:
        name, library = choose(_requested(argv))
    except ValueError as error:
        print(f"sparcl train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    env = environment_for(library)
    env[ACTIVE_ENV] = name
    if library is None and env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        os.environ[ACTIVE_ENV] = name
        if _requested(argv) == "auto":
            print(
                "sparcl: memory allocator glibc (tcmalloc and jemalloc not installed: "
                "`apt-get install libtcmalloc-minimal4` gives block-sparse runs their memory "
                "saving)",
                file=sys.stderr,
            )
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "sparcl", *argv], env)


def describe() -> dict:
    """The allocator this process runs with, for results.json and the printed summary:
    ``name`` is the one actually mapped (glibc when neither preloadable one is), ``requested``
    the one chosen, ``loaded`` whether they agree."""
    requested = os.environ.get(ACTIVE_ENV, "glibc")
    mapped = mapped_allocators()
    name = mapped[0] if mapped else "glibc"
    return {"name": name, "requested": requested, "loaded": name == requested, "mapped": mapped}
