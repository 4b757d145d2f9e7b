"""Divergence guard (skip non-finite steps, stop after K or above a loss bound), the perturbation-resolution warning,
and out-of-memory errors that name the phase."""

import json

import pytest
import torch

from hyft import checkpoint as ck
from hyft.cli import main
from hyft.errors import HyftError
from hyft.guard import ResourceError, TrainingDiverged, vanishing_share
from hyft.trainer import Trainer
from runs import base_args, final_checkpoint, make_trainer, metrics, save_tiny

EXTRA = ["--fo.optimizer", "adamw", "--fo.warmup_steps", "3", "--zo.queries", "2", "--train.log_every", "1"]


class Poisoned(Trainer):
    """Returns NaN from the FO forward (where="fo") or from the perturbed ZO forwards (where="zo") at chosen steps."""

    bad: set[int] = set()
    where = "fo"

    def loss_fn(self, batch):
        loss = super().loss_fn(batch)
        step = self.step + 1
        in_zo = not torch.is_grad_enabled()
        if step in self.bad and (in_zo if self.where == "zo" else not in_zo):
            return loss * float("nan")
        return loss


class SkipsBatches(Trainer):
    """Never sees the batches the poisoned run drew at `drop` (1-based draw counts)."""

    drop: set[int] = set()

    def next_micro_batches(self):
        self.drawn = getattr(self, "drawn", 0) + 1
        while self.drawn in self.drop:
            super().next_micro_batches()
            self.drawn += 1
        return super().next_micro_batches()


def _build(cls, out, steps, extra=()):
    from conftest import byte_tokenizer, tiny_model
    from hyft.config import load_config

    return cls(load_config(None, base_args(out, "hybrid", steps, [*EXTRA, *extra])), model=tiny_model("llama"),
               tokenizer=byte_tokenizer())  # fmt: skip


@pytest.mark.parametrize("where", ["fo", "zo"])
def test_nan_steps_are_skipped_exactly_like_batches_that_never_were(tmp_path, where, capsys):
    Poisoned.bad, Poisoned.where = {2, 4}, where
    SkipsBatches.drop = {2, 4}
    bad = _build(Poisoned, tmp_path / "bad", 7)
    bad.fit()
    ref = _build(SkipsBatches, tmp_path / "ref", 5)
    ref.fit()
    for (n, p), q in zip(bad.model.named_parameters(), ref.model.parameters()):
        assert torch.equal(p, q), n
    assert [s for s, *_ in bad.opt.ledger] == [0, 1, 2, 3, 4]  # the ZO step key did not advance on skipped steps
    skipped = [r for r in metrics(tmp_path / "bad") if r.get("skipped")]
    kind = "loss" if where == "fo" else "ZO projected gradient"
    assert [r["step"] for r in skipped] == [2, 4] and all(kind in r["reason"] for r in skipped)
    assert "step 2: skipped (non-finite" in capsys.readouterr().err
    assert json.loads((tmp_path / "bad" / "run.json").read_text())["skipped_steps"] == 2


def test_consecutive_bad_steps_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    Poisoned.bad, Poisoned.where = set(range(4, 100)), "fo"
    tr = _build(Poisoned, tmp_path / "run", 10, ["--train.save_every", "3", "--train.max_bad_steps", "3"])
    with pytest.raises(TrainingDiverged) as e:
        tr.fit()
    msg = str(e.value)
    assert "step 6: non-finite loss nan; 3 consecutive bad steps (train.max_bad_steps 3)" in msg
    assert "step-00000003" in msg and e.value.exit_code == 3
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run")] == ["step-00000003"]
    assert not (tmp_path / "run" / "run.json").exists()


def test_cli_stops_above_the_loss_bound_with_exit_3(tmp_path, capsys):
    model = save_tiny(tmp_path / "tiny")
    args = base_args(tmp_path / "run", extra=["--model.name", str(model), "--train.loss_bound", "0.1"])
    assert main(["train", *args]) == 3
    err = capsys.readouterr().err
    assert "hyft: error: stopped at step 1: loss 0.69" in err and "exceeds train.loss_bound 0.1" in err
    assert not ck.list_checkpoints(tmp_path / "run")


