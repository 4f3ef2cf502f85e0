"""The models: a policy is any Hugging Face causal LM; the reward model and the critic are the same
backbone with a scalar head (AutoModelForSequenceClassification, one label), read per token.

`demo` and `demo-large` name the embedded models: Llama configs in fastrlhf/demo/models.json,
randomly initialised, with the word-level tokenizer shipped in fastrlhf/demo/tokenizer.
"""
import json
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

from . import data, ops
from .config import is_local
from .errors import UserError

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_MODELS = json.loads((DEMO_DIR / "models.json").read_text())
# transformers renamed from_pretrained's `torch_dtype` to `dtype` in 4.56.
_DTYPE_KEY = "dtype" if tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"


def _from_pretrained(load, name, what, **kwargs):
    """load(name, **kwargs), with a missing local directory or an unknown hub id said in one line."""
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{name}: a file; a model is a Hugging Face checkpoint directory (or a hub id)")
    if path.is_dir() and not (path / "config.json").exists():
        raise UserError(f"{name}: not a Hugging Face model directory (it has no config.json)")
    if not path.exists() and is_local(name):
        raise UserError(f"{name}: no such model directory")
    try:
        return load(str(path) if path.exists() else name, **kwargs)
    except (OSError, ValueError) as error:  # "not a local folder and not a valid model identifier", offline, ...
        where = "from this directory" if path.exists() else "(not a local directory, nor found on the hub)"
        raise UserError(f"{name}: cannot load a {what} {where}: {str(error).splitlines()[0]}") from error


def load_tokenizer(name):
    if name in DEMO_MODELS:
        tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "tokenizer")
    else:
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer")
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {name!r} has no EOS token; responses could never end")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # A PAD equal to EOS would make the end of a response indistinguishable from padding.
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def positions(attention_mask):
    """Position ids that skip left padding, so a token has the same position however it is padded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask):
    """Index of each row's last non-pad token (its EOS, when it has one); works for left and right padding."""
    steps = torch.arange(1, attention_mask.shape[-1] + 1, device=attention_mask.device)
    return (steps * attention_mask.long()).argmax(-1)


def at_last_token(values, attention_mask):
    """values[b, last_token_index(b)]: a sequence's reward from per-token values."""
    return values.gather(-1, last_token_index(attention_mask)[:, None]).squeeze(-1)


def eval_mode(model):
    """Dropout off (PPO needs the same function at rollout and update time); gradients still flow."""
    return model.eval()


def _prepare(model, tokenizer):
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    return eval_mode(model)


def _dtype(name):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_policy(name, tokenizer, dtype="float32", device="cpu"):
    if name in DEMO_MODELS:
        config = LlamaConfig(**DEMO_MODELS[name], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
        model = AutoModelForCausalLM.from_config(config).to(_dtype(dtype))
    else:
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name, "model", **{_DTYPE_KEY: _dtype(dtype)})
    return _prepare(model, tokenizer).to(device)


class ValueModel(nn.Module):
    """A backbone with a scalar head: one value per token. The reward of a sequence is the value at its
    last non-pad token (`score`), so right padding, left padding and post-EOS padding all read the EOS."""

    def __init__(self, model):
        super().__init__()
        if not hasattr(model, "score"):
            raise UserError(f"{type(model).__name__} has no `score` head; use an architecture whose "
                             "ForSequenceClassification class names its head `score` (Llama, Qwen, Mistral, GPT-2, ...)")
        self.model = model

    def forward(self, input_ids, attention_mask):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=positions(attention_mask)).last_hidden_state
        return self.model.score(hidden).squeeze(-1).float()

    def score(self, input_ids, attention_mask):
        return at_last_token(self(input_ids, attention_mask), attention_mask)

    def save_pretrained(self, path, state_dict=None, **kwargs):
        if state_dict is not None:
            state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
        self.model.save_pretrained(path, state_dict=state_dict, **kwargs)


