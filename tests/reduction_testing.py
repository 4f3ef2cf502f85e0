"""Inputs, comparisons and fixtures shared by the masked reduction tests (masked_mean, masked_whiten, PPO losses)."""
import pytest
import torch
from helpers import assert_close, assert_grad_close, leaf

from fastrlhf import reference
from fastrlhf.kernels import _masked_reduction

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def check_loss(backend, op, inputs, mask, dtype=torch.float32, garbage=None, **options):
    """op (a fastrlhf.ops loss) vs its float64 reference on the same stored inputs: loss, stats and the
    gradient w.r.t. the first input. With `garbage` (nan, inf), the op's inputs hold it at masked-out
    tokens and must give the reference's results on the clean inputs. Returns the op's (loss, stats)."""
    stored = [t.to(dtype) for t in inputs]
    given = stored if garbage is None else [t.masked_fill(~mask.bool(), garbage) for t in stored]
    x = leaf(given[0], backend.device)
    others = [t.to(backend.device) for t in given[1:]]
    loss, stats = op(x, *others, mask.to(backend.device), **options)
    y = leaf(stored[0], "cpu", torch.float64)
    want_loss, want_stats = getattr(reference, op.__name__)(y, *[t.double() for t in stored[1:]], mask, **options)
    weight = torch.randn(()).item()  # a non-unit upstream gradient
    (loss * weight).backward()
    (want_loss * weight).backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    scale = 1 + want_loss.abs().item()
    assert_close(loss, want_loss, atol=2e-6 * scale, rtol=1e-5, what="loss")
    assert stats.keys() == want_stats.keys()
    for name, value in stats.items():
        assert value.dtype == torch.float32 and value.dim() == 0 and not value.requires_grad, name
        assert_close(value, want_stats[name], atol=2e-6, rtol=1e-5, what=name)
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert_grad_close(x.grad, y.grad, dtype)
    assert not torch.isnan(x.grad).any()
    return loss, stats


def opcheck(backend, op, *args):
    """torch.library.opcheck of a registered op (schema, fake kernel, autograd registration) on this backend."""
    if backend.name == "reference":
        pytest.skip("the reference backend calls no registered op")
    torch.library.opcheck(op, tuple(a.to(backend.device) if isinstance(a, torch.Tensor) else a for a in args))


def check_only_first_input_gets_gradient(backend, op, inputs):
    tensors = [t.to(backend.device).requires_grad_() for t in inputs]
    loss, _ = op(*tensors, torch.ones(inputs[0].shape, dtype=torch.bool, device=backend.device))
    loss.backward()
    assert tensors[0].grad is not None and all(t.grad is None for t in tensors[1:])


@pytest.fixture
def triton_partials(backend, monkeypatch):
    """Triton's partials path (many programs, then the finalize) even for small test inputs, with tiny
    blocks so that programs stride over several blocks and merge several steps of partials. The other
    backends have no such path: skipped."""
    if backend.name != "triton":
        pytest.skip("only the Triton kernels have a partials path")
    monkeypatch.setattr(_masked_reduction, "SINGLE_PROGRAM_MAX", 8)
    monkeypatch.setattr(_masked_reduction, "MAX_PROGRAMS", 3)
    monkeypatch.setattr(_masked_reduction, "MOMENTS_BLOCK", 16)
    monkeypatch.setattr(_masked_reduction, "PARTIALS_BLOCK", 2)
    return backend
