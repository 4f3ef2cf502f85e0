"""Builds the extension fastrlhf._C; package metadata lives in pyproject.toml.

The native kernels in csrc/cpu are torch-free (CMakeLists.txt builds them alone, with their C++
tests); csrc/bindings adapts tensors to them. CUDA sources in csrc/cuda join only when torch has
CUDA and nvcc is present. Both builds glob the same folders, so there is no second source list.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def sources(pattern):
    return sorted(glob.glob(pattern))


cuda_sources = sources("csrc/cuda/*.cu")
with_cuda = bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
Extension = CUDAExtension if with_cuda else CppExtension
cxx_flags = ["-O3", "-fopenmp-simd", "-fno-trapping-math"]  # FP exceptions unused: lets selects vectorise
extension = Extension(
    "fastrlhf._C",
    sources("csrc/cpu/*.cpp") + sources("csrc/bindings/*.cpp") + (cuda_sources if with_cuda else []),
    include_dirs=[os.path.abspath("csrc")],
    extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]} if with_cuda else {"cxx": cxx_flags},
    define_macros=[("FASTRLHF_WITH_CUDA", "1")] if with_cuda else [],
)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
