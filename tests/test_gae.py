import importlib

import pytest
import torch
from helpers import assert_close, random_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrlhf import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]



def check_against_reference(backend, rewards, values, mask, *, gamma, lam):
    """Both outputs vs the float64 reference on the same stored inputs."""
    got = ops.gae(rewards.to(backend.device), values.to(backend.device), mask.to(backend.device), gamma=gamma,
                  lam=lam)
    want = reference.gae(rewards.double(), values.double(), mask, gamma=gamma, lam=lam)
    scale = 1 + want[0].abs().max().item()  # errors grow with the sums the recurrence builds
    for name, g, w in zip(("advantages", "returns"), got, want):
        assert g.dtype == torch.float32 and g.shape == rewards.shape
        assert_close(g, w, atol=2e-6 * scale, rtol=1e-5, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 45), (45,), (2, 3, 17), (1, 130)])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8)])
def test_matches_reference(backend, dtype, shape, gamma, lam):
    rewards, values = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    check_against_reference(backend, rewards, values, random_mask(shape), gamma=gamma, lam=lam)


@st.composite
def gae_inputs(draw):
    rows, T = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["random", "prefix", "empty", "full"]))
    mask = torch.rand(rows, T, generator=generator) < draw(st.floats(0.0, 1.0))
    if kind == "prefix":  # right-padded sequences, some of them empty
        mask = torch.arange(T) < torch.randint(0, T + 1, (rows, 1), generator=generator)
    elif kind in ("empty", "full"):
        mask = torch.full((rows, T), kind == "full")
    rewards = torch.randn(rows, T, generator=generator) * draw(st.floats(0.1, 10.0))
    values = torch.randn(rows, T, generator=generator)
    return rewards, values, mask, draw(st.floats(0.0, 1.0)), draw(st.floats(0.0, 1.0))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=gae_inputs())
def test_property_matches_reference(backend, inputs):
    rewards, values, mask, gamma, lam = inputs
    check_against_reference(backend, rewards, values, mask, gamma=gamma, lam=lam)


def test_undiscounted_identity(backend):
    """gamma = lam = 1 and a full mask: A_t = sum_{k >= t} r_k - v_t, independent of the reference."""
    rewards, values = torch.randn(3, 29, dtype=torch.float64), torch.randn(3, 29, dtype=torch.float64)
    advantages, returns = ops.gae(rewards.float().to(backend.device), values.float().to(backend.device),
                                  torch.ones(3, 29, dtype=torch.bool, device=backend.device), gamma=1.0, lam=1.0)
    suffix_sums = rewards.flip(-1).cumsum(-1).flip(-1)
    assert_close(advantages, suffix_sums - values, atol=1e-5, what="advantages")
    assert_close(returns, suffix_sums, atol=1e-5, what="returns")


def test_one_step_identity(backend):
    """lam = 0: A_t = r_t + gamma * v_{t+1} - v_t on masked tokens (the TD error), 0 elsewhere."""
    rewards, values, mask = torch.randn(2, 19), torch.randn(2, 19), random_mask((2, 19))
    advantages, _ = ops.gae(rewards.to(backend.device), values.to(backend.device), mask.to(backend.device),
                            gamma=0.5, lam=0.0)
    r, v = rewards * mask, values * mask
    td = r + 0.5 * torch.cat([v[:, 1:], torch.zeros(2, 1)], 1) - v
    assert_close(advantages, td, atol=1e-6, what="advantages")


def test_many_chunks(backend, monkeypatch):
    """Rows longer than one Triton chunk: the carry crosses chunk boundaries (chunks of 16 here)."""
    monkeypatch.setattr(importlib.import_module("fastrlhf.kernels.gae"), "_MAX_BLOCK_T", 16)
    shape = (3, 83)
    check_against_reference(backend, torch.randn(shape), torch.randn(shape), random_mask(shape), gamma=0.99,
                            lam=0.9)


