"""bench/timing.py's peak sampling: the tables' fractions divide by the best reading."""

from __future__ import annotations

import pytest
from conftest import load_bench_module


@pytest.fixture(scope="module")
def timing():
    return load_bench_module("timing")


def test_sampled_peak_is_the_best_of_its_readings(timing):
    # A dip (another tenant's work halving the rate) in the first readings must not lower
    # the peak the table divides by.
    readings = iter([232.0, 240.0, 465.0, 460.0])
    calls = []

    def probe():
        calls.append(1)
        return next(readings)

    assert timing.sampled_peak(probe, samples=4, gap=0.0) == 465.0
    assert len(calls) == 4


def test_isa_peaks_leaves_the_instruction_set_in_use(timing, monkeypatch):
    # A table forced onto an instruction set (SPARCL_CPU_ISA) must still run on it after its
    # peaks are probed; resetting to the CPU's best had run it on another than it names.
    from sparcl_kernels.backends import cpu

    supported = cpu.describe()["supported_isas"]
    if len(supported) < 2:
        pytest.skip("one instruction set only")
    start = cpu.describe()["isa"]
    monkeypatch.setattr(cpu, "fma_peak", lambda threads=None, seconds=0.3: 1.0)
    monkeypatch.setattr(timing, "sampled_peak", lambda probe, samples=5, gap=0.4: probe())
    forced, other = supported[0], supported[-1]
    try:
        cpu.select_isa(forced)
        assert timing.isa_peaks([other], 1) == {other: 1.0}
        assert cpu.describe()["isa"] == forced
    finally:
        cpu.select_isa(start)
