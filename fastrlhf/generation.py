"""Sampling responses: left-padded prompts, a token at a time with a static KV cache (allocated once for
prompt + max_new_tokens, written in place; the shape-stable decode step a CUDA-graph sampler captures).

Each row draws its token by inverse-CDF sampling from one uniform number per step. The caller
draws the uniforms for the whole global batch from a shared seed, so a row samples the same
tokens whatever the number of processes or the rows beside it.
"""
import torch
from transformers import StaticCache

from .models import positions


def sample_token(logits, temperature, uniform):
    """The token whose cumulative probability first exceeds `uniform` (one per row)."""
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)
    token = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return token.clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, uniforms, *, temperature, eos_id, pad_id, stop_early=True):
    """Samples up to len(uniforms) tokens after left-padded prompts [B, P]; uniforms is [max_new_tokens, B].

    Returns (responses [B, T], response_mask [B, T]): tokens after a row's EOS are PAD and masked out;
    the EOS itself is in the mask. T is the longest response in the batch (len(uniforms) without stop_early:
    FSDP ranks must all run the same number of forward passes).
    """
    batch, prompt_len = prompt_ids.shape
    # max_batch_size, device and dtype: read by transformers < 4.56, which allocates eagerly; later ones ignore them.
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + len(uniforms), max_batch_size=batch,
                        device=prompt_ids.device, dtype=model.dtype)
    # The attention mask over the whole cache, filled a column per step (causality hides the later ones).
    mask = torch.zeros(batch, prompt_len + len(uniforms), dtype=torch.long, device=prompt_ids.device)
    mask[:, :prompt_len] = prompt_mask
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions(mask[:, :prompt_len]),
                past_key_values=cache, cache_position=torch.arange(prompt_len, device=prompt_ids.device),
                use_cache=True)
    length = mask.sum(-1)  # tokens each row attends to: its newest one sits at position length - 1
    done = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, alive = [], []
    for step, uniform in enumerate(uniforms):
        token = sample_token(out.logits[:, -1], temperature, uniform).masked_fill(done, pad_id)
        tokens.append(token)
        alive.append(~done)
        done = done | (token == eos_id)
        if (stop_early and done.all()) or step == len(uniforms) - 1:
            break
        column = prompt_len + step
        mask[:, column] = alive[-1]
        length += alive[-1]
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=(length - 1).clamp(min=0)[:, None],
                    past_key_values=cache, cache_position=torch.arange(column, column + 1, device=mask.device),
                    use_cache=True)
    return torch.stack(tokens, 1), torch.stack(alive, 1)
