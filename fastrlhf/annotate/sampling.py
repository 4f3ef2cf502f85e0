"""The responses annotators judge: K per prompt from the policy, or mixed from two policy versions
(--policy2, the arena's side by side), sampled in a background thread a batch of prompts at a time so
the first items are up in seconds, and on request for the red-team page."""
import sys
import threading
from dataclasses import dataclass

import torch

from .. import evaluate, models
from ..rollout import Sampler
from .db import prompt_key


@dataclass
class Generation:
    max_new_tokens: int = 128
    temperature: float = 1.0
    batch_size: int = 64  # sequences per forward pass
    max_prompt_len: int = 256
    device: str = "cpu"


def sample(sampler, tokenizer, prompt_ids, n, generation, seed):
    """n responses to each prompt (token ids): [[(text, ended with EOS)] * n per prompt].

    The one call into the project's sampler."""
    repeated = [ids for ids in prompt_ids for _ in range(n)]
    batches = evaluate.sample(sampler, repeated, tokenizer, temperature=generation.temperature,
                              max_new_tokens=generation.max_new_tokens, seed=seed, device=generation.device)
    texts = [t for responses, mask, _, _ in batches for t in evaluate.decode(tokenizer, responses, mask)]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompt_ids))]


def distinct(responses):
    """The responses worth ranking: empty texts and repeats of an earlier text dropped (a person cannot
    prefer a text to itself, and `fastrlhf rm` refuses rankings that try). A prompt left with fewer
    than two is not an item."""
    seen, kept = set(), []
    for text, policy, finished in responses:
        if text.strip() and text not in seen:
            seen.add(text)
            kept.append((text, policy, finished))
    return kept


class Policies:
    """The policy versions that write responses (sharing one tokenizer), behind one lock: the background
    sampler and red-team requests take turns, a batch at a time."""

    def __init__(self, paths, generation, dtype="float32"):
        self.tokenizer = models.load_tokenizer(paths[0])
        self.generation, self.lock = generation, threading.Lock()
        # One sampler per policy for the server's life: its buffers (and CUDA graphs) are made once.
        self.samplers = [(path, Sampler(models.load_policy(path, self.tokenizer, dtype, generation.device),
                                        max_batch_size=generation.batch_size,
                                        max_length=generation.max_prompt_len + generation.max_new_tokens))
                         for path in paths]

    @torch.no_grad()
    def respond(self, prompt_ids, k, seed):
        """K responses per prompt, [(text, policy, finished)], split evenly over the policies (the first
        gets any extra one); the page shuffles them."""
        out = [[] for _ in prompt_ids]
        with self.lock:
            for i, (path, sampler) in enumerate(self.samplers):
                n = k // len(self.samplers) + (i < k % len(self.samplers))
                if n:
                    for row, samples in zip(out, sample(sampler, self.tokenizer, prompt_ids, n, self.generation,
                                                        seed + 7919 * i)):
                        row.extend((text, path, finished) for text, finished in samples)
        return out


class BackgroundSampler(threading.Thread):
    """Samples the ranking items of every prompt that has none yet, a batch of prompts per transaction;
    a restarted server continues with the prompts left. A failure is kept in `error` for the page."""

    def __init__(self, store, policies, prompts, k, batch_prompts, seed):
        super().__init__(daemon=True, name="annotate-sampler")
        self.store, self.policies, self.k, self.batch_prompts, self.seed = store, policies, k, batch_prompts, seed
        self.prompts = prompts  # [(prompt, token ids)] in file order
        self.stopping, self.error, self.remaining = threading.Event(), None, len(prompts)

    def run(self):
        try:
            sampled, todo = self.store.sampled_prompts(), {}
            for index, (prompt, ids) in enumerate(self.prompts):
                key = prompt_key(prompt)
                if key not in sampled and key not in todo:
                    todo[key] = (index, prompt, ids)
            todo = list(todo.values())
            self.remaining = len(todo)
            for start in range(0, len(todo), self.batch_prompts):
                if self.stopping.is_set():
                    return
                batch = todo[start:start + self.batch_prompts]
                # Seeded by the prompt's place in the file: a restart samples what it would have.
                responses = self.policies.respond([ids for _, _, ids in batch], self.k, self.seed + batch[0][0])
                items = [(prompt, distinct(r)) for (_, prompt, _), r in zip(batch, responses)]
                self.store.add_items([(prompt, r) for prompt, r in items if len(r) >= 2])
                self.remaining -= len(batch)
        except Exception as error:  # the server keeps serving what was sampled; the page shows why it stopped
            self.error = f"{type(error).__name__}: {error}"
            print(f"fastrlhf annotate: sampling stopped: {self.error}", file=sys.stderr)
