"""Triton kernels, one file per op, for CUDA tensors (CPU tensors too under TRITON_INTERPRET=1).

fastrlhf/ops/<op>.py registers each launcher as the CUDA kernel of torch.ops.fastrlhf.<op> (the C++
kernels serve CPU tensors). Arguments arrive normalised by that registration: 1-D or 2-D contiguous
tensors of one float dtype (logits: a [B, T, V] view with a contiguous last dim), masks as bool,
options as plain numbers and integer codes (fastrlhf/codes.py). Per-token results are float32.

Compile specs: every specialization a launcher can pick is enumerable, so CI compiles each one for
real GPUs ahead of time without a GPU (tests/test_gpu_compile.py, fastrlhf/benchmark/gpu_compile.py).
Each module that launches a kernel defines `compile_specs()`, returning a `_specs.CompileSpec` (made
with `_specs.spec`) for every specialization its launch code can pick: each input dtype the ops pass
(`_specs.FLOAT_DTYPES` for float inputs), each constexpr combination, each block size, num_warps and
maxnreg.
They come from the same constants and functions the launchers call (a block size computed inline
is factored into a function both use), never from a second table. A parameter the launch passes as
None is a constexpr None. A launcher passes fixed values for the constexprs a launch does not read,
so that they add no compiles. Pointers are compiled as 16-byte aligned and integers at the width the
launch passes (i64 where a value can reach 2^31); Triton's own value specialisations (integers
equal to 1 or divisible by 16) are not enumerated. `programs_per_sm` is the occupancy the launch
intends, which the test holds registers and shared memory to. Launched kernels are named `*_kernel`;
the test checks that each has a spec, and that every launch the ops make (a sample of shapes, dtypes
and options) is one of the specs.
"""
import importlib
import pkgutil

from .token_logprobs import token_logprobs_backward, token_logprobs_forward
from .kl_penalty import kl_penalty_backward, kl_penalty_forward
from .gae import gae
from .kl_shaped_rewards import kl_shaped_rewards
from ._masked_reduction import ppo_loss_backward
from .masked_mean import masked_mean_backward, masked_mean_forward
from .masked_whiten import masked_whiten
from .ppo_policy_loss import ppo_policy_loss_forward
from .ppo_value_loss import ppo_value_loss_forward
from .sampling import sample_tokens


def compile_specs():
    """The compile specs of every kernel module in this package (the contract above)."""
    specs = []
    for module in pkgutil.iter_modules(__path__):
        specs += getattr(importlib.import_module(f"{__name__}.{module.name}"), "compile_specs", list)()
    return specs
