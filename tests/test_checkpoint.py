"""Checkpoints: layout, atomicity, keep-last-K, bit-exact resume (in process, via the CLI, after SIGKILL), the seed
ledger and its bit-exact replay, sizes in run.json, TensorBoard scalars."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import byte_tokenizer, tiny_model
from hyft import checkpoint as ck
from hyft.callbacks import Callback
from hyft.cli import main
from runs import (
    assert_bit_identical,
    base_args,
    checkpoint_tensors,
    final_checkpoint,
    interrupted_copy,
    make_trainer,
    metrics,
    save_tiny,
)

REPO = Path(__file__).resolve().parent.parent


def test_layout_marker_and_keep_last_k(tmp_path):
    tr = make_trainer(tmp_path / "run", steps=5, extra=["--train.save_every", "2", "--train.keep_checkpoints", "2"])
    info = tr.fit()
    found = ck.list_checkpoints(tmp_path / "run")
    assert [p.name for p in found] == ["step-00000004", "step-00000005"]  # 2 was pruned; 5 is the final one
    c = found[-1]
    marker = json.loads((c / "COMPLETE").read_text())
    assert marker["step"] == 5 and marker["format"] == ck.FORMAT
    for rel, size in marker["files"].items():
        assert (c / rel).stat().st_size == size
    names = set(marker["files"])
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "base/config.json",
            "base/model.safetensors.index.json", "optimizer.json", "scheduler.json", "trainer.json",
            "trainer.safetensors", "ledger.json", "config.yaml", "tokenizer/tokenizer.json"} <= names  # fmt: skip
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))]  # no pickles anywhere
    index = json.loads((c / "base" / ck.INDEX).read_text())
    hy = index["hyft"]
    assert hy["complete"] and not hy["fo"] and len(hy["zo"]) == len(tr.opt.zo_tensors)
    # the RNG is stored as a uint8 tensor
    rng = ck.read_tensors(c / "trainer.safetensors")
    assert any(t.dtype == torch.uint8 and torch.equal(t, torch.get_rng_state()) for t in rng.values())
    # base/ is a plain HF model directory holding the run's updated base weights
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(c / "base"))
    mine = {n.replace(".base_layer", ""): p for n, p in tr.model.get_base_model().named_parameters() if "lora" not in n}
    for n, p in loaded.named_parameters():
        assert torch.equal(p, mine[n]), n
    # sizes reported in run.json and on stdout
    rep = json.loads((tmp_path / "run" / "run.json").read_text())["checkpoint"]
    assert rep == info["checkpoint"] and rep["ledger_updates"] == 5
    assert rep["base_safetensors_bytes"] > 10 * rep["ledger_bytes"] > 0


def test_save_every_minutes_writes_when_the_clock_says_and_changes_nothing(tmp_path, monkeypatch):
    """train.save_every_minutes: a checkpoint after the first step that ends past the deadline (here a clock that
    jumps 2 minutes at step 3), the clock restarting at each checkpoint; the run itself is unchanged."""
    import hyft.trainer as trainer_module

    ref = make_trainer(tmp_path / "ref", steps=6, extra=["--train.keep_checkpoints", "9"])
    ref.fit()
    now = [1000.0]

    class Clock:  # time.monotonic as the trainer reads it; perf_counter (the run's own timings) untouched
        @staticmethod
        def monotonic():
            return now[0]

        def __getattr__(self, name):
            return getattr(time, name)

    monkeypatch.setattr(trainer_module, "time", Clock())

    class Jump(Callback):
        def on_step_end(self, tr, result):
            now[0] += 120.0 if tr.step == 3 else 1.0

    from hyft.config import load_config
    from hyft.trainer import Trainer

    args = base_args(tmp_path / "run", "hybrid", 6, ["--train.save_every_minutes", "1.5", "--train.keep_checkpoints",
                                                    "9"])  # fmt: skip
    cfg = load_config(None, args)
    tr = Trainer(cfg, model=tiny_model(), tokenizer=byte_tokenizer(), callbacks=[Jump()])
    tr.fit()
    # the deadline is checked after each step's callbacks: step 4 is the first to end 2 min after the start
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run")] == ["step-00000004", "step-00000006"]
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")
    assert_bit_identical(checkpoint_tensors(final_checkpoint(tmp_path / "run")),
                         checkpoint_tensors(final_checkpoint(tmp_path / "ref")))  # fmt: skip
    from hyft.errors import ConfigError
    from hyft.validate import check_config

    check = lambda *extra: check_config(load_config(None, base_args(tmp_path / "x", "hybrid", 6, list(extra))))
    with pytest.raises(ConfigError, match=r"train.save_every_minutes.*must be >= 0"):
        check("--train.save_every_minutes", "-1")
    with pytest.raises(ConfigError, match=r"train.save_every_minutes.*keep_checkpoints 0 would write nothing"):
        check("--train.save_every_minutes", "5", "--train.keep_checkpoints", "0")


def test_crash_while_writing_never_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path / "run", steps=4)
    tr.prepare_output()
    tr.train_step()
    first = tr.save_checkpoint()
    tr.train_step()
    real = ck.save_state

    def crash(state, directory, name):
        if name == "scheduler":
            raise OSError("disk full")  # a crash after base/, adapter/ and trainer state were written
        real(state, directory, name)

    monkeypatch.setattr(ck.weights, "save_state", crash)
    with pytest.raises(OSError):
        tr.save_checkpoint()
    root = tmp_path / "run" / ck.SUBDIR
    assert not [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]  # a failed write removes its own
    # a process killed while writing cannot: leave such garbage as it would, it must be invisible
    shutil.copytree(first, root / f".tmp-{ck.checkpoint_dir(tmp_path / 'run', 2).name}-99999")
    assert ck.list_checkpoints(tmp_path / "run") == [first]
    assert ck.find_checkpoint(tmp_path / "run") == first
    # a directory with every file but the marker (e.g. copied by hand) is not a checkpoint either
    fake = ck.checkpoint_dir(tmp_path / "run", 9)
    shutil.copytree(first, fake)
    (fake / ck.MARKER).unlink()
    assert ck.find_checkpoint(tmp_path / "run") == first
    with pytest.raises(ck.CheckpointError, match="incomplete checkpoint"):
        ck.find_checkpoint(fake)
    # resuming cleans the garbage up
    monkeypatch.setattr(ck.weights, "save_state", real)
    tr2 = make_trainer(tmp_path / "run", steps=4)
    tr2.resume(tmp_path / "run")
    tr2.prepare_output()
    assert tr2.step == 1 and not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


# Each case: extra config; steps; resume from the checkpoint at `at`. Log/eval intervals deliberately do not divide
# the resume step, so the metric window and eval history must travel in the checkpoint.
RESUME_CASES = {
    "hybrid-sgd": ([], "llama", torch.float32),
    "hybrid-adamw-zo-momentum-q2": (["--fo.optimizer", "adamw", "--zo.momentum", "0.9", "--zo.queries", "2",
                                     "--fo.lr_schedule", "cosine", "--zo.warmup_steps", "2"], "llama", torch.float32),
    "mezo-bf16-stochastic": (["--zo.schedule", "central"], "opt", torch.bfloat16),
    "hybrid-fp16-master-shared-dropout": (["--zo.fp32_master", "true", "--train.dropout", "shared", "--zo.mu",
                                           "1e-2"], "opt", torch.float16),
    "prefix-fo-sgd-momentum": (["--fo.momentum", "0.9"], "llama", torch.float32),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bit_exact(tmp_path, case):
    extra, kind, dtype = RESUME_CASES[case]
    method = case.split("-")[0]
    extra = [*extra, "--train.save_every", "3", "--train.keep_checkpoints", "5", "--train.log_every", "2",
             "--train.eval_every", "4"]  # fmt: skip
    ref = make_trainer(tmp_path / "ref", method, 7, extra, kind, dtype)
    ref.fit()
    # "interrupt" after step 3: keep only that checkpoint and resume the same directory from it
    run = tmp_path / "run"
    interrupted_copy(tmp_path / "ref", run)
    tr = make_trainer(run, method, 7, extra, kind, dtype)
    tr.resume(run)
    assert tr.step == 3
    tr.fit()
    assert_bit_identical(
        checkpoint_tensors(final_checkpoint(tmp_path / "ref")), checkpoint_tensors(final_checkpoint(run))
    )
    for p, q in zip(ref.model.parameters(), tr.model.parameters()):
        assert torch.equal(p, q)
    assert metrics(run) == metrics(tmp_path / "ref")
    assert json.loads((run / "eval.json").read_text()) == json.loads((tmp_path / "ref" / "eval.json").read_text())
    a = json.loads((final_checkpoint(tmp_path / "ref") / "ledger.json").read_text())
    b = json.loads((final_checkpoint(run) / "ledger.json").read_text())
    assert a == b and (len(a["updates"]) == 7 or method == "prefix")


def test_resume_via_cli_continues_metrics_and_extends_steps(tmp_path, capsys):
    model_dir = save_tiny(tmp_path / "tiny")
    common = ["--model.name", str(model_dir), "--train.save_every", "2"]
    assert main(["train", *base_args(tmp_path / "ext", steps=4), *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "ext"), "--train.steps", "8"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["train", *base_args(tmp_path / "full", steps=8), *common]) == 0
    assert metrics(tmp_path / "ext") == metrics(tmp_path / "full")
    assert [r["step"] for r in metrics(tmp_path / "ext")] == [2, 4, 6, 8]
    assert_bit_identical(
        checkpoint_tensors(final_checkpoint(tmp_path / "ext")), checkpoint_tensors(final_checkpoint(tmp_path / "full"))
    )
    # a resume may not change what the trajectory depends on
    assert main(["train", "--resume", str(tmp_path / "ext"), "--zo.lr", "0.5"]) == 2
    assert "cannot change on --resume" in capsys.readouterr().err


def _run_tiny(out: Path, steps: int, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(REPO / "tests" / "run_tiny.py"), str(out), str(steps), "2", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    steps = 24
    ref = _run_tiny(tmp_path / "ref", steps)
    victim = _run_tiny(tmp_path / "run", steps, "--sleep", "0.05")
    want = 2 * random.Random().randint(1, 7)  # kill once the checkpoint of this step exists (save_every 2)
    deadline = time.time() + 240
    while (
        not ck.list_checkpoints(tmp_path / "run") or ck.list_checkpoints(tmp_path / "run")[-1].name < f"step-{want:08d}"
    ):
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = ck.list_checkpoints(tmp_path / "run")[-1]
    assert not (tmp_path / "run" / "run.json").exists()
    resumed = _run_tiny(tmp_path / "run", steps, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    (
        assert_bit_identical(
            checkpoint_tensors(final_checkpoint(tmp_path / "ref")),
            checkpoint_tensors(final_checkpoint(tmp_path / "run")),
        ),
        f"killed after {killed_at.name}",
    )
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")


# -- the seed ledger and replay ----------------------------------------------------------------------------------------
REPLAY_CASES = {
    "fp32-sgd": ("llama", torch.float32, []),
    "bf16-stochastic-q2-wd": ("llama", torch.bfloat16, ["--zo.queries", "2", "--zo.weight_decay", "0.1"]),
    "bf16-momentum-linear-lr": ("opt", torch.bfloat16, ["--zo.momentum", "0.9", "--zo.lr_schedule", "linear"]),
    "fp16-fp32-master-rademacher": ("llama", torch.float16, ["--zo.fp32_master", "true", "--zo.distribution",
                                                             "rademacher", "--zo.mu", "1e-2"]),
    "bf16-nearest-exclude": ("llama", torch.bfloat16, ["--zo.rounding", "nearest", "--zo.exclude", "*mlp*"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REPLAY_CASES))
def test_replay_rebuilds_the_checkpoint_base_bit_exactly(tmp_path, case, capsys):
    kind, dtype, extra = REPLAY_CASES[case]
    original = save_tiny(tmp_path / "original", kind, dtype)
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    tr = make_trainer(tmp_path / "run", "hybrid", 6, [*extra, "--model.dtype", name, "--zo.lr", "1e-2"], kind, dtype)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.fit()
    c = final_checkpoint(tmp_path / "run")
    assert main(["replay", str(tmp_path / "run"), "--base", str(original), "--out", str(tmp_path / "re")]) == 0
    assert "replayed 6 ZO updates" in capsys.readouterr().out
    from safetensors.torch import load_file

    rebuilt = {}
    for f in (tmp_path / "re").glob("*.safetensors"):
        rebuilt.update(load_file(f))
    saved = {k[5:]: v for k, v in checkpoint_tensors(c).items() if k.startswith("base.")}
    assert saved and set(saved) <= set(rebuilt)
    assert_bit_identical(saved, {k: rebuilt[k] for k in saved})
    changed = [n for n, p in tr.model.named_parameters() if "lora" not in n and not torch.equal(before[n], p)]
    assert changed  # replay reproduced real movement, not the original
    for k in set(rebuilt) - set(saved):  # tensors the run froze stay the original's
        assert "mlp" in k


def test_ledger_round_trips_and_is_small(tmp_path):
    from hyft.replay import read_ledger

    tr = make_trainer(tmp_path / "run", steps=4, extra=["--zo.queries", "3"])
    tr.fit()
    doc = read_ledger(final_checkpoint(tmp_path / "run") / "ledger.json")
    assert [u[0] for u in doc["updates"]] == [0, 1, 2, 3]
    for (s, lr, wd, c), (s2, lr2, wd2, c2) in zip(doc["updates"], tr.opt.ledger):
        assert (s, lr, wd) == (s2, lr2, wd2) and torch.equal(torch.tensor(c, dtype=torch.float32), c2.cpu())
    assert doc["seed"] == 0 and doc["queries"] == 3 and all(t["part"] == "base" for t in doc["tensors"])


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = make_trainer(tmp_path / "run", steps=4, extra=["--train.report_to", "tensorboard", "--train.log_every", "1"])
    tr.fit()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "zo/projected_grad", "zo/projected_grad_abs", "zo/loss_delta", "lr/fo", "lr/zo"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    rows = metrics(tmp_path / "run")
    assert [round(e.value, 5) for e in acc.Scalars("zo/projected_grad")] == [
        round(r["zo_projected_grad"], 5) for r in rows
    ]


def test_sharded_base_resumes_and_loads_in_transformers(tmp_path, monkeypatch):
    monkeypatch.setattr(ck.weights, "SHARD_BYTES", 20_000)  # ~110 kB of base tensors -> several shards
    ref = make_trainer(tmp_path / "ref", steps=4, extra=["--train.save_every", "2"])
    ref.fit()
    c = final_checkpoint(tmp_path / "ref")
    shards = sorted((c / "base").glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0].name.endswith(f"-of-{len(shards):05d}.safetensors")
    index = json.loads((c / "base" / ck.INDEX).read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    from transformers import AutoModelForCausalLM

    loaded = dict(AutoModelForCausalLM.from_pretrained(str(c / "base")).named_parameters())
    for n, p in ref.model.get_base_model().named_parameters():
        if "lora" not in n:
            assert torch.equal(loaded[n.replace(".base_layer", "")], p), n
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", run)
    shutil.rmtree(ck.list_checkpoints(run)[-1])
    tr = make_trainer(run, steps=4, extra=["--train.save_every", "2"])
    tr.resume(run)
    tr.fit()
    for p, q in zip(ref.model.parameters(), tr.model.parameters()):
        assert torch.equal(p, q)
