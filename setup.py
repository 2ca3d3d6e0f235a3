"""Build sparcl_kernels and its native extensions.

The CPU extension (csrc/cpu) is always built, with ninja, on every architecture and compiler:
no instruction-set flag is passed (x86-64 compiles its AVX2 and AVX-512 kernels through
target pragmas and picks one at run time; aarch64 gets NEON as its baseline), and a compiler
without OpenMP builds single-threaded kernels with a warning.

The CUDA extension (csrc/cuda) is built wherever the installed torch is a CUDA build and a CUDA
toolkit is found, GPU present or not (wheels, Docker images and cluster login nodes build without
one). ``SPARCL_BUILD_CUDA=1`` makes a missing toolkit an error, ``0`` skips the extension, unset
or ``auto`` builds it when it can and says so either way. The toolkit is ``$CUDA_HOME``, else the
one the ``nvcc`` on PATH belongs to; ``TORCH_CUDA_ARCH_LIST`` picks the GPU targets (default in
sparcl_kernels/toolchain.py). torch must already be installed: use
``pip install --no-build-isolation -e .`` (the Makefile does).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _load_toolchain():
    """sparcl_kernels/toolchain.py, without importing the package (it needs the extensions)."""
    spec = importlib.util.spec_from_file_location(
        "sparcl_toolchain", ROOT / "sparcl_kernels" / "toolchain.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toolchain = _load_toolchain()

_OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def _openmp_flags(compiler: str) -> tuple[list[str], list[str]]:
    """Compile and link flags for OpenMP, or none (with a warning) if the compiler lacks it."""
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":  # Apple clang: OpenMP only through Homebrew's libomp
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.cpp"
        source.write_text(_OPENMP_PROBE)
        for compile_flags, link_flags in candidates:
            command = [compiler, str(source), "-o", str(Path(tmp) / "probe")]
            try:
                probe = subprocess.run(command + compile_flags + link_flags, capture_output=True)
            except OSError:
                break
            if probe.returncode == 0:
                return compile_flags, link_flags
    warnings.warn(
        f"{compiler} cannot build OpenMP code: the CPU kernels will run on one thread "
        "(sparcl_kernels.backend_info() reports openmp: False)",
        stacklevel=2,
    )
    return [], []


def _cpu_flags() -> tuple[list[str], list[str]]:
    """Flags for the CPU extension on this platform and compiler (no instruction-set flag)."""
    if sys.platform == "win32":
        return ["/O2", f"/std:{toolchain.CXX_STANDARD}", "/openmp"], []
    compiler = os.environ.get("CXX") or shutil.which("c++") or "c++"
    # -ffp-contract=fast: the micro-kernels' a * b + c becomes one fused multiply-add where the
    # instruction set has one (ISO C++ modes otherwise turn contraction off).
    compile_flags = ["-O3", f"-std={toolchain.CXX_STANDARD}", "-ffp-contract=fast"]
    openmp_compile, openmp_link = _openmp_flags(compiler)
    return compile_flags + openmp_compile, openmp_link


def _point_torch_at_cuda_toolkit() -> None:
    """Set ``CUDA_HOME`` to the toolkit found, before ``torch.utils.cpp_extension`` is imported
    (it reads the variable once, and guesses wrong for an nvcc wrapper outside the toolkit)."""
    home = toolchain.find_cuda_home()
    if home is not None:
        os.environ["CUDA_HOME"] = str(home)


def _cuda_extension(mode: str, cuda_sources: list[str]):
    """The CUDA extension, or ``None`` with the reason printed (an error when it was asked for)."""
    import torch
    from torch.utils import cpp_extension

    if not torch.version.cuda:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif not cpp_extension.CUDA_HOME:
        reason = "no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)"
    else:
        reason = None
    if reason is not None:
        if mode == "on":
            variable = toolchain.BUILD_CUDA_VAR
            raise SystemExit(f"{variable}=1 but the CUDA extension cannot build: {reason}")
        print(f"sparcl_kernels: not building the CUDA extension: {reason}", file=sys.stderr)
        return None
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = toolchain.default_cuda_arch_list(torch.version.cuda)
    print(
        f"sparcl_kernels: building the CUDA extension with {cpp_extension.CUDA_HOME} for "
        f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}",
        file=sys.stderr,
    )
    standard = f"-std={toolchain.CXX_STANDARD}"
    return cpp_extension.CUDAExtension(
        "sparcl_kernels._cuda",
        cuda_sources,
        extra_compile_args={"cxx": ["-O3", standard], "nvcc": ["-O3", standard]},
    )


def _extensions():
    cuda_mode = toolchain.build_cuda_mode()
    if cuda_mode != "off":
        _point_torch_at_cuda_toolkit()
    try:
        from torch.utils import cpp_extension
    except ImportError as error:  # pragma: no cover - exercised only by a broken install
        raise SystemExit(
            "sparcl_kernels needs torch at build time; install torch first and build with "
            "`pip install --no-build-isolation .`"
        ) from error

    extensions = []
    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    if cpu_sources:
        compile_flags, link_flags = _cpu_flags()
        extensions.append(
            cpp_extension.CppExtension(
                "sparcl_kernels._cpu",
                cpu_sources,
                extra_compile_args=compile_flags,
                extra_link_args=link_flags,
            )
        )
    cuda_sources = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.c[up]*")
    )
    if cuda_sources and cuda_mode != "off":
        cuda = _cuda_extension(cuda_mode, cuda_sources)
        if cuda is not None:
            extensions.append(cuda)
    return extensions, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="sparcl-kernels",
    version="0.1.0",
    description="Block-sparse training kernels for PyTorch and SparCL continual learning",
    packages=find_packages(include=["sparcl_kernels", "sparcl_kernels.*", "sparcl", "sparcl.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.13,<2.15", "numpy>=1.24"],
    extras_require={
        "triton": ["triton>=3.2"],
        "cl": ["tqdm>=4.60", "pyyaml>=6.0", "matplotlib>=3.7"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6.100", "ruff>=0.6"],
    },
    package_data={"sparcl": ["configs/*.yaml"]},
    entry_points={"console_scripts": ["sparcl = sparcl.entry:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
