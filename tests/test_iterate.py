"""Iterated RLHF, reduced to seconds: `demo --rounds 2` with the demo labeler; the same two rounds with a
`command:` labeler (tests/labeler.py, the same rule) killed with SIGKILL in round 2's reward-model stage and
resumed, which must end exactly like the uninterrupted run; the same two rounds with the human labeler, ranked
through `fastrlhf annotate serve` by an annotator following the same rule, interrupted (Ctrl-C) while it waits
and resumed; labeler output that cannot be used is an error naming the round and the row, and leaves the
earlier rounds as they were. PPO's held-out evaluations (the over-optimisation curve) leave its training
unchanged."""
import contextlib
import json
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiny_run
from fastrlhf import checkpoint, cli, config, iterate, ppo
from fastrlhf.annotate import db
from fastrlhf.demo import task
from fastrlhf.errors import ConfigError

ROUNDS = {"rounds": 2, "preference_prompts": 40, "heldout_preference_prompts": 16, "curve_prompts": 8,
          "report_prompts": 16}
STAGES = {"rm": {"steps": 20, "batch_size": 16},
          "ppo": {"steps": 4, "batch_size": 16, "num_minibatches": 2, "ppo_epochs": 2, "eval_every": 2}}
TASK = {"threads": 1, "train_prompts": 200, "heldout_prompts": 32, "sft_rows": 1000, "sft": {"steps": 100}}
LABELER = f"command:{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).parent / 'labeler.py'))}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = config.apply(config.DemoConfig(output_dir=str(out), run="demo"), {**TASK, **ROUNDS, **STAGES}, "test")
    return out / "demo", iterate.demo(cfg)


def iterate_args(demo_dir, output_dir, run, **overrides):
    """`fastrlhf iterate` flags for the demo run's rounds, from its SFT model and prompts."""
    options = {**ROUNDS, **{f"{stage}.{k}": v for stage, values in STAGES.items() for k, v in values.items()},
               "policy": demo_dir / "sft" / "final", "prompts": demo_dir / "data" / "prompts.jsonl",
               "heldout_prompts": demo_dir / "data" / "heldout_prompts.jsonl", "gold_labeler": "demo", "threads": 1,
               "output_dir": output_dir, "run": run, **overrides}
    return ["iterate", *(x for key, value in options.items() for x in (f"--{key}", str(value)))]


@pytest.fixture(scope="module")
def killed_and_resumed(demo, tmp_path_factory):
    """The demo's two rounds with the command labeler, killed once round 2's reward model has a checkpoint."""
    demo_dir, _ = demo
    out = tmp_path_factory.mktemp("killed")
    args = iterate_args(demo_dir, out, "cmd", labeler=LABELER, **{"rm.save_every": 2})
    killed = tiny_run.fastrlhf(args)
    checkpoints = out / "cmd" / "round-2" / "rm" / "checkpoints"
    deadline = time.time() + 300
    while checkpoint.latest(checkpoints) is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.kill()
    first, _ = killed.communicate()
    stage_dir = out / "cmd" / "round-2" / "rm"
    was_in_rm = killed.returncode == -9 and not (stage_dir / "final").exists()
    resumed = tiny_run.fastrlhf(args + ["--resume", "true"])
    second, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, second
    return out / "cmd", was_in_rm, first + second


