"""A hostile but fair user: collisions, mislabelled runs, bad files and flags, crashes."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_data import write_fmnist, write_idx
from torch import nn

import sparcl_kernels as sk
from sparcl.cli import main
from sparcl.data import CorruptDataError, MissingDataError, load_dataset
from sparcl.rundir import RunDir
from sparcl_kernels.nn import SparseConv2d, SparseLinear

TINY = "--model derpp --backbone mlp --n_epochs 2 --debug_mode 1 --batch_size 8 --buffer_size 20"


@pytest.fixture
def fmnist_dir(tmp_path):
    return write_fmnist(tmp_path / "data")


def _run_dir(output: Path) -> Path:
    (run,) = [p for p in output.iterdir() if p.is_dir()]
    return run


# ---------------------------------------------------------------- run directories and labels


def test_run_directories_are_created_exclusively(tmp_path):
    first = RunDir.create_unique(tmp_path, "derpp-seq-fmnist-s0-20261124-120000")
    second = RunDir.create_unique(tmp_path, "derpp-seq-fmnist-s0-20261124-120000")
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name.endswith("-2")


def test_block_size_that_fits_no_layer_is_an_error_before_any_file(tmp_path, fmnist_dir, capsys):
    args = ["train", "--model", "sparcl-derpp", "--sparsity", "0.9", "--block_size", "7"]
    args += ["--data_dir", str(fmnist_dir), "--output_dir", str(tmp_path / "runs"), "--nf", "8"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "--block_size 7 fits none of the layers" in error and "layer1.0.conv1" in error
    assert not list((tmp_path / "runs").glob("*"))


def test_partly_applied_block_size_is_reported_per_layer(tmp_path, fmnist_dir, capsys):
    # nf=12: the convs reading 12 channels (layer1's four, layer2.0.conv1) take no 8x8 blocks.
    args = "--model derpp --nf 12 --sparsity 0.5 --block_size 8 --n_epochs 1 --debug_mode 1"
    args += " --batch_size 4 --buffer_size 8 --speedup_repeats 0 --quiet"
    output = tmp_path / "runs"
    code = main(
        ["train", *args.split(), "--data_dir", str(fmnist_dir), "--output_dir", str(output)]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "leaves 5 of 16 layers dense: layer1.0.conv1" in captured.err
    results = json.loads((_run_dir(output) / "results.json").read_text())
    assert len(results["layer_sparsity"]) == 11
    assert "block-sparse in 11 layers" in captured.out


def test_unusable_output_dir_fails_at_start(tmp_path, fmnist_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["train", *TINY.split(), "--data_dir", str(fmnist_dir)]
    assert main([*args, "--output_dir", str(blocker / "runs")]) == 2
    assert "--output_dir" in capsys.readouterr().err


# ---------------------------------------------------------------- data files


def _corrupt(directory: Path, name: str, payload: bytes, compress: bool = True) -> None:
    path = directory / name
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("train-labels-idx1-ubyte.gz", lambda: _idx(np.zeros(5)), "120 images but"),
        ("t10k-labels-idx1-ubyte.gz", lambda: _idx(np.zeros(100)), "60 images but"),
        ("train-labels-idx1-ubyte.gz", lambda: _idx(np.full(120, 11)), "labels must lie in"),
        ("train-images-idx3-ubyte.gz", lambda: _idx(np.zeros((120, 28, 28)))[:-5], "header"),
        ("train-images-idx3-ubyte.gz", lambda: b"", "too short"),
        ("train-images-idx3-ubyte.gz", lambda: _idx(np.zeros((120, 27, 28))), "expected (28, 28)"),
    ],
    ids=["fewer-labels", "more-test-labels", "label-range", "payload", "empty", "image-shape"],
)
def test_bad_data_files_are_named_at_start(fmnist_dir, name, make, message):
    _corrupt(fmnist_dir, name, make())
    with pytest.raises(CorruptDataError, match=re.escape(message)) as caught:
        load_dataset("seq-fmnist", fmnist_dir)
    assert name in str(caught.value)


def test_truncated_gzip_is_named(fmnist_dir):
    path = fmnist_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte\.gz: cannot be read"):
        load_dataset("seq-fmnist", fmnist_dir)


def test_missing_data_dir_is_an_error_not_the_system_copy(tmp_path):
    with pytest.raises(MissingDataError, match="does not exist"):
        load_dataset("seq-fmnist", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match=str(empty)):
        load_dataset("seq-fmnist", empty)


def test_valid_files_still_load(fmnist_dir):
    write_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz", np.arange(60) % 10)
    assert len(load_dataset("seq-fmnist", fmnist_dir).test_labels) == 60


# ---------------------------------------------------------------- config files and flags


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("n_epochs: five\n", "n_epochs must be of type int, got 'five'"),
        ("quiet: maybe\n", "quiet must be of type bool"),
        ("lr: [1, 2]\n", "lr must be of type float"),
        ("model: 3\n", "unknown --model '3'"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_key_and_file(
    tmp_path, yaml_text, message, capsys
):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    output = tmp_path / "runs"
    assert main(["train", "--config", str(config), "--output_dir", str(output)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert not output.exists() or not list(output.iterdir())  # nothing created on disk


def test_unambiguous_config_values_are_converted(tmp_path, fmnist_dir):
    config = tmp_path / "ok.yaml"
    config.write_text("lr: 3e-2\nquiet: 'true'\nn_epochs: 1.0\ndebug_mode: 1\nbackbone: mlp\n")
    code = main(
        [
            *("train", "--config", str(config), "--model", "sgd"),
            *("--data_dir", str(fmnist_dir), "--output_dir", str(tmp_path / "runs")),
        ]
    )
    assert code == 0
    saved = RunDir.read_config_of(_run_dir(tmp_path / "runs"))
    assert (saved["lr"], saved["quiet"], saved["n_epochs"]) == (0.03, True, 1)


def test_command_line_bool_words_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--deterministic", "maybe", "--output_dir", str(tmp_path)])
    assert "--deterministic" in capsys.readouterr().err


def _finished_run(tmp_path: Path, data_dir: Path) -> Path:
    args = ["train", *TINY.split(), "--deterministic", "--quiet", "--data_dir", str(data_dir)]
    assert main([*args, "--output_dir", str(tmp_path / "runs")]) == 0
    return _run_dir(tmp_path / "runs")


def test_resume_rejects_flags_that_change_the_run(tmp_path, fmnist_dir, capsys):
    run = _finished_run(tmp_path, fmnist_dir)
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "--lr 0.5 (saved: 0.03)" in capsys.readouterr().err
    # A flag that changes nothing computed is taken, with a note.
    assert main(["train", "--resume", str(run), "--speedup_repeats", "0"]) == 0


# ---------------------------------------------------------------- checkpoints


def test_corrupt_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, fmnist_dir):
    run = _finished_run(tmp_path, fmnist_dir)
    checkpoints = run / "checkpoints"
    (checkpoints / "task_5.pt").unlink()
    (checkpoints / "task_4.pt").write_bytes((checkpoints / "task_4.pt").read_bytes()[:1000])
    (checkpoints / "latest.txt").write_text("task_4.pt\n")
    with pytest.warns(UserWarning, match="task_4.pt is unreadable") as caught:
        found = RunDir(run).latest_checkpoint()
    assert found[0].name == "task_3.pt"
    assert any("resuming from task_3.pt" in str(w.message) for w in caught)


def test_empty_latest_pointer_is_ignored_with_a_warning(tmp_path, fmnist_dir):
    run = _finished_run(tmp_path, fmnist_dir)
    (run / "checkpoints" / "latest.txt").write_text("")
    with pytest.warns(UserWarning, match="latest.txt is empty or corrupt"):
        found = RunDir(run).latest_checkpoint()
    assert found[0].name == "task_5.pt"


def test_no_intact_checkpoint_names_the_files(tmp_path, fmnist_dir):
    run = _finished_run(tmp_path, fmnist_dir)
    for path in (run / "checkpoints").glob("task_*.pt"):
        path.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no intact checkpoint"):
        RunDir(run).latest_checkpoint()


# ---------------------------------------------------------------- crashes (kill -9)


def _sparcl(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "SPARCL_FAULT"}
    return subprocess.run(
        [sys.executable, "-m", "sparcl", "train", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["epoch-end:3", "checkpoint-write:2"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, fault):
    data = write_fmnist(tmp_path / "data")
    args = [*TINY.split(), "--deterministic", "--quiet", "--data_dir", str(data)]
    reference = _sparcl([*args, "--output_dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr
    killed = _sparcl([*args, "--output_dir", str(tmp_path / "killed")], SPARCL_FAULT=fault)
    assert killed.returncode == -9, killed.stderr
    run = _run_dir(tmp_path / "killed")
    assert not (run / "results.json").exists()
    resumed = _sparcl(["--resume", str(run), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    expected = json.loads((_run_dir(tmp_path / "reference") / "results.json").read_text())
    actual = json.loads((run / "results.json").read_text())
    assert actual["class_il"] == expected["class_il"]
    final = "checkpoints/task_5.pt"
    weights = torch.load(run / final, weights_only=True)["net"]
    reference_weights = torch.load(_run_dir(tmp_path / "reference") / final, weights_only=True)
    for name, tensor in reference_weights["net"].items():
        assert torch.equal(weights[name], tensor), name


# ---------------------------------------------------------------- sparsify and state dicts


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(32, 32)
        self.decoder = nn.Linear(32, 32)
        self.decoder.weight = self.encoder.weight
        self.other = nn.Linear(32, 32)


def test_sparsify_leaves_tied_weights_dense_with_the_reason():
    model = sk.sparsify(_Tied(), 0.5, 8)
    assert model.decoder.weight is model.encoder.weight
    assert isinstance(model.other, SparseLinear)
    reasons = {d.name: d.reason for d in sk.nn.plan_sparsify(_Tied(), 8)}
    assert "tied to decoder" in reasons["encoder"] and "tied to encoder" in reasons["decoder"]


def test_include_and_exclude_accept_one_pattern_as_a_string():
    model = sk.sparsify(_Tied(), 0.5, 8, include="other")
    assert isinstance(model.other, SparseLinear)
    plan = sk.nn.plan_sparsify(_Tied(), 8, exclude="oth*")
    assert [d.reason for d in plan if d.name == "other"] == ["excluded"]


@pytest.mark.parametrize("block_size", [7.5, "8", 0, -8, (8, 0)])
def test_sparsify_rejects_bad_block_sizes(block_size):
    with pytest.raises((TypeError, ValueError), match="block_size"):
        sk.sparsify(_Tied(), 0.5, block_size)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SparseConv2d(144, 32, 1, block_size=8, sparsity=0.5),
        lambda: SparseConv2d(16, 32, (1, 9), block_size=8, sparsity=0.5),
        lambda: SparseLinear(144, 32, block_size=8, sparsity=0.5),
    ],
    ids=["1x1-conv", "1x9-conv", "linear"],
)
def test_state_dict_of_another_geometry_is_refused(make):
    source = SparseConv2d(16, 32, 3, block_size=8, sparsity=0.5)
    with pytest.raises(RuntimeError, match=r"the saved layer's geometry"):
        make().load_state_dict(source.state_dict())


# ---------------------------------------------------------------- never overwrite or bless (26)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, fmnist_dir, capsys):
    run = _finished_run(tmp_path, fmnist_dir)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "has finished" in capsys.readouterr().err
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert after == files


@pytest.mark.parametrize(
    "model", ["--model sgd", "--model sparcl-derpp --buffer_size 20 --sparsity 0.5"]
)
def test_a_diverging_run_stops_and_writes_no_results(tmp_path, fmnist_dir, capsys, model):
    args = [*model.split(), *"--backbone mlp --n_epochs 2 --debug_mode 1 --batch_size 8".split()]
    args += ["--lr", "1e6", "--quiet", "--data_dir", str(fmnist_dir)]
    code = main(["train", *args, "--output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.search(r"loss became (nan|inf) at task \d+, epoch \d+, step \d+", err), err
    run = _run_dir(tmp_path / "runs")
    assert not (run / "results.json").exists()
    for checkpoint in (run / "checkpoints").glob("task_*.pt"):
        state = torch.load(checkpoint, weights_only=True)["net"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_non_finite_weights_are_never_checkpointed():
    from sparcl.train import TrainingDiverged, check_finite_weights

    net = nn.Linear(3, 2)
    check_finite_weights(net, 0)
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(TrainingDiverged, match="after task 3, 1 weight tensors hold inf or NaN"):
        check_finite_weights(net, 2)


def _failing_writes(monkeypatch, suffix: str, errno_code: int):
    original = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(suffix):
            original(self, b"partial")  # a partly written file, as a full disk leaves
            raise OSError(errno_code, os.strerror(errno_code))
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(
    tmp_path, fmnist_dir, capsys, monkeypatch
):
    import errno

    _failing_writes(monkeypatch, ".pt.tmp", errno.ENOSPC)
    args = ["train", *TINY.split(), "--quiet", "--data_dir", str(fmnist_dir)]
    assert main([*args, "--output_dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "task_1.pt: no space left on the device" in err, err
    assert "enforce fail" not in err
    run = _run_dir(tmp_path / "runs")
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_an_unwritable_run_directory_fails_before_resuming(
    tmp_path, fmnist_dir, capsys, monkeypatch
):
    import errno

    run = _finished_run(tmp_path, fmnist_dir)
    (run / "results.json").unlink()  # an unfinished run
    (run / "checkpoints" / "task_5.pt").unlink()
    (run / "checkpoints" / "latest.txt").write_text("task_4.pt\n")
    _failing_writes(monkeypatch, f".write-probe-{os.getpid()}", errno.EROFS)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {run}: read-only file system" in err, err
    assert not (run / "checkpoints" / "task_5.pt").exists()


def test_a_second_resume_of_a_run_in_use_is_refused(tmp_path, fmnist_dir, capsys):
    run = _finished_run(tmp_path, fmnist_dir)
    (run / "results.json").unlink()
    capsys.readouterr()
    with RunDir(run).lock():
        assert main(["train", "--resume", str(run)]) == 1
    assert f"is in use by sparcl train (pid {os.getpid()}" in capsys.readouterr().err
    assert not (run / "results.json").exists()


def test_eval_says_what_it_expected(tmp_path, fmnist_dir, capsys):
    run = _finished_run(tmp_path, fmnist_dir)
    loose = tmp_path / "task_5.pt"
    loose.write_bytes((run / "checkpoints" / "task_5.pt").read_bytes())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(loose)]) == 2
    assert "expected a checkpoint inside a run directory" in capsys.readouterr().err
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    config = (run / "config.yaml").read_text().replace("backbone: mlp", "backbone: resnet18")
    (other / "config.yaml").write_text(config.replace("nf: 64", "nf: 4"))
    (other / "checkpoints" / "task_5.pt").write_bytes(loose.read_bytes())
    assert main(["eval", "--checkpoint", str(other / "checkpoints" / "task_5.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the network" in err and "--backbone resnet18" in err, err
