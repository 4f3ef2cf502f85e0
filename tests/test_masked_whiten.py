import pytest
import torch
from helpers import assert_close
from reduction_testing import DTYPES, opcheck, triton_partials  # noqa: F401

from fastrlhf import ops, reference


def check_against_reference(backend, x, mask, dtype=torch.float32, atol=2e-5, **options):
    stored = x.to(dtype)
    got = ops.masked_whiten(stored.to(backend.device), mask.to(backend.device), **options)
    want = reference.masked_whiten(stored.double(), mask, **options)
    assert got.dtype == torch.float32 and got.shape == x.shape and not got.requires_grad
    assert_close(got, want, atol=atol * (1 + want.abs().max().item()), what="whitened")
    assert (got[~mask.bool()] == 0).all()
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift_mean", [True, False])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shape", [(1,), (2,), (37,), (4, 33), (2, 3, 7)])
def test_matches_reference(backend, shape, shift_mean, unbiased, dtype):
    mask = torch.rand(shape) < 0.7
    mask.view(-1)[0] = True  # at least one element
    check_against_reference(backend, torch.randn(shape) * 2 + 0.5, mask, dtype, shift_mean=shift_mean,
                            unbiased=unbiased)


@pytest.mark.parametrize("unbiased", [False, True])
def test_large_mean_is_stable(backend, unbiased):
    """|mean| / std = 1e4: E[x^2] - E[x]^2 in float32 would lose the variance entirely. What remains is
    float32's rounding of x - mean (~1e4 * 2^-24 in units of std)."""
    x = 1e4 + torch.randn(6, 500)
    got = check_against_reference(backend, x, torch.rand(6, 500) < 0.8, atol=2e-4, unbiased=unbiased)
    assert 0.9 < got.std().item() < 1.1


@pytest.mark.parametrize("unbiased", [False, True])
def test_degenerate_masks(backend, unbiased):
    """A fully masked tensor gives zeros; one masked element (n - 1 clamped to 1) gives 0 there."""
    x = torch.randn(3, 8)
    got = check_against_reference(backend, x, torch.zeros(3, 8, dtype=torch.bool), unbiased=unbiased)
    assert (got == 0).all()
    one = torch.zeros(3, 8, dtype=torch.bool)
    one[1, 5] = True
    check_against_reference(backend, x, one, unbiased=unbiased, shift_mean=False)


def test_masked_out_positions_are_never_read(backend):
    x, mask = torch.randn(4, 11), torch.rand(4, 11) < 0.7
    garbage = x.masked_fill(~mask, float("inf")).masked_fill(~mask & (torch.rand(4, 11) < 0.5), float("nan"))
    got = ops.masked_whiten(garbage.to(backend.device), mask.to(backend.device), unbiased=True)
    assert_close(got, reference.masked_whiten(x.double(), mask, unbiased=True), atol=2e-5, what="whitened")


def test_eps_and_constant_values(backend):
    x = torch.full((2, 9), 3.0)
    check_against_reference(backend, x, torch.rand(2, 9) < 0.5, eps=1e-2, shift_mean=False)


def test_triton_partials_path(triton_partials):
    for unbiased in (False, True):
        check_against_reference(triton_partials, torch.randn(3, 5, 7) * 4 - 7, torch.rand(3, 5, 7) < 0.7,
                                unbiased=unbiased)


def test_several_chunks(backend):
    """More elements than one C++ thread chunk (2^15) or one Triton block: moments merged (Chan)."""
    for unbiased in (False, True):
        check_against_reference(backend, torch.randn(4, 50, 1000) * 4 - 7, torch.rand(4, 50, 1000) < 0.7,
                                unbiased=unbiased)


@pytest.mark.parametrize("scale", [1e15, 1e30, 1e37])
def test_huge_values(backend, scale):
    """|x - mean| past 1e19: M2 overflows float32, not the whitened values (values near 1e30 gave nan)."""
    for x in (scale * torch.randn(6, 50), scale * (1 + 0.01 * torch.randn(6, 50))):
        check_against_reference(backend, x, torch.rand(6, 50) < 0.8, atol=1e-5)


def test_noncontiguous_float_mask_and_no_gradient(backend):
    x = torch.randn(9, 4, requires_grad=True)
    mask = (torch.rand(9, 4) < 0.6).float()
    got = ops.masked_whiten(x.t().to(backend.device), mask.t().to(backend.device))
    assert not got.requires_grad
    assert_close(got, reference.masked_whiten(x.detach().t().double(), mask.t()), atol=2e-5, what="whitened")


def test_bad_inputs(backend):
    x = torch.randn(2, 3, device=backend.device)
    mask = torch.ones(2, 3, dtype=torch.bool, device=backend.device)
    for eps in (0.0, -1e-8):
        with pytest.raises(ValueError, match="eps"):
            ops.masked_whiten(x, mask, eps=eps)
    with pytest.raises(ValueError, match="mask has shape"):
        ops.masked_whiten(x, mask[:1])
    with pytest.raises(ValueError, match="mask is on"):
        ops.masked_whiten(x, mask.to("meta"))
    with pytest.raises(TypeError, match="x must be float"):
        ops.masked_whiten(x.int(), mask)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        ops.masked_whiten(x, [[True] * 3] * 2)


def test_custom_op_registration(backend):
    opcheck(backend, torch.ops.fastrlhf.masked_whiten.default, torch.randn(5, 8), torch.rand(5, 8) < 0.5, False, True,
            1e-6)