def load_value_model(name, tokenizer, dtype="float32", device="cpu"):
    """A reward model or critic: from a reward-model checkpoint, or a causal LM checkpoint (a freshly initialised head)."""
    model = _from_pretrained(AutoModelForSequenceClassification.from_pretrained, name, "model", num_labels=1,
                             **{_DTYPE_KEY: _dtype(dtype)})
    return ValueModel(_prepare(model, tokenizer)).to(device)


def logits(policy, input_ids, attention_mask):
    return policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)).logits


def _unwrapped(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _fused_head(model):
    """(head, options) when ops.linear_logprobs computes the model's output layer (a plain nn.Linear,
    then the softcap or scale its config names), else None with a one-line notice, once per model."""
    model = _unwrapped(model)
    if not hasattr(model, "_fastrlhf_head"):
        head, config = model.get_output_embeddings(), model.config
        options, why = {}, None
        if type(head) is not nn.Linear:
            why = f"its output layer is a {type(head).__name__}, not an nn.Linear"
        elif hasattr(head.weight, "device_mesh"):
            why = "its output layer is sharded (FSDP)"
        if getattr(config, "final_logit_softcapping", None):  # Gemma 2/3
            options["softcap"] = float(config.final_logit_softcapping)
        scale = getattr(config, "logit_scale", None) or 1.0  # Cohere multiplies the logits
        scale /= getattr(config, "logits_scaling", None) or 1.0  # Granite divides them
        if scale != 1.0:
            options["logit_scale"] = float(scale)
        model._fastrlhf_head = (head, options)
        if why:
            _unfuse(model, why)
    return model._fastrlhf_head


def _unfuse(model, why):
    """The logits path for this model from now on, said once."""
    model._fastrlhf_head = None
    print(f"fastrlhf: {type(model).__name__}: {why}; its log-probs go through the full [batch, tokens, vocab] "
          "logits")


def last_hidden_states(model, input_ids, attention_mask):
    """What the model's output layer reads, [B, T, H], from a forward (through any DDP wrapper) in which
    that layer is given no positions, so that no logits are made."""
    seen = []

    def keep_input(layer, args):
        seen.append(args[0])
        return (args[0][..., :0, :],)

    hook = _unwrapped(model).get_output_embeddings().register_forward_pre_hook(keep_input)
    try:
        logits(model, input_ids, attention_mask)
    finally:
        hook.remove()
    return seen[0]


def token_logprobs(model, input_ids, attention_mask, labels, first=0, temperature=1.0, entropy=False):
    """log p(labels[:, t] | input_ids[:, :first + t + 1]) at `temperature` (0 where labels is IGNORE),
    and with entropy=True the entropies of those distributions: through ops.linear_logprobs from the last
    hidden states when it computes the model's head (no [B, T, V] logits), else from the logits."""
    positions_ = slice(first, first + labels.shape[1])
    fused = _fused_head(model)
    if fused is None:
        predicting = logits(model, input_ids, attention_mask)[:, positions_]
        return ops.token_logprobs(predicting, labels, temperature=temperature, return_entropy=entropy)
    head, options = fused
    hidden = last_hidden_states(model, input_ids, attention_mask)
    if hidden.shape[:-1] != input_ids.shape:
        _unfuse(_unwrapped(model), f"its output layer reads a {tuple(hidden.shape)} input, not [batch, tokens, H]")
        return token_logprobs(model, input_ids, attention_mask, labels, first, temperature, entropy)
    return ops.linear_logprobs(hidden[:, positions_], head.weight, labels, bias=head.bias, temperature=temperature,
                               return_entropy=entropy, **options)


def response_logprobs(policy, ids, mask, responses, response_mask, temperature, entropy=False):
    """Teacher-forced log pi(token | prefix) of each response token at the sampling temperature (0 where
    masked); with entropy=True also the entropy of each of those distributions. ids = prompts + responses."""
    labels = responses.masked_fill(~response_mask, data.IGNORE)
    return token_logprobs(policy, ids, mask, labels, ids.shape[1] - responses.shape[1] - 1, temperature, entropy)


def save(model, tokenizer, path, state_dict=None):
    """A Hugging Face checkpoint (safetensors) that `from_pretrained` reloads (state_dict: FSDP's gathered one)."""
    model = getattr(model, "module", model)
    model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(path)
