"""Which implementation runs an op: one decision per call, in the op's public function.

Each op is one operator, `torch.ops.fastrlhf.<op>` (and `<op>_backward` where it has a gradient),
defined by the extension fastrlhf._C: its schema in csrc/bindings/module.cpp, its CPU kernel and its
autograd (a C++ autograd function that calls the backward operator, so it serves every device) in
csrc/bindings/<op>.cpp. The Triton kernels for CUDA and the fake kernels for torch.compile are
registered from Python, next to each op's public function (fastrlhf/ops/<op>.py). The dispatcher
then picks the kernel by the inputs' device: C++ for CPU tensors, Triton for CUDA tensors.

An op's public function validates its arguments, then either calls `fastrlhf.reference` (plain
PyTorch autograd: when forced, or when the extension is missing, with one warning) or the operator.

Forcing a backend (`FASTRLHF_BACKEND=triton|cpp|reference`, or `set_backend`):
- reference: the public functions call fastrlhf.reference, on any device.
- triton: CPU tensors run the Triton kernels too, under TRITON_INTERPRET=1 (how the tests run them;
  read once, at import, as Triton does). A torch.library.Library registers them for the CPU key on
  top of the C++ kernels; un-forcing destroys it, and the dispatcher falls back to the C++ kernels
  still registered beneath. Without the interpreter, CPU tensors raise.
- cpp: CUDA tensors raise (the C++ kernels run on CPU tensors only), by the same mechanism.
The autograd and the public functions are the same in every case; only the kernels underneath change.
"""
import importlib.util
import os
import warnings

import torch

BACKENDS = ("triton", "cpp", "reference")
_TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

try:
    from .. import _C  # noqa: F401 (registers torch.ops.fastrlhf)
    _EXTENSION_ERROR = None
except ImportError as error:
    _EXTENSION_ERROR = error
    warnings.warn(f"fastrlhf._C is not available ({error}); the ops fall back to the PyTorch reference. "
                  "Build it with `pip install --no-build-isolation -e .`.", stacklevel=2)

_HAS_TRITON = importlib.util.find_spec("triton") is not None  # its import (~150 ms) waits for a first use


def triton_kernels():
    """fastrlhf.kernels, imported on first use: CPU-only runs never pay for Triton's import."""
    from .. import kernels
    return kernels


_TRITON = {}  # op name -> its Triton kernel (a function with the op's schema), from fastrlhf/ops/<op>.py
_FAKE = {}  # op name -> its fake kernel (output shapes for torch.compile)
_cuda_kernels = None  # the Library holding the Triton kernels for CUDA
_forced_kernels = None  # the Library of a forced backend's kernels on the other device (see above)
_forced = None
_use_reference = _EXTENSION_ERROR is not None


def operator(name):
    """torch.ops.fastrlhf.<name>, or None without the extension (the ops then use the reference)."""
    return None if _EXTENSION_ERROR else getattr(torch.ops.fastrlhf, name).default


def triton_kernel(name):
    """Decorator: the Triton kernel of fastrlhf::<name>, registered for CUDA by register_kernels()."""
    def record(fn):
        _TRITON[name] = fn
        return fn
    return record


def fake_kernel(name):
    """Decorator: the fake kernel of fastrlhf::<name>, registered by register_kernels()."""
    def record(fn):
        _FAKE[name] = fn
        return fn
    return record


def register_kernels():
    """Registers the recorded fake and Triton kernels (once all ops are imported), then applies
    FASTRLHF_BACKEND."""
    global _cuda_kernels
    if _EXTENSION_ERROR is None:
        for name, fn in _FAKE.items():
            torch.library.register_fake(f"fastrlhf::{name}", fn)
        if _HAS_TRITON:
            _cuda_kernels = torch.library.Library("fastrlhf", "IMPL")
            for name, fn in _TRITON.items():
                _cuda_kernels.impl(name, fn, "CUDA")
    set_backend(os.environ.get("FASTRLHF_BACKEND") or None)


def use_reference():
    """The one decision of every op call: fastrlhf.reference, or the registered operator."""
    return _use_reference


def _refusing(message):
    def refuse(*args, **kwargs):
        raise ValueError(message)
    return refuse


def set_backend(name):
    """Force a backend for every op (None: pick by device). Returns the previous setting."""
    global _forced, _forced_kernels, _use_reference
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    if name in ("cpp", "triton") and _EXTENSION_ERROR is not None:
        raise ValueError(f"backend {name!r} needs the extension fastrlhf._C: {_EXTENSION_ERROR}")
    if name == "triton" and not _HAS_TRITON:
        raise ValueError("backend 'triton' needs the triton package")
    previous, _forced = _forced, name
    _use_reference = name == "reference" or _EXTENSION_ERROR is not None
    if _forced_kernels is not None:
        _forced_kernels._destroy()  # the default kernels are active again
        _forced_kernels = None
    if name in ("cpp", "triton"):
        _forced_kernels = torch.library.Library("fastrlhf", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": the point here
            for op, fn in _TRITON.items():
                if name == "cpp":
                    _forced_kernels.impl(op, _refusing("the cpp backend runs on CPU tensors, got CUDA tensors"), "CUDA")
                elif _TRITON_INTERPRETED:
                    _forced_kernels.impl(op, fn, "CPU")
                else:
                    _forced_kernels.impl(op, _refusing("the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 "
                                                       "for CPU tensors"), "CPU")
    return previous


def backend_name(device):
    """The backend that runs ops on tensors on `device`: forced, else by device."""
    if _use_reference:
        return "reference"
    name = _forced or ("triton" if device.type == "cuda" else "cpp")
    if name == "cpp" and device.type != "cpu":
        raise ValueError(f"the cpp backend runs on CPU tensors, got a tensor on {device}")
    if name == "triton" and device.type == "cpu" and not _TRITON_INTERPRETED:
        raise ValueError("the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
    return name


def available_backends():
    """The backends that can run on this machine."""
    names = [] if _EXTENSION_ERROR else ["cpp"]
    if not _EXTENSION_ERROR and _HAS_TRITON and (torch.cuda.is_available() or _TRITON_INTERPRETED):
        names.insert(0, "triton")  # Triton needs a GPU, or its interpreter for CPU tensors
    return names + ["reference"]

