"""Crash on purpose at a named point, for the fault-injection tests.

``SPARCL_FAULT=<point>[:<n>]`` kills the process with SIGKILL the n-th time (default: first)
it reaches ``<point>``, exactly as a power cut or the OOM killer would: no cleanup runs.
Points: ``epoch-end`` (after an epoch, mid-task), ``checkpoint-write`` (a checkpoint written
to its temporary file but not yet renamed into place).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_VAR = "SPARCL_FAULT"
_reached: Counter[str] = Counter()


def crash_point(point: str) -> None:
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _reached[point] += 1
    if _reached[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
