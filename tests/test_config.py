from pathlib import Path

import pytest

from hyft.cli import main
from hyft.config import Config, describe, load_config
from hyft.errors import ConfigError
from hyft.methods import resolve

EXAMPLES = sorted(Path("examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_parse_and_resolve(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    resolve(cfg)


def test_overrides_types_and_aliases():
    cfg = load_config(None, ["--zo.lr", "1e-6", "--peft", "prefix", "--train.steps=7", "--zo.exclude", "a*,b*"])
    assert cfg.zo.lr == 1e-6 and cfg.peft.type == "prefix" and cfg.train.steps == 7 and cfg.zo.exclude == ["a*", "b*"]
    assert load_config(None, ["--model.trust_remote_code"]).model.trust_remote_code is True


@pytest.mark.parametrize(
    "args,message",
    [
        (["--zo.lrr", "1"], "did you mean 'lr'"),
        (["--zo.lr", "abc"], "expected float"),
        (["--train.steps", "1.5"], "expected int"),
        (["--nonsense", "1"], "unknown key"),
    ],
)
def test_bad_overrides(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, args)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "mezo", "--peft", "lora"], "uses 'none'"),
        (["--method", "nope"], "unknown method"),
        (["--method", "lora", "--base", "frozen", "--adapter_train", "zz"], "adapter_train"),
    ],
)
def test_bad_method_combinations(args, message):
    with pytest.raises(ConfigError, match=message):
        resolve(load_config(None, args))


def test_method_presets():
    m = resolve(load_config(None, ["--method", "hybrid", "--peft", "prefix"]))
    assert (m.base, m.peft, m.adapter, m.schedule) == ("zo", "prefix", "fo", "onesided")
    assert resolve(load_config(None, ["--method", "mezo"])).schedule == "central"