def test_resolution_share_is_exact_on_known_values():
    w = torch.tensor([1.0, 1e-3, 0.0, -1.0], dtype=torch.bfloat16)
    # |w| = 1: half ulp 2^-8 = 0.0039 > 1e-3 * 0.8 (lost); |w| = 1e-3: half ulp 3.8e-6 (kept); 0: kept
    assert vanishing_share([w], 1e-3, "gaussian") == 0.5
    assert vanishing_share([w], 1e-2, "rademacher") == 0.0
    assert vanishing_share([w.float()], 1e-6, "gaussian") == 0.0


def test_resolution_warning_once_at_start(tmp_path, capsys):
    tr = make_trainer(tmp_path / "bf16", "mezo", 2, ["--zo.mu", "1e-5"], kind="llama", dtype=torch.bfloat16)
    tr.fit()
    err = capsys.readouterr().err
    assert err.count("[hyft] warning: zo.mu 1e-05 is under half an ulp of bfloat16") == 1
    make_trainer(tmp_path / "fp32", "mezo", 2).fit()
    assert "warning" not in capsys.readouterr().err


class _OOMBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("phase", ["ZO forward", "FO backward", "eval"])
def test_out_of_memory_names_the_phase_and_the_knobs(tmp_path, monkeypatch, phase):
    import hyft.scoring
    import hyft.trainer

    real = hyft.scoring.loss

    def loss(*a, **k):
        out = real(*a, **k)
        if phase == "ZO forward" and not torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return _OOMBackward.apply(out) if phase == "FO backward" and torch.is_grad_enabled() else out

    def evaluate_examples(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(hyft.scoring, "loss", loss)
    monkeypatch.setattr(hyft.trainer, "evaluate_examples", evaluate_examples)
    model = save_tiny(tmp_path / "tiny")
    args = base_args(tmp_path / "run", extra=["--model.name", str(model)])
    if phase == "eval":
        args += ["--train.eval_before", "true"]
    with pytest.raises(ResourceError) as e:
        from hyft.commands.train import run

        run(type("A", (), {"help": False, "resume": None, "config": None})(), args)
    msg = str(e.value)
    step = 0 if phase == "eval" else 1
    assert f"out of memory in the {phase} of step {step}" in msg and "Tried to allocate" in msg
    knob = {"ZO forward": "train.grad_accum", "FO backward": "gradient_checkpointing", "eval": "eval_batch_size"}
    assert knob[phase] in msg and isinstance(e.value, HyftError) and e.value.exit_code == 2


def test_checkpoint_report_numbers(tmp_path):
    tr = make_trainer(tmp_path / "run", steps=3)
    info = tr.fit()
    c = final_checkpoint(tmp_path / "run")
    rep = info["checkpoint"]
    assert rep["ledger_bytes"] == (c / "ledger.json").stat().st_size
    assert rep["base_safetensors_bytes"] == sum(f.stat().st_size for f in (c / "base").glob("*.safetensors"))


# -- realised perturbation scale: 16-bit tensors whose perturbation rounds away are left out of ZO -------------------
def test_realised_scale_on_known_cases():
    from hyft.guard import realised_scale

    ones = torch.ones(4096, dtype=torch.bfloat16)
    r = realised_scale(ones, 1e-3, "gaussian")
    assert 0.15 < r < 0.3  # ulp 2^-7 at 1.0: most |mu z| are under half of it
    assert realised_scale(ones, 1e-3, "rademacher") == 0.0  # |mu z| = 1e-3 < 2^-8: every one rounds away
    assert realised_scale(ones, 3e-2, "gaussian") > 0.95
    assert abs(realised_scale(ones.float(), 1e-3, "gaussian") - 1) < 1e-3
    small = torch.randn(10_000, generator=torch.Generator().manual_seed(0)).mul_(0.02).to(torch.bfloat16)
    assert realised_scale(small, 1e-3, "gaussian") > 0.95  # a typical linear weight: fine in bf16


def _bf16_opt(**kw):
    from conftest import tiny_model
    from hyft.optim import HybridOptimizer

    model = tiny_model("llama", torch.bfloat16)  # RMSNorm weights are exactly 1.0
    kw = {"mu": 1e-3, **kw}
    return model, HybridOptimizer(model, zo_params=list(model.parameters()), zo_lr=1e-2, **kw)


def test_vanishing_16bit_tensors_are_excluded_with_a_reason(capsys):
    from hyft.guard import perturbation_scales, realised_scale, tensor_kind
    from hyft.step import hybrid_step

    model, opt = _bf16_opt()
    norms = [n for n, p in model.named_parameters() if "norm" in n]
    err = capsys.readouterr().err
    assert f"{len(norms)} 16-bit ZO tensors left out of the ZO group" in err and "model.norm.weight (0." in err
    assert {tensor_kind(t) for t, _ in opt.excluded_zo} == {"norm"} and len(opt.excluded_zo) == len(norms)
    # what stays in ZO is perturbed at its intended scale; indices (the RNG keys) are the full model's
    assert all(realised_scale(t.param, opt.mu, opt.distribution) >= 0.9 for t in opt.zo_tensors)
    all_indices = sorted([t.index for t in opt.zo_tensors] + [t.index for t, _ in opt.excluded_zo])
    assert all_indices == list(range(len(list(model.parameters()))))
    report = perturbation_scales(opt)
    assert report["norm"]["excluded"] == len(norms) and report["norm"]["realised_over_intended"] < 0.3
    assert report["linear"]["excluded"] == 0 and report["linear"]["realised_over_intended"] > 0.95
    assert report["embedding"]["dtype"] == "bfloat16"
    json.dumps(report)
    # the excluded tensors are neither perturbed nor updated; the others move
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(3, 30)[None]
    hybrid_step(opt, lambda b: model(b, labels=b).loss, [ids], schedule="central")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == ("norm" in n), n


def test_min_perturbation_scale_zero_keeps_every_tensor(capsys):
    model, opt = _bf16_opt(min_perturbation_scale=0.0)
    assert not opt.excluded_zo and len(opt.zo_tensors) == len(list(model.parameters()))
    assert "left out" not in capsys.readouterr().err


def test_a_mu_too_small_for_the_dtype_excludes_nothing(capsys):
    # everything rounds away: leaving it all out would train nothing; the resolution warning covers this case
    model, opt = _bf16_opt(mu=1e-5)
    assert not opt.excluded_zo and len(opt.zo_tensors) == len(list(model.parameters()))
    assert "left out" not in capsys.readouterr().err


def test_fp32_runs_exclude_nothing_and_report_scales(tmp_path):
    tr = make_trainer(tmp_path / "run", steps=2)
    tr.fit()
    assert not tr.opt.excluded_zo
    scales = json.loads((tmp_path / "run" / "run.json").read_text())["zo_perturbation_scale"]
    assert scales and all(abs(row["realised_over_intended"] - 1) < 1e-3 for row in scales.values())
    assert all(row["excluded"] == 0 for row in scales.values())


def test_bf16_run_json_reports_the_excluded_norms(tmp_path):
    tr = make_trainer(tmp_path / "run", steps=2, extra=["--model.dtype", "bfloat16"], dtype=torch.bfloat16)
    tr.fit()
    scales = json.loads((tmp_path / "run" / "run.json").read_text())["zo_perturbation_scale"]
    assert scales["norm"]["excluded"] == scales["norm"]["tensors"] > 0
    assert scales["norm"]["realised_over_intended"] < 0.3


def test_realised_scale_on_a_tensor_past_float32_integers():
    """SmolLM2's embedding (49152 x 576 = 28,311,552 elements) has more elements than float32 counts exactly: the
    strided sample must stay inside the tensor (it indexed one past the end, and every real hybrid run crashed when
    writing run.json). The last sampled element is the tensor's last one."""
    from hyft.guard import _SAMPLES, realised_scale

    n = (1 << 24) + 4  # n - 1 is odd: float32 rounds it (a tie) up to n
    w = torch.zeros(n, dtype=torch.bfloat16)
    at_zero = realised_scale(w, 1e-3, "rademacher")  # bf16(±1e-3) / 1e-3: the same for every element
    w[-1] = 1.0  # bf16 swallows a 1e-3 perturbation at 1.0 (ulp 2^-7)
    r = realised_scale(w, 1e-3, "rademacher")
    assert abs(r / at_zero - (1 - 1 / _SAMPLES)) < 1e-9  # exactly one sampled element, the last, lost its perturbation
