"""PPO for RLHF: InstructGPT with the details of "The N+ Implementation Details of RLHF with PPO".

A step, as on paper: sample responses from the policy -> score them with the reward model ->
per-token rewards (-beta * KL to the reference, plus the score at the EOS token) -> GAE
advantages, whitened -> several epochs of clipped policy and value updates over minibatches.
All the PPO math is `ops`. The policy and the reference start from SFT, the critic from the RM (each can be set).
"""
import torch
import torch.nn.functional as F

from . import checkpoint, data, distributed, evaluate, models, training
from .training import ops
from .reward_model import load_stats
from .rollout import Sampler

SHOWN = ("score", "kl", "eos_rate", "clip_frac")
PLOTTED = ("score", "kl", "entropy", "clip_frac", "approx_kl", "vf_loss", "explained_variance",
           "response_length", "eos_rate", "kl_coef", "tokens_per_s", "time_train")


class KLController:
    """beta of the KL penalty; with a target, adapted as in Ziegler et al. (2019), else fixed."""

    def __init__(self, beta, target, horizon):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl, rollouts):
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * rollouts / self.horizon


def response_values(critic, ids, mask, responses):
    """V(prefix) before each response token."""
    return critic(ids, mask)[:, ids.shape[1] - responses.shape[1] - 1:-1]


def sample(sampler, prompts, uniforms, tokenizer, config):
    """This rank's responses, their mask and the sampler's log-probs, right-padded to the longest response
    over all ranks so that rows can be gathered. FSDP ranks run the same number of forward passes."""
    out = sampler.generate(prompts, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           uniforms=uniforms, stop_early=not config.fsdp)
    extra = distributed.max_over_ranks(out.response_ids.shape[1]) - out.response_ids.shape[1]
    return (F.pad(out.response_ids, (0, extra), value=tokenizer.pad_token_id),
            F.pad(out.response_mask, (0, extra), value=False), F.pad(out.logprobs, (0, extra)))


@torch.no_grad()
def score(policy, reference, critic, reward_model, prompts, responses, response_mask, tokenizer, config,
          reward_stats):
    """Everything the update needs about this rank's rollouts, one row each."""
    ids, mask = torch.cat([prompts[0], responses], 1), torch.cat([prompts[1], response_mask], 1)
    logprobs, entropy = models.response_logprobs(policy, ids, mask, responses, response_mask, config.temperature,
                                                 True)
    ref_logprobs = models.response_logprobs(reference, ids, mask, responses, response_mask, config.temperature)
    raw_scores = reward_model.score(ids, mask)
    scores = raw_scores
    if config.normalize_reward and reward_stats:
        scores = (scores - reward_stats["mean"]) / reward_stats["std"]
    has_eos = (responses == tokenizer.eos_token_id).any(-1)
    if config.missing_eos_penalty is not None:
        scores = torch.where(has_eos, scores, config.missing_eos_penalty)
    return {"ids": ids, "mask": mask, "responses": responses, "response_mask": response_mask,
            "logprobs": logprobs, "ref_logprobs": ref_logprobs, "entropy": entropy,
            "values": response_values(critic, ids, mask, responses), "scores": scores,
            "raw_scores": raw_scores, "has_eos": has_eos}


def rollout_ratio_stats(trainer_logprobs, sampler_logprobs, mask):
    """exp(trainer - sampler log-prob) per token: the trainer's are the first epoch's old log-probs (a
    teacher-forced forward before any update), so any spread is a sampler/trainer mismatch, not learning."""
    ratio = torch.exp(trainer_logprobs - sampler_logprobs)
    return {"rollout_ratio_mean": ops.masked_mean(ratio, mask), "rollout_ratio_max": ratio.masked_fill(~mask, 0).max(),
            "rollout_ratio_frac_outside": ops.masked_mean(((ratio < 0.9) | (ratio > 1.1)).float(), mask)}


def explained_variance(values, returns, mask):
    residual = ops.masked_mean((returns - values - ops.masked_mean(returns - values, mask)) ** 2, mask)
    variance = ops.masked_mean((returns - ops.masked_mean(returns, mask)) ** 2, mask)
    return 1 - residual / variance.clamp(min=1e-8)


def diverged(config, kl, entropy):
    """Why a rollout shows a diverged policy (the optional checks stop_kl and stop_entropy), or None."""
    if config.stop_kl is not None and not kl <= config.stop_kl:
        return f"the rollout's KL to the reference, {kl:.4g} nats per sequence, is above stop_kl={config.stop_kl}"
    if config.stop_entropy is not None and not entropy >= config.stop_entropy:
        return f"the rollout's mean token entropy, {entropy:.4g} nats, is below stop_entropy={config.stop_entropy}"
    return None


