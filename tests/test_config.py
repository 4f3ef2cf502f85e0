"""Configs: every field has --help text; a YAML/JSON file then --key value flags override the defaults;
every value, whatever its source, is converted to its field's type and range-checked. The bad values
themselves are in test_bad_input.py."""
import sys
from types import SimpleNamespace

import pytest

from fastrlhf import cli, config
from fastrlhf.errors import ConfigError


def build(cls, argv):
    args = cli._parser().parse_args(argv)
    del args.command
    return config.build(cls, args)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_documents_every_field(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    cls = cli.COMMANDS[command][0]
    for f in config.dataclasses.fields(cls):
        if not config.dataclasses.is_dataclass(f.type):
            assert f"--{f.name}" in text
    if command == "demo":
        assert "--ppo.kl_coef" in text and "--sft.run" not in text  # shared fields are set once
        assert "--sft.data" not in text and "--rm.model" not in text  # the demo sets these itself


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    data = tmp_path / "d.jsonl"
    data.write_text("")
    path.write_text(f"seed: 3\nsft:\n  lr: 0.01\n  steps: 7\n  data: {data}\nrm: {{data: {data}}}\n"
                    f"ppo:\n  kl_target: 6.0\n  prompts: {data}\n")
    cfg = build(config.PipelineConfig, ["pipeline", "--config", str(path), "--sft.steps", "9",
                                        "--ppo.missing_eos_penalty", "none", "--resume", "true"])
    assert (cfg.seed, cfg.sft.lr, cfg.sft.steps, cfg.ppo.kl_target, cfg.ppo.missing_eos_penalty, cfg.resume) == \
        (3, 0.01, 9, 6.0, None, True)
    stage = cfg.stage("rm", model="x")
    assert (stage.seed, stage.resume, stage.model) == (3, True, "x")


def test_yaml_strings_are_converted_like_flags(tmp_path):
    """PyYAML reads `1e-3` and quoted values as strings: they are parsed as the same flags would be."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nresume: 'false'\nfsdp: 'no'\nsteps: '1e3'\nbatch_size: 8.0\nmax_len: ' 16 '\n"
                    "data: hub/name\n")
    cfg = build(config.SFTConfig, ["sft", "--config", str(path)])
    assert (cfg.lr, cfg.resume, cfg.fsdp, cfg.steps, cfg.batch_size, cfg.max_len) == (1e-3, False, False, 1000, 8, 16)
    assert type(cfg.lr) is float and type(cfg.steps) is int and type(cfg.batch_size) is int


def test_presets_and_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"ppo": {"steps": 2}}')
    cfg = build(config.DemoConfig, ["demo", "--preset", "gpu", "--config", str(path)])
    assert cfg.sft.model == "demo-large" and cfg.ppo.steps == 2


def test_configs_built_in_code_are_checked_too():
    """The same layer checks a config made in Python (as the demo makes its stages' and eval's)."""
    cfg = config.SFTConfig(data="hub/name", lr="1e-3", steps=3.0)
    assert config.check(cfg) is cfg and (cfg.lr, cfg.steps) == (1e-3, 3)
    with pytest.raises(ConfigError, match=r"batch_size=-2 by default: must be at least 1"):
        config.check(config.SFTConfig(data="hub/name", batch_size=-2))
    with pytest.raises(ConfigError, match=r"ppo.clip_eps=0.0 by default"):
        config.check(config.PipelineConfig(sft=config.SFTConfig(data="a/b"), rm=config.RMConfig(data="a/b"),
                                           ppo=config.PPOConfig(prompts="a/b", clip_eps=0.0)))


def test_every_new_config_gets_the_checks():
    """A dataclass made of `option`s is checked by construction: its types, then its ranges."""
    @config.dataclass
    class Iterate(config.Common):
        rounds: int = config.option(3, "rounds", config.at_least(1))
        ratio: float = config.option(0.5, "ratio", config.between(0, 1))

    assert config.check(Iterate(rounds="4")).rounds == 4
    with pytest.raises(ConfigError, match=r"rounds=0 .*at least 1"):
        config.check(Iterate(rounds=0))
    with pytest.raises(ConfigError, match=r"ratio=True .*a number"):
        config.check(Iterate(ratio=True))


def test_unknown_keys_name_themselves(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'sft.learning_rate' in .*bad.yaml"):
        config.apply(config.PipelineConfig(), config.load_file(path), f"in {path}")


def test_bench_is_delegated_to_the_benchmark_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastrlhf.benchmark", SimpleNamespace(main=lambda argv: ("ran", argv)))
    assert cli.main(["bench", "--quick"]) == ("ran", ["--quick"])
    monkeypatch.setitem(sys.modules, "fastrlhf.benchmark", None)  # as if it could not be imported
    assert cli.main(["bench"]) == 1
    assert "fastrlhf bench is not available" in capsys.readouterr().err
