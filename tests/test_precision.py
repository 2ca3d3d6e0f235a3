"""--precision bf16: every forward under bf16 autocast, fp32 master weights and fp32 logits."""

from __future__ import annotations

import json

import pytest
import torch
from cl_data import write_fmnist
from torch import nn

import sparcl_kernels as sk
from sparcl import precision
from sparcl.cli import main
from sparcl.config import TrainConfig
from sparcl.precision import autocast, logits
from sparcl.speedup import realization


def _model() -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
        nn.Flatten(), nn.Linear(16 * 36, 10),
    )  # fmt: skip
    return dense


def test_fp32_is_plain_and_unknown_precisions_are_refused():
    net = _model()
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(logits(net, x, "fp32"), net(x))
    with pytest.raises(ValueError, match="unknown precision"), autocast("fp16", x.device):
        pass
    with pytest.raises(ValueError, match="--precision"):
        TrainConfig(precision="half").validate()


def test_a_dense_and_sparse_model_under_bf16_matches_its_dense_twin_and_keeps_fp32_masters():
    dense = _model()
    sparse = sk.sparsify(dense, 0.5, 8, inplace=False, include=["2"])
    twin = sparse[2].to_dense()
    dense[2] = twin  # the dense twin holds exactly the sparse layer's weights
    x = torch.randn(4, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense(x).dtype == torch.bfloat16  # torch's own layers compute in bf16
    ours, theirs = logits(sparse, x, "bf16"), logits(dense, x, "bf16")
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=3e-2, atol=3e-2 * theirs.abs().max().item())
    ours.square().sum().backward()
    values = sparse[2].values
    assert values.dtype == torch.float32 and values.grad.dtype == torch.float32
    assert values.grad.abs().sum() > 0


def test_the_speed_check_steps_both_networks_in_the_runs_precision():
    dense = _model()
    sparse = sk.sparsify(dense, 0.5, 8, inplace=False, include=["2"])
    result = realization(sparse, dense, (8, 6, 6), batch_size=4, repeats=1, precision="bf16")
    assert result["precision"] == "bf16" and result["step_seconds"] > 0


def test_a_bf16_run_trains_evaluates_and_records_its_precision(tmp_path):
    data = write_fmnist(tmp_path / "fmnist")
    args = ["train", "--dataset", "seq-fmnist", "--data_dir", str(data), "--output_dir",
            str(tmp_path / "runs"), "--quiet", "--model", "sparcl-derpp", "--nf", "8",
            "--sparsity", "0.75", "--block_size", "8", "--n_epochs", "1", "--debug_mode", "1",
            "--buffer_size", "16", "--batch_size", "4", "--minibatch_size", "4",
            "--precision", "bf16"]  # fmt: skip
    assert main(args) == 0
    (run,) = (tmp_path / "runs").iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["precision"] == "bf16" and results["config"]["precision"] == "bf16"
    assert results["realization"]["precision"] == "bf16"
    assert len(results["class_il"]) == 5
    assert 0 <= results["average_class_il"] <= 100


def test_bf16_on_a_cpu_without_the_instruction_warns_that_it_is_slow(recwarn):
    has_instruction = sk.backend_info()["backends"]["cpu"]["bf16_dot_instruction"] is not None
    precision.warn_if_slow("fp32", torch.device("cpu"))
    assert not recwarn.list
    precision.warn_if_slow("bf16", torch.device("cpu"))
    messages = [str(w.message) for w in recwarn.list]
    assert bool(messages) != has_instruction
    assert all("bf16 dot-product instruction" in m for m in messages)
