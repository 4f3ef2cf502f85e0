import pytest
import torch
from helpers import assert_close, assert_grad_close, leaf

from fastrlhf import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_labels(shape, vocab, ignore_every=3):
    labels = torch.randint(0, vocab, shape)
    flat = labels.view(-1)
    flat[1::ignore_every] = -100  # some ignored positions in every batch
    return labels


def check_against_reference(backend, logits, labels, dtype, *, temperature=1.0, entropy=True):
    """Values and gradients through both outputs vs the float64 reference on the same stored logits."""
    stored = logits.to(dtype)
    x = leaf(stored, backend.device)
    y = leaf(stored, "cpu", torch.float64)
    lab = labels.to(backend.device)
    got = ops.token_logprobs(x, lab, temperature=temperature, return_entropy=entropy)
    want = reference.token_logprobs(y, labels, temperature=temperature, return_entropy=entropy)
    got, want = (got, want) if entropy else ((got,), (want,))
    weights = [torch.randn(labels.shape, dtype=torch.float64) for _ in got]
    sum(((g.cpu().double() * w).sum() for g, w in zip(got, weights))).backward()
    sum(((w_ * w).sum() for w_, w in zip(want, weights))).backward()
    for name, g, w in zip(("logprobs", "entropy"), got, want):
        assert g.dtype == torch.float32 and g.shape == labels.shape
        assert_close(g, w, atol=2e-5, rtol=2e-5, what=name)
    assert x.grad.dtype == dtype and x.grad.shape == logits.shape
    assert_grad_close(x.grad, y.grad, dtype)
    assert not torch.isnan(x.grad).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (3, 4, 5003), (1, 2, 50007)])
def test_matches_reference(backend, dtype, shape):
    logits = torch.randn(shape) * 3
    check_against_reference(backend, logits, random_labels(shape[:-1], shape[-1]), dtype)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
@pytest.mark.parametrize("entropy", [False, True])
def test_temperature(backend, temperature, entropy):
    logits = torch.randn(4, 6, 301)
    check_against_reference(backend, logits, random_labels((4, 6), 301), torch.float32,
                            temperature=temperature, entropy=entropy)


@pytest.mark.parametrize("leading", [(5,), (2, 3, 2)])
def test_leading_shapes(backend, leading):
    check_against_reference(backend, torch.randn(*leading, 129), random_labels(leading, 129), torch.float32)


def test_bf16_large_magnitude(backend):
    logits = torch.randn(3, 5, 4099) * 30  # |z| ~ 30 and beyond: needs an fp32 max-shifted sum
    check_against_reference(backend, logits, random_labels((3, 5), 4099), torch.bfloat16)


def test_negative_infinity_logits(backend):
    logits = torch.randn(2, 4, 97)
    logits[..., ::5] = float("-inf")  # masked-out vocabulary entries
    labels = torch.randint(0, 97, (2, 4))
    labels[labels % 5 == 0] += 1
    check_against_reference(backend, logits, labels, torch.float32)


def test_fully_ignored_batch(backend):
    x = leaf(torch.randn(2, 3, 17), backend.device)
    labels = torch.full((2, 3), -7, device=backend.device)
    lp, ent = ops.token_logprobs(x, labels, ignore_index=-7, return_entropy=True)
    (lp.sum() + ent.sum()).backward()
    assert (lp == 0).all() and (ent == 0).all() and (x.grad == 0).all()


def test_sliced_logits_are_not_copied_wrong(backend):
    """logits[:, :-1] (the usual shift) and a transposed vocabulary dim give the right answer."""
    full = torch.randn(3, 6, 41)
    labels = random_labels((3, 5), 41)
    for view in (lambda t: t[:, :-1], lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)[:, 1:]):
        x = leaf(full, backend.device)
        got = ops.token_logprobs(view(x), labels.to(backend.device))
        got.sum().backward()
        y = leaf(full, "cpu", torch.float64)
        reference.token_logprobs(view(y), labels).sum().backward()
        assert_close(got, reference.token_logprobs(view(full.double()), labels), atol=1e-5, what="logprobs")
        assert_grad_close(x.grad, y.grad, torch.float32)


def test_only_one_output_used(backend):
    """The entropy alone carries gradient when the logprobs are unused (and vice versa)."""
    logits = torch.randn(2, 3, 50)
    labels = random_labels((2, 3), 50)
    for which in (0, 1):
        x = leaf(logits, backend.device)
        y = leaf(logits, "cpu", torch.float64)
        ops.token_logprobs(x, labels.to(backend.device), return_entropy=True)[which].sum().backward()
        reference.token_logprobs(y, labels, return_entropy=True)[which].sum().backward()
        assert_grad_close(x.grad, y.grad, torch.float32)


def test_bad_inputs(backend):
    logits = torch.randn(2, 3, 10, device=backend.device)
    labels = torch.randint(0, 10, (2, 3), device=backend.device)
    with pytest.raises(TypeError, match="labels"):
        ops.token_logprobs(logits, labels.float())
    with pytest.raises(TypeError, match="logits"):
        ops.token_logprobs(logits.long(), labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        ops.token_logprobs(logits, labels[:, :2])
    with pytest.raises(ValueError, match="labels is on"):
        ops.token_logprobs(logits, labels.to("meta"))
    with pytest.raises(ValueError, match="temperature"):
        ops.token_logprobs(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="logits is empty"):
        ops.token_logprobs(logits[:0], labels[:0])
    if backend.device.type == "cpu":  # data checks run on CPU tensors always
        for bad in (10, -1):
            wrong = labels.clone()
            wrong[1, 2] = bad
            with pytest.raises(ValueError, match=f"labels must be in \\[0, 10\\).*found {bad}"):
                ops.token_logprobs(logits, wrong)