def test_cli_bad_key_exits_2(capsys):
    assert main(["train", "--zo.lrr", "1"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_help_lists_every_key():
    text = "\n".join(describe())
    for key in ("--zo.lr", "--fo.optimizer", "--peft.type", "--train.dropout", "--zo.rounding"):
        assert key in text


def test_nested_override_merges_into_a_mapping(tmp_path):
    """--data.dataset.train X replaces that key only; the dataset's type, template, ... stay."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  task: user\n  dataset: {type: classification, train: a.jsonl, template: '{x}'}\n")
    cfg = load_config(path, ["--data.dataset.train", "b.jsonl"])
    assert cfg.data.dataset == {"type": "classification", "train": "b.jsonl", "template": "{x}"}
    cfg = load_config(path, ["--data.options.size", "xs"])
    assert cfg.data.options == {"size": "xs"}


def test_a_setting_for_a_missing_group_says_how_to_proceed():
    from hyft.validate import check_config

    with pytest.raises(ConfigError, match="drop the zo: setting for this method, or run several methods"):
        check_config(load_config(None, ["--method", "lora", "--zo.lr", "1e-4"]))


def test_each_knobs_choices_are_declared_once_on_its_config_field():
    from hyft import dist, methods, optim, partition, schedule, step, validate
    from hyft.config import choices, field_choices
    from hyft.zo import kernels

    assert step.SCHEDULES == choices("zo.schedule") == ("onesided", "central", "alternating")
    assert choices("fo.optimizer") == optim.FO_OPTIMIZERS
    assert optim.KERNELS[:-1] == choices("zo.kernels") and optim.KERNELS[-1] == "emulate"
    assert choices("zo.scratch") == kernels.SCOPES  # the core imports torch only: checked here, not imported
    assert schedule.SCHEDULES == choices("zo.lr_schedule") == choices("fo.lr_schedule")
    assert choices("peft.type") == methods.PEFT_TYPES and choices("base") == partition.TREATMENTS
    assert (choices("dist.strategy"), choices("dist.backend")) == (dist.STRATEGIES, dist.BACKENDS)
    assert choices("train.report_to") == validate.REPORTERS and not hasattr(validate, "ENUMS")
    assert {"model.dtype", "zo.distribution", "zo.rounding", "train.dropout", "data.loss"} <= set(field_choices())
    line = next(x for x in describe() if x.startswith("  --zo.schedule "))
    assert "[onesided|central|alternating] (default None)" in line  # None: the method's own, not a choice


def test_a_new_choice_on_a_field_is_all_validation_needs(monkeypatch):
    import dataclasses

    from hyft.config import ZOConfig
    from hyft.validate import check_config

    with pytest.raises(ConfigError, match="--zo.rounding: unknown value 'floor'; choose from stochastic, nearest"):
        check_config(load_config(None, ["--zo.rounding", "floor"]))
    f = next(f for f in dataclasses.fields(ZOConfig) if f.name == "rounding")
    monkeypatch.setattr(f, "metadata", {**f.metadata, "choices": ("stochastic", "nearest", "floor")})
    check_config(load_config(None, ["--zo.rounding", "floor"]))


def test_one_zo_lr_default_the_papers():
    import inspect

    from hyft.config import default
    from hyft.hf_trainer import HybridTrainingArguments
    from hyft.optim import HybridOptimizer

    assert Config().zo.lr == default("zo.lr") == 1e-6
    assert inspect.signature(HybridOptimizer).parameters["zo_lr"].default == 1e-6
    args = HybridTrainingArguments(output_dir="unused", report_to=[])
    cfg = Config()
    for name in ("lr", "mu", "queries", "distribution", "weight_decay", "momentum", "rounding", "fp32_master",
                 "embeddings", "lm_head", "include", "exclude"):  # fmt: skip
        assert getattr(args, f"zo_{name}") == getattr(cfg.zo, name), name
    with pytest.raises(ValueError, match="zo_rounding 'floor': choose from stochastic, nearest"):
        HybridTrainingArguments(output_dir="unused", report_to=[], zo_rounding="floor")


def test_a_resumed_runs_saved_config_may_restate_an_old_default(tmp_path):
    from hyft.validate import check_config

    saved = tmp_path / "config.yaml"  # a lora run's config.yaml written when zo.lr's default was 1e-5
    saved.write_text("method: lora\nzo:\n  lr: 1.0e-05\n")
    with pytest.raises(ConfigError, match="has no zeroth-order group"):
        check_config(load_config(saved))
    assert check_config(load_config(saved), saved=True).peft == "lora"


def test_from_dict_validates_a_mapping_like_a_file_without_temporary_files(tmp_path, monkeypatch):
    import tempfile

    from hyft.config import from_dict

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", None)  # would raise TypeError if anything used one
    cfg = from_dict({"zo": {"lr": "1e-4"}, "train": {"steps": 3}}, overrides=["--train.steps", "5"])
    assert (cfg.zo.lr, cfg.train.steps) == (1e-4, 5)
    assert load_config(_write(tmp_path / "c.yaml", "zo: {lr: 1.0e-4}\ntrain: {steps: 3}\n"), ["--train.steps", "5"]) \
        .to_dict() == cfg.to_dict()  # fmt: skip
    with pytest.raises(ConfigError, match=r"^trial 3: zo.lr: expected float, got str 'abc'$"):
        from_dict({"zo": {"lr": "abc"}}, "trial 3: ")
    with pytest.raises(ConfigError, match=r"^cell: fo.lrr: unknown key \(did you mean 'lr'\?\)$"):
        from_dict({"fo": {"lrr": 1}}, "cell: ")


def _write(path, text):
    path.write_text(text)
    return path


def test_experiment_configs_are_read_and_checked_like_train_configs(tmp_path):
    from hyft.compare import load_spec
    from hyft.sweep import base_dict

    bad = _write(tmp_path / "bad.yaml", "method: hybrid\nzo:\n  lr: fast\ncompare: {methods: [hybrid]}\n")
    for load in (lambda: load_spec(bad), lambda: base_dict(bad, [])):
        with pytest.raises(ConfigError, match=rf"^{bad}:3: zo.lr: expected float, got str 'fast'$"):
            load()
    torn = _write(tmp_path / "torn.yaml", "zo: {lr: 1\n")
    for load in (lambda: load_spec(torn), lambda: base_dict(torn, []), lambda: load_config(torn)):
        with pytest.raises(ConfigError, match=rf"^{torn}:2: invalid YAML"):
            load()
    with pytest.raises(ConfigError, match=r"^--zo.mu: expected float"):
        base_dict(_write(tmp_path / "ok.yaml", "method: hybrid\n"), ["--zo.mu", "big"])
    ok = _write(tmp_path / "sec.yaml", "compare: [hybrid]\n")
    with pytest.raises(ConfigError, match=rf"^{ok}:1: compare: expected a mapping$"):
        load_spec(ok)
