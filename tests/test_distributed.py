"""Data-parallel training on one machine: 2 gloo ranks against one process.

The sharding helpers and the replicated buffer run in two spawned processes; the whole CLI
runs under torchrun (debug mode), including a kill-and-resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cl_data import write_fmnist

from sparcl.data import PROTOCOLS
from sparcl.distributed import Cluster
from sparcl.methods.derpp import Derpp, DerppOptions
from sparcl.models import MLP

WORLD = 2


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    return write_fmnist(tmp_path_factory.mktemp("fmnist"))


# ---------------------------------------------------------------- helpers in two processes


def _derpp_steps(cluster: Cluster) -> Derpp:
    """Three DER++ steps of a small MLP on fixed batches (identical inputs on every rank)."""
    torch.manual_seed(0)
    method = Derpp(
        MLP(784, 10, hidden=32),
        PROTOCOLS["seq-fmnist"],
        lambda r: r.float() / 255,
        DerppOptions(lr=0.1, buffer_size=12, minibatch_size=6, alpha=0.3, beta=0.5),
        cluster=cluster,
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        raw = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (10,), generator=generator)
        method.observe(raw.float() / 255, labels, raw, 0)
    return method


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    cluster = Cluster(rank, WORLD, "gloo")
    # Shards of 5 rows over 2 ranks: 3 + 2, gathered back in order.
    rows = torch.arange(10).view(5, 2)
    shard = cluster.local(rows)
    assert shard.shape[0] == (3 if rank == 0 else 2)
    assert torch.equal(cluster.gather(shard), rows)
    assert cluster.shard_weight(5) == pytest.approx(len(shard) * 2 / 5)
    method = _derpp_steps(cluster)
    torch.save(
        {
            "net": method.net.state_dict(),
            "buffer_inputs": method.buffer.inputs,
            "buffer_logits": method.buffer.logits,
            "bytes": cluster.allreduce_bytes,
        },
        Path(out) / f"rank{rank}.pt",
    )
    # Disagreeing masks must be caught.
    from sparcl_kernels.nn import SparseLinear

    layer = SparseLinear(32, 32, block_size=16, sparsity=0.5)
    mask = torch.zeros(2, 2, dtype=torch.bool)
    mask[rank, 0] = True
    layer.set_block_mask(mask, optimizer=None)
    with pytest.raises(RuntimeError, match="disagree on the masks"):
        cluster.check_consistent(torch.nn.Sequential(layer))
    # No rank tears gloo down while the other may still be finishing the last collective.
    dist.barrier()
    dist.destroy_process_group()
    # Then leave without the interpreter's teardown: in two of five full-suite runs (never
    # alone) a rank aborted with "terminate called without an active exception" and no Python
    # error, most likely a C++ destructor at exit (not reproduced in isolation). Failures
    # before this line still fail the test; the torchrun test below exits the normal way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_ranks_replicate_the_buffer_and_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = _derpp_steps(Cluster())
    for name in ("buffer_inputs", "buffer_logits"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # replicated, bit for bit
    torch.testing.assert_close(ranks[0]["buffer_logits"], single.buffer.logits)
    assert torch.equal(ranks[0]["buffer_inputs"], single.buffer.inputs)
    for name, tensor in single.net.state_dict().items():
        assert torch.equal(ranks[0]["net"][name], ranks[1]["net"][name]), name
        torch.testing.assert_close(ranks[0]["net"][name], tensor, rtol=1e-5, atol=1e-6)
    parameters = sum(p.numel() for p in single.net.parameters())
    assert ranks[0]["bytes"] == [4 * parameters] * 3  # one flat fp32 all-reduce per step


# ---------------------------------------------------------------- the CLI under torchrun

RUN_ARGS = [
    "--model", "sparcl-derpp", "--backbone", "mlp", "--sparsity", "0.75", "--block_size", "16",
    "--n_epochs", "6", "--debug_mode", "1", "--batch_size", "8", "--minibatch_size", "8",
    "--buffer_size", "20", "--tdm_p_inter", "0.05", "--tdm_p_intra", "0.05",
    "--dgm_interval", "2", "--dgm_keep", "0.5", "--seed", "3", "--quiet", "--deterministic",
]  # fmt: skip


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def _torchrun(*arguments: str) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*launcher, f"--nproc-per-node={WORLD}", "-m", "sparcl", "train", *arguments])


def _results(output_dir: Path) -> tuple[Path, dict]:
    (run,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run, json.loads((run / "results.json").read_text())


def test_torchrun_matches_one_process_and_resumes(tmp_path, fmnist_dir):
    data = ["--data_dir", str(fmnist_dir)]
    _torchrun(*RUN_ARGS, *data, "--output_dir", str(tmp_path / "two"))
    single = [sys.executable, "-m", "sparcl", "train", *RUN_ARGS, *data]
    _run([*single, "--output_dir", str(tmp_path / "one")])
    run, two = _results(tmp_path / "two")
    _, one = _results(tmp_path / "one")
    assert two["distributed"]["world_size"] == WORLD and one["distributed"] is None
    assert two["distributed"]["allreduce_bytes_per_step"] > 0
    assert two["layer_sparsity"] == one["layer_sparsity"]
    assert two["gradient_density"] == one["gradient_density"]
    for ours, theirs in zip(two["class_il"], one["class_il"], strict=True):
        assert ours == pytest.approx(theirs, abs=1e-6)
    final = torch.load(run / "checkpoints" / "task_5.pt", weights_only=True)["net"]
    reference = torch.load(
        next((tmp_path / "one").iterdir()) / "checkpoints" / "task_5.pt", weights_only=True
    )["net"]
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    # Kill after task 2 (later checkpoints never written), resume under torchrun.
    for task in range(3, 6):
        (run / "checkpoints" / f"task_{task}.pt").unlink()
    (run / "checkpoints" / "latest.txt").write_text("task_2.pt\n")
    (run / "results.json").unlink()
    _torchrun("--resume", str(run))
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["class_il"] == two["class_il"]
    resumed_net = torch.load(run / "checkpoints" / "task_5.pt", weights_only=True)["net"]
    for name, tensor in final.items():
        assert torch.equal(resumed_net[name], tensor), name


RESNET_ARGS = [
    "--model", "derpp", "--backbone", "resnet18", "--nf", "4", "--dense",
    "--n_epochs", "2", "--debug_mode", "1", "--batch_size", "16", "--minibatch_size", "16",
    "--buffer_size", "40", "--seed", "0", "--quiet", "--deterministic", "--speedup_repeats", "0",
]  # fmt: skip


def test_torchrun_resnet_with_batchnorm_matches_one_process(tmp_path, fmnist_dir):
    """Issue 26 item 4: each rank normalised its own shard (conv weights 0.08 and running
    variances 0.57 apart from one process); BatchNorm now sees the global batch. Compared
    after task 1: this small ResNet amplifies a rounding difference of 1e-7 in its weights
    to 1e-4 within one step (one process with perturbed weights does the same), so later
    tasks agree only as far as rounding lets them; the per-step test below is exact."""
    data = ["--data_dir", str(fmnist_dir)]
    _torchrun(*RESNET_ARGS, *data, "--output_dir", str(tmp_path / "two"))
    _run([sys.executable, "-m", "sparcl", "train", *RESNET_ARGS, *data, "--output_dir",
          str(tmp_path / "one")])  # fmt: skip
    run, two = _results(tmp_path / "two")
    single_run, _ = _results(tmp_path / "one")
    assert two["distributed"]["world_size"] == WORLD
    final = torch.load(run / "checkpoints" / "task_1.pt", weights_only=True)["net"]
    reference = torch.load(single_run / "checkpoints" / "task_1.pt", weights_only=True)["net"]
    assert any("running_var" in name for name in reference)
    for name, tensor in reference.items():
        # 1e-3: rounding grows to ~6e-5 over task 1's steps here; per-rank statistics gave
        # 0.02 after one step.
        torch.testing.assert_close(final[name], tensor, rtol=1e-3, atol=1e-3, msg=name)


def _resnet_derpp_step(cluster: Cluster) -> dict:
    """One DER++ step (current batch and both replay batches) of a ResNet with BatchNorm."""
    from sparcl.models import resnet18

    torch.manual_seed(0)
    net = resnet18(10, 4, 1)
    if cluster.enabled:
        cluster.sync_batch_norm(net)
    method = Derpp(
        net,
        PROTOCOLS["seq-fmnist"],
        lambda r: r.float() / 255,
        DerppOptions(lr=0.03, buffer_size=12, minibatch_size=8, alpha=0.3, beta=0.5),
        cluster=cluster,
    )
    generator = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    method.buffer.add(raw[8:], labels[8:], torch.randn(8, 10, generator=generator), 0)
    method.observe(raw[:8].float() / 255, labels[:8], raw[:8], 0)
    return method.net.state_dict()


def _resnet_step_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.save(_resnet_derpp_step(Cluster(rank, WORLD, "gloo")), Path(out) / f"step{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_a_resnet_step_with_replay_on_two_ranks_equals_one_process(tmp_path):
    mp.spawn(_resnet_step_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD)
    single = _resnet_derpp_step(Cluster())
    ranks = [torch.load(tmp_path / f"step{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, tensor in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def _exact_check_worker(rank: int, store: str) -> None:
    """Masks that a weighted checksum cannot tell apart ([[1,0],[0,1]] vs [[0,1],[1,0]];
    gradient masks 1001 vs 0110) must be caught, as must a stale layout after broadcast."""
    from sparcl_kernels.nn import SparseLinear

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    cluster = Cluster(rank, WORLD, "gloo")
    layer = SparseLinear(32, 32, block_size=16, sparsity=0.5)
    diagonal = torch.eye(2, dtype=torch.bool)
    layer.set_block_mask(diagonal if rank == 0 else ~diagonal, optimizer=None)
    with pytest.raises(RuntimeError, match="disagree on the masks"):
        cluster.check_consistent(torch.nn.Sequential(layer))
    layer.set_block_mask(torch.ones(2, 2, dtype=torch.bool), optimizer=None)
    grad = torch.tensor([True, False, False, True])
    layer.set_grad_block_mask(grad if rank == 0 else ~grad)
    with pytest.raises(RuntimeError, match="disagree on the masks"):
        cluster.check_consistent(torch.nn.Sequential(layer), "after a DGM refresh")
    # broadcast_module carries rank 0's layout into the derived index buffers too.
    torch.manual_seed(rank)
    moving = SparseLinear(32, 32, block_size=8, sparsity=0.5)
    cluster.broadcast_module(moving)
    cluster.check_consistent(torch.nn.Sequential(moving))
    assert torch.equal(moving.layout.block_mask(), moving.block_mask)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_mask_consistency_is_exact_and_broadcast_carries_layouts(tmp_path):
    mp.spawn(_exact_check_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)
