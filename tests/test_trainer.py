import json

import pytest
import torch

from conftest import byte_tokenizer, tiny_model
from hyft.config import load_config
from hyft.trainer import Trainer

DATA = "tests/fixtures/data"


def make_trainer(tmp_path, method, kind="llama", extra=(), name="run"):
    args = [
        "--method", method, "--data.data_dir", DATA, "--data.n_train", "40", "--data.n_dev", "8",
        "--data.n_test", "8", "--train.steps", "3", "--train.batch_size", "4", "--train.log_every", "1",
        "--train.output_dir", str(tmp_path / name), "--train.progress", "false", "--train.eval_before", "false",
        "--zo.lr", "1e-3", "--fo.lr", "1e-2", *extra,
    ]  # fmt: skip
    return Trainer(load_config(None, args), model=tiny_model(kind), tokenizer=byte_tokenizer())


# Which tensors each preset must change: "base" (the model's own weights) and/or "adapter" (peft's).
EXPECTED = {
    "ft": {"base"},
    "lora": {"adapter"},
    "prefix": {"adapter"},
    "prompt": {"adapter"},
    "mezo": {"base"},
    "zo-lora": {"adapter"},
    "hybrid": {"base", "adapter"},
}


@pytest.mark.parametrize("kind", ["llama", "opt"])
@pytest.mark.parametrize("method", list(EXPECTED))
def test_exactly_the_right_parameters_change(tmp_path, method, kind):
    tr = make_trainer(tmp_path, method, kind, extra=["--fo.optimizer", "adamw"])
    adapter_ids = {id(p) for p in tr.partition.fo + tr.partition.zo} - {id(p) for p in tr.partition.frozen}
    from hyft.models import adapter_parameters

    adapter_ids = {id(p) for p in adapter_parameters(tr.model)}
    params = dict(tr.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    tr.prepare_output()
    for _ in range(3):
        tr.train_step()
    changed = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    for n, p in params.items():
        group = "adapter" if id(p) in adapter_ids else "base"
        should = group in EXPECTED[method]
        assert (n in changed) == should, (method, n, group, should)


def _count_passes(model):
    counts = {"F": 0, "B": 0}
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    emb.register_forward_hook(lambda *a: counts.__setitem__("F", counts["F"] + 1))
    head.register_full_backward_hook(lambda *a: counts.__setitem__("B", counts["B"] + 1))
    return counts


@pytest.mark.parametrize(
    "method,schedule,queries,want",
    [
        ("hybrid", "onesided", 1, (2, 1)),
        ("hybrid", "central", 1, (3, 1)),
        ("hybrid", "alternating", 1, (3, 1)),
        ("hybrid", "onesided", 3, (4, 1)),
        ("mezo", "central", 1, (2, 0)),
        ("mezo", "onesided", 1, (2, 0)),
        ("lora", "onesided", 1, (1, 1)),
    ],
)
def test_forwards_and_backwards_per_step_counted_with_hooks(tmp_path, method, schedule, queries, want):
    tr = make_trainer(tmp_path, method, extra=["--zo.schedule", schedule, "--zo.queries", str(queries)])
    counts = _count_passes(tr.model)
    tr.prepare_output()
    result = tr.train_step()
    assert (counts["F"], counts["B"]) == want
    assert (result.forwards, result.backwards) == want == tr.counts


def _metrics(path):
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s", None)
    return rows


def test_same_seed_same_metrics_and_weights(tmp_path):
    runs = []
    for name in ("a", "b"):
        tr = make_trainer(tmp_path, "hybrid", name=name, extra=["--train.steps", "5", "--zo.queries", "2"])
        tr.fit()
        runs.append((tr, _metrics(tmp_path / name)))
    assert runs[0][1] == runs[1][1]
    for p, q in zip(runs[0][0].model.parameters(), runs[1][0].model.parameters()):
        assert torch.equal(p, q)
    tr = make_trainer(tmp_path, "hybrid", name="c", extra=["--train.steps", "5", "--seed", "1"])
    tr.fit()
    assert _metrics(tmp_path / "c") != runs[0][1]


def test_outputs_written(tmp_path):
    tr = make_trainer(tmp_path, "hybrid")
    info = tr.fit()
    out = tmp_path / "run"
    run = json.loads((out / "run.json").read_text())
    assert run["forwards_per_step"] == 2 and run["backwards_per_step"] == 1
    assert run["params"]["zo_params"] > 0 and run["peak_memory_bytes"] > 0 and info["steps"] == 3
    evals = json.loads((out / "eval.json").read_text())
    assert {e["split"] for e in evals} == {"dev", "test"}
    assert all(sum(c["n"] for c in e["per_class"].values()) == e["n"] for e in evals)
    m = _metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3]
    assert {"loss", "zo_projected_grad", "lr_fo", "lr_zo", "epoch"} <= set(m[0])


def test_refuses_to_overwrite_another_run(tmp_path):
    from hyft.errors import ConfigError

    make_trainer(tmp_path, "lora").fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        make_trainer(tmp_path, "lora").prepare_output()
