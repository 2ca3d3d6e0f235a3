"""Build sparcl_kernels and its native extensions.

The CPU extension (csrc/cpu) is always built, with ninja. The CUDA extension (csrc/cuda) is
built only where the installed torch has CUDA. torch must already be installed: use
``pip install --no-build-isolation -e .`` (the Makefile does).
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:  # pragma: no cover - exercised only by a broken install
        raise SystemExit(
            "sparcl_kernels needs torch at build time; install torch first and build with "
            "`pip install --no-build-isolation .`"
        ) from error

    extensions = []
    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    if cpu_sources:
        extensions.append(
            cpp_extension.CppExtension(
                "sparcl_kernels._cpu",
                cpu_sources,
                extra_compile_args=["-O3", "-mavx2", "-mfma", "-fopenmp", "-std=c++17"],
                extra_link_args=["-fopenmp"],
            )
        )
    cuda_sources = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.c[up]*")
    )
    if cuda_sources and torch.cuda.is_available() and cpp_extension.CUDA_HOME:
        # Tensor-core paths use bf16 WMMA: sm_80 or newer (TORCH_CUDA_ARCH_LIST picks archs).
        extensions.append(
            cpp_extension.CUDAExtension(
                "sparcl_kernels._cuda",
                cuda_sources,
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
            )
        )
    return extensions, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="sparcl-kernels",
    version="0.1.0",
    description="Block-sparse training kernels for PyTorch and SparCL continual learning",
    packages=find_packages(include=["sparcl_kernels", "sparcl_kernels.*", "sparcl", "sparcl.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.5,<2.15", "numpy>=1.24"],
    extras_require={
        "triton": ["triton>=3.2"],
        "cl": ["tqdm>=4.60", "pyyaml>=6.0", "matplotlib>=3.7"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6.100", "ruff>=0.6"],
    },
    package_data={"sparcl": ["configs/*.yaml"]},
    entry_points={"console_scripts": ["sparcl = sparcl.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
