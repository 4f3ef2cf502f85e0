"""The `fastrlhf` command: sft, rm, ppo, pipeline, demo, iterate, eval, bench. `fastrlhf <command> --help`
lists every option; `--config file.yaml` and `--key value` flags override the defaults."""
import argparse
import json
import sys

from . import config as cfg

COMMANDS = {
    "sft": (cfg.SFTConfig, "supervised fine-tuning of a causal LM on demonstrations"),
    "rm": (cfg.RMConfig, "train a reward model on preference pairs or rankings"),
    "ppo": (cfg.PPOConfig, "PPO against a reward model"),
    "pipeline": (cfg.PipelineConfig, "sft, rm and ppo in sequence, each stage's output feeding the next"),
    "demo": (cfg.DemoConfig, "the whole pipeline on the embedded task, with a final report (CPU: a few minutes)"),
    "iterate": (cfg.IterateConfig, "iterated RLHF: rounds of fresh comparisons -> reward model -> PPO"),
    "eval": (cfg.EvalConfig, "score a policy: RM score, gold score, KL to a reference, win rate over a baseline"),
}


def _parser():
    parser = argparse.ArgumentParser(prog="fastrlhf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (cls, help) in COMMANDS.items():
        sub = commands.add_parser(name, help=help, description=help,
                                  usage=f"fastrlhf {name} [--config FILE] [--key value ...]")
        sub.add_argument("--config", default=argparse.SUPPRESS, help="YAML or JSON file of options")
        if issubclass(cls, cfg.PipelineConfig):
            sub.add_argument("--preset", choices=sorted(cfg.PRESETS), default=argparse.SUPPRESS,
                             help="cpu (default) or gpu: a larger model and batches")
        cfg.add_arguments(sub, cls)
    commands.add_parser("bench", help="benchmarks of the ops against eager PyTorch (options: fastrlhf bench --help)")
    return parser


def _bench(argv):
    try:
        from . import benchmark
    except ImportError as error:
        print(f"fastrlhf bench is not available: {error}", file=sys.stderr)
        return 1
    return benchmark.main(argv)


def run(command, config):
    from . import evaluate, iterate, pipeline, ppo, reward_model, sft
    if command == "sft":
        return sft.train(config)
    if command == "rm":
        return reward_model.train(config)[1]
    if command == "ppo":
        return ppo.train(config)
    if command == "pipeline":
        return pipeline.pipeline(config)
    if command == "demo":
        return iterate.demo(config) if config.rounds else pipeline.demo(config)
    if command == "iterate":
        return iterate.run(config)
    report = evaluate.evaluate(config)
    print(evaluate.format_report(report))
    return report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    command = args.__dict__.pop("command")
    try:
        config = cfg.build(COMMANDS[command][0], args)
    except (ValueError, OSError) as error:
        sys.exit(f"fastrlhf {command}: {error}")
    import datasets
    import transformers
    transformers.logging.set_verbosity_error()  # "newly initialised weights": the reward head, on purpose
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    from . import data, distributed
    try:
        result = run(command, config)
    except data.DataError as error:
        sys.exit(f"fastrlhf {command}: {error}")
    finally:
        distributed.shutdown()
    if command in ("sft", "ppo", "rm"):
        print(json.dumps(result, indent=2, default=str))
    return 0
