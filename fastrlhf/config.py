"""Configuration: one dataclass per command; each field's help text is its `--help` line.

Values come from the dataclass defaults, then a preset (`--preset`), then a YAML/JSON file (`--config`),
then `--key value` flags; nested sections are `--sft.lr 1e-3` on the command line and `sft: {lr: 1e-3}`
in a file. Whatever its source, every value passes through `check`: converted to its field's type (a
string such as "1e-3" or "false" is read the way a flag is; any other mismatch is an error), checked
against the field's range, then against the other fields. An error names the option, its value and
where it was set.
"""
import argparse
import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError


def option(default, help, check=None):
    """A field: its default, its --help line, and `check(value)`, which says what is wrong or returns None."""
    return field(default=default, metadata={"help": help, "check": check})


def redefault(cls, name, default):
    """The option `name` of `cls` with another default (same help and check)."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def section(cls, help):
    return field(default_factory=cls, metadata={"help": help})


# Range checks: each returns what is wrong with a value, or None. None values are optional ones left unset.
def at_least(low):
    return lambda v: f"must be at least {low}" if v is not None and v < low else None


def above(low):
    return lambda v: f"must be greater than {low}" if v is not None and v <= low else None


def between(low, high):
    return lambda v: f"must be between {low} and {high}" if v is not None and not low <= v <= high else None


def one_of(*choices):
    return lambda v: f"must be one of {', '.join(map(repr, choices))}" if v not in choices else None


# A name with one of these suffixes is a local file; any other name that is not a local path may be a hub name.
FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt", ".tsv", ".yaml", ".yml", ".xlsx", ".arrow",
                 ".gz", ".bz2", ".xz", ".zip", ".pt", ".bin", ".safetensors"}


def is_local(name):
    """Whether `name` means a local path rather than a Hugging Face hub id such as `org/model` (as for
    transformers, an `org` directory here makes `org/model` local)."""
    path = Path(name).expanduser()
    return (path.exists() or name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1
            or path.suffix.lower() in FILE_SUFFIXES or (path.parent != Path(".") and path.parent.is_dir()))


def source(required):
    """A model or data source: a local path that exists, or a hub name (or the embedded `demo` models)."""
    def check(value):
        if not value:
            return "is required" if required else None
        if is_local(value) and not Path(value).expanduser().exists():
            return "no such file or directory"
        return None
    return check


def required(value):
    return None if value else "is required"


def plain_name(value):
    if value in (".", "..") or not re.fullmatch(r"[\w.-]+", value):
        return "must be a plain name (letters, digits, '-', '_', '.'), not a path"
    return None


def labeler_name(value):
    return None if value in ("demo", "human") or (value.startswith("command:") and value[8:].strip()) else \
        "must be demo, human or command:<program>"


def not_a_directory(value):
    return "is a directory; expected a file" if value and Path(value).expanduser().is_dir() else None


def device_name(value):
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) else "must be auto, cpu, cuda or cuda:N"


# Options a resumed stage must share with its checkpoint: the data order, the sampling noise and the weights
# depend on them. Any other option may change on resume; it applies from the next step.
FIXED_ON_RESUME = ("model", "data", "policy", "reward_model", "prompts", "seed", "batch_size", "dtype", "fsdp")


@dataclass
class Common:
    run: str = option("demo", "run name: a stage writes to <output_dir>/<run>/<stage>/", plain_name)
    output_dir: str = option("runs", "directory that holds the runs", required)
    seed: int = option(0, "seed of data order, sampling and initialisation", at_least(0))
    device: str = option("auto", "cpu, cuda or auto (cuda when available)", device_name)
    dtype: str = option("float32", "float32 or bfloat16 weights (bfloat16 wants a GPU)", one_of("float32", "bfloat16"))
    resume: bool = option(False, "continue each stage from its last checkpoint (a stage with a final checkpoint is "
                                 "skipped; without --resume a stage starts afresh and replaces its directory). "
                                 "Changed options apply from the next step, listed in one line, except "
                                 f"{', '.join(FIXED_ON_RESUME)}: these must match the checkpoint")
    fsdp: bool = option(False, "under torchrun, shard trained models with FSDP2 instead of DDP")
    threads: int = option(0, "CPU threads of torch (0: torch's default); tiny models run best on 1 when cores are "
                             "shared", at_least(0))

    def problems(self):
        """(option names, what is wrong) for each rule that involves several options."""
        return []


@dataclass
class Training(Common):
    steps: int = option(500, "optimizer steps (PPO: rollout-and-update iterations)", at_least(1))
    batch_size: int = option(32, "global batch: sequences (RM: pairs, PPO: rollouts) per step over all processes",
                             at_least(1))
    lr: float = option(3e-3, "peak learning rate (linear warmup, then linear decay to 0)", above(0))
    warmup_steps: int = option(20, "learning-rate warmup steps", at_least(0))
    weight_decay: float = option(0.0, "AdamW weight decay", at_least(0))
    adam_eps: float = option(1e-8, "Adam epsilon", above(0))
    max_grad_norm: float = option(1.0, "global gradient-norm clipping", above(0))
    save_every: int = option(0, "write a checkpoint every N steps (0: only at the end)", at_least(0))
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep", at_least(1))
    max_bad_steps: int = option(5, "stop the run (exit code 3, no final) after this many skipped updates in a row "
                                   "(NaN/inf loss, gradient norm or reward)", at_least(1))

    def problems(self):
        if self.fsdp and self.save_every:
            yield ("fsdp", "save_every"), "periodic checkpoints are not supported with fsdp yet: set save_every to 0"


@dataclass
class SFTConfig(Training):
    model: str = option("demo", "Hugging Face causal LM (local path or hub id), or demo / demo-large (embedded)",
                        source(required=True))
    data: str = option("", "SFT rows {prompt, response} or {messages}: JSONL/JSON/CSV/Parquet file or hub name",
                       source(required=True))
    max_len: int = option(64, "longest prompt + response in tokens (longer responses are truncated)", at_least(2))


@dataclass
class RMConfig(Training):
    model: str = option("", "SFT checkpoint to start from (the reward head is new), or a reward model to continue", source(required=True))
    data: str = option("", "preference rows {prompt, chosen, rejected} or {prompt, responses, ranking}",
                       source(required=True))
    eval_data: str = option("", "held-out preference rows for accuracy and AUC (optional)", source(required=False))
    max_len: int = redefault(SFTConfig, "max_len", 64)
    steps: int = redefault(Training, "steps", 200)
    lr: float = redefault(Training, "lr", 1e-3)


@dataclass
class PPOConfig(Training):
    policy: str = option("", "SFT checkpoint: the initial policy (and the frozen reference unless `reference` is set)",
                         source(required=True))
    reference: str = option("", "frozen KL reference (default: the policy); iterated RLHF keeps the SFT model here",
                            source(required=False))
    reward_model: str = option("", "reward-model checkpoint: the scorer and the critic's initialisation",
                               source(required=True))
    critic: str = option("", "the critic's initialisation instead of the reward model (a PPO stage's <dir>/critic)",
                         source(required=False))
    prompts: str = option("", "prompt rows {prompt}: file or hub name", source(required=True))
    steps: int = redefault(Training, "steps", 40)
    batch_size: int = redefault(Training, "batch_size", 64)
    lr: float = redefault(Training, "lr", 1e-4)
    warmup_steps: int = redefault(Training, "warmup_steps", 0)
    adam_eps: float = redefault(Training, "adam_eps", 1e-5)
    num_minibatches: int = option(4, "minibatches per PPO epoch (they split the batch evenly)", at_least(1))
    ppo_epochs: int = option(4, "passes over each rollout batch", at_least(1))
    max_prompt_len: int = option(32, "longest prompt in tokens (longer ones are an error)", at_least(1))
    max_new_tokens: int = option(24, "longest response; one without EOS by then gets missing_eos_penalty", at_least(1))
    temperature: float = option(0.7, "sampling temperature, also applied to the training logprobs", above(0))
    kl_coef: float = option(0.05, "beta: weight of the per-token KL to the reference in the reward (a new value "
                                  "on resume replaces the adapted one)", at_least(0))
    kl_target: typing.Optional[float] = option(None, "target KL per sequence for the adaptive controller (off: "
                                                     "fixed beta)", above(0))
    kl_horizon: int = option(10000, "adaptive KL controller horizon, in rollouts", at_least(1))
    gamma: float = option(1.0, "discount", between(0, 1))
    lam: float = option(0.95, "GAE lambda", between(0, 1))
    clip_eps: float = option(0.2, "policy ratio clip", above(0))
    value_clip_eps: float = option(0.2, "value clip around the rollout values", above(0))
    vf_coef: float = option(0.1, "value-loss weight", at_least(0))
    missing_eos_penalty: typing.Optional[float] = option(-1.0, "score given to a response without EOS (None: keep "
                                                               "the RM score)")
    normalize_reward: bool = option(True, "standardise RM scores with the mean/std measured after RM training")
    whiten_advantages: bool = option(True, "normalise advantages over the batch")
    stop_kl: typing.Optional[float] = option(None, "divergence check: stop the run (exit code 3) when a rollout's "
                                                   "KL to the reference exceeds this, in nats per sequence (off)",
                                             above(0))
    stop_entropy: typing.Optional[float] = option(None, "divergence check: stop the run (exit code 3) when a "
                                                        "rollout's mean token entropy falls below this, in nats "
                                                        "(off)", above(0))
    eval_prompts: str = option("", "held-out prompt rows: every eval_every steps the policy's RM score, gold score "
                                   "and KL to the reference on them go to eval.jsonl (reward over-optimisation)",
                               source(required=False))
    eval_every: int = option(5, "steps between evaluations on eval_prompts (the first before any update, one after "
                                "the last)", at_least(1))
    eval_labeler: str = option("", "gold labeler of those evaluations: demo (the embedded task's) or empty for none",
                               one_of("", "demo"))

    def problems(self):
        yield from super().problems()
        if self.num_minibatches > self.batch_size or self.batch_size % self.num_minibatches:
            yield ("batch_size", "num_minibatches"), "the batch must split into num_minibatches equal minibatches"


@dataclass
class EvalConfig(Common):
    policy: str = option("", "policy A to evaluate (optional with --reward_model and --preferences)",
                         source(required=False))
    baseline: str = option("", "policy B for the win rate of A over B (optional)", source(required=False))
    reward_model: str = option("", "reward model that scores the responses (optional)", source(required=False))
    reference: str = option("", "reference policy for the KL (optional; default: the baseline)",
                            source(required=False))
    preferences: str = option("", "held-out preference rows: the reward model's accuracy, precision, recall, F1, "
                                  "ROC AUC (optional; truncated to max_prompt_len + max_new_tokens)",
                              source(required=False))
    prompts: str = option("", "prompt rows {prompt}: file or hub name (required with --policy)", source(required=False))
    labeler: str = option("", "gold labeler: demo (the embedded task's) or empty for none", one_of("", "demo"))
    num_prompts: int = option(256, "prompts evaluated (the first N)", at_least(1))
    batch_size: int = option(128, "generation batch size", at_least(1))
    max_prompt_len: int = redefault(PPOConfig, "max_prompt_len", 32)
    max_new_tokens: int = redefault(PPOConfig, "max_new_tokens", 24)
    temperature: float = redefault(PPOConfig, "temperature", 0.7)

    def problems(self):
        yield from super().problems()
        if not self.policy and not (self.reward_model and self.preferences):
            yield ("policy",), "policy is required: pass --policy (or --reward_model and --preferences to evaluate only the reward model)"
        if self.policy and not self.prompts:
            yield ("prompts",), "prompts is required to evaluate a policy"
        if self.preferences and not self.reward_model:
            yield ("preferences", "reward_model"), "preferences need a reward_model to score them"


@dataclass
class PipelineConfig(Common):
    sft: SFTConfig = section(SFTConfig, "supervised fine-tuning")
    rm: RMConfig = section(RMConfig, "reward model (its model is the SFT output)")
    ppo: PPOConfig = section(PPOConfig, "PPO (policy from SFT, reward model and critic from RM)")
    # Section options the pipeline sets itself: neither flags nor file keys.
    derived: typing.ClassVar = {"rm": ("model",), "ppo": ("policy", "reward_model")}

    def stage(self, name, **paths):
        """A stage's config with the pipeline's shared fields and the previous stages' outputs."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(Common)}
        return dataclasses.replace(getattr(self, name), **shared, **paths)


