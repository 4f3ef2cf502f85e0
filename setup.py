"""Builds the extension fastrlhf._C; package metadata lives in pyproject.toml.

The native kernels in csrc/cpu are torch-free (CMakeLists.txt builds them alone, with their C++
tests); csrc/bindings registers them, with every op's schema and autograd, as torch.ops.fastrlhf.
Both builds glob the same folders, so there is no second source list. Release builds carry no debug
information (a few MB instead of ~50); FASTRLHF_DEBUG=1 keeps it (-g) for gdb and perf.
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

debug = os.environ.get("FASTRLHF_DEBUG") == "1"
# -fno-trapping-math: FP exceptions are unused, which lets selects vectorise. -g0 last: it overrides the
# -g that Python's own build flags may bring.
cxx_flags = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-g" if debug else "-g0"]
# at::parallel_for is an OpenMP region compiled into the caller: without -fopenmp it runs every kernel on
# one thread. The extension then links libgomp.so.1, the one torch has already loaded (same soname).
openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
extension = CppExtension(
    "fastrlhf._C",
    sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/bindings/*.cpp")),
    include_dirs=[os.path.abspath("csrc")],
    extra_compile_args={"cxx": cxx_flags + openmp},
    extra_link_args=openmp,
)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