def test_demo_rounds_report_and_curves(demo):
    run_dir, reports = demo
    assert [r["round"] for r in reports] == [1, 2]
    for report in reports:
        assert 0 <= report["rm_accuracy"] <= 1 and 0 <= report["win_rate_sft"] <= 1
        assert report["judge"] == "gold" and {"gold", "rm", "kl", "gold_peak"} <= set(report)
        assert iterate.format_round(report).startswith(f"round {report['round']}: RM accuracy")
    assert "previous_rm_accuracy" in reports[1] and "previous_rm_accuracy" not in reports[0]
    # Round 2 continued round 1's reward model on both rounds' comparisons, and its PPO started from round 1's policy.
    rows = [(run_dir / f"round-{r}" / "preferences.jsonl").read_text().splitlines() for r in (1, 2)]
    assert (run_dir / "round-2" / "comparisons.jsonl").read_text().splitlines() == rows[0] + rows[1]
    curve = [json.loads(line) for line in (run_dir / "round-2" / "ppo" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [0, 2, 4]
    assert curve[0]["kl"] > 0  # round 2 starts away from the SFT reference
    assert (run_dir / "over_optimisation.png").stat().st_size > 0


def test_command_labeler_ranks_as_the_demo_labeler(demo, killed_and_resumed):
    demo_dir, _ = demo
    cmd_dir, _, output = killed_and_resumed
    for r in (1, 2):
        for name in ("preferences.jsonl", "heldout_preferences.jsonl"):
            assert (cmd_dir / f"round-{r}" / name).read_text() == (demo_dir / f"round-{r}" / name).read_text()
    assert "round 1: RM accuracy" in output and "round 2: RM accuracy" in output


def test_sigkill_in_round_2_reward_model_then_resume_matches_uninterrupted(demo, killed_and_resumed):
    demo_dir, _ = demo
    cmd_dir, was_in_rm, _ = killed_and_resumed
    assert was_in_rm, "the run was not killed inside round 2's reward-model stage"
    for stage in ("rm", "ppo"):
        a, b = (load_file(str(d / "round-2" / stage / "final" / "model.safetensors")) for d in (demo_dir, cmd_dir))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    a, b = ({k: v for k, v in json.loads((d / "round-2" / "report.json").read_text()).items() if k != "seconds"}
            for d in (demo_dir, cmd_dir))
    assert a == b


ROWS = [{"id": f"t/round-2/{i}", "prompt": "review : room", "finished": [True, True, False, True],
         "responses": ["the room was great .", "the room was bad .", "the room was", "the room was fine ."],
         "policies": ["sft"] * 4} for i in range(3)]


@pytest.mark.parametrize("bad, message", [
    ("permutation", r"^round 2, row 2 \(id t/round-2/1\): expected the ranks of its 4 responses: a permutation"),
    ("count", r"^round 2: labeler .* wrote 2 rankings for 3 rows$"),
    ("exit", r"^round 2: labeler .* exited with status 1"),
    ("json", r"^round 2, row 1 \(id t/round-2/0\): labeler .* wrote 'oops', which is not JSON"),
])
def test_bad_command_output_names_round_and_row(bad, message):
    labeler = iterate.make_labeler(config.IterateConfig(labeler=f"{LABELER} --bad {bad} --in-round 2"))
    with pytest.raises(iterate.LabelerError, match=message):
        iterate.rank(labeler, ROWS, 2)


def test_rankings_checked_whatever_the_labeler():
    assert iterate.rank(iterate.demo_labeler, ROWS, 1) == [[1, 3, 4, 2]] * 3
    assert iterate.rank(iterate.make_labeler(config.IterateConfig(labeler=LABELER)), ROWS, 1) == [[1, 3, 4, 2]] * 3
    assert iterate.rank(lambda rows: [[1, 1, 3, 4], None, [2, 1, 4, 3]], ROWS, 1)[1] is None  # ties, unjudged
    for ranking in ([1, 2, 3], [0, 1, 2, 3], [1, 1, 2, 3], [1, 2, 3, True], [1.0, 2, 3, 4], "1234"):
        with pytest.raises(iterate.LabelerError, match=r"round 1, row 1 \(id t/round-2/0\)"):
            iterate.rank(lambda rows: [ranking] * 3, ROWS, 1)
    with pytest.raises(iterate.LabelerError, match="round 1: expected a list of 3 rankings"):
        iterate.rank(lambda rows: None, ROWS, 1)
    with pytest.raises(iterate.LabelerError, match="labeler must be demo, human or command:<program>, got 'humans'"):
        iterate.make_labeler(config.IterateConfig(labeler="humans"))


@pytest.mark.parametrize("bad, message", [
    ("permutation", r"round 3, row 2 \(id demo/round-3/1\): expected the ranks"),
    ("ties", r"round 3: the rankings give no pair on the training prompts"),
])
def test_bad_labeler_in_round_3_keeps_earlier_rounds(demo, tmp_path, capsys, bad, message):
    demo_dir, _ = demo
    shutil.copytree(demo_dir, tmp_path / "demo")
    before = {p: p.read_bytes() for p in (tmp_path / "demo").rglob("*") if p.is_file() and "round-" in str(p)}
    with pytest.raises(SystemExit) as exit:
        cli.main(iterate_args(demo_dir, tmp_path, "demo", rounds=3, resume="true",
                              labeler=f"{LABELER} --bad {bad} --in-round 3"))
    assert exit.value.code == 2
    assert re.search(f"fastrlhf iterate: error: {message}", capsys.readouterr().err)
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "demo" / "round-3" / "candidates.jsonl").exists()
    assert not (tmp_path / "demo" / "round-3" / "preferences.jsonl").exists()


def test_heldout_evaluations_leave_ppo_unchanged(tmp_path):
    paths = tiny_run.make(tmp_path / "tiny")
    common = {**tiny_run.PPO, **paths, "output_dir": str(tmp_path), "threads": 1}
    ppo.train(config.PPOConfig(**common, run="plain"))
    ppo.train(config.PPOConfig(**common, run="eval", eval_prompts=paths["prompts"], eval_every=4, eval_labeler="demo"))
    a, b = (load_file(str(tmp_path / run / "ppo" / "final" / "model.safetensors")) for run in ("plain", "eval"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "eval" / "ppo" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 4, tiny_run.PPO["steps"]]
    assert records[0]["kl"] == 0 and all({"rm", "gold", "kl", "length", "eos"} <= set(r) for r in records)
    assert not (tmp_path / "plain" / "ppo" / "eval.jsonl").exists()


HUMAN_ROWS = [
    {"id": "h/round-1/0", "prompt": "review : room", "responses": ["a .", "b .", "a .", "c ."],
     "finished": [True, True, True, False], "policies": ["sft", "sft", "round-1", "round-1"]},
    {"id": "h/round-1/1", "prompt": "review : bed", "responses": ["x", "y", "z", "w"],
     "finished": [True] * 4, "policies": ["sft"] * 4},
    {"id": "h/round-1/2", "prompt": "review : pool", "responses": ["p", "q"], "finished": [True] * 2,
     "policies": ["sft"] * 2},
    {"id": "h/round-1/3", "prompt": "review : view", "responses": ["same"] * 3, "finished": [True] * 3,
     "policies": ["sft"] * 3},
]


def judge(store, external_id, annotator, best_first=None, verdict="ranked"):
    """Submits a judgement of the item pushed for `external_id`: its texts best first, or a verdict."""
    item, responses, _ = store.items_by_external_id([external_id])[0]
    public_id = {r["text"]: r["public_id"] for r in responses}
    store.judge_ranking(annotator, item["id"], verdict, [[public_id[t]] for t in best_first or []], "")


def test_human_labeler_combines_judgements_and_resumes(tmp_path, capsys):
    path = tmp_path / "feedback.sqlite"
    options = config.IterateConfig(labeler="human", human_db=str(path), human_annotators=2, human_poll_seconds=0.01)
    rankings, labeler = [], iterate.make_labeler(options)
    waiting = threading.Thread(target=lambda: rankings.append(iterate.rank(labeler, HUMAN_ROWS, 1)))
    waiting.start()
    store, deadline = db.Store(path), time.time() + 30
    while None in store.items_by_external_id([r["id"] for r in HUMAN_ROWS[:3]]):
        assert time.time() < deadline, "the rows were not pushed"
        time.sleep(0.01)
    judge(store, "h/round-1/0", "alice", ["c .", "a .", "b ."])
    judge(store, "h/round-1/0", "bob", ["a .", "c .", "b ."])  # a and c: one vote each way
    judge(store, "h/round-1/1", "alice", verdict="all_bad")
    judge(store, "h/round-1/1", "bob", ["y", "x", "w", "z"])
    judge(store, "h/round-1/2", "alice", verdict="skip")
    out = ""
    while "human labeler: 5/6 judgements" not in out:  # the progress line follows the count
        assert waiting.is_alive() and time.time() < deadline
        out += capsys.readouterr().out
        time.sleep(0.01)
    judge(store, "h/round-1/2", "bob", verdict="skip")
    waiting.join(timeout=30)
    expected = [[1, 4, 1, 1], [2, 1, 4, 3], None, [1, 1, 1]]  # rank sums; all bad ties all; skips judge nothing
    assert rankings == [expected]
    out += capsys.readouterr().out
    assert "waiting for 6 judgements" in out and "human labeler: 6/6 judgements" in out

    # Each text once, with the policy that first wrote it; the row of one text is not pushed.
    rows = store.conn.execute("SELECT i.external_id, i.closed, r.text, r.policy, r.finished FROM items i "
                              "JOIN responses r ON r.item_id = i.id ORDER BY r.id").fetchall()
    assert [tuple(r)[2:] for r in rows if r[0] == "h/round-1/0"] == [("a .", "sft", 1), ("b .", "sft", 1),
                                                                    ("c .", "round-1", 0)]
    assert {r[0] for r in rows} == {"h/round-1/0", "h/round-1/1", "h/round-1/2"} and all(r[1] for r in rows)
    assert store.next_item("carol") is None  # the round's items are closed

    # Called again with the same rows (a resumed round): the same items, the same rankings, no waiting.
    assert iterate.rank(labeler, HUMAN_ROWS, 1) == expected
    assert store.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 3
    # Another run's rows under the same ids: an error naming the row, not judgements of other texts.
    other = [dict(HUMAN_ROWS[0], responses=["d .", "e .", "f .", "g ."])]
    with pytest.raises(iterate.LabelerError, match=r"round 1, row 1 \(id h/round-1/0\): .* holds another item"):
        iterate.rank(labeler, other, 1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "review : room"}\n')
    with pytest.raises(iterate.LabelerError, match=r"^human_db .*prompts.jsonl: file is not a database$"):
        iterate.make_labeler(config.IterateConfig(labeler="human", human_db=str(prompts)))
    with pytest.raises(ConfigError, match="labeler='human'.*: the human labeler needs human_db"):
        config.check(config.IterateConfig(labeler="human", policy="demo", prompts=str(prompts),
                                          heldout_prompts=str(prompts)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what, seconds=300):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def judge_next(url, db_path, annotator="alice"):
    """Ranks the next item of the page's API as the demo's rule does (reading `finished`, which the page does
    not show, from the database); False when there is none."""
    with urllib.request.urlopen(f"{url}api/next?annotator={annotator}", timeout=30) as answer:
        item = json.load(answer)["item"]
    if item is None:
        return False
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        finished = dict(conn.execute("SELECT public_id, finished FROM responses WHERE item_id = ?", (item["id"],)))
    shown = item["responses"]
    ranks = task.rank(item["prompt"], [r["text"] for r in shown], [bool(finished[r["id"]]) for r in shown])
    order = [[r["id"] for r, k in zip(shown, ranks) if k == rank] for rank in sorted(set(ranks))]
    body = {"annotator": annotator, "item_id": item["id"], "verdict": "ranked", "order": order}
    request = urllib.request.Request(f"{url}api/rank", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert json.load(answer)["saved"]
    return True


def test_human_labeler_through_the_annotation_server(demo, tmp_path):
    """The demo's two rounds with --labeler human, ranked on `fastrlhf annotate serve --db` (no prompts or
    policy of its own) by an annotator who follows the demo's rule: Ctrl-C while round 1 waits, then
    --resume true waits on. The preferences are the demo labeler's, every judgement is used, and no item
    is pushed twice."""
    demo_dir, _ = demo
    db_path, url = tmp_path / "feedback.sqlite", f"http://127.0.0.1:{(port := free_port())}/"
    env = tiny_run.env()
    server = subprocess.Popen([sys.executable, "-m", "fastrlhf", "annotate", "serve", "--db", str(db_path),
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    args = iterate_args(demo_dir, tmp_path, "human", labeler="human", human_db=db_path, human_poll_seconds=0.1)
    stop, failures = threading.Event(), []

    def annotate_until_stopped():
        try:
            while not stop.is_set():
                if not judge_next(url, db_path):
                    time.sleep(0.05)
        except Exception as error:  # reported by the test's thread
            failures.append(error)

    try:
        def serving():
            assert server.poll() is None, "the annotation server exited"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}api/config", timeout=2) as answer:
                return json.load(answer)["sampling"]["external"]
        wait_for(serving, "the annotation server", 120)
        log = tmp_path / "first.log"
        with log.open("w") as out:
            first = subprocess.Popen([sys.executable, "-m", "fastrlhf", *args], env=env, stdout=out,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: "waiting for" in log.read_text() or first.poll() is not None, "round 1's items")
        for _ in range(3):
            assert judge_next(url, db_path)
        wait_for(lambda: "human labeler: 3/" in log.read_text(), "the progress line", 30)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        assert first.wait(timeout=60) == 130 and "fastrlhf iterate: interrupted" in log.read_text()

        annotator = threading.Thread(target=annotate_until_stopped)
        annotator.start()
        resumed = tiny_run.fastrlhf(args + ["--resume", "true"])
        output, _ = resumed.communicate(timeout=600)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
    annotator.join(timeout=60)
    assert not failures and resumed.returncode == 0, (failures, output)
    assert "round 1: RM accuracy" in output and "round 2: RM accuracy" in output

    run_dir = tmp_path / "human"
    for r in (1, 2):
        for name in ("preferences.jsonl", "heldout_preferences.jsonl"):
            assert (run_dir / f"round-{r}" / name).read_text() == (demo_dir / f"round-{r}" / name).read_text()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        items = conn.execute("SELECT external_id, closed, (SELECT COUNT(*) FROM judgements j WHERE j.item_id = i.id), "
                             "(SELECT GROUP_CONCAT(DISTINCT policy) FROM responses r WHERE r.item_id = i.id) "
                             "FROM items i").fetchall()
    for r, policy in ((1, str(demo_dir / "sft" / "final")), (2, "round-1")):
        rows = [json.loads(line) for line in (run_dir / f"round-{r}" / "candidates.jsonl").read_text().splitlines()]
        pushed = {row["id"] for row in rows if len(set(row["responses"])) > 1}
        of_round = [item for item in items if item[0].startswith(f"human/round-{r}/")]
        assert {item[0] for item in of_round} == pushed and len(of_round) == len(pushed)
        assert all(item[1:] == (1, 1, policy) for item in of_round)  # closed, judged once, the round's policy