def test_fully_masked_batch(backend):
    rewards = torch.randn(2, 3, 7, device=backend.device)
    advantages, returns = ops.gae(rewards, rewards, torch.zeros(2, 3, 7, device=backend.device))
    assert (advantages == 0).all() and (returns == 0).all()


def test_mask_forms_and_layouts(backend):
    """0/1 float and integer masks, mixed input dtypes and non-contiguous inputs."""
    full = torch.randn(2, 10, 14)
    check_against_reference(backend, full.transpose(1, 2), torch.randn(2, 14, 10).bfloat16(),
                            random_mask((2, 14, 10)).float(), gamma=0.95, lam=0.9)
    check_against_reference(backend, full[:, ::2], full[:, 1::2], random_mask((2, 5, 14)).long(), gamma=1.0, lam=0.95)


def test_masked_out_positions_are_never_read(backend):
    """nan and inf at masked-out positions change nothing (the reference and the kernels select, not multiply)."""
    rewards, values, mask = torch.randn(3, 17), torch.randn(3, 17), random_mask((3, 17))
    garbage = [t.masked_fill(~mask, bad) for t, bad in ((rewards, float("nan")), (values, float("inf")))]
    got = ops.gae(*(t.to(backend.device) for t in garbage), mask.to(backend.device), gamma=0.9, lam=0.8)
    want = reference.gae(rewards.double(), values.double(), mask, gamma=0.9, lam=0.8)
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-5, what="gae")


def test_no_gradient(backend):
    rewards = torch.randn(2, 5, device=backend.device, requires_grad=True)
    advantages, returns = ops.gae(rewards, rewards * 2, torch.ones(2, 5, device=backend.device))
    assert not advantages.requires_grad and not returns.requires_grad


def test_bad_inputs(backend):
    x = torch.randn(2, 5, device=backend.device)
    mask = torch.ones(2, 5, dtype=torch.bool, device=backend.device)
    for name, value in (("gamma", 1.5), ("gamma", -0.1), ("lam", 2.0), ("lam", float("nan"))):
        with pytest.raises(ValueError, match=name):
            ops.gae(x, x, mask, **{name: value})
    with pytest.raises(ValueError, match="values has shape"):
        ops.gae(x, x[:, :4], mask)
    with pytest.raises(ValueError, match="mask has shape"):
        ops.gae(x, x, mask[:, :4])
    with pytest.raises(ValueError, match="values is on"):
        ops.gae(x, x.to("meta"), mask)
    with pytest.raises(TypeError, match="rewards"):
        ops.gae(x.double(), x, mask)
    with pytest.raises(TypeError, match="values"):
        ops.gae(x, x.long(), mask)
    with pytest.raises(TypeError, match="mask"):
        ops.gae(x, x, mask.to(torch.complex64))
    with pytest.raises(ValueError, match="rewards is empty"):
        ops.gae(x[:0], x[:0], mask[:0])
    with pytest.raises(ValueError, match="time dimension"):
        ops.gae(x[0, 0], x[0, 0], mask[0, 0])
    if backend.device.type == "cpu":  # data checks run on CPU tensors always
        for name in ("rewards", "values"):
            for bad in (float("nan"), float("inf")):
                args = {"rewards": x.clone(), "values": x.clone()}
                args[name][1, 3] = bad
                with pytest.raises(ValueError, match=f"{name} contains NaN or inf at a masked position"):
                    ops.gae(args["rewards"], args["values"], mask)
    if backend.name == "cpp":  # the C++ kernel's own check, for direct calls
        wrong = x.clone()
        wrong[0, 0] = float("nan")
        with pytest.raises(ValueError, match="values contains NaN or inf"):
            torch.ops.fastrlhf.gae(x, wrong, mask, 1.0, 0.95)
        with pytest.raises(ValueError, match="overflow"):
            torch.ops.fastrlhf.gae(torch.full((2, 5), 3e38), x, mask, 1.0, 1.0)
