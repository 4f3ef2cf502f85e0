"""Configuration: one dataclass per command; each field's help text is its `--help` line.

Values come from the dataclass defaults, then a preset (`--preset`), then a YAML/JSON file (`--config`),
then `--key value` flags; nested sections are `--sft.lr 1e-3` on the command line and `sft: {lr: 1e-3}`
in a file.
"""
import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def option(default, help):
    return field(default=default, metadata={"help": help})


def redefault(cls, name, default):
    """The option `name` of `cls` with another default (and the same help)."""
    return option(default, cls.__dataclass_fields__[name].metadata["help"])


def section(cls, help):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class Common:
    run: str = option("demo", "run name: a stage writes to <output_dir>/<run>/<stage>/")
    output_dir: str = option("runs", "directory that holds the runs")
    seed: int = option(0, "seed of data order, sampling and initialisation")
    device: str = option("auto", "cpu, cuda or auto (cuda when available)")
    dtype: str = option("float32", "float32 or bfloat16 weights (bfloat16 wants a GPU)")
    resume: bool = option(False, "continue from the stage's last checkpoint (a finished stage is skipped)")
    fsdp: bool = option(False, "under torchrun, shard trained models with FSDP2 instead of DDP")
    threads: int = option(0, "CPU threads of torch (0: torch's default); tiny models run best on 1 when cores are shared")


