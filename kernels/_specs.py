"""The compile-spec contract of the kernel modules (see kernels/__init__.py): what compile_specs() returns."""
from dataclasses import dataclass

import torch
from triton.runtime.jit import mangle_type

from fastrlhf.ops._checks import FLOAT_DTYPES  # the input dtypes the ops hand to the kernels


@dataclass(frozen=True)
class CompileSpec:
    label: str  # "token_logprobs_forward bf16 ... WITH_ENTROPY=True BLOCK_V=4096 num_warps=8": unique
    fn: object  # the @triton.jit kernel
    signature: dict  # every parameter of fn -> a Triton type ("*bf16", "i32", "fp32") or "constexpr"
    constexprs: dict  # constexpr parameter -> value
    num_warps: int
    # Programs the launch means to keep resident on one SM at a time: 2 for grids of many programs (one
    # program's loads in flight while another computes), 1 for launches of a single program.
    programs_per_sm: int = 2
    maxnreg: int = None  # the launch's register cap per thread, if it sets one


def powers_of_two(limit):
    """1, 2, 4, ..., limit: every block size min(next_power_of_2(n), limit) can give."""
    return [1 << k for k in range(limit.bit_length()) if 1 << k <= limit]


def short(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def spec(name, fn, num_warps, constexprs, programs_per_sm=2, maxnreg=None, **types):
    """A CompileSpec of fn. types: every runtime parameter -> a torch dtype (a tensor of it), a Triton
    scalar type, or None (a None argument, which Triton turns into a constexpr). A parameter of fn
    missing from types and constexprs, or a name that is not one, raises KeyError."""
    def triton_type(t):
        return mangle_type(torch.empty(0, dtype=t)) if isinstance(t, torch.dtype) else t

    unknown = (set(types) | set(constexprs)) - set(fn.arg_names)
    if unknown:
        raise KeyError(f"{fn.__name__} has no parameters {sorted(unknown)}")
    shown = " ".join(f"{k}={getattr(v, '__name__', v)}" for k, v in constexprs.items())
    constexprs = constexprs | {p: None for p, t in types.items() if t is None}
    signature = {p: "constexpr" if p in constexprs else triton_type(types[p]) for p in fn.arg_names}
    label = f"{name} {shown} num_warps={num_warps}" + (f" maxnreg={maxnreg}" if maxnreg else "")
    return CompileSpec(label, fn, signature, constexprs, num_warps, programs_per_sm, maxnreg)


__all__ = ["CompileSpec", "FLOAT_DTYPES", "powers_of_two", "short", "spec"]