def _distinct_demo_prompts():
    from .demo import task
    return sum(math.perm(len(task.ASPECTS), k) for k in range(1, task.MAX_ASPECTS + 1))


@dataclass
class Rounds:
    """Options of iterated RLHF (`iterate`, `demo --rounds N`): rounds of comparisons -> reward model -> PPO."""
    rounds: int = option(3, "rounds of fresh comparisons on the current policy -> reward model -> PPO", at_least(1))
    labeler: str = option("demo", "who ranks the candidates: demo (the embedded task's rule), command:<program> "
                                  "(candidate rows as JSONL on stdin, one ranking per line on stdout) or human "
                                  "(annotators, on `fastrlhf annotate serve --db <human_db>`)", labeler_name)
    human_db: str = option("", "labeler human: the `fastrlhf annotate` SQLite database each round's candidates go "
                               "into (created if missing)", not_a_directory)
    human_annotators: int = option(1, "labeler human: judgements (by different annotators) each item waits for; "
                                      "serve with the same --annotators-per-item", at_least(1))
    human_judgements: int = option(0, "labeler human: judgements a round waits for before it goes on (0: every "
                                      "item human_annotators times)", at_least(0))
    human_poll_seconds: float = option(5.0, "labeler human: seconds between two looks at the database while "
                                            "waiting", above(0))
    gold_labeler: str = option("demo", "gold judge of the held-out evaluations and win rates: demo, or empty "
                                       "(win rates then judged by the round's reward model)", one_of("", "demo"))
    preference_prompts: int = option(500, "training prompts whose samples the labeler ranks (per round: fresh ones "
                                          "each round)", at_least(1))
    heldout_preference_prompts: int = option(128, "held-out prompts ranked per round: the newest round's on-policy "
                                                  "pairs that the reward model is tested on", at_least(1))
    candidates: int = option(4, "samples ranked per prompt (K: K(K-1)/2 pairs)", at_least(2))
    candidate_temperature: float = option(1.0, "sampling temperature of the candidates", above(0))
    compare_previous: bool = option(False, "from round 2, sample half of each prompt's candidates from the previous "
                                           "round's policy, so that comparisons span versions")
    curve_prompts: int = option(64, "held-out prompts PPO is evaluated on every ppo.eval_every steps "
                                    "(the over-optimisation curve; 0: none)", at_least(0))
    report_prompts: int = option(256, "held-out prompts of each round's report (gold, proxy, KL, win rates)",
                                 at_least(1))

    def problems(self):
        yield from super().problems()
        if self.labeler == "human" and not self.human_db:
            yield ("labeler", "human_db"), "the human labeler needs human_db: the annotation database"


