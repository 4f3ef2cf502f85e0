"""gae: generalised advantage estimation (TRL / OpenRLHF convention) over [..., T] rows.

One launch: each row is a reverse linear recurrence, a scan per chunk in Triton and one reverse
loop per row (rows across threads) in C++. Inputs are read once and both outputs written once.
torch.ops.fastrlhf.gae: CPU kernel in csrc/bindings/gae.cpp, Triton kernel (CUDA) below, launched
from kernels/gae.py. No autograd.
"""
import torch

from . import _checks as C
from .. import reference
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference

_op = operator("gae")


def _check_unit_interval(name, value):
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_values(rewards, values, mask):
    """The data checks of the Python backends, where checks run (the C++ kernel checks as it reads)."""
    if C.checks_enabled(rewards):
        C.check_binary_mask(mask)
        C.check_finite_values("rewards", rewards, C.kept(mask))
        C.check_finite_values("values", values, C.kept(mask))


@triton_kernel("gae")
def _(rewards, values, mask, gamma, lam):
    C.check_float("rewards", rewards)
    C.check_has_time_dim("rewards", rewards)
    for name, t in (("values", values), ("mask", mask)):
        C.check_like(name, t, "rewards", rewards)
    C.check_same_dtype("values", values, "rewards", rewards)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    _check_values(rewards, values, mask)

    def rows(x):
        return x.contiguous().view(-1, rewards.shape[-1])

    advantages, returns = triton_kernels().gae(rows(rewards), rows(values), rows(C.kept(mask)), gamma, lam)
    return advantages.view(rewards.shape), returns.view(rewards.shape)


@fake_kernel("gae")
def _(rewards, values, mask, gamma, lam):
    advantages = torch.empty_like(rewards, dtype=torch.float32, memory_format=torch.contiguous_format)
    return advantages, torch.empty_like(advantages)


def gae(rewards, values, mask, *, gamma=1.0, lam=0.95):
    """(advantages, returns), float32 [..., T], of per-token rewards and values [..., T].

    rewards and values (float32/bfloat16/float16) are read where mask (bool or 0/1, [..., T]) and 0
    elsewhere; then for t = T-1 .. 0: delta_t = r_t + gamma * v_{t+1} - v_t (v_T = 0),
    A_t = delta_t + gamma * lam * A_{t+1} (A_T = 0), and returns = A + v. gamma, lam in [0, 1].
    NaN or inf in a masked reward or value is an error. No gradient: the inputs are detached
    (advantages and returns are targets, not functions to train).
    """
    C.check_float("rewards", rewards)
    C.check_float("values", values)
    C.check_mask("mask", mask)
    C.check_like("values", values, "rewards", rewards)
    C.check_like("mask", mask, "rewards", rewards)
    C.check_has_time_dim("rewards", rewards)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    rewards, values = rewards.detach(), values.detach()
    if use_reference():
        _check_values(rewards, values, mask)
        return reference.gae(rewards, values, mask, gamma=gamma, lam=lam)
    if rewards.dtype != values.dtype:  # the kernels read one dtype; mixed inputs meet in float32
        rewards, values = rewards.float(), values.float()
    return _op(rewards, values, mask, float(gamma), float(lam))
