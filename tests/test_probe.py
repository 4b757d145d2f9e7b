"""The probe (hyft/probe.py): exact directional derivatives, estimator convergence, no effect on training, memory,
drift, attribution and the end-of-run ablation."""

from __future__ import annotations

import json
import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_model
from hyft.config import load_config
from hyft.errors import ConfigError
from hyft.optim import HybridOptimizer
from hyft.probe import directional_derivatives, tensor_kinds
from hyft.validate import check_config
from hyft.zo.perturb import Direction
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


def _setup(dtype=torch.float64, distribution="gaussian", shape=(4, 12)):
    """A tiny model in `dtype` with all weights in the ZO group, and an LM loss computed in that dtype end to end
    (hyft's scoring returns fp32 log-probabilities, whose rounding would hide the O(mu^2) terms)."""
    model = tiny_model("llama", dtype=dtype).eval()
    opt = HybridOptimizer(model, zo_params=list(model.parameters()), zo_lr=0.0, distribution=distribution, seed=3)
    ids = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0))

    def loss():
        logits = model(input_ids=ids).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    return model, opt, loss


def test_streaming_directional_derivative_equals_the_materialised_gradient():
    model, opt, loss = _setup(torch.float64)
    dirs = [opt.direction(0), Direction(11, 0, 0), Direction(11, 0, 1)]
    der = directional_derivatives(loss, opt.zo_tensors, dirs, own=1)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    for p in model.parameters():
        p.requires_grad_(True)
    grads = torch.autograd.grad(loss(), [t.param for t in opt.zo_tensors])
    for j, d in enumerate(dirs):
        full = sum(torch.dot(g.reshape(-1), d.z(t).double().reshape(-1)) for g, t in zip(grads, opt.zo_tensors))
        assert der.exact[j] == pytest.approx(float(full), rel=1e-9)
    assert der.grad_x_sq == pytest.approx(float(sum((g * g).sum() for g in grads)), rel=1e-9)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_estimates_converge_to_the_exact_derivative_at_their_orders(distribution):
    """onesided error O(mu), central O(mu^2) against the exact derivative (fp64 weights and loss)."""
    from hyft.zo.estimator import projected_grads

    _model, opt, loss = _setup(torch.float64, distribution)
    exact = directional_derivatives(loss, opt.zo_tensors, [opt.direction(0)]).exact[0]
    errs = {"onesided": [], "central": []}
    mus = [4e-3, 2e-3, 1e-3, 5e-4]
    for est in errs:
        for mu in mus:
            opt.mu = mu
            g, _ = projected_grads(loss, opt.perturbed, estimator=est, queries=1, mu=mu)
            errs[est].append(float(g[0]) - exact)
    # the order is the slope of log|error| against log mu over the range (8x in mu)
    order = {k: math.log(abs(e[0] / e[-1])) / math.log(mus[0] / mus[-1]) for k, e in errs.items()}
    assert 0.85 < order["onesided"] < 1.15, errs
    assert 1.8 < order["central"] < 2.2, errs
    assert abs(errs["central"][-1]) < abs(errs["onesided"][-1]) / 10


@pytest.mark.parametrize(
    "method,extra",
    [
        ("hybrid", []),
        ("hybrid", ["--zo.schedule", "central", "--zo.queries", "2"]),
        ("hybrid", ["--zo.schedule", "alternating", "--fo.optimizer", "adamw"]),
        ("hybrid", ["--train.dropout", "shared", "--train.grad_accum", "2"]),
        ("mezo", []),
        ("lora", []),
    ],
)
def test_probes_leave_training_bit_identical(tmp_path, method, extra):
    probe = ["--train.probe_every", "2", "--train.probe_directions", "2"]
    make_trainer(tmp_path / "plain", method, 6, extra).fit()
    make_trainer(tmp_path / "probed", method, 6, [*extra, *probe]).fit()
    probed = metrics(tmp_path / "probed")
    rows = [r for r in probed if "probe_applied" not in r]
    assert rows == metrics(tmp_path / "plain")
    assert len(probed) - len(rows) == 3  # steps 2, 4, 6
    assert_bit_identical(
        checkpoint_tensors(final_checkpoint(tmp_path / "plain")),
        checkpoint_tensors(final_checkpoint(tmp_path / "probed")),
    )


