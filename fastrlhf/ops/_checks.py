"""Input validation shared by the ops: every error names the argument at fault.

`check_*` functions look only at metadata (shape, dtype, device) and are safe under torch.compile.
`check_*_values` functions read the data; ops call them only when `checks_enabled(device)`.
"""
import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


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


def check_labels_values(labels, vocab_size, ignore_index):
    used = labels[labels != ignore_index]
    if used.numel() and (used.min() < 0 or used.max() >= vocab_size):
        bad = used[(used < 0) | (used >= vocab_size)][0].item()
        raise ValueError(f"labels must be in [0, {vocab_size}) or ignore_index={ignore_index}, found {bad}")


def check_has_time_dim(name, x):
    if x.dim() == 0:
        raise ValueError(f"{name} must have a time dimension [..., T], got a 0-dim tensor")


def check_finite_values(name, x):
    # A float64 sum is non-finite exactly when an element is (a sum of 16/32-bit floats cannot
    # overflow it): one pass, several times cheaper on CPU than torch.isfinite(x).all().
    if not torch.isfinite(x.sum(dtype=torch.float64)):
        raise ValueError(f"{name} contains NaN or inf")


def as_bool_mask(mask):
    return mask if mask.dtype == torch.bool else mask != 0
