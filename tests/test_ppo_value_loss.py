import pytest
import torch
from helpers import random_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reduction_testing import (DTYPES, check_loss, check_only_first_input_gets_gradient, opcheck,  # noqa: F401
                               triton_partials)

from fastrlhf import ops, reference

REDUCTIONS = reference.REDUCTIONS


def value_inputs(shape, spread=0.5):
    """values, old_values (moves up to +-spread: many beyond clip_eps) and returns."""
    values = 2 * torch.randn(shape)
    return [values, values - spread * (2 * torch.rand(shape) - 1), 2 * torch.randn(shape)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("clip_eps", [0.2, None])
def test_matches_reference(backend, reduction, dtype, clip_eps):
    shape = (5, 37)
    _, stats = check_loss(backend, ops.ppo_value_loss, value_inputs(shape), random_mask(shape, empty_rows=2), dtype,
                          clip_eps=clip_eps, reduction=reduction)
    assert (stats["clip_frac"] == 0) == (clip_eps is None)


def test_inside_the_clip_range_nothing_is_clipped(backend):
    """|values - old_values| <= clip_eps: the loss is the unclipped one and clip_frac is exactly 0."""
    values = torch.linspace(-3, 3, 40).view(4, 10)
    old = values + torch.linspace(-0.19, 0.19, 40).view(4, 10)
    returns = torch.randn(4, 10)
    mask = torch.ones(4, 10, dtype=torch.bool)
    _, stats = check_loss(backend, ops.ppo_value_loss, [values, old, returns], mask, clip_eps=0.2)
    assert stats["clip_frac"].item() == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 6), tokens=st.integers(1, 40), keep=st.floats(0.0, 1.0), empty_rows=st.integers(0, 3),
       clip_eps=st.none() | st.floats(0.01, 1.0), reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**31))
def test_property(backend, rows, tokens, keep, empty_rows, clip_eps, reduction, seed):
    torch.manual_seed(seed)
    shape = (rows, tokens)
    check_loss(backend, ops.ppo_value_loss, value_inputs(shape, spread=1.0), random_mask(shape, keep, empty_rows),
               clip_eps=clip_eps, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fully_masked_batch(backend, reduction):
    v = torch.randn(2, 9, device=backend.device, requires_grad=True)
    mask = torch.zeros(2, 9, device=backend.device)
    loss, stats = ops.ppo_value_loss(v, torch.randn(2, 9, device=backend.device), torch.randn(2, 9, device=backend.device),
                                     mask, reduction=reduction)
    loss.backward()
    assert loss.item() == 0 and stats["clip_frac"].item() == 0
    assert (v.grad == 0).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 23), (6, 1), (19,), (2, 3, 11)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shapes(backend, shape, reduction):
    check_loss(backend, ops.ppo_value_loss, value_inputs(shape), random_mask(shape, empty_rows=0), reduction=reduction)


def test_noncontiguous(backend):
    inputs = [t.t() for t in value_inputs((17, 3))]
    check_loss(backend, ops.ppo_value_loss, inputs, random_mask((17, 3)).t(), reduction="seq_mean_token_sum")


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_garbage_at_masked_tokens_does_not_leak(backend, garbage):
    shape = (3, 12)
    check_loss(backend, ops.ppo_value_loss, value_inputs(shape), random_mask(shape), garbage=garbage)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triton_partials_path(triton_partials, reduction):
    """Many programs writing row partials, then the one-program finalize."""
    shape = (9, 21)
    check_loss(triton_partials, ops.ppo_value_loss, value_inputs(shape), random_mask(shape, empty_rows=3),
               reduction=reduction)


def test_only_values_get_gradient(backend):
    check_only_first_input_gets_gradient(backend, ops.ppo_value_loss, value_inputs((2, 5)))


def test_bad_inputs(backend):
    d = backend.device
    v, old, ret = torch.randn(2, 5, device=d), torch.randn(2, 5, device=d), torch.randn(2, 5, device=d)
    mask = torch.ones(2, 5, dtype=torch.bool, device=d)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="clip_eps"):
            ops.ppo_value_loss(v, old, ret, mask, clip_eps=bad)
    with pytest.raises(ValueError, match="reduction"):
        ops.ppo_value_loss(v, old, ret, mask, reduction="sum")
    with pytest.raises(ValueError, match="returns has shape"):
        ops.ppo_value_loss(v, old, ret[:1], mask)
    with pytest.raises(ValueError, match="old_values is on"):
        ops.ppo_value_loss(v, old.to("meta"), ret, mask)
    with pytest.raises(TypeError, match="values must be float"):
        ops.ppo_value_loss(v.int(), old, ret, mask)
    with pytest.raises(TypeError, match="mask must be bool"):
        ops.ppo_value_loss(v, old, ret, mask.to(torch.complex64))
    with pytest.raises(ValueError, match="values is empty"):
        ops.ppo_value_loss(v[:, :0], old[:, :0], ret[:, :0], mask[:, :0])


def test_custom_op_registration(backend):
    inputs = [t.requires_grad_() if i == 0 else t for i, t in enumerate(value_inputs((3, 7)))]
    opcheck(backend, torch.ops.fastrlhf.ppo_value_loss.default, *inputs, random_mask((3, 7)), 0.2,
            REDUCTIONS.index("token_mean"))