def test_probe_record_fields_and_run_summary(tmp_path):
    tr = make_trainer(tmp_path / "a", "hybrid", 4, ["--train.probe_every", "2", "--train.probe_directions", "3",
                                                    "--train.report_to", "tensorboard"])  # fmt: skip
    info = tr.fit()
    rows = [r for r in metrics(tmp_path / "a") if "probe_applied" in r]
    assert [r["step"] for r in rows] == [2, 4]
    r = rows[0]
    for key in ("probe_exact", "probe_onesided", "probe_central", "probe_grad_x_norm", "probe_grad_y_norm",
                "probe_cos_update", "probe_df_zo", "probe_df_fo", "probe_df_joint", "probe_drift", "probe_zHz",
                "probe_zo_lr_scale", "probe_relerr_onesided", "probe_est_var", "probe_drift_attention",
                "probe_drift_mlp", "probe_drift_embed_head", "probe_drift_norm"):  # fmt: skip
        assert isinstance(r[key], float), key
    # with a small step the joint change is the sum of the parts to first order
    assert r["probe_df_joint"] == pytest.approx(r["probe_df_zo"] + r["probe_df_fo"], abs=1e-3)
    assert r["probe_ratio_onesided"] == pytest.approx(r["probe_onesided"] / r["probe_exact"])
    s = info["probe"]
    assert s["probes"] == 2 and s["cum_df_zo"] == pytest.approx(rows[0]["probe_df_zo"] + rows[1]["probe_df_zo"])
    assert json.loads((tmp_path / "a" / "run.json").read_text())["probe"]["probes"] == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    acc.Reload()
    assert {"probe/df_zo", "probe/cos_update", "probe/drift"} <= set(acc.Tags()["scalars"])


def test_probe_batch_and_directions_are_seeded(tmp_path):
    a = [r for r in (make_trainer(tmp_path / "a", "hybrid", 2, ["--train.probe_every", "1"]).fit() and
                     metrics(tmp_path / "a")) if "probe_applied" in r]  # fmt: skip
    b = [r for r in (make_trainer(tmp_path / "b", "hybrid", 2, ["--train.probe_every", "1"]).fit() and
                     metrics(tmp_path / "b")) if "probe_applied" in r]  # fmt: skip
    assert a == b and len(a) == 2


def test_ledger_drift_estimate_matches_the_exact_drift(tmp_path):
    common = ["--train.probe_every", "5", "--zo.lr", "1e-3", "--fo.lr", "0"]
    make_trainer(tmp_path / "led", "hybrid", 20, common).fit()
    make_trainer(tmp_path / "ex", "hybrid", 20, [*common, "--train.probe_drift", "exact"]).fit()
    led = [r for r in metrics(tmp_path / "led") if "probe_applied" in r]
    ex = [r for r in metrics(tmp_path / "ex") if "probe_applied" in r]
    assert ex[-1]["probe_drift"] > 0
    for a, b in zip(led, ex):
        for key in ("probe_drift", "probe_drift_attention", "probe_drift_mlp", "probe_drift_embed_head"):
            assert a[key] == pytest.approx(b[key], rel=0.1), key  # d ~ 1e4 per kind: cross terms ~ 1/sqrt(d)


def test_resumed_probed_run_equals_uninterrupted(tmp_path):

    extra = ["--train.probe_every", "2", "--train.save_every", "3", "--train.keep_checkpoints", "5"]
    make_trainer(tmp_path / "ref", "hybrid", 6, extra).fit()
    run = tmp_path / "run"  # "interrupted" after step 3: only that checkpoint is kept
    interrupted_copy(tmp_path / "ref", run)
    tr = make_trainer(run, "hybrid", 6, extra)
    tr.resume(run)
    info = tr.fit()
    assert metrics(run) == metrics(tmp_path / "ref")
    ref = json.loads((tmp_path / "ref" / "run.json").read_text())
    assert info["probe"] == ref["probe"]  # cumulative attribution and drift carried through the checkpoint


