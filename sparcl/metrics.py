"""Continual-learning metrics: pure functions of a T x T accuracy matrix.

``acc[i][j]`` is the accuracy (in %) on task j after training on task i; entries with
j > i are not defined and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def average_accuracy(acc: Matrix, after_task: int | None = None) -> float:
    """Mean accuracy over the tasks seen after training task ``after_task`` (default: last)."""
    i = len(acc) - 1 if after_task is None else after_task
    return sum(acc[i][: i + 1]) / (i + 1)


def forgetting(acc: Matrix) -> float:
    """Mean over the earlier tasks of (best accuracy before the end) - (final accuracy).

    Chaudhry et al. (2018)'s forgetting, which mammoth also reports: the best is taken over
    the evaluations after each task up to the one before the last.
    """
    last = len(acc) - 1
    if last == 0:
        return 0.0
    drops = [max(acc[i][j] for i in range(j, last)) - acc[last][j] for j in range(last)]
    return sum(drops) / last


def backward_transfer(acc: Matrix) -> float:
    """Mean over the earlier tasks of (final accuracy) - (accuracy right after learning it)."""
    last = len(acc) - 1
    if last == 0:
        return 0.0
    return sum(acc[last][j] - acc[j][j] for j in range(last)) / last
