"""The accuracy study's per-run summary: resuming over some seeds keeps the others' rows."""

from __future__ import annotations

import pytest
from conftest import load_bench_module


@pytest.fixture(scope="module")
def study():
    return load_bench_module("bench_accuracy")


def row(variant: str, seed: int, class_il: float) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "average_class_il": class_il,
        "average_task_il": 90.0,
        "forgetting_class_il": 5.0,
        "flop_reduction": 10.0,
        "gradient_density": None,
        "training_seconds": 1.5,
        "data_fingerprint": "ab,cd",
    }


def test_a_run_over_new_seeds_keeps_the_summary_of_earlier_ones(study, tmp_path):
    target = str(tmp_path / "study.csv")
    study.write_csv([row("dense", 0, 70.0), row("8x8", 0, 60.0)], target)
    earlier = study.read_rows(target)
    assert earlier == [row("dense", 0, 70.0), row("8x8", 0, 60.0)]
    merged = study.merge_rows(earlier, [row("dense", 1, 71.0), row("8x8", 0, 61.0)])
    study.write_csv(merged, target)
    assert study.read_rows(target) == [
        row("dense", 0, 70.0),
        row("8x8", 0, 61.0),
        row("dense", 1, 71.0),
    ]


def test_the_precision_study_pairs_bf16_with_fp32_and_changes_nothing_else(study):
    fp32, bf16 = study.precision_variants("32").values()
    assert bf16 == {**fp32, "precision": "bf16"}
    assert fp32["block_size"] == "32" and "precision" not in fp32
    names = [study.FP32, study.BF16]
    assert study.comparisons(names, "precision") == [(study.BF16, study.FP32)]
    assert study.comparisons(names[:1], "precision") == []
