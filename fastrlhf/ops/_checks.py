"""Input validation shared by the ops: every error names the argument at fault.

`check_*` functions look only at metadata (shape, dtype, device) and are safe under torch.compile;
each op's public function runs them, whatever the backend. Checks that read the data (labels in
range, finite rewards, masks of only 0 and 1) run where each backend reads it: the C++ kernels check
their inputs themselves (csrc/bindings), and the Python backends (the Triton kernels, the reference)
call the `check_*_values`-style functions below where `checks_enabled`: always on CPU tensors, on
CUDA tensors only with FASTRLHF_CHECK=1 (read at import), since a check would synchronise there.
"""
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CHECK_CUDA = os.environ.get("FASTRLHF_CHECK") == "1"


def checks_enabled(x):
    """Whether data checks may run for tensors like x: on CPU, or on CUDA with FASTRLHF_CHECK=1; never
    inside a torch.compile graph (data-dependent Python would break it; compiled C++ kernels still check)."""
    return (x.is_cpu or _CHECK_CUDA) and not torch.compiler.is_compiling()


def check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def check_float(name, x):
    check_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def check_int(name, x):
    check_tensor(name, x)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64), got {x.dtype}")


def check_mask(name, mask):
    check_tensor(name, mask)
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool or 0/1 numbers, got {mask.dtype}")


def check_same_shape(name, x, ref_name, ref):
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}")


def check_same_device(name, x, ref_name, ref):
    if not (x.is_cpu and ref.is_cpu) and x.device != ref.device:  # is_cpu first: x.device makes an object
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


def check_same_dtype(name, x, ref_name, ref):
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}")


def check_like(name, x, ref_name, ref):
    """x is a tensor with the shape and device of ref."""
    check_tensor(name, x)
    check_same_device(name, x, ref_name, ref)
    check_same_shape(name, x, ref_name, ref)


def check_positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_code(name, code, names):
    """An option's integer code (fastrlhf/codes.py), as the registered ops take it."""
    if not 0 <= code < len(names):
        raise ValueError(f"{name} must be a code in [0, {len(names) - 1}] (one of {names}), got {code}")


def check_has_time_dim(name, x):
    if x.dim() == 0:
        raise ValueError(f"{name} must have a time dimension [..., T], got a 0-dim tensor")


def kept(mask):
    """The mask as the Triton kernels read it, bool: nonzero is kept."""
    return mask if mask.dtype == torch.bool else mask != 0


# ---- data checks, for the backends other than C++ (see the module docstring) ----------------------

def check_binary_mask(mask):
    """Numbers other than 0 and 1 are an error: a 0.5 would mean "kept" to the kernels, not a weight."""
    if mask.dtype != torch.bool:
        wrong = (mask != 0) & (mask != 1)
        if wrong.any():
            raise ValueError(f"mask must be bool or hold only 0 and 1, found {mask[wrong][0].item()}")


def check_labels_values(labels, vocab_size, ignore_index):
    used = labels[labels != ignore_index]
    if used.numel() and (used.min() < 0 or used.max() >= vocab_size):
        bad = used[(used < 0) | (used >= vocab_size)][0].item()
        raise ValueError(f"labels must be in [0, {vocab_size}) or ignore_index={ignore_index}, found {bad}")


def check_finite_values(name, x, mask=None):
    """x (where mask, if given: masked-out positions are never read) holds no NaN or inf."""
    if mask is not None:
        x = torch.where(mask, x, 0)
    # A float64 sum is non-finite exactly when an element is (a sum of 16/32-bit floats cannot
    # overflow it): one pass, several times cheaper on CPU than torch.isfinite(x).all().
    if not torch.isfinite(x.sum(dtype=torch.float64)):
        raise ValueError(f"{name} contains NaN or inf" + (" at a masked position" if mask is not None else ""))