@dataclass
class IterateConfig(Rounds, Common):
    gold_labeler: str = redefault(Rounds, "gold_labeler", "")
    policy: str = option("", "SFT checkpoint: round 1's policy and the KL reference of every round (unless "
                             "ppo.reference is set)", source(required=True))
    prompts: str = option("", "training prompt rows {prompt}: ranked candidates and PPO", source(required=True))
    heldout_prompts: str = option("", "held-out prompt rows {prompt}: the reward model's test pairs and the reports",
                                  source(required=True))
    rm: RMConfig = section(RMConfig, "reward model, continued each round on all comparisons so far")
    ppo: PPOConfig = section(PPOConfig, "PPO, each round from the current policy against the round's reward model")
    stage = PipelineConfig.stage
    derived: typing.ClassVar = {"rm": ("model", "data", "eval_data"),
                                "ppo": ("reward_model", "critic", "eval_prompts", "eval_labeler")}


@dataclass
class DemoConfig(Rounds, PipelineConfig):
    threads: int = redefault(Common, "threads", 1)
    rounds: int = option(0, "0: SFT -> RM -> PPO once, with the final report; N: SFT, then N rounds of fresh "
                            "comparisons on the current policy -> reward model -> PPO (`fastrlhf iterate`)", at_least(0))
    train_prompts: int = option(2000, "distinct training prompts (SFT, preferences, PPO)", at_least(1))
    heldout_prompts: int = option(256, "distinct held-out prompts for the final report", at_least(1))
    sft_rows: int = option(4000, "SFT demonstrations written by the task's generator", at_least(1))
    derived: typing.ClassVar = {"sft": ("data",), "rm": ("model", "data", "eval_data"),
                                "ppo": ("policy", "reward_model", "prompts", "critic", "eval_prompts", "eval_labeler")}

    def problems(self):
        yield from super().problems()
        if self.preference_prompts > self.train_prompts:
            yield ("preference_prompts", "train_prompts"), "the preference prompts are drawn from the training ones"
        if self.train_prompts + self.heldout_prompts > _distinct_demo_prompts():
            yield (("train_prompts", "heldout_prompts"),
                   f"the task has {_distinct_demo_prompts()} distinct prompts in all")
        if not self.rounds and self.labeler != "demo":
            yield ("labeler", "rounds"), "the demo without --rounds ranks with the embedded task's rule; give --rounds N"


