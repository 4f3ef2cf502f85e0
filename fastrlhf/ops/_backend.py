"""Which implementation runs an op.

CUDA tensors go to the Triton kernels (`fastrlhf.kernels`), CPU tensors to the C++ extension
(`fastrlhf._C`); `fastrlhf.reference` (plain PyTorch autograd) stands in when the extension is
missing. `FASTRLHF_BACKEND=triton|cpp|reference` or `set_backend` forces one.
The two kernel modules expose the same functions with the same arguments (see kernels/__init__.py);
the reference is called directly by each op, outside its custom op.
"""
import functools
import importlib
import os
import warnings

import torch

BACKENDS = ("triton", "cpp", "reference")
_MODULES = {"triton": "fastrlhf.kernels", "cpp": "fastrlhf._C", "reference": "fastrlhf.reference"}


def _validated(name):
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    return name


_forced = _validated(os.environ.get("FASTRLHF_BACKEND") or None)


def set_backend(name):
    """Force a backend for every op (None: pick by device). Returns the previous setting."""
    global _forced
    previous, _forced = _forced, _validated(name)
    return previous


def checks_enabled(device):
    """Checks that read tensor data sync the GPU, so on CUDA they run only with FASTRLHF_CHECK=1.
    Inside a torch.compile graph they are skipped (data-dependent Python would break the graph);
    the kernels of compiled graphs check in their custom op, which runs eagerly."""
    if torch.compiler.is_compiling():
        return False
    return device.type == "cpu" or os.environ.get("FASTRLHF_CHECK") == "1"


# Read once: Triton decides between compiling and interpreting when the kernels are defined.
_TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _module(name):
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as error:
        return error


# Looked up at import so that choosing a backend is plain Python that torch.compile traces.
_HAS_EXTENSION = not isinstance(_module("cpp"), ImportError)
if not _HAS_EXTENSION:
    warnings.warn(f"fastrlhf._C is not available ({_module('cpp')}); CPU ops fall back to the PyTorch "
                  "reference. Build it with `pip install --no-build-isolation -e .`.", stacklevel=2)


def available_backends():
    """The backends that can run on this machine."""
    names = [n for n in BACKENDS if not isinstance(_module(n), ImportError)]
    if "triton" in names and not (torch.cuda.is_available() or _TRITON_INTERPRETED):
        names.remove("triton")  # Triton needs a GPU, or its interpreter for CPU tensors
    return names


def backend_name(device):
    """The backend that runs ops on tensors on `device`: forced, else by device."""
    if _forced is not None:
        name = _forced
    elif device.type == "cuda":
        name = "triton"
    else:
        name = "cpp" if _HAS_EXTENSION else "reference"
    if name == "cpp" and device.type != "cpu":
        raise ValueError(f"the cpp backend runs on CPU tensors, got a tensor on {device}")
    if name == "triton" and device.type == "cpu" and not _TRITON_INTERPRETED:
        raise ValueError("the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
    return name


def kernels_for(device):
    """The kernel module (Triton or C++) that runs the ops for tensors on `device`."""
    name = backend_name(device)
    if name == "reference":
        raise RuntimeError("the reference backend has no kernels; ops call fastrlhf.reference directly")
    module = _module(name)
    if isinstance(module, ImportError):
        raise ImportError(f"backend {name!r} is not available: {module}") from module
    return module
