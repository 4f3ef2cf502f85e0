"""Rollouts: responses to a batch of prompts from a Hugging Face causal LM.

    sampler = Sampler(model, max_batch_size=64, max_length=512)
    out = sampler.generate(prompts, max_new_tokens=128, temperature=0.7, eos_token_id=eos, pad_token_id=pad, seed=0)
    out.response_ids, out.response_mask, out.logprobs  # [B, T] each

The prompts are run once (prefill, eager). Every later token is one decode step, a function of static
buffers only: same shapes every step, no data-dependent Python, no host synchronisation. It feeds one
token per row into a static KV cache, draws the next token (`ops.sample_tokens`: temperature, top-k,
top-p and the log-prob in one kernel) and keeps the EOS bookkeeping. On CUDA the step is captured as a
CUDA graph per (batch bucket, cache-length bucket) at its first use and replayed; a batch between
bucket sizes is padded up with rows that are finished from the start.

Randomness: each row draws its token by inverse CDF from its own uniform number per step, taken from
`uniforms` [B, max_new_tokens] (or drawn per row from `seed`). A row's tokens therefore do not depend on
the rows beside it or on the number of processes, and a seed reproduces a run.
"""
import inspect
from dataclasses import dataclass

import torch
import transformers
from transformers import PreTrainedModel, StaticCache

from . import data, ops
from .models import positions

# Decode steps between two reads of the "every row finished" flag on CUDA. The flag is copied to pinned
# memory without blocking and read CHECK_EVERY steps later, so the read waits only for a copy that the
# GPU made CHECK_EVERY steps ago: the host stays up to CHECK_EVERY replays ahead (several times the
# ~10-20 us a replay takes to launch), so the GPU never waits for it, and a batch whose rows have all
# finished runs at most 2 * CHECK_EVERY - 1 extra steps (tokens that come out as PAD).
CHECK_EVERY = 4
MIN_LENGTH_BUCKET = 64
# StaticCache's batch argument: `batch_size` before transformers 4.47, `max_batch_size` from then on (each
# version warns about the other one; versions from 4.56 allocate lazily and ignore it).
_BATCH_KEYWORD = "batch_size" if tuple(int(v) for v in transformers.__version__.split(".")[:2]) < (4, 47) \
    else "max_batch_size"


