"""The timing helper every benchmark and the CL layer's speed check rely on."""

from __future__ import annotations

from sparcl_kernels.measure import interleaved_medians


def test_interleaved_medians_times_round_robin_with_before_ahead_of_every_timed_call():
    log: list[str] = []
    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    times = interleaved_medians(fns, repeats=3, warmup=1, before=lambda: log.append("evict"))
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert log[:2] == ["a", "b"]  # the warm-up runs without it
    assert log[2:] == ["evict", "a", "evict", "b"] * 3


def test_interleaved_medians_without_before_runs_only_the_callables():
    log: list[str] = []
    interleaved_medians({"a": lambda: log.append("a")}, repeats=2, warmup=0)
    assert log == ["a", "a"]