@dataclass
class Training(Common):
    steps: int = option(500, "optimizer steps (PPO: rollout-and-update iterations)")
    batch_size: int = option(32, "global batch: sequences (RM: pairs, PPO: rollouts) per step over all processes")
    lr: float = option(3e-3, "peak learning rate (linear warmup, then linear decay to 0)")
    warmup_steps: int = option(20, "learning-rate warmup steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_eps: float = option(1e-8, "Adam epsilon")
    max_grad_norm: float = option(1.0, "global gradient-norm clipping")
    save_every: int = option(0, "write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    max_bad_steps: int = option(5, "stop after this many consecutive steps with a NaN/inf loss or reward")


@dataclass
class SFTConfig(Training):
    model: str = option("demo", "Hugging Face causal LM (local path or hub id), or demo / demo-large (embedded)")
    data: str = option("", "SFT rows {prompt, response} or {messages}: JSONL/JSON/CSV/Parquet file or hub name")
    max_len: int = option(64, "longest prompt + response in tokens (longer responses are truncated)")


@dataclass
class RMConfig(Training):
    model: str = option("", "SFT checkpoint to start from (the reward head is new), or a reward model to continue")
    data: str = option("", "preference rows {prompt, chosen, rejected} or {prompt, responses, ranking}")
    eval_data: str = option("", "held-out preference rows for accuracy and AUC (optional)")
    max_len: int = option(64, "longest prompt + response in tokens (longer responses are truncated)")
    steps: int = redefault(Training, "steps", 200)
    lr: float = redefault(Training, "lr", 1e-3)


@dataclass
class PPOConfig(Training):
    policy: str = option("", "SFT checkpoint: the initial policy (and the frozen reference unless `reference` is set)")
    reference: str = option("", "frozen KL reference (default: the policy); iterated RLHF keeps the SFT model here")
    reward_model: str = option("", "reward-model checkpoint: the scorer and the critic's initialisation")
    critic: str = option("", "the critic's initialisation instead of the reward model (a PPO stage's <dir>/critic)")
    prompts: str = option("", "prompt rows {prompt}: file or hub name")
    steps: int = redefault(Training, "steps", 40)
    batch_size: int = redefault(Training, "batch_size", 64)
    lr: float = redefault(Training, "lr", 1e-4)
    warmup_steps: int = redefault(Training, "warmup_steps", 0)
    adam_eps: float = redefault(Training, "adam_eps", 1e-5)
    num_minibatches: int = option(4, "minibatches per PPO epoch")
    ppo_epochs: int = option(4, "passes over each rollout batch")
    max_prompt_len: int = option(32, "longest prompt in tokens (longer ones are an error)")
    max_new_tokens: int = option(24, "longest response; one without EOS by then gets missing_eos_penalty")
    temperature: float = option(0.7, "sampling temperature, also applied to the training logprobs")
    kl_coef: float = option(0.05, "beta: weight of the per-token KL to the reference in the reward")
    kl_target: typing.Optional[float] = option(None, "target KL per sequence for the adaptive controller (off: fixed beta)")
    kl_horizon: int = option(10000, "adaptive KL controller horizon, in rollouts")
    gamma: float = option(1.0, "discount")
    lam: float = option(0.95, "GAE lambda")
    clip_eps: float = option(0.2, "policy ratio clip")
    value_clip_eps: float = option(0.2, "value clip around the rollout values")
    vf_coef: float = option(0.1, "value-loss weight")
    missing_eos_penalty: typing.Optional[float] = option(-1.0, "score given to a response without EOS (None: keep the RM score)")
    normalize_reward: bool = option(True, "standardise RM scores with the mean/std measured after RM training")
    whiten_advantages: bool = option(True, "normalise advantages over the batch")
    eval_prompts: str = option("", "held-out prompt rows: every eval_every steps the policy's RM score, gold score "
                                   "and KL to the reference on them go to eval.jsonl (reward over-optimisation)")
    eval_every: int = option(5, "steps between evaluations on eval_prompts (the first before any update, one after "
                                "the last)")
    eval_labeler: str = option("", "gold labeler of those evaluations: demo (the embedded task's) or empty for none")


@dataclass
class EvalConfig(Common):
    policy: str = option("", "policy A to evaluate")
    baseline: str = option("", "policy B for the win rate of A over B (optional)")
    reward_model: str = option("", "reward model that scores the responses (optional)")
    reference: str = option("", "reference policy for the KL (optional; default: the baseline)")
    prompts: str = option("", "prompt rows {prompt}: file or hub name")
    labeler: str = option("", "gold labeler: demo (the embedded task's) or empty for none")
    num_prompts: int = option(256, "prompts evaluated (the first N)")
    batch_size: int = option(128, "generation batch size")
    max_prompt_len: int = redefault(PPOConfig, "max_prompt_len", 32)
    max_new_tokens: int = redefault(PPOConfig, "max_new_tokens", 24)
    temperature: float = option(0.7, "sampling temperature")


@dataclass
class PipelineConfig(Common):
    sft: SFTConfig = section(SFTConfig, "supervised fine-tuning")
    rm: RMConfig = section(RMConfig, "reward model (its model is the SFT output)")
    ppo: PPOConfig = section(PPOConfig, "PPO (policy from SFT, reward model and critic from RM)")

    def stage(self, name, **paths):
        """A stage's config with the pipeline's shared fields and the previous stages' outputs."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(Common)}
        return dataclasses.replace(getattr(self, name), **shared, **paths)


@dataclass
class Rounds:
    """Options of iterated RLHF (`iterate`, `demo --rounds N`): rounds of comparisons -> reward model -> PPO."""
    rounds: int = option(3, "rounds of fresh comparisons on the current policy -> reward model -> PPO")
    labeler: str = option("demo", "who ranks the candidates: demo (the embedded task's rule) or command:<program> "
                                  "(candidate rows as JSONL on stdin, one ranking per line on stdout)")
    gold_labeler: str = option("demo", "gold judge of the held-out evaluations and win rates: demo, or empty "
                                       "(win rates then judged by the round's reward model)")
    preference_prompts: int = option(500, "training prompts whose samples the labeler ranks (per round: fresh ones "
                                          "each round)")
    heldout_preference_prompts: int = option(128, "held-out prompts ranked per round: the newest round's on-policy "
                                                  "pairs that the reward model is tested on")
    candidates: int = option(4, "samples ranked per prompt (K: K(K-1)/2 pairs)")
    candidate_temperature: float = option(1.0, "sampling temperature of the candidates")
    compare_previous: bool = option(False, "from round 2, sample half of each prompt's candidates from the previous "
                                           "round's policy, so that comparisons span versions")
    curve_prompts: int = option(64, "held-out prompts PPO is evaluated on every ppo.eval_every steps "
                                    "(the over-optimisation curve; 0: none)")
    report_prompts: int = option(256, "held-out prompts of each round's report (gold, proxy, KL, win rates)")


@dataclass
class IterateConfig(Rounds, Common):
    gold_labeler: str = redefault(Rounds, "gold_labeler", "")
    policy: str = option("", "SFT checkpoint: round 1's policy and the KL reference of every round (unless "
                             "ppo.reference is set)")
    prompts: str = option("", "training prompt rows {prompt}: ranked candidates and PPO")
    heldout_prompts: str = option("", "held-out prompt rows {prompt}: the reward model's test pairs and the reports")
    rm: RMConfig = section(RMConfig, "reward model, continued each round on all comparisons so far")
    ppo: PPOConfig = section(PPOConfig, "PPO, each round from the current policy against the round's reward model")
    stage = PipelineConfig.stage


@dataclass
class DemoConfig(Rounds, PipelineConfig):
    threads: int = redefault(Common, "threads", 1)
    rounds: int = option(0, "0: SFT -> RM -> PPO once, with the final report; N: SFT, then N rounds of fresh "
                            "comparisons on the current policy -> reward model -> PPO (`fastrlhf iterate`)")
    train_prompts: int = option(2000, "distinct training prompts (SFT, preferences, PPO)")
    heldout_prompts: int = option(256, "distinct held-out prompts for the final report")
    sft_rows: int = option(4000, "SFT demonstrations written by the task's generator")


# Overrides per preset, applied before the config file and the flags.
PRESETS = {
    "cpu": {},
    "gpu": {"dtype": "float32", "sft": {"model": "demo-large", "batch_size": 128, "lr": 1e-3},
            "rm": {"batch_size": 128, "lr": 3e-4}, "ppo": {"batch_size": 256, "lr": 1e-4}},
}


def _type_of(cls, f):
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union else hint


def _parse(kind, text):
    if text.lower() in ("none", "null"):
        return None
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    return kind(text)


def add_arguments(parser, cls, prefix="", skip=()):
    """--name for every field; a section's fields are --section.name, except those its parent sets."""
    for f in dataclasses.fields(cls):
        kind = _type_of(cls, f)
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(kind):
            group = parser.add_argument_group(f"{prefix}{f.name}: {f.metadata['help']}")
            add_arguments(group, kind, f"{prefix}{f.name}.", skip={g.name for g in dataclasses.fields(cls)})
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(f"--{prefix}{f.name}", dest=f"{prefix}{f.name}", metavar=kind.__name__.upper(),
                            type=lambda text, kind=kind: _parse(kind, text), default=argparse.SUPPRESS,
                            help=f"{f.metadata['help']} (default: {default})")


def apply(config, values, source):
    """Sets fields from a (nested) dict; an unknown key is an error naming it and where it came from."""
    for key, value in values.items():
        name, _, rest = key.partition(".")
        known = {f.name: f for f in dataclasses.fields(config)}
        if name not in known:
            raise ValueError(f"{source}: unknown option {key!r} for {type(config).__name__}; see --help")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            nested = {rest: value} if rest else value
            if not isinstance(nested, dict):
                raise ValueError(f"{source}: {key!r} is a section; give it a mapping")
            apply(current, nested, source)
        else:
            setattr(config, name, value)
    return config


def load_file(path):
    text = Path(path).read_text()
    values = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option names to values")
    return values


def build(cls, args):
    """A config from parsed arguments: defaults, then preset, then --config file, then flags."""
    args = dict(vars(args))
    config = cls()
    preset, path = args.pop("preset", None), args.pop("config", None)
    if preset:
        apply(config, PRESETS[preset], f"preset {preset!r}")
    if path:
        apply(config, load_file(path), path)
    return apply(config, args, "command line")


def to_dict(config):
    return dataclasses.asdict(config)
