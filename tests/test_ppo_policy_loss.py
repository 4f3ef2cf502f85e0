import math

import pytest
import torch
from helpers import assert_close, assert_grad_close, random_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reduction_testing import (DTYPES, check_loss, check_only_first_input_gets_gradient, opcheck,  # noqa: F401
                               triton_partials)

from fastrlhf import ops, reference

REDUCTIONS = reference.REDUCTIONS


def policy_inputs(shape, spread=1.0):
    """logprobs, old_logprobs (log-ratios up to +-spread: many clipped tokens) and advantages."""
    logprobs = -4 * torch.rand(shape)
    return [logprobs, logprobs - spread * (2 * torch.rand(shape) - 1), torch.randn(shape)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(backend, reduction, dtype):
    shape = (5, 37)
    check_loss(backend, ops.ppo_policy_loss, policy_inputs(shape), random_mask(shape, empty_rows=2), dtype,
               reduction=reduction)


@pytest.mark.parametrize("options", [dict(clip_eps=0.1), dict(clip_eps=0.2, clip_eps_high=0.28),
                                     dict(dual_clip=3.0), dict(clip_eps=0.3, clip_eps_high=0.1, dual_clip=1.5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_clip_options(backend, options, reduction):
    shape = (4, 29)
    _, stats = check_loss(backend, ops.ppo_policy_loss, policy_inputs(shape, spread=2.0), random_mask(shape),
                          reduction=reduction, **options)
    assert 0 < stats["clip_frac"] < 1  # the data exercise both branches


def test_dual_clip_caps_negative_advantages(backend):
    logprobs = torch.zeros(2, 8)
    old = torch.full((2, 8), -3.0)  # ratio e^3: far above 1 + clip_eps
    advantages = -torch.ones(2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    loss, _ = check_loss(backend, ops.ppo_policy_loss, [logprobs, old, advantages], mask, dual_clip=2.0)
    assert loss.item() == pytest.approx(2.0)  # min(e^3, 2) * -A


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 6), tokens=st.integers(1, 40), keep=st.floats(0.0, 1.0), empty_rows=st.integers(0, 3),
       clip_eps=st.floats(0.05, 0.5), clip_eps_high=st.none() | st.floats(0.05, 0.5),
       dual_clip=st.none() | st.floats(1.1, 5.0), reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**31))
def test_property(backend, rows, tokens, keep, empty_rows, clip_eps, clip_eps_high, dual_clip, reduction, seed):
    torch.manual_seed(seed)
    shape = (rows, tokens)
    check_loss(backend, ops.ppo_policy_loss, policy_inputs(shape, spread=1.5), random_mask(shape, keep, empty_rows),
               clip_eps=clip_eps, clip_eps_high=clip_eps_high, dual_clip=dual_clip, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fully_masked_batch(backend, reduction):
    x = torch.randn(3, 7, device=backend.device, requires_grad=True)
    mask = torch.zeros(3, 7, dtype=torch.bool, device=backend.device)
    loss, stats = ops.ppo_policy_loss(x, torch.randn(3, 7, device=backend.device), torch.randn(3, 7, device=backend.device),
                                      mask, reduction=reduction)
    loss.backward()
    assert loss.item() == 0 and all(v.item() == 0 for v in stats.values())
    assert (x.grad == 0).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 23), (6, 1), (19,), (2, 3, 11)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shapes(backend, shape, reduction):
    check_loss(backend, ops.ppo_policy_loss, policy_inputs(shape), random_mask(shape, empty_rows=0), reduction=reduction)


def test_large_log_ratio_is_clamped(backend):
    """|logprobs - old_logprobs| > 20: the ratio saturates at e^+-20 and carries no gradient."""
    logprobs = torch.zeros(2, 6)
    old = torch.tensor([[-25.0, -19.5, 0.0, 19.5, 25.0, 30.0]] * 2)
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, 1.0], [2.0, 2.0, 2.0, -2.0, -2.0, 2.0]])  # no cancellation
    mask = torch.ones(2, 6, dtype=torch.bool)
    for reduction in REDUCTIONS:
        check_loss(backend, ops.ppo_policy_loss, [logprobs, old, advantages], mask, clip_eps=1e9, reduction=reduction)


