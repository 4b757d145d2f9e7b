"""Bad inputs across config, data files, model paths, output directories, checkpoints and ledgers: each gets one
clear line and exit code 2 from `hyft.cli.main`, before any model is loaded where possible. Property tests: the
config loader turns any YAML text and any overrides into a Config or a ConfigError, never another exception."""

import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyft import checkpoint as ck
from hyft.cli import main
from hyft.config import Config, load_config
from hyft.errors import ConfigError
from hyft.replay import checksum
from runs import base_args, final_checkpoint, save_tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model directory and two finished runs (hybrid, and ft whose base is trained by first order)."""
    root = tmp_path_factory.mktemp("world")
    model = save_tiny(root / "tiny")
    for name, method in (("run", "hybrid"), ("ft", "ft")):
        args = base_args(root / name, method, 2, ["--model.name", str(model), "--train.save_every", "1"])
        if method == "ft":
            args = [a for a in args if a not in ("--zo.lr", "1e-3")]
        assert main(["train", *args]) == 0
    return root


def fresh(world, tmp):
    """Arguments for a new run into tmp/out on the tiny model."""
    return ["train", *base_args(tmp / "out", extra=["--model.name", str(world / "tiny")])]


def copy_run(world, tmp, name="run") -> Path:
    shutil.copytree(world / name, tmp / name)
    return tmp / name


def remark(c: Path) -> None:
    """Rewrite the completion marker to match the files (an adversary, or a careless hand, that fixed it up)."""
    info = json.loads((c / ck.MARKER).read_text())
    info["files"] = {rel: (c / rel).stat().st_size for rel in info["files"]}
    if "sha256" in info:  # the checksums too (else they, not the deeper checks under test, would catch it)
        info["sha256"] = {rel: ck.sha256_file(c / rel) for rel in info["files"]}
    (c / ck.MARKER).write_text(json.dumps(info))


def base_file(c: Path) -> Path:
    return next((c / "base").glob("*.safetensors"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# Each case: (setup(world, tmp) -> argv, expected message fragment). All must exit with code 2.
def _yaml(text):
    return lambda w, t: [*fresh(w, t), "--config", str(write(t / "c.yaml", text))]


def _bad_model(make):
    def setup(w, t):
        d = t / "model"
        shutil.copytree(w / "tiny", d)
        make(d)
        return [*fresh(w, t), "--model.name", str(d)]

    return setup


def _truncate(path: Path, keep: int | None = None):
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep is not None else len(data) // 2])


def _pickle_into(path: Path):
    torch.save({"w": torch.zeros(3)}, path)  # a zip/pickle archive where safetensors belong


def _ckpt_case(mutate, command="resume", name="run"):
    def setup(w, t):
        run = copy_run(w, t, name)
        mutate(final_checkpoint(run))
        if command == "resume":
            return ["train", "--resume", str(run)]
        if command == "export":
            return ["export", str(run), "--merged", str(t / "m")]
        return ["replay", str(run), "--base", str(w / "tiny"), "--out", str(t / "r")]

    return setup


def _wrong_shape(c: Path):
    from safetensors.torch import load_file, save_file

    f = base_file(c)
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, str(f), metadata={"format": "pt"})
    remark(c)


def _other_arch(w, t):
    opt = save_tiny(t / "opt", "opt")
    return ["replay", str(w / "run"), "--base", str(opt), "--out", str(t / "r")]


CASES = {
    # config: keys, types (with YAML line numbers), names, ranges, combinations
    "unknown key": (lambda w, t: [*fresh(w, t), "--zo.lrr", "1"], "--zo.lrr: unknown key (did you mean 'lr'?)"),
    "yaml unknown key line": (_yaml("method: hybrid\nzo:\n  lr: 1.0e-3\n  muu: 2\n"), "c.yaml:4: zo.muu: unknown key"),
    "yaml wrong type line": (_yaml("train:\n  log_every: 1\n  steps: many\n"), "c.yaml:3: train.steps: expected int"),
    "yaml syntax": (_yaml("zo: {lr: 1\ntrain: [\n"), "invalid YAML"),
    "yaml range line": (_yaml("zo:\n  queries: 0\n"), "c.yaml:2: zo.queries: must be >= 1"),
    "mu <= 0": (lambda w, t: [*fresh(w, t), "--zo.mu", "0"], "--zo.mu: must be > 0"),
    "mu not finite": (lambda w, t: [*fresh(w, t), "--zo.mu", "nan"], "zo.mu: nan is not a finite number"),
    "min perturbation scale > 1": (lambda w, t: [*fresh(w, t), "--zo.min_perturbation_scale", "2"],
                                   "--zo.min_perturbation_scale: must be in [0, 1]"),
    "mezo with lora": (lambda w, t: [*fresh(w, t), "--method", "mezo", "--peft", "lora"], "uses 'none'"),
    "zo lr without zo group": (lambda w, t: [*fresh(w, t), "--method", "lora", "--zo.lr", "5e-4"],
                               "--zo.lr: method 'lora' has no zeroth-order group"),
    "grad ckpt with dropout off": (lambda w, t: [*fresh(w, t), "--model.gradient_checkpointing", "true"],
                                   "set --train.dropout shared"),
    "batch not divisible": (lambda w, t: [*fresh(w, t), "--train.batch_size", "6", "--train.grad_accum", "4"],
                            "6 is not divisible by train.grad_accum 4"),
    "unknown schedule": (lambda w, t: [*fresh(w, t), "--zo.schedule", "sideways"], "unknown value 'sideways'"),
    "unknown optimizer": (lambda w, t: [*fresh(w, t), "--fo.optimizer", "lion"], "--fo.optimizer: unknown value"),
    "unknown distribution": (lambda w, t: [*fresh(w, t), "--zo.distribution", "uniform"], "choose from gaussian"),
    "unknown dtype": (lambda w, t: [*fresh(w, t), "--model.dtype", "float8"], "--model.dtype: unknown value"),
    "alternating without fo": (lambda w, t: [*fresh(w, t), "--method", "mezo", "--zo.schedule", "alternating"],
                               "'alternating' needs a first-order and a ZO group"),
    "unknown sink": (lambda w, t: [*fresh(w, t), "--train.report_to", "tensorboard,comet"], "unknown value 'comet'"),
    # data files (checked before the model is loaded)
    "missing data dir": (lambda w, t: [*fresh(w, t), "--data.data_dir", str(t / "nowhere")], "file not found"),
    "malformed data file": (
        lambda w, t: [*fresh(w, t), "--data.data_dir", str(write(t / "d" / "sst2" / "train.tsv",
                      "sentence\tlabel\ngood\t1\nbad\tseven\n").parent.parent)], "train.tsv:3"),
    # model sources
    "model path missing": (lambda w, t: [*fresh(w, t), "--model.name", str(t / "no" / "model")], "no such file"),
    "model dir without config": (_bad_model(lambda d: (d / "config.json").unlink()), "no config.json"),
    "model weights truncated": (_bad_model(lambda d: _truncate(d / "model.safetensors")), "truncated"),
    "model weights are a pickle": (_bad_model(lambda d: _pickle_into(d / "model.safetensors")), "never unpickles"),
    "model weights wrong shape": (
        _bad_model(lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace(
            '"hidden_size": 32', '"hidden_size": 48'))), "cannot load"),
    # output directory
    "output dir holds a run": (lambda w, t: ["train", *base_args(w / "run", extra=["--model.name", str(w / "tiny")])],
                               "already holds a run"),
    # checkpoints
    "resume without checkpoints": (lambda w, t: ["train", "--resume", str(write(t / "r" / "x", "").parent)],
                                   "no complete checkpoint"),
    "resume, marker missing": (
        _ckpt_case(lambda c: [(p / ck.MARKER).unlink() for p in ck.list_checkpoints(c.parent.parent)]),
        "(incomplete: step-00000001, step-00000002)"),
    "resume, truncated weights": (_ckpt_case(lambda c: _truncate(base_file(c))), "(truncated or modified)"),
    "resume, pickle as weights": (_ckpt_case(lambda c: (_pickle_into(base_file(c)), remark(c))), "never unpickles"),
    "resume, wrong shape": (_ckpt_case(_wrong_shape), "has shape [3, 3]"),
    "resume, corrupt optimizer state": (_ckpt_case(lambda c: (write(c / "optimizer.json", "{"), remark(c))),
                                        "optimizer.json: unreadable"),
    "resume changes lr": (lambda w, t: ["train", "--resume", str(copy_run(w, t)), "--fo.lr", "9"],
                          "--fo.lr: cannot change on --resume"),
    "export, truncated adapter": (
        _ckpt_case(lambda c: (_truncate(c / "adapter" / "adapter_model.safetensors", 20), remark(c)), "export"),
        "adapter_model.safetensors: truncated (20 bytes"),
    "export, not a run": (lambda w, t: ["export", str(w / "tiny"), "--peft", str(t / "p")], "no complete checkpoint"),
    # ledgers
    "replay, corrupt ledger": (_ckpt_case(lambda c: write(c / "ledger.json", "[1,"), "replay"),
                               "not a readable ledger"),
    "replay, ft run": (_ckpt_case(lambda c: None, "replay", "ft"), "base tensors by first order"),
    "replay, other architecture": (_other_arch, "is not in the base model"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2(world, tmp_path, case, capsys, monkeypatch):
    import hyft.trainer

    def no_training(*a, **k):
        raise AssertionError("a bad input reached the Trainer")

    setup, message = CASES[case]
    argv = setup(world, tmp_path)
    if argv[0] == "train" and "--resume" not in argv:
        monkeypatch.setattr(hyft.trainer.Trainer, "fit", no_training)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("hyft: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_config_errors_come_before_model_loading(world, tmp_path, monkeypatch):
    import hyft.models

    def boom(*a, **k):
        raise AssertionError("model loaded before validation")

    monkeypatch.setattr(hyft.models, "load_model", boom)
    assert main([*fresh(world, tmp_path), "--zo.queries", "0"]) == 2
    assert main([*fresh(world, tmp_path), "--data.data_dir", str(tmp_path / "none")]) == 2


def test_overwrite_deletes_the_old_runs_checkpoints(world, tmp_path):
    run = copy_run(world, tmp_path)
    args = ["train", *base_args(run, steps=1, extra=["--model.name", str(world / "tiny")]), "--train.overwrite"]
    assert main(args) == 0
    assert [p.name for p in ck.list_checkpoints(run)] == ["step-00000001"]  # none of the old run's survive


# -- property tests of the config loader -------------------------------------------------------------------------------
KEYS = ["zo.lr", "zo.queries", "train.steps", "model.dtype", "zo.include", "data.dataset", "peft.target_modules",
        "train.loss_bound", "train.report_to", "method", "seed", "zo", "nope"]  # fmt: skip
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["1e-3", "~", "null", "[1, 2]", "{a: 1}", "!!binary abc", "2001-01-01", ".inf", "0x1F", "&a x"]),
)  # fmt: skip
yaml_keys = st.one_of(st.sampled_from(KEYS + ["lr", "steps", "r"]), st.text(max_size=5))
yaml_values = st.recursive(
    yaml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(yaml_keys, c, max_size=3), max_leaves=8
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=string.printable + "\u00e9\u4e2d\x00", max_size=200))
def test_any_yaml_text_gives_config_or_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.sampled_from(KEYS + ["train", "model"]), yaml_values, max_size=4))
def test_any_yaml_structure_gives_config_or_config_error(tmp_path, data):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(args=st.lists(st.one_of(st.sampled_from([f"--{k}" for k in KEYS] + ["--", "--=1", "--zo.", "--a..b"]),
                               st.text(max_size=10)), max_size=6))  # fmt: skip
def test_any_overrides_give_config_or_config_error(args):
    try:
        assert isinstance(load_config(None, args), Config)
    except ConfigError as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(args=st.lists(st.sampled_from([f"--{k}" for k in KEYS] + ["0", "-1", "1e9", "nan", "abc", "bfloat16"]),
                     max_size=6))  # fmt: skip
def test_validation_never_raises_anything_but_config_error(args):
    from hyft.validate import check_config

    try:
        cfg = load_config(None, args)
        check_config(cfg)
    except ConfigError:
        pass


def test_custom_model_code_runs_only_with_trust_remote_code(world, tmp_path):
    """A model directory whose config points at its own modelling code: hyft's loaders (train, resume/export, replay)
    use the built-in architecture unless model.trust_remote_code is set."""
    from hyft.checkpoint import load_model_for

    d = tmp_path / "evil"
    shutil.copytree(world / "tiny", d)
    ran = tmp_path / "evil-code-ran"
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(
        f"open({str(ran)!r}, 'w').write('x')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    model, _ = load_model_for(load_config(None, ["--model.name", str(d)]), None)
    assert type(model).__name__ == "LlamaForCausalLM" and not ran.exists()
    assert main(["replay", str(world / "run"), "--base", str(d), "--out", str(tmp_path / "r")]) == 0
    assert not ran.exists()
    model, _ = load_model_for(load_config(None, ["--model.name", str(d), "--model.trust_remote_code", "true"]), None)
    assert type(model).__name__ == "EvilModel" and ran.exists()  # the switch really is the only thing in the way


def test_replay_and_resume_refuse_another_device_type(world, tmp_path, capsys):
    run = copy_run(world, tmp_path)
    c = final_checkpoint(run)
    doc = json.loads((c / "ledger.json").read_text())
    doc["device"] = "cuda"  # as if the run had drawn its directions on a GPU
    doc["sha256"] = checksum(doc)  # ... which wrote its own checksum
    (c / "ledger.json").write_text(json.dumps(doc))
    remark(c)
    assert (
        main(["replay", str(run), "--base", str(world / "tiny"), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    )
    assert "replay must run on cuda" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 2
    assert "resume with --model.device cuda" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(Path("examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_pass_validation(path):
    from hyft.validate import check_config

    check_config(load_config(path))
