"""A labeler program for `fastrlhf iterate --labeler command:...` in the tests: reads candidate rows as JSONL on
stdin, ranks them with the embedded task's rule, writes one ranking per line on stdout (as {"ranking": [...]} and
as a bare list, alternately: both are accepted). `--bad MODE --in-round R` misbehaves on round R's rows.

It loads fastrlhf/demo/task.py alone, not the fastrlhf package (which imports torch), so that it starts fast.
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("task", Path(__file__).parents[1] / "fastrlhf" / "demo" / "task.py")
task = importlib.util.module_from_spec(spec)
spec.loader.exec_module(task)

parser = argparse.ArgumentParser()
parser.add_argument("--bad", choices=("permutation", "count", "exit", "json", "ties"))
parser.add_argument("--in-round", type=int, default=1)
args = parser.parse_args()

rows = [json.loads(line) for line in sys.stdin]
bad = args.bad if any(f"/round-{args.in_round}/" in row["id"] for row in rows) else None
if bad == "exit":
    sys.exit("labeler.py: giving up")
rankings = [task.rank(row["prompt"], row["responses"], row["finished"]) for row in rows]
if bad == "permutation":
    rankings[1] = [1] * (len(rankings[1]) - 1) + [2]  # three tied for first, then 2: not a ranking
if bad == "ties":
    rankings = [[1] * len(r) for r in rankings]  # valid rankings, but not one pair
if bad == "count":
    rankings = rankings[:-1]
lines = [json.dumps({"ranking": r} if i % 2 else r) for i, r in enumerate(rankings)]
if bad == "json":
    lines[0] = "oops"
print("\n".join(lines))