@training.stage("ppo", SHOWN)
def train(config, loop):
    device = loop.device
    tokenizer = models.load_tokenizer(config.policy)
    prompt_rows = data.prompts(config.prompts, tokenizer, config.max_prompt_len)
    policy = models.load_policy(loop.init_path("policy", config.policy), tokenizer, config.dtype, device)
    critic = models.load_value_model(loop.init_path("critic", config.critic or config.reward_model), tokenizer,
                                     config.dtype, device)
    reference = models.load_policy(config.reference or config.policy, tokenizer, config.dtype, device)
    reference.requires_grad_(False)
    reward_model = models.load_value_model(config.reward_model, tokenizer, config.dtype, device).requires_grad_(False)
    reward_stats = load_stats(config.reward_model)
    policy_ddp, critic_ddp = distributed.wrap(policy, config.fsdp), distributed.wrap(critic, config.fsdp)
    params = [*policy.parameters(), *critic.parameters()]
    optimizer, timer = loop.optimizer_for(params), training.Timer()
    # beta: the adapted value saved in the checkpoint when resuming, unless kl_coef itself was changed.
    beta = config.kl_coef if "kl_coef" in loop.changed else loop.state.get("kl_coef", config.kl_coef)
    kl_ctl = KLController(beta, config.kl_target, config.kl_horizon)
    minibatch = config.batch_size // config.num_minibatches
    trained = {"policy": policy, "critic": critic}
    # Static KV cache and CUDA graphs, made once; FSDP gathers weights inside each forward: no graphs.
    sampler = Sampler(policy, max_batch_size=len(distributed.my_rows(range(config.batch_size))),
                      max_length=config.max_prompt_len + config.max_new_tokens, cuda_graphs=not config.fsdp)
    heldout = evaluate.heldout_log(config, tokenizer, device, reward_model, reference, loop.dir) \
        if config.eval_prompts else None  # gold vs proxy score as the policy moves away: over-optimisation

    for step in loop.steps():
        if heldout and step % config.eval_every == 0:
            heldout(policy, step)
        # 1. Rollout: this rank's prompts, left-padded to the global batch's longest, sampled with uniforms
        # drawn for the whole global batch (the result does not depend on the number of processes).
        rows = training.batch_rows(step, config.batch_size, len(prompt_rows), config.seed)
        width = max(len(prompt_rows[i]) for i in rows)
        prompts = [t.to(device) for t in data.pad([prompt_rows[i] for i in distributed.my_rows(rows)],
                                                  tokenizer.pad_token_id, "left", width)]
        noise = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        uniforms = distributed.my_rows(torch.rand(config.batch_size, config.max_new_tokens, generator=noise))
        with timer("rollout"):
            responses, response_mask, sampler_logprobs = sample(sampler, prompts, uniforms, tokenizer, config)

        # 2. Score: logprobs of policy and reference, values, reward-model scores; then rewards and
        # advantages over the global batch.
        with timer("score"):
            batch = score(policy, reference, critic, reward_model, prompts, responses, response_mask, tokenizer,
                          config, reward_stats)
            batch["sampler_logprobs"] = sampler_logprobs
            batch = {k: distributed.gather_rows(v) for k, v in batch.items()}
            if not loop.guard.rollout(batch["scores"], batch["values"], batch["logprobs"]):
                loop.end_step(step, {}, trained, tokenizer)
                continue
            mask = batch["response_mask"]
            kl = ops.kl_penalty(batch["logprobs"], batch["ref_logprobs"], estimator="k1")
            sequence_kl, entropy = (kl * mask).sum(-1).mean().item(), ops.masked_mean(batch["entropy"], mask).item()
            if why := diverged(config, sequence_kl, entropy):  # this rollout came from the weights after step - 1
                loop.guard.stop(f"step {step}: {why}", suspect_after=step - 1)
            rewards = ops.kl_shaped_rewards(batch["scores"], kl, mask, kl_coef=kl_ctl.value)
            advantages, returns = ops.gae(rewards, batch["values"], mask, gamma=config.gamma, lam=config.lam)
            if config.whiten_advantages:
                advantages = ops.masked_whiten(advantages, mask)

        # 3. PPO epochs over shuffled minibatches; each rank takes its share of every minibatch.
        stats = []
        with timer("train"):
            for epoch in range(config.ppo_epochs):
                order = torch.randperm(config.batch_size, generator=noise)
                for start in range(0, config.batch_size, minibatch):
                    global_rows = order[start:start + minibatch]
                    mb = distributed.my_rows(global_rows)
                    ids, attention, responses, m = (batch[k][mb] for k in ("ids", "mask", "responses", "response_mask"))
                    logprobs = models.response_logprobs(policy_ddp, ids, attention, responses, m, config.temperature)
                    values = response_values(critic_ddp, ids, attention, responses)
                    pg_loss, pg_stats = ops.ppo_policy_loss(logprobs, batch["logprobs"][mb], advantages[mb], m,
                                                            clip_eps=config.clip_eps)
                    vf_loss, vf_stats = ops.ppo_value_loss(values, batch["values"][mb], returns[mb], m,
                                                           clip_eps=config.value_clip_eps)
                    loss = pg_loss + config.vf_coef * vf_loss
                    share = training.token_share(m, mask[global_rows])
                    loop.guard.update(loss * share, optimizer, params, config.max_grad_norm)
                    stats.append({k: v.detach() * share for k, v in  # * share: global token means
                                  {"pg_loss": pg_loss, "vf_loss": vf_loss, "vf_clip_frac": vf_stats["clip_frac"],
                                   **pg_stats}.items()})

        kl_ctl.update(sequence_kl, config.batch_size)
        loop.state["kl_coef"] = kl_ctl.value
        generated = mask.sum()
        seconds = sum(timer.seconds.values())
        loop.end_step(step, {
            "score": batch["raw_scores"].mean(), "kl": sequence_kl, "kl_coef": kl_ctl.value,
            "entropy": entropy,
            **{k: distributed.average(torch.stack([s[k] for s in stats]).mean()) for k in stats[0]},
            "explained_variance": explained_variance(batch["values"], returns, mask),
            "response_length": mask.sum(-1).float().mean(), "eos_rate": batch["has_eos"].float().mean(),
            **rollout_ratio_stats(batch["logprobs"], batch["sampler_logprobs"], mask),
            "tokens_per_s": generated / seconds,
            **{f"time_{k}": v for k, v in timer.seconds.items()},
        }, trained, tokenizer)
    if heldout:
        heldout(policy, config.steps)
    checkpoint.save_final(critic, tokenizer, loop.dir / "critic")  # before final/, which marks the stage done
    return loop.finish(policy, tokenizer, PLOTTED)
