import pytest
import torch
from helpers import assert_close, assert_grad_close, leaf
from reduction_testing import opcheck

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


def test_strided_and_narrow_labels(backend):
    """A strided 1-D labels view (read as if contiguous by Triton once) and labels of any integer dtype."""
    logits = torch.randn(6, 13)
    for labels in (torch.randint(0, 13, (12,))[::2], torch.randint(0, 13, (6,), dtype=torch.uint8),
                   torch.randint(0, 13, (6,), dtype=torch.int16), torch.randint(0, 13, (6,), dtype=torch.int32)):
        got = ops.token_logprobs(logits.to(backend.device), labels.to(backend.device))
        assert_close(got, reference.token_logprobs(logits.double(), labels.long()), atol=1e-5, what=str(labels.dtype))


def test_unit_vocabulary_with_any_stride(backend):
    """V = 1 logits whose last stride is not 1 (a column of a wider tensor): valid, log-prob 0."""
    logits = torch.randn(4, 3, 5).transpose(-1, -2)[..., 1:2]
    assert logits.stride(-1) != 1
    check_against_reference(backend, logits, torch.zeros(4, 5, dtype=torch.long), torch.float32)


@pytest.mark.parametrize("temperature", [1e-3, 1e-25])
def test_low_temperature_is_stable(backend, temperature):
    """A peaked row: the label's gradient 1 - p is ~exp(-19370) at T = 1e-3, i.e. 0 (the C++ kernel once
    gave 0.343: 1 - p's rounding error times 1/T); T = 1e-25 stays finite (it once gave inf and nan)."""
    x = leaf(torch.tensor([[19.37, 0.0, -5.1]]), backend.device)
    logprobs, entropy = ops.token_logprobs(x, torch.tensor([0], device=backend.device), temperature=temperature,
                                           return_entropy=True)
    (logprobs.sum() + entropy.sum()).backward()
    assert logprobs.item() == 0 and entropy.item() == 0
    assert (x.grad == 0).all(), x.grad


@pytest.mark.parametrize("temperature, scale", [(0.05, 1.0), (1.0, 100.0), (0.3, 30.0)])
def test_sharp_distributions(backend, temperature, scale):
    """logits / temperature spanning hundreds: gradients as accurate as at T = 1 (eager float32 is exact
    here; the kernels were off by up to 2.4e-4 relative)."""
    shape = (3, 4, 257)
    check_against_reference(backend, torch.randn(shape) * scale, random_labels(shape[:-1], shape[-1]), torch.float32,
                            temperature=temperature)


def test_ignored_rows_are_never_read(backend):
    """nan and inf in the logits of ignored rows change no value and no gradient."""
    logits, labels = torch.randn(2, 5, 31), random_labels((2, 5), 31)
    garbage = logits.clone()
    garbage[labels == -100] = float("nan")
    garbage[0, 1, 3] = float("inf")
    x = leaf(garbage, backend.device)
    got = ops.token_logprobs(x, labels.to(backend.device), return_entropy=True)
    (got[0].sum() + got[1].sum()).backward()
    want = reference.token_logprobs(logits.double(), labels, return_entropy=True)
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-5, what="outputs")
    assert (x.grad[labels == -100] == 0).all() and torch.isfinite(x.grad).all()


def test_registered_ops_validate_their_inputs(backend):
    """torch.ops.fastrlhf.token_logprobs(_backward) called directly: bad shapes and dtypes raise (never a
    crash or garbage); out-of-range labels raise where the C++ kernels read them."""
    if backend.name == "reference":
        pytest.skip("the reference backend calls no registered op")
    d = backend.device
    forward, backward = torch.ops.fastrlhf.token_logprobs.default, torch.ops.fastrlhf.token_logprobs_backward.default
    logits, labels = torch.randn(2, 3, 10, device=d), torch.randint(0, 10, (2, 3), device=d)
    with pytest.raises((ValueError, TypeError), match="labels"):
        forward(logits, labels[:, :2], 1.0, -100, False)
    with pytest.raises((ValueError, TypeError), match="labels"):
        forward(logits, labels.int(), 1.0, -100, False)
    with pytest.raises((ValueError, TypeError), match="logits"):
        forward(logits.double(), labels, 1.0, -100, False)
    _, entropy, stats = forward(logits, labels, 1.0, -100, True)
    with pytest.raises((ValueError, TypeError), match="labels"):
        backward(logits, labels[:1], stats, entropy, None, None, 1.0, -100)
    if backend.name == "cpp":
        wrong = labels.clone()
        wrong[1, 1] = 10**9
        with pytest.raises(ValueError, match="labels must be in"):
            forward(logits, wrong, 1.0, -100, False)
        with pytest.raises(ValueError, match="labels must be in"):
            backward(logits, wrong, stats, entropy, torch.ones(2, 3), None, 1.0, -100)
        with pytest.raises(ValueError, match="stats"):
            backward(logits, labels, stats[:1], entropy, torch.ones(2, 3), None, 1.0, -100)


def test_custom_op_registration(backend):
    logits = torch.randn(2, 3, 11, requires_grad=True)
    labels = random_labels((2, 3), 11)
    for with_entropy in (False, True):
        opcheck(backend, torch.ops.fastrlhf.token_logprobs.default, logits, labels, 0.7, -100, with_entropy)


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
    for temperature in (0.0, -1.0, float("inf"), float("nan"), 1e-39):
        with pytest.raises(ValueError, match="temperature"):
            ops.token_logprobs(logits, labels, temperature=temperature)
    with pytest.raises(ValueError, match="logits is empty"):
        ops.token_logprobs(logits[:0], labels[:0])
    if backend.device.type == "cpu":  # data checks run on CPU tensors always
        for bad in (10, -1):
            wrong = labels.clone()
            wrong[1, 2] = bad
            with pytest.raises(ValueError, match=f"labels must be in \\[0, 10\\).*found {bad}"):
                ops.token_logprobs(logits, wrong)
