"""Bad input, as a hostile new user gives it: options on the command line, config files, data files and
model paths. Each case runs `fastrlhf` in this process (cli.main) and asserts exit code 2, a one-line
message on stderr that names the culprit (option and value, or file, row and column), no traceback, and
that nothing was written to a `final` directory. Most cases fail in the config layer, before any model
is loaded; a few run `python -m fastrlhf` end to end."""
import json
import subprocess
import sys

import pytest

import tiny_run
from fastrlhf import cli

GOOD_PREFERENCE = {"prompt": "review : room", "chosen": "the room was great .", "rejected": "the room was bad ."}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good inputs: a tiny 'SFT' policy and 'RM' (tiny_run), and a file of each row format."""
    w = tmp_path_factory.mktemp("world")
    paths = tiny_run.make(w, n_prompts=8)
    (w / "prefs.jsonl").write_text(json.dumps(GOOD_PREFERENCE) + "\n")
    return {"w": str(w), **paths}


def jsonl(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


SFT = ["sft", "--data", "{w}/sft.jsonl", "--output_dir", "{d}/runs", "--device", "cpu", "--steps", "2",
       "--batch_size", "2"]
RM = ["rm", "--model", "{w}/sft", "--data", "{w}/prefs.jsonl", "--output_dir", "{d}/runs", "--device", "cpu",
      "--steps", "2", "--batch_size", "2"]
PPO = ["ppo", "--policy", "{w}/sft", "--reward_model", "{w}/rm", "--prompts", "{w}/prompts.jsonl", "--output_dir",
       "{d}/runs", "--device", "cpu", "--steps", "2", "--batch_size", "8", "--num_minibatches", "2"]
EVAL = ["eval", "--policy", "{w}/sft", "--prompts", "{w}/prompts.jsonl", "--device", "cpu"]
PIPELINE = ["pipeline", "--sft.data", "{w}/sft.jsonl", "--rm.data", "{w}/prefs.jsonl", "--ppo.prompts",
            "{w}/prompts.jsonl", "--output_dir", "{d}/runs", "--device", "cpu"]
DEMO = ["demo", "--output_dir", "{d}/runs", "--device", "cpu"]

# (id, argv, files written in the case's directory {d}: name -> text or bytes, fragments of the message)
FLAGS = [
    ("steps-negative", SFT + ["--steps", "-3"], {}, ["steps=-3", "at least 1"]),
    ("steps-zero", SFT + ["--steps", "0"], {}, ["steps=0", "at least 1"]),
    ("steps-fraction", SFT + ["--steps", "2.5"], {}, ["steps='2.5'", "an integer"]),
    ("batch-zero", SFT + ["--batch_size", "0"], {}, ["batch_size=0", "at least 1"]),
    ("minibatches-uneven", PPO + ["--num_minibatches", "3"], {}, ["batch_size=8", "num_minibatches=3", "equal"]),
    ("minibatches-above-batch", PPO + ["--num_minibatches", "16"], {}, ["batch_size=8", "num_minibatches=16"]),
    ("minibatches-zero", PPO + ["--num_minibatches", "0"], {}, ["num_minibatches=0"]),
    ("max-new-tokens-zero", PPO + ["--max_new_tokens", "0"], {}, ["max_new_tokens=0"]),
    ("dtype-float64", SFT + ["--dtype", "float64"], {}, ["dtype='float64'", "'float32', 'bfloat16'"]),
    ("device-tpu", SFT + ["--device", "tpu"], {}, ["device='tpu'", "cpu, cuda"]),
    ("lr-word", SFT + ["--lr", "fast"], {}, ["lr='fast'", "a number"]),
    ("lr-negative", SFT + ["--lr", "-1"], {}, ["lr=-1.0", "greater than 0"]),
    ("lr-zero", SFT + ["--lr", "0"], {}, ["lr=0.0", "greater than 0"]),
    ("lr-nan", SFT + ["--lr", "nan"], {}, ["lr='nan'", "finite"]),
    ("lr-inf", SFT + ["--lr", "inf"], {}, ["lr='inf'", "finite"]),
    ("resume-maybe", SFT + ["--resume", "maybe"], {}, ["resume='maybe'", "true or false"]),
    ("seed-negative", SFT + ["--seed", "-1"], {}, ["seed=-1"]),
    ("warmup-negative", SFT + ["--warmup_steps", "-1"], {}, ["warmup_steps=-1"]),
    ("keep-zero", SFT + ["--keep_checkpoints", "0"], {}, ["keep_checkpoints=0"]),
    ("max-bad-zero", SFT + ["--max_bad_steps", "0"], {}, ["max_bad_steps=0"]),
    ("threads-negative", SFT + ["--threads", "-1"], {}, ["threads=-1"]),
    ("save-every-negative", SFT + ["--save_every", "-1"], {}, ["save_every=-1"]),
    ("adam-eps-zero", SFT + ["--adam_eps", "0"], {}, ["adam_eps=0.0"]),
    ("grad-norm-zero", SFT + ["--max_grad_norm", "0"], {}, ["max_grad_norm=0.0"]),
    ("weight-decay-negative", SFT + ["--weight_decay", "-0.1"], {}, ["weight_decay=-0.1"]),
    ("max-len-one", SFT + ["--max_len", "1"], {}, ["max_len=1", "at least 2"]),
    ("fsdp-with-save-every", SFT + ["--fsdp", "true", "--save_every", "2"], {}, ["fsdp=True", "save_every=2"]),
    ("temperature-zero", PPO + ["--temperature", "0"], {}, ["temperature=0.0"]),
    ("gamma-above-one", PPO + ["--gamma", "1.5"], {}, ["gamma=1.5", "between 0 and 1"]),
    ("lam-negative", PPO + ["--lam", "-0.1"], {}, ["lam=-0.1"]),
    ("clip-zero", PPO + ["--clip_eps", "0"], {}, ["clip_eps=0.0"]),
    ("value-clip-zero", PPO + ["--value_clip_eps", "0"], {}, ["value_clip_eps=0.0"]),
    ("kl-target-zero", PPO + ["--kl_target", "0"], {}, ["kl_target=0.0"]),
    ("kl-coef-negative", PPO + ["--kl_coef", "-1"], {}, ["kl_coef=-1.0"]),
    ("kl-horizon-zero", PPO + ["--kl_horizon", "0"], {}, ["kl_horizon=0"]),
    ("vf-coef-negative", PPO + ["--vf_coef", "-1"], {}, ["vf_coef=-1.0"]),
    ("ppo-epochs-zero", PPO + ["--ppo_epochs", "0"], {}, ["ppo_epochs=0"]),
    ("max-prompt-len-zero", PPO + ["--max_prompt_len", "0"], {}, ["max_prompt_len=0"]),
    ("stop-kl-zero", PPO + ["--stop_kl", "0"], {}, ["stop_kl=0.0"]),
    ("stop-entropy-negative", PPO + ["--stop_entropy", "-1"], {}, ["stop_entropy=-1.0"]),
    ("eval-without-policy", ["eval", "--prompts", "{w}/prompts.jsonl"], {}, ["policy is required", "--policy"]),
    ("eval-labeler", EVAL + ["--labeler", "gold"], {}, ["labeler='gold'", "'demo'"]),
    ("eval-num-prompts-zero", EVAL + ["--num_prompts", "0"], {}, ["num_prompts=0"]),
    ("sft-without-data", SFT + ["--data", ""], {}, ["data is required", "--data"]),
    ("ppo-without-prompts", PPO + ["--prompts", ""], {}, ["prompts is required"]),
    ("rm-without-model", RM + ["--model", ""], {}, ["model is required"]),
    ("output-dir-empty", SFT + ["--output_dir", ""], {}, ["output_dir is required"]),
    ("run-is-a-path", SFT + ["--run", "../x"], {}, ["run='../x'", "plain name"]),
    ("run-empty", SFT + ["--run", ""], {}, ["run=''", "plain name"]),
    ("unknown-flag", SFT + ["--learning_rate", "1"], {}, ["unrecognized arguments: --learning_rate"]),
    ("flag-without-value", SFT + ["--lr"], {}, ["--lr", "expected one argument"]),
    ("unknown-command", ["frobnicate"], {}, ["'frobnicate'", "invalid choice"]),
    ("no-command", [], {}, ["required: command"]),
    ("pipeline-sets-rm-model", PIPELINE + ["--rm.model", "x"], {}, ["unrecognized arguments: --rm.model"]),
    ("demo-sets-sft-data", DEMO + ["--sft.data", "x.jsonl"], {}, ["unrecognized arguments: --sft.data"]),
    ("pipeline-missing-rm-data", PIPELINE + ["--rm.data", "{d}/none.jsonl"], {}, ["rm.data=", "none.jsonl",
                                                                                  "no such file"]),
    ("demo-candidates-one", DEMO + ["--candidates", "1"], {}, ["candidates=1", "at least 2"]),
    ("demo-preference-prompts", DEMO + ["--train_prompts", "50", "--preference_prompts", "100"], {},
     ["preference_prompts=100", "train_prompts=50"]),
    ("demo-too-many-prompts", DEMO + ["--train_prompts", "5000"], {}, ["train_prompts=5000", "3616 distinct"]),
    ("demo-preset", DEMO + ["--preset", "tpu"], {}, ["--preset", "'tpu'"]),
    ("demo-labeler-without-rounds", DEMO + ["--labeler", "command:cat"], {}, ["labeler='command:cat'", "--rounds N"]),
]

CONFIGS = [
    ("yaml-word-for-int", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "steps: ten\n"}, ["steps='ten'", "c.yaml"]),
    ("yaml-resume-maybe", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "resume: 'maybe'\n"},
     ["resume='maybe'", "c.yaml", "true or false"]),
    ("yaml-fraction-for-int", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "steps: 2.5\n"}, ["steps=2.5", "c.yaml"]),
    ("yaml-bool-for-int", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "batch_size: true\n"},
     ["batch_size=True", "an integer"]),
    ("yaml-list-for-float", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "lr: [1]\n"}, ["lr=[1]", "a number"]),
    ("yaml-mapping-for-float", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "lr: {a: 1}\n"}, ["lr={'a': 1}"]),
    ("yaml-int-for-string", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "model: 123\n"}, ["model=123", "a string"]),
    ("yaml-int-for-device", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "device: 3\n"}, ["device=3", "a string"]),
    ("yaml-number-typo", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "lr: 1e-3x\n"}, ["lr='1e-3x'", "c.yaml"]),
    ("yaml-optional-word", PPO + ["--config", "{d}/c.yaml"], {"c.yaml": "kl_target: fixed\n"},
     ["kl_target='fixed'", "a number or none"]),
    ("yaml-null-for-int", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "steps: null\n"}, ["steps=None", "an integer"]),
    ("yaml-nan", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "lr: .nan\n"}, ["lr=nan", "finite"]),
    ("yaml-out-of-range", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "warmup_steps: -1\n"},
     ["warmup_steps=-1 in", "c.yaml"]),
    ("yaml-unknown-option", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "learning_rate: 1\n"},
     ["unknown option 'learning_rate'", "c.yaml"]),
    ("yaml-dotted-unknown", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "lr.x: 1\n"}, ["unknown option 'lr.x'"]),
    ("yaml-unknown-in-section", PIPELINE + ["--config", "{d}/c.yaml"], {"c.yaml": "sft: {learning_rate: 1}\n"},
     ["unknown option 'sft.learning_rate'", "c.yaml"]),
    ("yaml-section-scalar", PIPELINE + ["--config", "{d}/c.yaml"], {"c.yaml": "sft: 3\n"}, ["sft=3", "mapping"]),
    ("yaml-shared-in-section", PIPELINE + ["--config", "{d}/c.yaml"], {"c.yaml": "sft: {seed: 3}\n"},
     ["sft.seed=3", "c.yaml", "top level"]),
    ("yaml-derived-in-section", PIPELINE + ["--config", "{d}/c.yaml"], {"c.yaml": "rm: {model: x}\n"},
     ["rm.model='x'", "the pipeline sets it"]),
    ("yaml-malformed", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "steps: 2\nlr: [1e-3\n"},
     ["c.yaml, line", "invalid YAML"]),
    ("yaml-bad-indent", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "steps: 2\n  lr: 1\n"},
     ["c.yaml, line 2", "invalid YAML"]),
    ("json-trailing-comma", SFT + ["--config", "{d}/c.json"], {"c.json": '{"steps": 2,}'},
     ["c.json, line 1", "invalid JSON"]),
    ("json-string-number", SFT + ["--config", "{d}/c.json"], {"c.json": '{"batch_size": "eight"}'},
     ["batch_size='eight'", "c.json"]),
    ("json-pipeline-cross-check", PIPELINE + ["--config", "{d}/c.json"],
     {"c.json": '{"ppo": {"batch_size": 8, "num_minibatches": 3}}'}, ["ppo.batch_size=8", "ppo.num_minibatches=3"]),
    ("config-missing", SFT + ["--config", "{d}/missing.yaml"], {}, ["missing.yaml", "no such file"]),
    ("config-not-utf8", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": b"steps: 2\nrun: caf\xe9\n"},
     ["c.yaml, line 2", "not UTF-8"]),
    ("config-toml", SFT + ["--config", "{d}/c.toml"], {"c.toml": "steps = 2\n"}, ["c.toml", ".yaml, .yml or .json"]),
    ("config-a-list", SFT + ["--config", "{d}/c.yaml"], {"c.yaml": "- 1\n- 2\n"}, ["c.yaml", "mapping", "list"]),
    ("config-a-directory", SFT + ["--config", "{d}/dir.yaml"], {"dir.yaml/x": ""}, ["dir.yaml", "directory"]),
]

PROMPT = "review : room"
DATA = [
    ("data-missing-file", SFT + ["--data", "{d}/none.jsonl"], {}, ["data=", "none.jsonl", "no such file"]),
    ("data-unsupported-extension", SFT + ["--data", "{d}/d.txt"], {"d.txt": "hello\n"},
     ["d.txt", "unsupported file type .txt", ".jsonl, .json, .csv, .parquet"]),
    ("data-not-utf8-jsonl", SFT + ["--data", "{d}/d.jsonl"],
     {"d.jsonl": jsonl({"prompt": PROMPT, "response": "ok ."}).encode() + b'{"prompt": "caf\xe9", "response": "a"}\n'},
     ["d.jsonl, line 2", "not UTF-8", "0xe9"]),
    ("data-not-utf8-csv", SFT + ["--data", "{d}/d.csv"], {"d.csv": b"prompt,response\nreview : room,caf\xe9\n"},
     ["d.csv, line 2", "not UTF-8"]),
    ("data-bad-json-line", SFT + ["--data", "{d}/d.jsonl"],
     {"d.jsonl": jsonl({"prompt": PROMPT, "response": "a ."}) * 2 + '{"prompt": "x", response: 1}\n'},
     ["d.jsonl", "line 3", "invalid JSON"]),
    ("data-json-line-not-object", SFT + ["--data", "{d}/d.jsonl"],
     {"d.jsonl": jsonl({"prompt": PROMPT, "response": "a ."}) + "[1, 2]\n"}, ["d.jsonl", "line 2", "JSON object"]),
    ("data-bad-json-file", SFT + ["--data", "{d}/d.json"], {"d.json": '[{"prompt": "a", "response": "b"},\n]'},
     ["d.json", "line 2", "invalid JSON"]),
    ("data-empty", SFT + ["--data", "{d}/d.jsonl"], {"d.jsonl": ""}, ["d.jsonl", "empty"]),
    ("data-missing-column", SFT + ["--data", "{d}/d.jsonl"], {"d.jsonl": jsonl({"prompt": PROMPT, "answer": "a"})},
     ["d.jsonl, row 1", "missing column 'response'"]),
    ("data-null-value", SFT + ["--data", "{d}/d.jsonl"],
     {"d.jsonl": jsonl({"prompt": PROMPT, "response": "a ."}, {"prompt": PROMPT, "response": None})},
     ["d.jsonl, row 2, column 'response'"]),
    ("data-empty-prompt", SFT + ["--data", "{d}/d.jsonl"], {"d.jsonl": jsonl({"prompt": " ", "response": "a ."})},
     ["row 1, column 'prompt'", "non-empty string"]),
    ("data-number-prompt", SFT + ["--data", "{d}/d.csv"], {"d.csv": "prompt,response\n7,ok\n"},
     ["d.csv, row 1, column 'prompt'"]),
    ("data-bad-messages", SFT + ["--data", "{d}/d.jsonl"], {"d.jsonl": jsonl({"messages": "hello"})},
     ["row 1, column 'messages'", "role, content"]),
    ("data-messages-no-answer", SFT + ["--data", "{d}/d.jsonl"],
     {"d.jsonl": jsonl({"messages": [{"role": "user", "content": "hi"}]})}, ["row 1, column 'messages'", "assistant"]),
    ("data-prompt-too-long", SFT + ["--data", "{d}/d.jsonl", "--max_len", "8"],
     {"d.jsonl": jsonl({"prompt": "review : room food view pool bed wifi", "response": "a ."})},
     ["row 1, column 'prompt'", "tokens, longer than the limit of 7"]),
    ("prefs-chosen-equals-rejected", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl(GOOD_PREFERENCE, {**GOOD_PREFERENCE, "rejected": GOOD_PREFERENCE["chosen"]})},
     ["p.jsonl, row 2, column 'rejected'", "same text as 'chosen'"]),
    ("ranking-out-of-range", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": [1, 3]})},
     ["row 1, column 'ranking'", "[1, 3]", "permutation of 1..2"]),
    ("ranking-negative", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": [-1, 1]})},
     ["row 1, column 'ranking'", "[-1, 1]"]),
    ("ranking-zero-based", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b .", "c ."], "ranking": [0, 1, 2]})},
     ["row 1, column 'ranking'", "[0, 1, 2]"]),
    ("ranking-duplicates", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b .", "c .", "d ."], "ranking": [1, 2, 2, 3]})},
     ["row 1, column 'ranking'", "[1, 2, 2, 3]", "[1, 2, 2, 4]"]),
    ("ranking-wrong-length", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": [1]})},
     ["row 1, column 'ranking'", "2 integer ranks"]),
    ("ranking-not-integers", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": ["1", "2"]})},
     ["row 1, column 'ranking'", "integer ranks"]),
    ("ranking-booleans", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": [True, False]})},
     ["row 1, column 'ranking'", "integer ranks"]),
    ("ranking-same-text-twice", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b .", "a ."], "ranking": [1, 2, 3]})},
     ["row 1, column 'responses'", "responses 1 and 3 are the same text"]),
    ("ranking-one-response", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a ."], "ranking": [1]})},
     ["row 1, column 'responses'", "at least 2"]),
    ("ranking-all-ties", RM + ["--data", "{d}/p.jsonl"],
     {"p.jsonl": jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": [1, 1]})},
     ["p.jsonl", "no preference pairs"]),
    ("prefs-missing-column", RM + ["--data", "{d}/p.jsonl"], {"p.jsonl": jsonl({"prompt": PROMPT, "chosen": "a"})},
     ["p.jsonl, row 1", "missing column 'rejected'"]),
    ("rm-bad-eval-data", RM + ["--eval_data", "{d}/e.jsonl"], {"e.jsonl": jsonl({"prompt": PROMPT, "chosen": "a"})},
     ["e.jsonl, row 1", "missing column 'rejected'"]),
    ("prompts-number", PPO + ["--prompts", "{d}/q.jsonl"], {"q.jsonl": jsonl({"prompt": PROMPT}, {"prompt": 7})},
     ["q.jsonl, row 2, column 'prompt'"]),
    ("prompts-too-long", PPO + ["--prompts", "{d}/q.jsonl", "--max_prompt_len", "3"],
     {"q.jsonl": jsonl({"prompt": "review : room food"})}, ["q.jsonl, row 1, column 'prompt'", "limit of 3"]),
    ("prompts-chat-without-template", PPO + ["--prompts", "{d}/q.jsonl"],
     {"q.jsonl": jsonl({"prompt": [{"role": "user", "content": "hi"}]})}, ["q.jsonl, row 1", "chat template"]),
    ("pipeline-bad-ppo-prompts-before-sft", PIPELINE + ["--ppo.prompts", "{d}/q.jsonl"],
     {"q.jsonl": jsonl({"text": PROMPT})}, ["q.jsonl, row 1", "missing column 'prompt'"]),
]

MODELS = [
    ("model-missing-dir", SFT + ["--model", "./no/such/model"], {}, ["model='./no/such/model'", "no such file"]),
    ("model-relative-path-missing", SFT + ["--model", "tests/no-such-model"], {},
     ["model='tests/no-such-model'", "no such file"]),
    ("model-dir-without-config", SFT + ["--model", "{d}/m"], {"m/weights.bin": ""}, ["m: not a Hugging Face model",
                                                                                     "config.json"]),
    ("model-is-a-file", RM + ["--model", "{w}/prompts.jsonl"], {}, ["prompts.jsonl: a file"]),
    ("reward-model-missing", PPO + ["--reward_model", "{d}/runs/x/rm/final"], {},
     ["reward_model=", "rm/final", "no such file"]),
    ("eval-baseline-missing", EVAL + ["--baseline", "/no/baseline"], {}, ["baseline='/no/baseline'"]),
]

CASES = FLAGS + CONFIGS + DATA + MODELS


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


def fill(text, directory, world):
    return text.replace("{d}", str(directory)).replace("{w}", world["w"])


def write_files(directory, files):
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_culprit(case, world, tmp_path, capsys):
    _, argv, files, fragments = case
    write_files(tmp_path, files)
    argv = [fill(a, tmp_path, world) for a in argv]
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("fastrlhf") and ": error: " in line, err
    for fragment in fragments:
        assert fill(fragment, tmp_path, world) in line, line
    assert not list(tmp_path.rglob("final")) and not list(tmp_path.rglob("checkpoints"))


def fastrlhf(*argv, **env):
    return subprocess.run([sys.executable, "-m", "fastrlhf", *argv], env={**tiny_run.env(), **env},
                          capture_output=True, text=True, timeout=120)


def test_end_to_end_one_line_and_exit_code_2(world, tmp_path):
    done = fastrlhf("ppo", "--policy", world["policy"], "--reward_model", world["reward_model"], "--prompts",
                    world["prompts"], "--batch_size", "8", "--num_minibatches", "3")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("fastrlhf ppo: error: batch_size=8, num_minibatches=3 on the command line: the batch "
                           "must split into num_minibatches equal minibatches\n")
    (tmp_path / "p.jsonl").write_text(jsonl({"prompt": PROMPT, "responses": ["a .", "b ."], "ranking": [0, 1]}))
    done = fastrlhf("rm", "--model", world["policy"], "--data", str(tmp_path / "p.jsonl"), "--output_dir",
                    str(tmp_path), "--device", "cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"fastrlhf rm: error: {tmp_path}/p.jsonl, row 1, column "
                                                           "'ranking'")
    assert not list(tmp_path.rglob("final"))


def test_debug_prints_the_traceback_too(world):
    done = fastrlhf("sft", "--steps", "0", FASTRLHF_DEBUG="1")
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "fastrlhf sft: error: steps=0 on the command line: must be at least 1"
