import pytest
import torch
from helpers import assert_close, assert_grad_close, leaf

from fastrlhf import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CLAMPS = [None, 0.7]


def check_against_reference(backend, logprobs, ref_logprobs, *, estimator, clamp):
    """Values and both gradients vs the float64 reference on the same stored inputs."""
    x, y = leaf(logprobs, backend.device), leaf(ref_logprobs, backend.device)
    x64, y64 = leaf(logprobs, "cpu", torch.float64), leaf(ref_logprobs, "cpu", torch.float64)
    got = ops.kl_penalty(x, y, estimator=estimator, clamp=clamp)
    want = reference.kl_penalty(x64, y64, estimator=estimator, clamp=clamp)
    assert got.dtype == torch.float32 and got.shape == logprobs.shape
    assert_close(got, want, atol=1e-5, rtol=1e-5, what="kl")
    weights = torch.randn(logprobs.shape, dtype=torch.float64)
    (got.cpu().double() * weights).sum().backward()
    (want * weights).sum().backward()
    for name, g, w, stored in (("grad_logprobs", x.grad, x64.grad, logprobs),
                               ("grad_ref", y.grad, y64.grad, ref_logprobs)):
        assert g.dtype == stored.dtype and g.shape == stored.shape
        assert_grad_close(g, w, stored.dtype, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", CLAMPS)
@pytest.mark.parametrize("estimator", reference.KL_ESTIMATORS)
@pytest.mark.parametrize("shape", [(1,), (3, 37), (2, 3, 5)])
def test_matches_reference(backend, dtype, clamp, estimator, shape):
    logprobs, ref_logprobs = (torch.randn(shape) * 1.5).to(dtype), (torch.randn(shape) * 1.5).to(dtype)
    check_against_reference(backend, logprobs, ref_logprobs, estimator=estimator, clamp=clamp)


@pytest.mark.parametrize("estimator", reference.KL_ESTIMATORS)
def test_many_blocks(backend, estimator):
    """More elements than one Triton program or one C++ thread chunk covers."""
    logprobs, ref_logprobs = torch.randn(7, 10001), torch.randn(7, 10001)
    check_against_reference(backend, logprobs, ref_logprobs, estimator=estimator, clamp=2.0)


def test_mixed_dtypes(backend):
    """float32 policy log-probs with bfloat16 reference ones: each gradient in its input's dtype."""
    check_against_reference(backend, torch.randn(4, 9), torch.randn(4, 9).bfloat16(), estimator="k3", clamp=None)


def test_clamp_bounds_and_overflow(backend):
    """On the bounds the gradient passes (torch.clamp does); far below -clamp, k3 stays finite."""
    ref_logprobs = torch.zeros(5)
    logprobs = torch.tensor([-0.5, 0.5, 0.25, 0.0, -300.0])
    for estimator in reference.KL_ESTIMATORS:
        check_against_reference(backend, logprobs, ref_logprobs, estimator=estimator, clamp=0.5)
    x = leaf(logprobs, backend.device)
    kl = ops.kl_penalty(x, ref_logprobs.to(backend.device), estimator="k3", clamp=20.0)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and kl[-1] == 20.0 and x.grad[-1] == 0


@pytest.mark.parametrize("clamp", CLAMPS)
def test_nan_like_reference(backend, clamp):
    """A nan log-prob gives what torch gives: nan out, and a nan or zero gradient as autograd has it."""
    logprobs, ref_logprobs = torch.tensor([float("nan"), 0.3, -2.0]), torch.tensor([0.1, float("nan"), 0.2])
    for estimator in reference.KL_ESTIMATORS:
        x, y = leaf(logprobs, backend.device), leaf(ref_logprobs, backend.device)
        x64, y64 = leaf(logprobs, "cpu", torch.float64), leaf(ref_logprobs, "cpu", torch.float64)
        got = ops.kl_penalty(x, y, estimator=estimator, clamp=clamp)
        want = reference.kl_penalty(x64, y64, estimator=estimator, clamp=clamp)
        got.sum().backward()
        want.sum().backward()
        assert_close(got, want, atol=1e-6, rtol=1e-5, what=f"{estimator} kl")
        assert_close(x.grad, x64.grad, atol=1e-6, rtol=1e-5, what=f"{estimator} grad_logprobs")
        assert_close(y.grad, y64.grad, atol=1e-6, rtol=1e-5, what=f"{estimator} grad_ref")


@pytest.mark.parametrize("which", [0, 1])
def test_one_input_needs_grad(backend, which):
    """The usual case: ref_logprobs is a constant; only the input that requires grad gets one."""
    tensors = [torch.randn(3, 11, device=backend.device) for _ in range(2)]
    tensors[which].requires_grad_()
    ops.kl_penalty(*tensors, estimator="k2").sum().backward()
    x = tensors[0].detach() - tensors[1].detach()
    assert tensors[1 - which].grad is None
    assert_close(tensors[which].grad, x if which == 0 else -x, atol=1e-6, what="grad")


def test_non_contiguous(backend):
    full = torch.randn(2, 9, 6)
    assert not full.transpose(1, 2).is_contiguous() and not full[:, ::3].is_contiguous()
    check_against_reference(backend, full.transpose(1, 2), torch.randn(2, 6, 9), estimator="abs", clamp=None)
    check_against_reference(backend, full[:, ::3], full[:, 1::3], estimator="k3", clamp=1.0)


def test_bad_inputs(backend):
    x = torch.randn(2, 5, device=backend.device)
    with pytest.raises(ValueError, match="estimator"):
        ops.kl_penalty(x, x, estimator="k4")
    for clamp in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clamp"):
            ops.kl_penalty(x, x, clamp=clamp)
    with pytest.raises(ValueError, match="ref_logprobs has shape"):
        ops.kl_penalty(x, x[:, :4])
    with pytest.raises(ValueError, match="ref_logprobs is on"):
        ops.kl_penalty(x, x.to("meta"))
    with pytest.raises(TypeError, match="logprobs"):
        ops.kl_penalty(x.double(), x)
    with pytest.raises(TypeError, match="ref_logprobs"):
        ops.kl_penalty(x, x.long())
    with pytest.raises(TypeError, match="ref_logprobs"):
        ops.kl_penalty(x, x.tolist())
    with pytest.raises(ValueError, match="logprobs is empty"):
        ops.kl_penalty(x[:0], x[:0])
