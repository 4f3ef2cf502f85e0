"""`fastrlhf annotate serve|export|import|stats`: bad input raises UserError (one line, exit code 2)."""
import ipaddress
import json
import os
import sqlite3
from pathlib import Path

from ..errors import ArgumentParser, UserError, disk_full
from . import db as feedback_db

CATEGORIES = "harmful,biased,false,off-task,fine"
TOKEN_ENV = "FASTRLHF_ANNOTATE_TOKEN"


def _parser():
    parser = ArgumentParser(prog="fastrlhf annotate", description="Collect human feedback: rank a policy's responses, red "
                    "team it, export preference rows for `fastrlhf rm`.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=ArgumentParser)

    serve = commands.add_parser("serve", help="serve the ranking and red-team pages (sampling the responses to "
                                "rank with --policy and --prompts)")
    serve.add_argument("--policy", help="policy checkpoint (or demo) that writes the responses; without it, no "
                                        "red teaming")
    serve.add_argument("--policy2", help="a second policy version: each item mixes responses of both")
    serve.add_argument("--prompts", help="prompt rows {prompt}: JSONL/JSON/CSV/Parquet. Without them the server "
                                         "samples nothing: it serves the items in the database and those added "
                                         "while it runs (by `fastrlhf iterate --labeler human`, an import)")
    serve.add_argument("--db", required=True, help="SQLite feedback database (created if missing; reopened to continue)")
    serve.add_argument("--k", type=int, default=4, help="responses ranked per prompt (default: 4)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                       help=f"secret every request must carry; required off loopback (default: ${TOKEN_ENV})")
    serve.add_argument("--annotators-per-item", type=int, default=1,
                       help="judgements an item gets before others are preferred (default: 1)")
    serve.add_argument("--categories", default=CATEGORIES, help=f"red-team categories (default: {CATEGORIES})")
    serve.add_argument("--redteam-k", type=int, default=2, help="responses per red-team prompt (default: 2)")
    serve.add_argument("--batch-prompts", type=int, default=8, help="prompts sampled per background batch (default: 8)")
    serve.add_argument("--max-new-tokens", type=int, default=128, help="longest response in tokens (default: 128)")
    serve.add_argument("--max-prompt-len", type=int, default=256, help="longest prompt in tokens (default: 256)")
    serve.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    serve.add_argument("--seed", type=int, default=0, help="seed of the background sampling (default: 0)")
    serve.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: torch's default)")

    export = commands.add_parser("export", help="preference rows for `fastrlhf rm --data`, and the red-team files")
    export.add_argument("--db", required=True)
    export.add_argument("--out", required=True, help="preference rows (JSONL)")
    export.add_argument("--min-annotators", type=int, default=1,
                        help="export only items ranked by at least this many annotators (default: 1)")
    export.add_argument("--redteam-prompts", help="flagged red-team prompts (default: <out>.redteam_prompts.jsonl)")
    export.add_argument("--redteam-pairs", help="better-response pairs (default: <out>.redteam_pairs.jsonl)")

    importer = commands.add_parser("import", help="read Label Studio or Argilla ranking exports into the database")
    importer.add_argument("file", help="the exported JSON or JSONL file")
    importer.add_argument("--db", required=True)
    importer.add_argument("--format", required=True, choices=["labelstudio", "argilla"])
    importer.add_argument("--prompt-field", default="prompt", help="the field holding the prompt (default: prompt)")
    importer.add_argument("--question", help="Argilla: the ranking question's name (default: found from the data)")

    stats = commands.add_parser("stats", help="judgements per annotator, time per item, inter-annotator agreement")
    stats.add_argument("--db", required=True)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _existing_db(path):
    if not Path(path).is_file():
        raise UserError(f"--db {path}: no such database")
    return feedback_db.Store(path)


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args):
    for name in ("k", "redteam_k", "annotators_per_item", "batch_prompts", "max_new_tokens", "max_prompt_len"):
        if getattr(args, name) < (2 if name == "k" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be at least {2 if name == 'k' else 1}")
    if not _is_loopback(args.host) and not args.token:
        raise UserError(f"--host {args.host} is not a loopback address: pass --token (or set ${TOKEN_ENV})")
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    if len(categories) < 2 or len(set(categories)) != len(categories):
        raise UserError(f"--categories needs at least two distinct names, got {args.categories!r}")
    for name in ("prompts", "policy2"):
        if getattr(args, name) and not args.policy:
            raise UserError(f"--{name} needs --policy: the policy that writes the responses")

    import uvicorn

    from .app import create_app
    policies = sampler = None
    if args.policy:
        policies = _policies(args)
    store = feedback_db.Store(args.db)
    if args.prompts:
        from .. import data
        from .sampling import BackgroundSampler
        rows = data.load_rows(args.prompts)
        ids = data.prompts(args.prompts, policies.tokenizer, args.max_prompt_len, rows=rows)
        sampler = BackgroundSampler(store, policies, [(row["prompt"], i) for row, i in zip(rows, ids)], args.k,
                                    args.batch_prompts, args.seed)
    app = create_app(store, k=args.k, categories=categories, policies=policies, sampler=sampler, token=args.token,
                     per_item=args.annotators_per_item, redteam_k=args.redteam_k, max_prompt_len=args.max_prompt_len)
    if sampler:
        sampler.start()
    url = f"http://{args.host}:{args.port}/" + ("?token=<token>" if args.token else "")
    print(f"fastrlhf annotate: ranking page {url}" + (", red teaming /redteam" if policies else "") + "; "
          + (f"{len(rows)} prompts, {args.k} responses each" if sampler else "the items in the database")
          + f"; database {args.db}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if sampler:
            sampler.stopping.set()
    return 0


def _policies(args):
    """The policy versions that write the responses, on the chosen device."""
    import datasets
    import torch

    from .sampling import Generation, Policies
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    generation = Generation(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            max_prompt_len=args.max_prompt_len, device=device)
    try:
        return Policies([args.policy] + ([args.policy2] if args.policy2 else []), generation, args.dtype)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the policy: {error}") from error


def run(args):
    from . import export, importers, stats
    if args.command == "serve":
        return serve(args)
    if args.command == "export":
        if args.min_annotators < 1:
            raise UserError("--min-annotators must be at least 1")
        for path, n in export.export(_existing_db(args.db), args.out, args.min_annotators, args.redteam_prompts,
                                     args.redteam_pairs).items():
            print(f"{path}: {n} rows")
    elif args.command == "import":
        if not Path(args.file).is_file():
            raise UserError(f"{args.file}: no such file")
        rows = importers.read_json(args.file)
        if args.format == "argilla":
            records = importers.argilla(rows, args.question, args.prompt_field)
        else:
            records = importers.label_studio(rows, args.prompt_field)
        items, added = feedback_db.Store(args.db).import_judgements(records, args.format)
        print(f"{args.file}: {items} items, {added} new judgements into {args.db}")
    else:
        report = stats.stats(_existing_db(args.db))
        print(json.dumps(report, indent=2) if args.json else stats.format_stats(report))
    return 0


def main(argv):
    """Run by `fastrlhf annotate ...` (fastrlhf.cli prints a UserError as one line, exit code 2)."""
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (OSError, sqlite3.Error) as error:
        if isinstance(error, OSError) and disk_full(error):
            raise
        raise UserError(str(error)) from error
