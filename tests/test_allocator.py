"""``sparcl train`` preloads a non-retaining allocator by re-executing itself once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cl_data import write_fmnist

from sparcl import allocator


@pytest.fixture
def libraries(monkeypatch):
    """Pretend exactly the allocators in the returned set are installed."""
    installed: set[str] = set()
    monkeypatch.setattr(
        allocator,
        "installed_library",
        lambda a: f"lib{a.library}.so" if a.name in installed else None,
    )
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    return installed


def test_auto_prefers_tcmalloc_then_jemalloc_then_glibc(libraries):
    libraries.update({"tcmalloc", "jemalloc"})
    assert allocator.choose("auto") == ("tcmalloc", "libtcmalloc_minimal.so")
    libraries.discard("tcmalloc")
    assert allocator.choose("auto") == ("jemalloc", "libjemalloc.so")
    libraries.clear()
    assert allocator.choose("auto") == ("glibc", None)


def test_glibc_when_forced(libraries):
    libraries.add("tcmalloc")
    assert allocator.choose("glibc") == ("glibc", None)


@pytest.mark.parametrize(
    ("name", "package"), [("tcmalloc", "libtcmalloc-minimal4"), ("jemalloc", "libjemalloc2")]
)
def test_explicit_missing_allocator_names_the_debian_package(libraries, name, package):
    with pytest.raises(ValueError, match=package):
        allocator.choose(name)


def test_reexec_preloads_once_and_keeps_the_arguments(libraries, monkeypatch):
    libraries.add("tcmalloc")
    monkeypatch.delenv(allocator.ACTIVE_ENV, raising=False)
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda *call: calls.append(call))
    argv = ["train", "--model", "derpp", "--allocator", "auto"]
    allocator.reexec_with_allocator(argv)
    ((executable, new_argv, env),) = calls
    assert executable == sys.executable and new_argv[1:] == ["-m", "sparcl", *argv]
    assert env[allocator.ACTIVE_ENV] == "tcmalloc"
    assert env["LD_PRELOAD"].startswith("libtcmalloc_minimal.so")
    # The re-executed process sees the marker and does not re-execute again.
    monkeypatch.setenv(allocator.ACTIVE_ENV, "tcmalloc")
    allocator.reexec_with_allocator(argv)
    assert len(calls) == 1


def test_other_commands_are_not_reexecuted(libraries, monkeypatch):
    libraries.add("tcmalloc")
    monkeypatch.delenv(allocator.ACTIVE_ENV, raising=False)
    monkeypatch.setattr(allocator.os, "execve", lambda *call: pytest.fail("re-executed"))
    allocator.reexec_with_allocator(["eval", "--checkpoint", "x.pt"])


def _sparcl(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (allocator.ACTIVE_ENV, "LD_PRELOAD")}
    return subprocess.run(
        [sys.executable, "-m", "sparcl", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=300,
    )


def test_reexecuted_run_keeps_the_exit_code():
    result = _sparcl("train", "--lr", "-1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error") == 1


@pytest.mark.skipif(
    allocator.installed_library(allocator.PRELOADABLE[0]) is None,
    reason="tcmalloc not installed (apt-get install libtcmalloc-minimal4)",
)
def test_run_records_the_allocator_and_its_memory(tmp_path):
    data = write_fmnist(tmp_path / "data")
    arguments = "train --model sgd --backbone mlp --n_epochs 1 --debug_mode 1 --batch_size 8"
    result = _sparcl(
        *arguments.split(),
        "--quiet",
        "--data_dir",
        str(data),
        "--output_dir",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 0, result.stderr
    assert "Memory allocator: tcmalloc" in result.stdout
    (results_file,) = (tmp_path / "runs").glob("*/results.json")
    memory = json.loads(results_file.read_text())["memory"]
    assert memory["allocator"] == {
        "name": "tcmalloc",
        "requested": "tcmalloc",
        "loaded": True,
        "mapped": ["tcmalloc"],
    }
    assert memory["peak_rss_mb"] >= memory["baseline_rss_mb"] > 0
    assert memory["training_peak_mb"] == pytest.approx(
        memory["peak_rss_mb"] - memory["baseline_rss_mb"], abs=0.2
    )


def test_preload_value_replaces_other_allocators_and_keeps_the_rest():
    inherited = "/usr/lib/libtcmalloc_minimal.so.4 libfoo.so:/opt/libjemalloc.so.2"
    assert allocator.preload_value(None, inherited) == "libfoo.so"
    assert allocator.preload_value("libjemalloc.so.2", inherited) == "libjemalloc.so.2 libfoo.so"
    assert allocator.preload_value(None, "libtcmalloc_minimal.so.4") is None
    env = allocator.environment_for(None, {"LD_PRELOAD": "libtcmalloc_minimal.so.4", "A": "1"})
    assert env == {"A": "1"}


def test_glibc_with_an_inherited_preload_reexecutes_without_it(libraries, monkeypatch):
    monkeypatch.delenv(allocator.ACTIVE_ENV, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda *call: calls.append(call))
    allocator.reexec_with_allocator(["train", "--allocator", "glibc"])
    ((_, _, env),) = calls
    assert "LD_PRELOAD" not in env and env[allocator.ACTIVE_ENV] == "glibc"


@pytest.mark.skipif(
    allocator.installed_library(allocator.PRELOADABLE[0]) is None,
    reason="tcmalloc not installed (apt-get install libtcmalloc-minimal4)",
)
def test_glibc_run_started_under_a_tcmalloc_preload_is_glibc(tmp_path):
    """Issue 26 item 8: it recorded glibc, loaded, while tcmalloc was mapped."""
    data = write_fmnist(tmp_path / "data")
    library = allocator.installed_library(allocator.PRELOADABLE[0])
    arguments = "train --model sgd --backbone mlp --n_epochs 1 --debug_mode 1 --batch_size 8"
    result = _sparcl(
        *arguments.split(),
        "--allocator",
        "glibc",
        "--quiet",
        "--speedup_repeats",
        "0",
        "--data_dir",
        str(data),
        "--output_dir",
        str(tmp_path / "runs"),
        LD_PRELOAD=library,
    )
    assert result.returncode == 0, result.stderr
    (results_file,) = (tmp_path / "runs").glob("*/results.json")
    recorded = json.loads(results_file.read_text())["memory"]["allocator"]
    assert recorded == {"name": "glibc", "requested": "glibc", "loaded": True, "mapped": []}
