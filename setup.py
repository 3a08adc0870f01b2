"""Build the tte_fast C++ extension (pybind11).

Two failure modes get a clear message instead of a wall of compiler or resolver output:
no C++ compiler on PATH, and no torch in the target environment (a bare ``torch``
requirement would otherwise pull a multi-GB CUDA build onto a CPU machine).
"""

import glob
import os
import shutil
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _target_env_has_torch() -> bool:
    # pip builds in an isolated environment; ask the target interpreter with its own site-packages.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


def _check_environment() -> None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler or not shutil.which(compiler):
        sys.exit(
            "tte_fast: no C++ compiler found (looked at $CXX, c++, g++, clang++). "
            "Install one (Debian/Ubuntu: apt-get install g++) and retry."
        )
    if os.environ.get("TTE_FAST_SKIP_TORCH_CHECK") != "1" and not _target_env_has_torch():
        sys.exit(
            "tte_fast: torch is not installed in this environment. Install it first: "
            "CPU: pip install torch==2.13.0 (or any CPU build); GPU: the CUDA build matching your driver. "
            "Then run pip install -e . again (set TTE_FAST_SKIP_TORCH_CHECK=1 to let pip pick torch)."
        )


# Metadata commands included: pip resolves (and downloads) dependencies right after them.
_BUILD_COMMANDS = (
    "egg_info",
    "dist_info",
    "build_ext",
    "bdist_wheel",
    "develop",
    "editable_wheel",
    "install",
)
if any(cmd in sys.argv for cmd in _BUILD_COMMANDS):
    _check_environment()

ext_modules = [
    Pybind11Extension(
        "tte_fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        # -fopenmp-simd: the `omp simd` reductions vectorise (no OpenMP runtime is linked).
        extra_compile_args=["-O3", "-pthread", "-fopenmp-simd"],
        extra_link_args=["-pthread", "-ldl"],  # dlopen (openmp_team.cpp) lives in libdl before glibc 2.34
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
