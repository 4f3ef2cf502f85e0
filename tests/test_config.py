"""Configs: every field has --help text; a YAML/JSON file then --key value flags override the defaults;
unknown keys are errors that name the key and where it came from."""
import sys
from types import SimpleNamespace

import pytest

from fastrlhf import cli, config


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_documents_every_field(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    cls = cli.COMMANDS[command][0]
    for f in config.dataclasses.fields(cls):
        if not config.dataclasses.is_dataclass(f.type):
            assert f"--{f.name}" in text
    if command == "demo":
        assert "--ppo.kl_coef" in text and "--sft.run" not in text  # shared fields are set once


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nsft:\n  lr: 0.01\n  steps: 7\nppo:\n  kl_target: 6.0\n")
    args = cli._parser().parse_args(["pipeline", "--config", str(path), "--sft.steps", "9",
                                     "--ppo.missing_eos_penalty", "none", "--resume", "true"])
    del args.command
    cfg = config.build(config.PipelineConfig, args)
    assert (cfg.seed, cfg.sft.lr, cfg.sft.steps, cfg.ppo.kl_target, cfg.ppo.missing_eos_penalty, cfg.resume) == \
        (3, 0.01, 9, 6.0, None, True)
    stage = cfg.stage("rm", model="x")
    assert (stage.seed, stage.resume, stage.model) == (3, True, "x")


def test_presets_and_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"ppo": {"steps": 2}}')
    args = cli._parser().parse_args(["demo", "--preset", "gpu", "--config", str(path)])
    del args.command
    cfg = config.build(config.DemoConfig, args)
    assert cfg.sft.model == "demo-large" and cfg.ppo.steps == 2


def test_unknown_keys_name_themselves(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  learning_rate: 1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown option 'learning_rate'"):
        config.apply(config.PipelineConfig(), config.load_file(path), str(path))
    with pytest.raises(SystemExit):
        cli.main(["sft", "--lr", "fast"])


def test_bench_is_delegated_to_the_benchmark_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastrlhf.benchmark", SimpleNamespace(main=lambda argv: ("ran", argv)))
    assert cli.main(["bench", "--quick"]) == ("ran", ["--quick"])
    monkeypatch.setitem(sys.modules, "fastrlhf.benchmark", None)  # as if it could not be imported
    assert cli.main(["bench"]) == 1
    assert "fastrlhf bench is not available" in capsys.readouterr().err
