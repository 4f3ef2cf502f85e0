"""The `fastrlhf` command: sft, rm, ppo, pipeline, demo, iterate, eval, bench, annotate. `fastrlhf <command> --help`
lists every option; `--config file.yaml` and `--key value` flags override the defaults.

Exit codes: 0 done; 2 bad input or environment (the message, one line, names the culprit); 3 a run
stopped by the guard; 1 an internal error (a traceback). FASTRLHF_DEBUG=1 prints tracebacks always."""
import argparse
import importlib
import os
import sys
import traceback

from . import config as cfg
from .errors import ArgumentParser, UserError, disk_full

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
    parser = ArgumentParser(prog="fastrlhf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=ArgumentParser)
    for name, (cls, help) in COMMANDS.items():
        sub = commands.add_parser(name, help=help, description=help,
                                  usage=f"fastrlhf {name} [--config FILE] [--key value ...]")
        sub.add_argument("--config", default=argparse.SUPPRESS, help="YAML or JSON file of options")
        if issubclass(cls, cfg.PipelineConfig):
            sub.add_argument("--preset", choices=sorted(cfg.PRESETS), default=argparse.SUPPRESS,
                             help="cpu (default) or gpu: a larger model and batches")
        cfg.add_arguments(sub, cls)
    commands.add_parser("bench", help="benchmarks of the ops against eager PyTorch (options: fastrlhf bench --help)")
    commands.add_parser("annotate", help="collect human feedback: ranking and red-team pages, export for rm "
                                         "(fastrlhf annotate --help)")
    return parser


def _bench(argv):
    try:  # through sys.modules, so an import that failed once (or a stand-in) is what is found
        benchmark = importlib.import_module("fastrlhf.benchmark")
    except ImportError as error:
        print(f"fastrlhf bench is not available: {error}", file=sys.stderr)
        return 1
    return benchmark.main(argv)


def run(command, config):
    from . import evaluate, iterate, pipeline, ppo, reward_model, sft
    if command in ("sft", "rm", "ppo"):
        return {"sft": sft, "rm": reward_model, "ppo": ppo}[command].train(config)
    if command == "pipeline":
        return pipeline.pipeline(config)
    if command == "demo":
        return iterate.demo(config) if config.rounds else pipeline.demo(config)
    if command == "iterate":
        return iterate.run(config)
    report = evaluate.evaluate(config)
    print(evaluate.format_report(report))
    return report


def _main(argv):
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    if argv[:1] == ["annotate"]:
        from .annotate.cli import main as annotate
        return annotate(argv[1:])
    args = _parser().parse_args(argv)
    command = args.__dict__.pop("command")
    config = cfg.build(COMMANDS[command][0], args)  # every option checked before anything heavy is imported
    import datasets
    import transformers
    transformers.logging.set_verbosity_error()  # "newly initialised weights": the reward head, on purpose
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    from . import distributed
    try:
        run(command, config)
    finally:
        distributed.shutdown()
    return 0


def main(argv=None):
    """Runs a command. A UserError (or a full disk) is printed as one line and exits with its code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    name = f"fastrlhf {argv[0]}" if argv and not argv[0].startswith("-") else "fastrlhf"
    try:
        return _main(argv)
    except Exception as error:
        if not isinstance(error, UserError) and not disk_full(error):
            raise  # an internal error: the traceback is the report
        if os.environ.get("FASTRLHF_DEBUG") == "1":
            traceback.print_exc()
        message = str(error) if isinstance(error, UserError) else f"no space left on the device: {error}"
        print(f"{name}: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
