"""The CPU kernels' sources without torch: the kernel test (csrc/cpu/tests/test_kernels.cpp)
built natively with the portable-lanes vectors that compilers without GCC vector extensions
get, over every instruction set this CPU runs. `make test-arm` runs the same test on aarch64
under qemu; the extension's own tests cover the vector-extension build."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from sparcl_kernels.toolchain import CXX_STANDARD

CPU_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cpu"
# Portable vectors, and a padded-input bound small enough that the weight-gradient runs sum
# the test batches over chunks of images.
PORTABLE_DEFINES = ["-DSPARCL_PORTABLE_VECTORS", "-DSPARCL_PADDED_INPUT_FLOATS=300"]


def test_kernels_with_portable_vectors_match_the_scalar_reference(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (it also builds the CPU extension)"
    sources = [CPU_DIR / "tests" / "test_kernels.cpp", CPU_DIR / "dispatch.cpp"]
    sources += sorted(CPU_DIR.glob("kernels_*.cpp"))
    binary = tmp_path / "test_kernels"
    flags = ["-O1", f"-std={CXX_STANDARD}", "-fopenmp", "-Wall", "-Wextra", "-Werror"]
    build = subprocess.run(
        [compiler, *flags, *PORTABLE_DEFINES, *map(str, sources), "-o", str(binary)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "kernel tests passed" in run.stdout, run.stdout + run.stderr


NATIVE_DIR = CPU_DIR.parent.parent / "bench" / "native"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 harnesses")
@pytest.mark.parametrize(
    "harness, extra",
    [
        ("conv_passes.cpp", []),
        ("conv_passes.cpp", ["-DHARNESS_AVX2"]),
        ("linear_passes.cpp", []),
        ("linear_passes.cpp", ["-DHARNESS_AVX2"]),
        ("bf16_conv_passes.cpp", []),
        ("broadcast_rate.cpp", []),
        ("ab_variant.cpp", ["-DVARIANT_NS=avx512_old", "-DVARIANT_RUN=run_old"]),
        ("ab_variant.cpp", ["-DAB_AVX2", "-DVARIANT_NS=avx2_old", "-DVARIANT_RUN=run_old"]),
        ("ab_variant.cpp", ["-DAB_BF16", "-DVARIANT_NS=avx512bf16_old", "-DVARIANT_RUN=run_old"]),
        ("ab_main.cpp", []),
    ],
)
def test_native_benchmark_harnesses_still_compile(harness, extra):
    """The A/B harnesses (bench/native) include the kernel headers directly: a change to a
    kernel's signature must not leave them broken for the next A/B."""
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (it also builds the CPU extension)"
    flags = ["-fsyntax-only", f"-std={CXX_STANDARD}", "-fopenmp", f"-I{CPU_DIR}", *extra]
    build = subprocess.run(
        [compiler, *flags, str(NATIVE_DIR / harness)], capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stdout + build.stderr
