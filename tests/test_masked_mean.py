import pytest
import torch
from helpers import assert_close, assert_grad_close, leaf
from reduction_testing import DTYPES, opcheck, triton_partials  # noqa: F401

from fastrlhf import ops, reference


def check_against_reference(backend, x, mask, dim, dtype=torch.float32):
    """Value and gradient (for a random upstream gradient) vs the float64 reference on the same stored x."""
    stored = x.to(dtype)
    got_x, want_x = leaf(stored, backend.device), leaf(stored, "cpu", torch.float64)
    got = ops.masked_mean(got_x, mask.to(backend.device), dim)
    want = reference.masked_mean(want_x, mask, dim)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_close(got, want, atol=1e-5 * (1 + want.abs().max().item()), what="mean")
    weight = torch.randn(want.shape, dtype=torch.float64)
    (got.double().cpu() * weight).sum().backward()
    (want * weight).sum().backward()
    assert got_x.grad.dtype == dtype and got_x.grad.shape == x.shape
    assert_grad_close(got_x.grad, want_x.grad, dtype)
    assert not torch.isnan(got_x.grad).any()
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((1,), None), ((37,), None), ((37,), 0), ((5, 33), None), ((5, 33), -1),
                                       ((5, 33), 0), ((2, 3, 17), 1), ((2, 3, 17), -3), ((1, 1), 1), ((40, 7), 1)])
def test_matches_reference(backend, shape, dim, dtype):
    mask = torch.rand(shape) < 0.6
    check_against_reference(backend, torch.randn(shape) * 3 + 1, mask, dim, dtype)


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_empty_masks_give_zero(backend, dim):
    """Fully masked lines (and a fully masked tensor) give 0 and a 0 gradient, never nan."""
    mask = torch.rand(6, 9) < 0.5
    mask[2] = False
    mask[:, 4] = False
    check_against_reference(backend, torch.randn(6, 9), mask, dim)
    got = check_against_reference(backend, torch.randn(6, 9), torch.zeros(6, 9, dtype=torch.bool), dim)
    assert (got == 0).all()


def test_noncontiguous_and_float_mask(backend):
    x = torch.randn(13, 4).t()  # [4, 13], transposed
    mask = (torch.rand(13, 4) < 0.5).float().t()  # 0/1 numbers
    for dim in (None, 0, 1):
        check_against_reference(backend, x, mask, dim)


@pytest.mark.parametrize("dim", [None, 0, 2])
def test_triton_partials_path(triton_partials, dim):
    """The whole-tensor mean through per-program partials, then the finalize."""
    check_against_reference(triton_partials, torch.randn(3, 5, 7) + 5, torch.rand(3, 5, 7) < 0.7, dim)


@pytest.mark.parametrize("dim", [None, 0, 2])
def test_several_chunks(backend, dim):
    """More elements than one C++ thread chunk (2^15) or one Triton block: partial results merged."""
    check_against_reference(backend, torch.randn(3, 40, 700) + 5, torch.rand(3, 40, 700) < 0.7, dim)


@pytest.mark.parametrize("dim", [None, 0, -1])
def test_masked_out_positions_are_never_read(backend, dim):
    """nan and inf where the mask is 0 change no value and no gradient (whose entries there are 0)."""
    x, mask = torch.randn(5, 9), torch.rand(5, 9) < 0.6
    garbage = leaf(x.masked_fill(~mask, float("nan")).masked_fill(~mask & (torch.rand(5, 9) < 0.5), float("inf")),
                   backend.device)
    got = ops.masked_mean(garbage, mask.to(backend.device), dim)
    (got * torch.randn(got.shape, device=backend.device)).sum().backward()
    assert_close(got, reference.masked_mean(x.double(), mask, dim), atol=1e-5, what="mean")
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[~mask] == 0).all()


def test_large_offset(backend):
    """A mean far from 0 (|mean| >> std) keeps its precision."""
    x = 1000 + torch.randn(4, 300)
    check_against_reference(backend, x, torch.rand(4, 300) < 0.5, None)


def test_bad_inputs(backend):
    x = torch.randn(2, 3, device=backend.device)
    mask = torch.ones(2, 3, dtype=torch.bool, device=backend.device)
    for dim in (2, -3):
        with pytest.raises(ValueError, match="dim must be in"):
            ops.masked_mean(x, mask, dim)
    for dim in (1.0, (0, 1), True):
        with pytest.raises(TypeError, match="dim"):
            ops.masked_mean(x, mask, dim)
    with pytest.raises(ValueError, match="mask has shape"):
        ops.masked_mean(x, mask.t())
    with pytest.raises(ValueError, match="mask is on"):
        ops.masked_mean(x, mask.to("meta"))
    with pytest.raises(TypeError, match="x must be float"):
        ops.masked_mean(x.long(), mask)
    with pytest.raises(ValueError, match="x is empty"):
        ops.masked_mean(x[:0], mask[:0])


@pytest.mark.parametrize("view", [(1, 60, 1), (3, 4, 5)])
def test_custom_op_registration(backend, view):
    for dim in (None, 1):
        opcheck(backend, torch.ops.fastrlhf.masked_mean.default, torch.randn(view, requires_grad=True),
                torch.rand(view) < 0.5, dim)
