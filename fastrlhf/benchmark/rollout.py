"""`fastrlhf bench --ops rollout`: tokens/s of `fastrlhf.rollout.Sampler` against `model.generate` (eager,
default cache, multinomial sampling) on the same randomly initialised model, prompts and lengths, at batch
sizes 1, 8 and 64. EOS is off, so both generate exactly batch x new_tokens tokens; the time includes the
prefill. Also the largest difference between the sampler's log-probs and a teacher-forced forward. On GPU,
the achieved memory bandwidth against the per-step floor: the weights plus the KV cache read once per step.
Writes bench/results/rollout-<device>.json.
"""
import json
import os
import re
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from .. import data, models
from ..rollout import Sampler

BATCHES = (1, 8, 64)
LLAMA_30M = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=2048)
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                rope_theta=1e6)


def setups(device):
    """(name, config, dtype, new tokens, timed repeats) per model benchmarked on `device`."""
    demo = LlamaConfig(**{**models.DEMO_MODELS["demo"], "max_position_embeddings": 128},
                       vocab_size=len(models.load_tokenizer("demo")))  # rotary: 128 only silences a length notice
    if device.type == "cpu":
        return [("demo", demo, torch.float32, 64, 3), ("llama-30m", LlamaConfig(**LLAMA_30M), torch.float32, 64, 3)]
    return [("llama-30m", LlamaConfig(**LLAMA_30M), torch.bfloat16, 256, 5),
            ("qwen2.5-0.5b-shape", Qwen2Config(**QWEN_05B), torch.bfloat16, 256, 5)]


def _seconds(fn, repeats, device):
    fn()  # warm-up: allocations, the sampler's bucket (and CUDA graph), Triton compiles
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _floor_bytes(model, config, batch, prompt_lengths, new_tokens, dtype):
    """Bytes a decode step must read, summed over the steps: every weight once plus the KV cache so far."""
    size = torch.empty(0, dtype=dtype).element_size()
    weights = sum(p.numel() for p in model.parameters()) * size
    heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    per_token = 2 * config.num_hidden_layers * heads * (config.hidden_size // config.num_attention_heads) * size
    context = sum(prompt_lengths) / len(prompt_lengths)
    return sum(weights + batch * (context + t) * per_token for t in range(new_tokens))


def measure(name, config, dtype, new_tokens, repeats, batch, device, pad=0):
    torch.manual_seed(0)
    config.bos_token_id = config.eos_token_id = None
    config.pad_token_id = pad
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    lengths = torch.randint(8, 33, (batch,)).tolist()
    prompts = [torch.randint(1, config.vocab_size, (n,)).tolist() for n in lengths]
    ids, mask = (t.to(device) for t in data.pad(prompts, pad, "left"))
    sampler = Sampler(model, max_batch_size=max(BATCHES), max_length=32 + new_tokens)

    def ours():
        return sampler.generate((ids, mask), max_new_tokens=new_tokens, temperature=1.0, eos_token_id=None,
                                pad_token_id=pad, seed=0)

    def hf():
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask.long(), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=new_tokens, pad_token_id=pad, eos_token_id=None)

    row = {"model": name, "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "dtype": str(dtype).removeprefix("torch."), "batch": batch, "mean_prompt_tokens": sum(lengths) / batch,
           "new_tokens": new_tokens}
    generate_s, sampler_s = _seconds(hf, repeats, device), _seconds(ours, repeats, device)
    row["generate_tokens_per_s"] = batch * new_tokens / generate_s
    row["sampler_tokens_per_s"] = batch * new_tokens / sampler_s
    row["speedup"] = generate_s / sampler_s
    out = ours()
    with torch.no_grad():
        forced = models.response_logprobs(model, torch.cat([ids, out.response_ids], 1),
                                          torch.cat([mask, out.response_mask], 1), out.response_ids,
                                          out.response_mask, 1.0)
    row["logprob_max_abs_diff"] = (forced - out.logprobs).abs().max().item()
    if device.type == "cuda":
        row["sampler_gbps"] = _floor_bytes(model, config, batch, lengths, new_tokens, dtype) / sampler_s / 1e9
    return row


def format_table(rows, ceiling_gbps=None):
    header = (f"{'model':<20} {'params':>7} {'dtype':<9} {'batch':>5} {'new':>4} {'generate tok/s':>15} "
              f"{'sampler tok/s':>14} {'speed-up':>8} {'max |dlogp|':>11}")
    if ceiling_gbps:
        header += f" {'GB/s':>7} {'of copy':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (f"{r['model']:<20} {r['parameters_m']:>6.1f}M {r['dtype']:<9} {r['batch']:>5} {r['new_tokens']:>4} "
                f"{r['generate_tokens_per_s']:>15.0f} {r['sampler_tokens_per_s']:>14.0f} {r['speedup']:>7.2f}x "
                f"{r['logprob_max_abs_diff']:>11.1e}")
        if ceiling_gbps:
            line += f" {r['sampler_gbps']:>7.0f} {r['sampler_gbps'] / ceiling_gbps:>6.0%}"
        lines.append(line)
    return "\n".join(lines)


def run(device, out_dir, command):
    from . import copy_bandwidth_gbps, device_description
    ceiling = copy_bandwidth_gbps(device) if device.type == "cuda" else None
    rows = []
    for name, config, dtype, new_tokens, repeats in setups(device):
        for batch in BATCHES:
            rows.append(measure(name, config, dtype, new_tokens, repeats, batch, device))
            print(f"measured rollout {name} batch {batch}", file=sys.stderr)
    description = device_description(device)
    print(f"fastrlhf.rollout.Sampler vs model.generate on {description} (torch {torch.__version__}, "
          f"transformers {transformers.__version__})")
    if ceiling:
        print(f"measured copy bandwidth: {ceiling:.0f} GB/s")
    print(format_table(rows, ceiling))
    os.makedirs(out_dir, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", device.type if device.type == "cpu" else description).strip("-").lower()
    path = os.path.join(out_dir, f"rollout-{tag}.json")
    with open(path, "w") as f:
        json.dump({"device": description, "torch": torch.__version__, "transformers": transformers.__version__,
                   "threads": torch.get_num_threads(), "command": command, "copy_gbps": ceiling, "rows": rows},
                  f, indent=1)
    print(f"wrote {path}")