def test_noncontiguous_and_mixed_dtypes(backend):
    logprobs, old, advantages = [t.t() for t in policy_inputs((31, 4))]  # [4, 31] transposed views
    mask = random_mask((31, 4)).t()
    x = logprobs.to(backend.device, torch.bfloat16).requires_grad_()
    loss, stats = ops.ppo_policy_loss(x, old.to(backend.device), advantages.to(backend.device).half(),
                                      mask.to(backend.device), reduction="seq_mean_token_mean")
    loss.backward()
    y = logprobs.bfloat16().double().requires_grad_()  # the stored values
    want, want_stats = reference.ppo_policy_loss(y, old.double(), advantages.half().double(), mask,
                                                 reduction="seq_mean_token_mean")
    want.backward()
    assert_close(loss, want, atol=1e-5, what="loss")
    assert_close(stats["approx_kl"], want_stats["approx_kl"], atol=1e-5, what="approx_kl")
    assert x.grad.dtype == torch.bfloat16 and x.grad.shape == x.shape
    assert_grad_close(x.grad, y.grad, torch.bfloat16)


def test_float_mask(backend):
    shape = (3, 10)
    mask = random_mask(shape)
    check_loss(backend, ops.ppo_policy_loss, policy_inputs(shape), mask.float())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_garbage_at_masked_tokens_does_not_leak(backend, reduction):
    shape = (3, 12)
    check_loss(backend, ops.ppo_policy_loss, policy_inputs(shape), random_mask(shape), garbage=float("nan"),
               reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triton_partials_path(triton_partials, reduction):
    """Many programs writing row partials, then the one-program finalize."""
    shape = (9, 21)
    check_loss(triton_partials, ops.ppo_policy_loss, policy_inputs(shape), random_mask(shape, empty_rows=3),
               dual_clip=2.5, reduction=reduction)


def test_only_logprobs_get_gradient(backend):
    check_only_first_input_gets_gradient(backend, ops.ppo_policy_loss, policy_inputs((2, 5)))


def test_bad_inputs(backend):
    d = backend.device
    lp, old, adv = torch.randn(2, 5, device=d), torch.randn(2, 5, device=d), torch.randn(2, 5, device=d)
    mask = torch.ones(2, 5, dtype=torch.bool, device=d)
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="clip_eps"):
            ops.ppo_policy_loss(lp, old, adv, mask, clip_eps=bad)
    with pytest.raises(ValueError, match="clip_eps_high"):
        ops.ppo_policy_loss(lp, old, adv, mask, clip_eps_high=0.0)
    for bad in (1.0, 0.5, -2.0):
        with pytest.raises(ValueError, match="dual_clip"):
            ops.ppo_policy_loss(lp, old, adv, mask, dual_clip=bad)
    with pytest.raises(ValueError, match="reduction"):
        ops.ppo_policy_loss(lp, old, adv, mask, reduction="mean")
    with pytest.raises(TypeError, match="reduction"):
        ops.ppo_policy_loss(lp, old, adv, mask, reduction=None)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        ops.ppo_policy_loss(lp, old[:, :4], adv, mask)
    with pytest.raises(ValueError, match="advantages has shape"):
        ops.ppo_policy_loss(lp, old, adv.t(), mask)
    with pytest.raises(ValueError, match="mask has shape"):
        ops.ppo_policy_loss(lp, old, adv, mask[0])
    with pytest.raises(ValueError, match="advantages is on"):
        ops.ppo_policy_loss(lp, old, adv.to("meta"), mask)
    with pytest.raises(ValueError, match="mask is on"):
        ops.ppo_policy_loss(lp, old, adv, mask.to("meta"))
    with pytest.raises(TypeError, match="logprobs must be float"):
        ops.ppo_policy_loss(lp.long(), old, adv, mask)
    with pytest.raises(TypeError, match="old_logprobs must be float"):
        ops.ppo_policy_loss(lp, old.double(), adv, mask)
    with pytest.raises(TypeError, match="advantages must be a torch.Tensor"):
        ops.ppo_policy_loss(lp, old, 1.0, mask)
    with pytest.raises(ValueError, match="logprobs is empty"):
        ops.ppo_policy_loss(lp[:0], old[:0], adv[:0], mask[:0])
    assert math.isfinite(ops.ppo_policy_loss(lp, old, adv, mask)[0].item())


def test_custom_op_registration(backend):
    inputs = [t.requires_grad_() if i == 0 else t for i, t in enumerate(policy_inputs((3, 7)))]
    opcheck(backend, torch.ops.fastrlhf.ppo_policy_loss.default, *inputs, random_mask((3, 7)), 0.2, 0.28, 3.0,
            REDUCTIONS.index("seq_mean_token_mean"))