def batch_bucket(rows):
    """Padded batch size: 1, 2, 4, then multiples of 8 (few graphs; at most 7 padding rows)."""
    return rows if rows <= 2 else 4 if rows <= 4 else -(-rows // 8) * 8


def length_bucket(tokens, max_length):
    """Cache length: a power of two from 64, capped at max_length (attention reads under 2x what it needs)."""
    return min(max_length, max(MIN_LENGTH_BUCKET, 1 << (tokens - 1).bit_length()))


@dataclass
class Rollout:
    response_ids: torch.Tensor  # [B, T] int64: T is the longest response; PAD after a row's EOS
    response_mask: torch.Tensor  # [B, T] bool: the response tokens, EOS included
    logprobs: torch.Tensor  # [B, T] float32: log-prob under the (filtered) distribution drawn from; 0 where masked


class _Store:
    """K/V memory shared by every bucket: one flat buffer per layer for keys and one for values, sized for
    the largest bucket and allocated at the first forward (from the shapes the model writes). A bucket
    views a contiguous prefix as [batch, heads, length, head_dim]; only one bucket is in use at a time,
    and a column is always written before any query attends to it."""

    def __init__(self, rows, length):
        self.rows, self.length, self.flat = rows, length, {}

    def view(self, name, layer, batch, length, states):
        _, heads, _, dim = states.shape
        if (name, layer) not in self.flat:
            self.flat[name, layer] = states.new_zeros(self.rows * heads * self.length * dim)
        return self.flat[name, layer][:batch * heads * length * dim].view(batch, heads, length, dim)


class _BucketCache(StaticCache):
    """A bucket's KV cache. It is HF's StaticCache type, which models treat as static (fixed mask sizes,
    no host synchronisation), but keeps its K/V in views of the shared store: the new tokens go to
    columns `column`, `column` + 1, ... HF's constructor allocates nothing here (the meta device for
    transformers < 4.56, which allocate at construction; later versions allocate at the first update)."""

    def __init__(self, model, store, batch, length, column):
        super().__init__(config=model.config, max_cache_len=length, device="meta", dtype=model.dtype,
                         **{_BATCH_KEYWORD: batch})
        self.store, self.bucket_shape, self.column, self.views = store, (batch, length), column, {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.views:
            self.views[layer_idx] = tuple(self.store.view(name, layer_idx, *self.bucket_shape, states)
                                          for name, states in (("keys", key_states), ("values", value_states)))
        keys, values = self.views[layer_idx]
        n = key_states.shape[-2]
        index = self.column.view(1) if n == 1 else self.column + torch.arange(n, device=keys.device)
        keys.index_copy_(2, index, key_states)
        values.index_copy_(2, index, value_states)
        return keys, values

    def get_seq_length(self, layer_idx=0):
        return self.column


class _Bucket:
    """The static buffers of one (batch, cache length) bucket: what a decode step reads and writes."""

    def __init__(self, sampler, batch, length):
        device, dtype = sampler.device, sampler.dtype

        def zeros(dtype, *shape):
            return torch.zeros(shape, dtype=dtype, device=device)

        self.batch, self.length = batch, length
        self.column = zeros(torch.long)  # the cache column of the token fed next
        self.cache = _BucketCache(sampler.model, sampler.store, batch, length, self.column)
        self.token = zeros(torch.long, batch)  # the token fed next: the last one sampled
        self.fed_alive = zeros(torch.bool, batch)  # ... whether it belongs to its response (EOS included)
        self.position = zeros(torch.long, batch)  # ... its position id
        self.bias = torch.full((batch, length), torch.finfo(dtype).min, dtype=dtype, device=device)  # 0: attended
        self.finished = torch.ones(batch, dtype=torch.bool, device=device)  # the row has emitted EOS
        self.all_finished = zeros(torch.bool)
        self.step = zeros(torch.long)  # the index of the token sampled next
        self.uniforms = zeros(torch.float32, batch, length)
        self.temperature = torch.ones(batch, device=device)
        self.top_k = zeros(torch.long, batch)
        self.top_p = torch.ones(batch, device=device)
        self.eos, self.pad = zeros(torch.long), zeros(torch.long)
        self.tokens = zeros(torch.long, batch, length)  # outputs, one column per step
        self.logprobs = zeros(torch.float32, batch, length)
        self.alive = zeros(torch.bool, batch, length)
        self.filtering = False  # any row with top-k or top-p (the CPU sampler sorts only then)
        self.graphs = {}  # filtering -> the decode step captured as a CUDA graph


class Sampler:
    """Generates responses with a static KV cache for up to max_batch_size rows of up to max_length tokens
    (prompt + response). cuda_graphs=False runs the decode step eagerly on CUDA too (FSDP, which gathers
    weights inside every forward, needs that). The graphs read the model's parameters in place: updating
    them (optimizer steps) is fine, replacing the tensors needs a new Sampler. Dropout should be off."""

    def __init__(self, model, *, max_batch_size, max_length, cuda_graphs=True):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (a prompt token and a response token), got {max_length}")
        config = model.config
        learned_positions = getattr(config, "n_positions", None)  # GPT-2's learned position table
        if learned_positions is not None and max_length > learned_positions:
            raise ValueError(f"max_length ({max_length}) exceeds the model's {learned_positions} learned positions")
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window is not None and max_length > window:
            raise ValueError(f"max_length ({max_length}) exceeds the model's sliding window ({window}); the sampler's "
                             "attention mask covers full attention only")
        attention = getattr(config, "_attn_implementation", None) or "eager"
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"the sampler passes a 4-D attention mask, which needs attn_implementation 'sdpa' or "
                             f"'eager'; the model uses {attention!r}")
        hf_model = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
        if hf_model is None or not (getattr(hf_model, "_supports_static_cache", False)
                                    or getattr(hf_model, "_can_compile_fullgraph", False)):
            raise ValueError(f"{type(model).__name__} does not support a static KV cache in transformers "
                             "(GPT-2 needs transformers >= 4.52)")
        params = inspect.signature(hf_model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns); earlier versions need
        # cache_position; the logits of the prompt's last token only: logits_to_keep, num_logits_to_keep before 4.50.
        self._cache_keyword = "cache" if "cache" in params else "past_key_values"
        self._pass_cache_position = "cache_position" in params
        self._keep_keyword = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.model, self.max_batch_size, self.max_length = model, max_batch_size, max_length
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.store = _Store(batch_bucket(max_batch_size), max_length)
        self.buckets = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    @torch.no_grad()
    def generate(self, prompts, *, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_token_id,
                 pad_token_id, seed=None, uniforms=None, stop_early=True):
        """Responses to `prompts`: a list of token-id lists, or left-padded (input_ids, attention_mask).

        temperature (0: greedy), top_k (0: off) and top_p (1: off) are numbers or one value per row.
        eos_token_id None: no EOS, every row runs max_new_tokens. uniforms [B, max_new_tokens] in [0, 1):
        the numbers each row draws with (default: per row from `seed`, or torch's global generator).
        stop_early=False always runs max_new_tokens forward passes (FSDP ranks must run the same number).
        """
        ids, mask = self._prompts(prompts, pad_token_id)
        rows, width = ids.shape
        if rows > self.max_batch_size:
            raise ValueError(f"prompts has {rows} rows, more than max_batch_size={self.max_batch_size}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if width + max_new_tokens > self.max_length:
            raise ValueError(f"prompt width {width} + max_new_tokens {max_new_tokens} exceeds "
                             f"max_length={self.max_length}")
        if not (eos_token_id is None or isinstance(eos_token_id, int)):
            raise ValueError(f"eos_token_id must be an int or None, got {eos_token_id!r}")
        temperature, top_k, top_p = _settings(rows, temperature, top_k, top_p)
        uniforms = self._uniforms(uniforms, seed, rows, max_new_tokens)

        bucket = self._bucket(batch_bucket(rows), length_bucket(width + max_new_tokens, self.max_length))
        bucket.filtering = bool((top_k > 0).any() or (top_p < 1).any())
        step = self._captured_step(bucket) if self.cuda_graphs else lambda: self.decode_step(bucket)
        self._load(bucket, temperature, top_k, top_p, uniforms, eos_token_id, pad_token_id)
        self._record(bucket, self._prefill(bucket, ids, mask, pad_token_id))
        done = _DoneFlag(bucket.all_finished)
        for i in range(1, max_new_tokens):
            if stop_early and done.poll(i):
                break
            step()
        return self._result(bucket, rows)

    def decode_step(self, b):
        """One token per row, from the static buffers of bucket b only (captured as a CUDA graph on CUDA)."""
        attended = torch.where(b.fed_alive, 0.0, torch.finfo(b.bias.dtype).min).to(b.bias.dtype)
        b.bias.index_copy_(1, b.column.view(1), attended[:, None])
        logits = self._forward(b, b.token[:, None], b.position[:, None], b.bias[:, None, None, :], b.column.view(1))
        b.column.add_(1)
        b.position.add_(1)
        self._record(b, logits)

    def _record(self, b, logits):
        """Draws each row's next token from logits [batch, V] and books it at column `step` of the outputs."""
        step = b.step.view(1)
        uniforms = b.uniforms.index_select(1, step).squeeze(1)
        sampled, logprob = ops.sample_tokens(logits, uniforms, b.temperature, b.top_k, b.top_p, filtering=b.filtering)
        alive = ~b.finished
        token = torch.where(alive, sampled, b.pad)
        b.tokens.index_copy_(1, step, token[:, None])
        b.logprobs.index_copy_(1, step, torch.where(alive, logprob, 0.0)[:, None])
        b.alive.index_copy_(1, step, alive[:, None])
        b.finished.logical_or_(token == b.eos)
        b.all_finished.copy_(b.finished.all())
        b.token.copy_(token)
        b.fed_alive.copy_(alive)
        b.step.add_(1)

    def _forward(self, b, input_ids, position_ids, bias, cache_position, **extra):
        """The logits of each row's last input token. bias: the additive 4-D attention mask (0 or the
        dtype's min), which every transformers version passes to attention as it is."""
        kwargs = {self._cache_keyword: b.cache, "use_cache": True, **extra}
        if self._pass_cache_position:
            kwargs["cache_position"] = cache_position
        out = self.model(input_ids=input_ids, attention_mask=bias, position_ids=position_ids, **kwargs)
        return out.logits[:, -1]

    def _prefill(self, b, ids, mask, pad_token_id):
        """Runs the prompts [rows, P] into the cache's first P columns; returns the logits of their last token."""
        rows, width = ids.shape
        input_ids = torch.full((b.batch, width), pad_token_id, dtype=torch.long, device=self.device)
        prompt_mask = torch.zeros((b.batch, width), dtype=torch.bool, device=self.device)
        input_ids[:rows], prompt_mask[:rows] = ids, mask
        attended = torch.zeros((b.batch, b.length), dtype=torch.bool, device=self.device)
        attended[:, :width] = prompt_mask
        causal = torch.arange(b.length, device=self.device) <= torch.arange(width, device=self.device)[:, None]
        minimum = torch.finfo(self.dtype).min
        bias = torch.where(attended[:, None] & causal, 0.0, minimum).to(self.dtype)[:, None]  # [batch, 1, P, L]
        b.bias.copy_(bias[:, 0, -1])  # the prompt's columns; the rest is set as tokens are fed
        b.column.zero_()
        extra = {self._keep_keyword: 1} if self._keep_keyword else {}
        logits = self._forward(b, input_ids, positions(prompt_mask), bias, torch.arange(width, device=self.device),
                               **extra)
        b.column.fill_(width)
        b.position.copy_(prompt_mask.sum(-1))
        return logits

    def _load(self, b, temperature, top_k, top_p, uniforms, eos_token_id, pad_token_id):
        """Fills the bucket's inputs for a new batch; padding rows are finished before they start."""
        rows, steps = uniforms.shape
        b.finished.fill_(True)
        b.finished[:rows] = False
        b.all_finished.fill_(False)
        b.step.zero_()
        b.uniforms.zero_()
        b.uniforms[:rows, :steps] = uniforms
        for buffer, value, default in ((b.temperature, temperature, 1.0), (b.top_k, top_k, 0), (b.top_p, top_p, 1.0)):
            buffer.fill_(default)
            buffer[:rows] = value
        b.eos.fill_(-1 if eos_token_id is None else eos_token_id)
        b.pad.fill_(pad_token_id)
        b.tokens.fill_(pad_token_id)
        b.logprobs.zero_()
        b.alive.zero_()

    def _result(self, b, rows):
        width = int(b.alive[:rows].sum(-1).max())
        return Rollout(b.tokens[:rows, :width].clone(), b.alive[:rows, :width].clone(),
                       b.logprobs[:rows, :width].clone())

    def _bucket(self, batch, length):
        if (batch, length) not in self.buckets:
            self.buckets[batch, length] = _Bucket(self, batch, length)
        return self.buckets[batch, length]

    def _captured_step(self, b):
        """Bucket b's decode step as a CUDA graph, captured at its first use (before the batch is loaded:
        the warm-up steps write only buffers that loading resets and cache columns that prefill rewrites)."""
        if b.filtering not in b.graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: Triton compiles, cuBLAS settles, the store is allocated
                for _ in range(2):
                    self.decode_step(b)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self.decode_step(b)
            b.graphs[b.filtering] = graph
        return b.graphs[b.filtering].replay

    def _prompts(self, prompts, pad_token_id):
        if not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")
        if isinstance(prompts, (tuple, list)) and len(prompts) == 2 and isinstance(prompts[0], torch.Tensor):
            ids, mask = prompts
            if ids.dim() != 2 or mask.shape != ids.shape:
                raise ValueError(f"prompts must be (input_ids [B, P], attention_mask [B, P]), got shapes "
                                 f"{tuple(ids.shape)} and {tuple(mask.shape)}")
            mask = mask.bool()
        else:
            if not prompts or any(len(p) == 0 for p in prompts):
                raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
            ids, mask = data.pad([list(p) for p in prompts], pad_token_id, "left")
        host_mask = mask.cpu()
        if not host_mask[:, -1].all() or (host_mask[:, 1:] < host_mask[:, :-1]).any():
            raise ValueError("prompts must be left-padded with at least one token per row "
                             "(attention_mask rows of the form 0...0 1...1)")
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _uniforms(uniforms, seed, rows, steps):
        if uniforms is None:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            return torch.rand(rows, steps, generator=generator)
        if seed is not None:
            raise ValueError("give seed or uniforms, not both")
        if uniforms.shape != (rows, steps) or not uniforms.dtype.is_floating_point:
            raise ValueError(f"uniforms must be a float tensor of shape [B, max_new_tokens] = [{rows}, {steps}], "
                             f"got {uniforms.dtype} {tuple(uniforms.shape)}")
        if not ((uniforms >= 0) & (uniforms < 1)).all():
            raise ValueError("uniforms must lie in [0, 1)")
        return uniforms.float()


class _DoneFlag:
    """'Has every row finished?' On CUDA, a lagged read (see CHECK_EVERY); on the CPU, read directly."""

    def __init__(self, flag):
        self.flag, self.pending = flag, False
        if flag.is_cuda:
            self.host = torch.zeros((), dtype=torch.bool, pin_memory=True)
            self.event = torch.cuda.Event()

    def poll(self, step):
        if not self.flag.is_cuda:
            return bool(self.flag)
        if step % CHECK_EVERY:
            return False
        done = False
        if self.pending:
            self.event.synchronize()  # the copy made CHECK_EVERY steps ago
            done = bool(self.host)
        self.host.copy_(self.flag, non_blocking=True)
        self.event.record()
        self.pending = True
        return done


def _settings(rows, temperature, top_k, top_p):
    """The sampling settings, one value per row, checked (on the CPU, before they reach the bucket)."""
    temperature = _per_row("temperature", temperature, rows, torch.float32)
    top_k = _per_row("top_k", top_k, rows, torch.long)
    top_p = _per_row("top_p", top_p, rows, torch.float32)
    if not (temperature.isfinite().all() and (temperature >= 0).all()):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature.tolist()}")
    if (top_k < 0).any():
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k.tolist()}")
    if not ((top_p > 0) & (top_p <= 1)).all():
        raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p.tolist()}")
    return temperature, top_k, top_p


def _per_row(name, value, rows, dtype):
    """A number or one value per row, as a CPU tensor of one value per row."""
    tensor = torch.as_tensor(value).detach().cpu()
    if tensor.dtype.is_floating_point and not dtype.is_floating_point and (tensor != tensor.round()).any():
        raise ValueError(f"{name} must be integers, got {tensor.tolist()}")
    if tensor.dim() == 0:
        tensor = tensor.expand(rows)
    if tensor.shape != (rows,):
        raise ValueError(f"{name} must be a number or one value per row ({rows}), got shape {tuple(tensor.shape)}")
    return tensor.to(dtype)