class _LiveBytes(TorchDispatchMode):
    """Live tensor-storage bytes created by ops inside the mode, and their peak: a real measurement on the CPU."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key, st.nbytes())
        return out

    def _free(self, key, n):
        self.seen.discard(key)
        self.live -= n


def test_probe_gradient_memory_is_one_tensor_not_the_whole_gradient():
    """The streamed pass costs at most 2x the largest base tensor over a backward through the base that drops each
    gradient on arrival (the activations any backprop through the base needs); keeping the gradient costs ~all of it.
    Peaks are live tensor bytes measured by a dispatch mode."""
    _model, opt, loss = _setup(torch.float32, shape=(1, 3))  # activations small next to the weights
    params = [t.param for t in opt.zo_tensors]
    dirs = [opt.direction(0)]

    def backward(keep: bool) -> None:
        hooks = (
            [] if keep else [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in params]
        )
        for p in params:
            p.requires_grad_(True)
        loss().backward(inputs=params)
        for h in hooks:
            h.remove()
        for p in params:
            p.requires_grad_(False)
            p.grad = None

    peaks = {}
    for name, run in (("streamed", lambda: directional_derivatives(loss, opt.zo_tensors, dirs)),
                      ("dropped", lambda: backward(keep=False)), ("kept", lambda: backward(keep=True))):  # fmt: skip
        with _LiveBytes() as mem:
            run()
        peaks[name] = mem.peak
    largest = max(p.numel() * p.element_size() for p in params)
    total = sum(p.numel() * p.element_size() for p in params)
    assert peaks["streamed"] - peaks["dropped"] < 2 * largest, (peaks, largest)
    assert peaks["kept"] - peaks["dropped"] > 0.8 * (total - largest), (peaks, total)


def _kinds_by_name(kind: str) -> dict[str, str]:
    model = tiny_model(kind)
    opt = HybridOptimizer(model, zo_params=list(model.parameters()))
    kinds = tensor_kinds(model, opt.zo_tensors, model.get_output_embeddings())
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(t.param)]: kinds[t.index] for t in opt.zo_tensors}


def test_tensor_kinds_by_structure():
    got = _kinds_by_name("llama")
    assert got["model.embed_tokens.weight"] == "embed_head"
    assert got["model.layers.0.self_attn.q_proj.weight"] == "attention"
    assert got["model.layers.0.mlp.down_proj.weight"] == "mlp"
    assert got["model.layers.1.input_layernorm.weight"] == "norm" and got["model.norm.weight"] == "norm"
    got = _kinds_by_name("opt")
    assert got["model.decoder.layers.0.fc1.weight"] == "mlp"
    assert got["model.decoder.layers.0.self_attn.k_proj.bias"] == "attention"
    assert got["model.decoder.embed_positions.weight"] == "embed_head"


def _own_model_trainer(tmp_path, name, extra=()):
    from hyft.trainer import Trainer

    model_dir = save_tiny(tmp_path / "tiny")
    args = base_args(tmp_path / name, "hybrid", 4, ["--model.name", str(model_dir), *extra])
    return Trainer(load_config(None, args))


def test_ablation_with_zero_zo_lr_is_exactly_zero(tmp_path):
    info = _own_model_trainer(tmp_path, "z", ["--zo.lr", "0"]).fit()
    assert set(info["ablation"]) == {"dev", "test"}
    for r in info["ablation"].values():
        assert r["zo_points"] == 0.0 and r["updated_base"] == r["original_base"]


def test_ablation_evaluates_the_adapter_on_the_original_base(tmp_path):
    from hyft.evaluate import EvalOptions, evaluate_examples, headline
    from hyft.models import attach_peft, load_model

    tr = _own_model_trainer(tmp_path, "a", ["--zo.lr", "5e-2"])
    info = tr.fit()
    # the same adapter on a freshly loaded original base gives the ablation's number
    fresh, _ = load_model(tr.cfg.model)
    fresh = attach_peft(fresh, "lora", tr.cfg.peft)
    from peft import set_peft_model_state_dict

    from hyft.checkpoint import read_tensors

    c = final_checkpoint(tmp_path / "a")
    set_peft_model_state_dict(fresh, read_tensors(c / "adapter" / "adapter_model.safetensors"))
    rep = evaluate_examples(fresh, fresh.get_output_embeddings(), tr.tokenizer, tr.data.split("test"),
                            EvalOptions.from_config(tr.cfg))  # fmt: skip
    assert headline(rep)[1] == info["ablation"]["test"]["original_base"]
    assert json.loads((tmp_path / "a" / "run.json").read_text())["ablation"] == info["ablation"]
    # exact drift keeps x_0, so the ablation also works for a model passed in code
    tr2 = make_trainer(tmp_path / "b", "hybrid", 2, ["--train.probe_every", "2", "--train.probe_drift", "exact"])
    assert set(tr2.fit()["ablation"]) == {"dev", "test"}


def test_probe_config_is_validated():
    with pytest.raises(ConfigError, match="train.probe_drift: unknown value 'fast'"):
        check_config(load_config(None, ["--train.probe_drift", "fast"]))
    with pytest.raises(ConfigError, match="train.probe_every: must be >= 0"):
        check_config(load_config(None, ["--train.probe_every", "-1"]))
    assert load_config(None, ["--train.ablate_zo", "false"]).train.ablate_zo == "false"