# Overrides per preset, applied before the config file and the flags.
PRESETS = {
    "cpu": {},
    "gpu": {"dtype": "float32", "sft": {"model": "demo-large", "batch_size": 128, "lr": 1e-3},
            "rm": {"batch_size": 128, "lr": 3e-4}, "ppo": {"batch_size": 256, "lr": 1e-4}},
}


def _type_of(cls, f):
    """(type, optional) of a field: Optional[float] is (float, True)."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None)), True
    return hint, False


TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def convert(kind, optional, value):
    """`value` as a `kind`: strings are parsed as flags are; any other type mismatch is a ValueError."""
    expected = KIND_NAMES[kind] + (" or none" if optional else "")
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if optional and text in ("none", "null"):
            return None
        if kind is bool:
            if text not in TRUE + FALSE:
                raise ValueError(f"expected {expected}")
            return text in TRUE
        try:
            value = float(text) if kind is float else int(text)
        except ValueError:
            try:  # "1e3" for an integer option
                value = float(text)
            except ValueError:
                raise ValueError(f"expected {expected}") from None
    if value is None and optional:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is int and isinstance(value, float):
        raise ValueError(f"expected {expected}" if math.isfinite(value) else "must be a finite number")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"expected {expected}")
    return value


def _said(path, value, where):
    return f"{path}={value!r} {where}"


def check(config, sources=None, prefix="", shared=(), derived=()):
    """Converts and checks every option of `config` and of its sections, in place; returns `config`.
    `sources` maps an option's dotted name to where it was set (`in file.yaml`, ...)."""
    sources = {} if sources is None else sources
    for f in dataclasses.fields(config):
        path, value = prefix + f.name, getattr(config, f.name)
        where = sources.get(path, "by default")
        kind, optional = _type_of(type(config), f)
        if dataclasses.is_dataclass(kind):
            check(value, sources, f"{path}.", shared={g.name for g in dataclasses.fields(config)},
                  derived=getattr(config, "derived", {}).get(f.name, ()))
            continue
        if f.name in shared or f.name in derived:
            if value != f.default:
                why = (f"every stage takes the pipeline's {f.name}: set it at the top level" if f.name in shared
                       else "the pipeline sets it itself: remove it")
                raise ConfigError(f"{_said(path, value, where)}: {why}")
            continue
        try:
            value = convert(kind, optional, value)
        except ValueError as error:
            raise ConfigError(f"{_said(path, value, where)}: {error}") from None
        problem = f.metadata["check"](value) if f.metadata.get("check") else None
        if problem == "is required":
            raise ConfigError(f"{path} is required: pass --{path}, or set it in a --config file")
        if problem:
            raise ConfigError(f"{_said(path, value, where)}: {problem}")
        setattr(config, f.name, value)
    for names, problem in config.problems():
        by_source = {}
        for name in names:
            by_source.setdefault(sources.get(prefix + name, "by default"), []).append(
                f"{prefix}{name}={getattr(config, name)!r}")
        raise ConfigError("; ".join(f"{', '.join(said)} {where}" for where, said in by_source.items())
                          + f": {problem}")
    return config


