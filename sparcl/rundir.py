"""The run directory: config, per-epoch metrics, results, plots and atomic checkpoints."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from sparcl import faults

METRIC_FIELDS = ("task", "epoch", "loss", "seconds", "samples_per_second", "examples")
_CHECKPOINT_NAME = re.compile(r"task_\d+\.pt")
_CHECKPOINT_KEYS = {"net", "method", "generator", "progress"}


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class StorageError(RuntimeError):
    """A run directory's file could not be written; the message names the path and why."""


@contextlib.contextmanager
def _writing(path: Path, temporary: Path | None = None) -> Iterator[None]:
    """Turn a failed write of ``path`` into a :class:`StorageError` naming it and the reason,
    removing the partial ``temporary`` file."""
    try:
        yield
    except OSError as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()
        reason = _REASONS.get(error.errno, error.strerror or str(error))
        raise StorageError(f"cannot write {path}: {reason}") from error


class RunLockedError(RuntimeError):
    """Another process is training in this run directory."""


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with _writing(self.path / "checkpoints"):
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Fail now, not after a task's compute, if the run directory or its checkpoints
        folder cannot take a file."""
        for folder in (self.path, self.path / "checkpoints"):
            probe = folder / f".write-probe-{os.getpid()}"
            with _writing(folder, probe):
                probe.write_bytes(b"x")
                probe.unlink()

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    def finished(self) -> bool:
        """Whether the run completed (its results.json is written only at the very end)."""
        return self.results_file.is_file()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``run.lock`` while training: a second ``sparcl train`` on this directory (two
        ``--resume`` at once) is refused, naming the first one's process. The lock goes with
        its process, so a killed run leaves nothing to clean up."""
        import fcntl  # POSIX; sparcl train runs on Linux and macOS

        path = self.path / "run.lock"
        with _writing(path):
            handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunLockedError(
                    f"{self.path} is in use by {holder}: wait for it to finish or stop it"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"sparcl train (pid {os.getpid()} on {socket.gethostname()})\n")
            handle.flush()
            yield
        finally:
            handle.close()

    @classmethod
    def create_unique(cls, parent: str | Path, name: str) -> Path:
        """Create a new run directory ``parent/name`` (``name-2``, ``name-3``, ... when taken).

        The directory is created exclusively, so two runs started at the same moment never
        share one.
        """
        Path(parent).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 10_000):
            path = Path(parent) / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
        raise ValueError(f"--output_dir {parent}: no free run directory name for {name}")

    def write_config(self, config: dict) -> None:
        _atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    @staticmethod
    def read_config_of(path: str | Path) -> dict:
        """The saved config.yaml of an existing run directory."""
        config = Path(path) / "config.yaml"
        if not config.is_file():
            raise ValueError(
                f"{path} is not a run directory: expected {config}, which a run directory of "
                "`sparcl train` has beside its checkpoints/ folder"
            )
        return yaml.safe_load(config.read_text())

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.csv from all rows so far (a resumed run keeps the earlier ones)."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write_text(self.path / "metrics.csv", text.getvalue())

    def write_results(self, results: dict) -> None:
        _atomic_write_text(self.path / "results.json", json.dumps(results, indent=2) + "\n")

    def save_checkpoint(self, task: int, state: dict) -> Path:
        """Write ``task_<t>.pt`` atomically, then point ``latest.txt`` at it."""
        target = self.path / "checkpoints" / f"task_{task}.pt"
        temporary = target.with_suffix(".pt.tmp")
        # Serialised in memory first: torch.save writing a file reports a full disk as an
        # opaque "[enforce fail at inline_container.cc]" error with no errno.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with _writing(target, temporary):
            temporary.write_bytes(buffer.getbuffer())
        faults.crash_point("checkpoint-write")
        with _writing(target, temporary):
            os.replace(temporary, target)
        _atomic_write_text(self.path / "checkpoints" / "latest.txt", target.name + "\n")
        return target

    def latest_checkpoint(self) -> tuple[Path, dict] | None:
        """The newest intact checkpoint and its state, or None when the run has none.

        Tries the one ``latest.txt`` names, then every ``task_<t>.pt`` from the highest task
        down; each is verified by loading it completely. An unreadable pointer or checkpoint
        is skipped with a warning naming the file; if checkpoints exist but none is intact,
        ``ValueError`` lists them.
        """
        folder = self.path / "checkpoints"
        candidates: list[Path] = []
        pointer = folder / "latest.txt"
        if pointer.exists():
            named = pointer.read_text().strip() if pointer.is_file() else ""
            if _CHECKPOINT_NAME.fullmatch(named):
                candidates.append(folder / named)
            else:
                warnings.warn(
                    f"{pointer} is empty or corrupt ({named!r}); ignoring it", stacklevel=2
                )
        by_task = sorted(
            (p for p in folder.glob("task_*.pt") if _CHECKPOINT_NAME.fullmatch(p.name)),
            key=lambda p: int(p.stem.split("_")[1]),
            reverse=True,
        )
        candidates += [p for p in by_task if p not in candidates]
        problems = []
        for path in candidates:
            try:
                state = torch.load(path, weights_only=True)
                if not isinstance(state, dict) or not state.keys() >= _CHECKPOINT_KEYS:
                    raise ValueError("not a sparcl checkpoint")
            except Exception as error:  # any failure to load means the file is not intact
                problems.append(f"{path}: {error}")
                warnings.warn(
                    f"checkpoint {path} is unreadable ({error}); trying an older one", stacklevel=2
                )
                continue
            if problems:
                warnings.warn(
                    f"resuming from {path.name}, the newest intact checkpoint", stacklevel=2
                )
            return path, state
        if problems:
            raise ValueError("no intact checkpoint in " + str(folder) + ": " + "; ".join(problems))
        return None

    def write_plots(self, class_il: list[list[float]], task_il: list[list[float]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(class_il)
        figure, axes = plt.subplots(1, 2, figsize=(9, 4))
        for axis, matrix, title in zip(
            axes, (class_il, task_il), ("Class-IL", "Task-IL"), strict=True
        ):
            padded = [row + [float("nan")] * (n - len(row)) for row in matrix]
            image = axis.imshow(padded, vmin=0, vmax=100, cmap="viridis")
            axis.set(title=f"{title} accuracy (%)", xlabel="evaluated task", ylabel="after task")
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    axis.text(j, i, f"{value:.0f}", ha="center", va="center", color="white")
        figure.colorbar(image, ax=axes)
        with _writing(self.path / "acc_matrix.png"):
            figure.savefig(self.path / "acc_matrix.png", dpi=100)
        plt.close(figure)

        figure, axis = plt.subplots(figsize=(6, 4))
        for task in range(n):
            axis.plot(
                range(task, n),
                [class_il[i][task] for i in range(task, n)],
                marker="o",
                label=f"task {task}",
            )
        axis.set(xlabel="after training task", ylabel="Class-IL accuracy (%)", ylim=(0, 100))
        axis.legend()
        with _writing(self.path / "task_accuracy.png"):
            figure.savefig(self.path / "task_accuracy.png", dpi=100)
        plt.close(figure)


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with _writing(path, temporary):
        temporary.write_text(text)
        os.replace(temporary, path)
