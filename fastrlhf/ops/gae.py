"""gae: generalised advantage estimation (TRL / OpenRLHF convention) over [..., T] rows.

One launch: each row is a reverse linear recurrence, a scan per chunk in Triton and one reverse
loop per row (rows across threads) in C++. Inputs are read once and both outputs written once.
"""
import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, checks_enabled, kernels_for


def _check_unit_interval(name, value):
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_values(rewards, values):
    # A float64 sum is non-finite exactly when an element is (sums of float32 values cannot overflow
    # it): one pass each, 5-10x cheaper on CPU than torch.isfinite(x).all().
    C.check_finite_values("rewards", rewards.sum(dtype=torch.float64))
    C.check_finite_values("values", values.sum(dtype=torch.float64))


@torch.library.custom_op("fastrlhf::gae", mutates_args=())
def _gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    if checks_enabled(rewards.device):
        _check_values(rewards, values)
    return kernels_for(rewards.device).gae(rewards, values, mask, gamma, lam)


@_gae.register_fake
def _(rewards, values, mask, gamma, lam):
    advantages = torch.empty_like(rewards, dtype=torch.float32)
    return advantages, torch.empty_like(advantages)


def gae(rewards, values, mask, *, gamma=1.0, lam=0.95):
    """(advantages, returns), float32 [..., T], of per-token rewards and values [..., T].

    rewards and values (float32/bfloat16/float16) are multiplied by mask (bool or 0/1, [..., T]);
    then for t = T-1 .. 0: delta_t = r_t + gamma * v_{t+1} - v_t (v_T = 0),
    A_t = delta_t + gamma * lam * A_{t+1} (A_T = 0), and returns = A + v. gamma, lam in [0, 1].
    No gradient: the inputs are detached (advantages and returns are targets, not functions to train).
    """
    C.check_float("rewards", rewards)
    C.check_float("values", values)
    C.check_mask("mask", mask)
    C.check_like("values", values, "rewards", rewards)
    C.check_like("mask", mask, "rewards", rewards)
    if rewards.dim() == 0:
        raise ValueError("rewards must have a time dimension [..., T], got a 0-dim tensor")
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    rewards, values = rewards.detach(), values.detach()
    if backend_name(rewards.device) == "reference":
        if checks_enabled(rewards.device):
            _check_values(rewards, values)
        return reference.gae(rewards, values, mask, gamma=gamma, lam=lam)
    if rewards.dtype != values.dtype:  # the kernels read one dtype; mixed inputs meet in float32
        rewards, values = rewards.float(), values.float()
    shape = rewards.shape

    def rows(x):
        return x.reshape(-1, shape[-1]).contiguous()

    advantages, returns = _gae(rows(rewards), rows(values), rows(C.as_bool_mask(mask)), float(gamma), float(lam))
    return advantages.view(shape), returns.view(shape)
