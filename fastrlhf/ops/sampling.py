"""sample_tokens: one token per row of [B, V] logits after temperature, top-k and top-p, drawn by inverse
CDF from the row's own uniform number, with its log-prob under the distribution it was drawn from.

CUDA tensors: the Triton kernel (kernels/sampling.py: no sort of the vocabulary, one program per row).
CPU tensors: the same draw in a few float32 passes of PyTorch (a sort only when filtering is asked for).
No check here reads tensor data, so the op can sit inside a captured CUDA graph or a compiled step;
the sampler validates the settings once per call.
"""
import torch

from . import _checks as C
from .. import reference
from ._backend import backend_name, triton_kernels


def sample_tokens(logits, uniforms, temperature, top_k, top_p, *, filtering=True):
    """(tokens int64 [B], logprobs float32 [B]) from logits [B, V] (float32/bfloat16/float16).

    uniforms, temperature, top_p: float32 [B]; top_k: int64 [B]; all on the logits' device. Per row:
    temperature 0 is greedy (log-prob 0); top_k 0 or >= V keeps every token; top_p 1 keeps every token.
    The kept set and the draw are defined by `reference.filtered_log_softmax` / `reference.sample_tokens`.
    filtering=False promises that no row filters (the CPU path then skips its sort; the kernel decides
    per row and ignores it).
    """
    C.check_float("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    for name, x, dtype in (("uniforms", uniforms, torch.float32), ("temperature", temperature, torch.float32),
                           ("top_k", top_k, torch.long), ("top_p", top_p, torch.float32)):
        C.check_tensor(name, x)
        C.check_same_device(name, x, "logits", logits)
        if x.shape != logits.shape[:1]:
            raise ValueError(f"{name} must have shape [B] = [{logits.shape[0]}], got {tuple(x.shape)}")
        if x.dtype != dtype:
            raise TypeError(f"{name} must be {dtype}, got {x.dtype}")
    if backend_name(logits.device) == "triton":
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        return triton_kernels().sample_tokens(logits, uniforms.contiguous(), temperature.contiguous(),
                                              top_k.contiguous(), top_p.contiguous())
    return _sample_cpu(logits, uniforms, temperature, top_k, top_p, filtering)


def _sample_cpu(logits, uniforms, temperature, top_k, top_p, filtering):
    """reference.sample_tokens in float32, in five passes over the logits and a binary search."""
    greedy = temperature == 0
    z = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]
    if filtering:
        z = reference.top_k_top_p_filter(z, top_k, top_p)
    peak = z.amax(-1)
    cdf = (z - peak[:, None]).exp_().cumsum_(-1)  # unnormalised
    total = cdf[:, -1]
    # Below the total, so the count stops at a token of nonzero mass even when u * total rounds up to it.
    target = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.where(greedy, z.argmax(-1), torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1))
    logprobs = z.gather(-1, tokens[:, None]).squeeze(-1) - peak - total.log()
    return tokens, torch.where(greedy, 0.0, logprobs)
