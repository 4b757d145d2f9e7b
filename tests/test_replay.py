"""The ledger's generator field: runs on the blocked generator replay and resume bit-exactly, and ledgers written
before the field (reference generator) still replay and resume with it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hyft import checkpoint as ck
from hyft.cli import main
from hyft.replay import write_ledger
from runs import (
    assert_bit_identical,
    checkpoint_tensors,
    final_checkpoint,
    interrupted_copy,
    make_trainer,
    metrics,
    save_tiny,
)

CASES = {
    "fp32-blocked-gaussian": (torch.float32, ["--zo.kernels", "blocked"]),
    "bf16-blocked-rademacher-q2-momentum": (
        torch.bfloat16,
        ["--zo.kernels", "blocked", "--zo.distribution", "rademacher", "--zo.queries", "2", "--zo.momentum", "0.9"],
    ),
    "bf16-torch-without-the-field": (torch.bfloat16, ["--zo.weight_decay", "0.1"]),
    "fp32-counter-gaussian": (torch.float32, ["--zo.kernels", "counter"]),
    "bf16-counter-rademacher-q2": (
        torch.bfloat16,
        ["--zo.kernels", "counter", "--zo.distribution", "rademacher", "--zo.queries", "2"],
    ),
}
NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _rebuilt(path):
    out = {}
    for f in path.glob("*.safetensors"):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_replay_rebuilds_the_base_bit_exactly(tmp_path, case, capsys):
    dtype, extra = CASES[case]
    original = save_tiny(tmp_path / "original", "llama", dtype)
    tr = make_trainer(tmp_path / "run", "hybrid", 5, [*extra, "--model.dtype", NAMES[dtype], "--zo.lr", "1e-2"],
                      "llama", dtype)  # fmt: skip
    tr.fit()
    c = final_checkpoint(tmp_path / "run")
    doc = json.loads((c / "ledger.json").read_text())
    assert doc["generator"] == next((g for g in ("blocked", "counter") if g in case), "torch")
    if "without" in case:  # the previous format: no field; replay must take the reference generator
        doc.pop("generator")
        _rewrite_ledger(c, doc)
    assert main(["replay", str(c / "ledger.json"), "--base", str(original), "--out", str(tmp_path / "re")]) == 0
    assert "replayed 5 ZO updates" in capsys.readouterr().out
    saved = {k[5:]: v for k, v in checkpoint_tensors(c).items() if k.startswith("base.")}
    rebuilt = _rebuilt(tmp_path / "re")
    assert saved and set(saved) <= set(rebuilt)
    assert_bit_identical(saved, {k: rebuilt[k] for k in saved})
    first = load_file(next((tmp_path / "original").glob("*.safetensors")))
    assert any(not torch.equal(first[k], saved[k]) for k in saved if k in first)  # the run really moved


def _rewrite_ledger(c, doc) -> None:
    """Write a checkpoint's ledger as the code before the generator field did, and re-mark the checkpoint (its size
    and sha256 in the completion marker) as that code's save would have."""
    marker = json.loads((c / ck.MARKER).read_text())
    marker["files"]["ledger.json"] = write_ledger(doc, c / "ledger.json")
    if "sha256" in marker:
        marker["sha256"]["ledger.json"] = ck.sha256_file(c / "ledger.json")
    (c / ck.MARKER).write_text(json.dumps(marker))


def test_the_generators_draw_different_trajectories(tmp_path):
    a = make_trainer(tmp_path / "a", "hybrid", 2, ["--zo.lr", "1e-2"])
    b = make_trainer(tmp_path / "b", "hybrid", 2, ["--zo.lr", "1e-2", "--zo.kernels", "blocked"])
    c = make_trainer(tmp_path / "c", "hybrid", 2, ["--zo.lr", "1e-2", "--zo.kernels", "counter"])
    a.fit(), b.fit(), c.fit()
    assert (a.opt.generator, b.opt.generator, c.opt.generator) == ("torch", "blocked", "counter")
    for x, y in ((a, b), (a, c), (b, c)):
        assert any(not torch.equal(p, q) for p, q in zip(x.model.parameters(), y.model.parameters()))


@pytest.mark.parametrize("kernels", ["blocked", "counter", "torch-without-the-field"])
def test_resume_is_bit_exact_and_checks_the_generator(tmp_path, kernels):
    extra = ["--train.save_every", "2", "--train.keep_checkpoints", "5", "--zo.lr", "1e-2"]
    fast = kernels in ("blocked", "counter")
    if fast:
        extra += ["--zo.kernels", kernels]
    ref = make_trainer(tmp_path / "ref", "hybrid", 5, extra)
    ref.fit()
    run = tmp_path / "run"
    interrupted_copy(tmp_path / "ref", run)
    c = ck.list_checkpoints(run)[0]
    if not fast:  # a checkpoint from before the field, resumed by today's code
        doc = json.loads((c / "ledger.json").read_text())
        doc.pop("generator")
        _rewrite_ledger(c, doc)
    # another generator cannot continue this trajectory: a clear error, nothing lost
    other = [e for e in extra if e not in ("--zo.kernels", kernels)]
    other += ["--zo.kernels", "counter" if kernels == "blocked" else "blocked"]
    with pytest.raises(ck.CheckpointError, match="generator"):
        make_trainer(run, "hybrid", 5, other).resume(run)
    tr = make_trainer(run, "hybrid", 5, extra)
    tr.resume(run)
    assert tr.step == 2
    tr.fit()
    assert_bit_identical(
        checkpoint_tensors(final_checkpoint(tmp_path / "ref")), checkpoint_tensors(final_checkpoint(run))
    )
    assert metrics(run) == metrics(tmp_path / "ref")
