"""How the native code is built: the C++ standard, finding the CUDA toolkit behind wrappers, the
CUDA build switch and target list, and that torch's CUDA builds get the CUDA extension."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparcl_kernels import toolchain

ROOT = Path(__file__).resolve().parent.parent


def _fake_toolkit(root: Path) -> Path:
    """A folder that looks like a CUDA toolkit; its nvcc answers a dry run as nvcc does."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "#$ _HERE_={root / "bin"}"\necho "#$ _THERE_=x"\n')
    nvcc.chmod(0o755)
    return root


def test_environment_variables_name_the_toolkit_first(tmp_path):
    found = toolchain.find_cuda_home({"CUDA_PATH": str(tmp_path)}, which=lambda _: None)
    assert found == tmp_path
    both = {"CUDA_HOME": str(tmp_path / "a"), "CUDA_PATH": str(tmp_path / "b")}
    assert toolchain.find_cuda_home(both, which=lambda _: None) == tmp_path / "a"


def test_an_nvcc_wrapper_outside_the_toolkit_leads_to_the_toolkit(tmp_path):
    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = tmp_path / "local" / "bin" / "nvcc"  # torch would guess tmp_path/local
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit / "bin" / "nvcc"} "$@"\n')
    wrapper.chmod(0o755)
    assert toolchain.find_cuda_home({}, which=lambda _: str(wrapper)) == toolkit


def test_a_symlinked_nvcc_resolves_to_its_toolkit(tmp_path):
    toolkit = _fake_toolkit(tmp_path / "cuda")
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(toolkit / "bin" / "nvcc")
    assert toolchain.find_cuda_home({}, which=lambda _: str(link)) == toolkit


def test_an_nvcc_that_names_no_toolkit_is_not_taken_for_one(tmp_path):
    stray = tmp_path / "bin" / "nvcc"
    stray.parent.mkdir()
    stray.write_text("#!/bin/sh\nexit 1\n")
    stray.chmod(0o755)
    found = toolchain.find_cuda_home({}, which=lambda _: str(stray))
    assert found is None or (found / "include" / "cuda_runtime.h").is_file()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_the_nvcc_on_this_path_leads_to_headers():
    environ = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    home = toolchain.find_cuda_home(environ)
    assert home is not None and (home / "include" / "cuda_runtime.h").is_file(), home


@pytest.mark.parametrize(
    ("value", "mode"), [("1", "on"), ("ON", "on"), ("0", "off"), ("off", "off"), ("auto", "auto")]
)
def test_build_switch_values(value, mode):
    assert toolchain.build_cuda_mode({toolchain.BUILD_CUDA_VAR: value}) == mode
    assert toolchain.build_cuda_mode({}) == "auto"


def test_a_bad_build_switch_names_the_variable():
    with pytest.raises(ValueError, match=toolchain.BUILD_CUDA_VAR):
        toolchain.build_cuda_mode({toolchain.BUILD_CUDA_VAR: "yes please"})


def test_default_gpu_targets_follow_the_cuda_version():
    assert toolchain.default_cuda_arch_list("12.4") == "7.5;8.0;8.6;8.9;9.0+PTX"
    newest = toolchain.default_cuda_arch_list("13.0").split(";")
    assert newest[0] == "7.5" and "10.0" in newest and newest[-1] == "12.0+PTX"


def test_cxx_standard_is_one_torch_214_accepts():
    assert toolchain.CXX_STANDARD in ("c++20", "c++23")
    planned = subprocess.run(
        ["make", "-n", "-B", "build/test_kernels_aarch64"], cwd=ROOT, capture_output=True, text=True
    )
    assert f"-std={toolchain.CXX_STANDARD}" in planned.stdout, planned.stdout + planned.stderr


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch")
def test_asking_for_the_cuda_extension_with_a_cpu_torch_fails_clearly():
    env = {**os.environ, toolchain.BUILD_CUDA_VAR: "1"}
    result = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert f"{toolchain.BUILD_CUDA_VAR}=1" in result.stderr
    assert "is not a CUDA build" in result.stderr


@pytest.mark.skipif(
    torch.version.cuda is None
    or toolchain.find_cuda_home() is None
    or toolchain.build_cuda_mode() == "off",
    reason="the CUDA extension is built only where torch has CUDA and a toolkit is found",
)
def test_a_cuda_build_of_torch_gets_the_cuda_extension_without_a_gpu():
    import sparcl_kernels as sk

    cuda = sk.backend_info()["backends"]["cuda"]
    assert cuda["available"], cuda
    assert cuda["torch_cuda"] == torch.version.cuda
    if not torch.cuda.is_available():
        assert cuda["status"].startswith("compiled, not verified on a GPU")
