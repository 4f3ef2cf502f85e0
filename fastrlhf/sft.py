"""Supervised fine-tuning: maximise the log-likelihood of the demonstrations' response tokens."""
from . import data, distributed, models, training
from .training import ops

SHOWN = ("loss", "tokens_per_s")


@training.stage("sft", SHOWN)
def train(config, loop):
    tokenizer = models.load_tokenizer(config.model)
    examples = data.sft_examples(config.data, tokenizer, config.max_len)
    model = models.load_policy(loop.init_path("model", config.model), tokenizer, config.dtype, loop.device)
    trained = distributed.wrap(model, config.fsdp)
    optimizer = loop.optimizer_for(model.parameters())
    timer = training.Timer()
    for step in loop.steps():
        batch = [examples[i] for i in training.batch_rows(step, config.batch_size, len(examples), config.seed)]
        ids, mask, labels = (t.to(loop.device)
                             for t in data.sft_batch(distributed.my_rows(batch), tokenizer.pad_token_id))
        _, global_mask, global_labels = data.sft_batch(batch, tokenizer.pad_token_id)
        with timer("train"):
            targets = labels[:, 1:]
            logprobs = models.token_logprobs(trained, ids, mask, targets)
            trained_tokens = targets != data.IGNORE
            loss = -ops.masked_mean(logprobs, trained_tokens)
            share = training.token_share(trained_tokens, global_labels[:, 1:] != data.IGNORE)
            loop.guard.update(loss * share, optimizer, model.parameters(), config.max_grad_norm)
        loop.end_step(step, {"loss": distributed.average(loss * share), "tokens_per_s": global_mask.sum() / timer.last("train")},
                      {"model": model}, tokenizer)
    return loop.finish(model, tokenizer, plotted=("loss", "lr"))
