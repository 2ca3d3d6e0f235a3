"""bench/ab_builds.py loads the other build's kernels, never this checkout's a second time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import load_bench_module

from sparcl_kernels.backends import cpu as cpu_backend


@pytest.fixture(scope="module")
def ab_builds():
    return load_bench_module("ab_builds")


def test_the_other_build_is_the_file_it_names(ab_builds, tmp_path):
    # A copy of this checkout's extension stands in for another build: what matters is that
    # the module comes from that file (under the checkout's module name CPython had handed
    # back the module it already held, so every comparison timed one build twice).
    ours = Path(cpu_backend._cpu.__file__)
    other_path = tmp_path / ours.name
    shutil.copyfile(ours, other_path)
    other = ab_builds.load_build(other_path)
    assert other is not cpu_backend._cpu
    assert Path(other.__file__).resolve() == other_path.resolve()
    assert callable(other.fma_peak)