def add_arguments(parser, cls, prefix="", skip=()):
    """--name for every field; a section's fields are --section.name, except those its parent sets."""
    for f in dataclasses.fields(cls):
        kind, _ = _type_of(cls, f)
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(kind):
            group = parser.add_argument_group(f"{prefix}{f.name}: {f.metadata['help']}")
            skipped = {g.name for g in dataclasses.fields(cls)} | set(getattr(cls, "derived", {}).get(f.name, ()))
            add_arguments(group, kind, f"{prefix}{f.name}.", skip=skipped)
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(f"--{prefix}{f.name}", dest=f"{prefix}{f.name}", metavar=kind.__name__.upper(),
                            default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})")


def apply(config, values, where, sources=None, prefix=""):
    """Sets options from a (nested) dict, each converted to its field's type; an unknown key is an error
    naming it and `where` it was set (`in file.yaml`); `sources` records where each option was set."""
    for key, value in values.items():
        name, _, rest = str(key).partition(".")
        fields = {f.name: f for f in dataclasses.fields(config)}
        if name not in fields:
            raise ConfigError(f"unknown option {prefix + str(key)!r} {where} ({type(config).__name__}); see --help")
        kind, optional = _type_of(type(config), fields[name])
        if dataclasses.is_dataclass(kind):
            nested = {rest: value} if rest else value
            if not isinstance(nested, dict):
                raise ConfigError(f"{prefix + name}={value!r} {where}: a section; give it a mapping of options")
            apply(getattr(config, name), nested, where, sources, f"{prefix}{name}.")
            continue
        if rest:
            raise ConfigError(f"unknown option {prefix + str(key)!r} {where}: {prefix + name} is not a section")
        try:
            setattr(config, name, convert(kind, optional, value))
        except ValueError as error:
            raise ConfigError(f"{_said(prefix + name, value, where)}: {error}") from None
        if sources is not None:
            sources[prefix + name] = where
    return config


def load_file(path):
    """The mapping of options in a YAML or JSON file."""
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"--config {path}: a config file is .yaml, .yml or .json")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"--config {path}: {error.strerror.lower()}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x})") from None
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}, line {error.lineno}, column {error.colno}: invalid JSON: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: invalid YAML: {getattr(error, 'problem', None) or error}") from None
    if values is None:  # an empty file
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of option names to values, "
                          f"not a {type(values).__name__}")
    return values


def build(cls, args):
    """A checked config from parsed arguments: defaults, then preset, then --config file, then flags."""
    values = dict(vars(args))
    preset, path = values.pop("preset", None), values.pop("config", None)
    config, sources = cls(), {}
    if preset:
        apply(config, PRESETS[preset], f"in preset {preset!r}", sources)
    if path:
        apply(config, load_file(path), f"in {path}", sources)
    apply(config, values, "on the command line", sources)
    return check(config, sources)
