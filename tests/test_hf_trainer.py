"""HybridTrainer (transformers.Trainer): gradient accumulation = a bigger batch, exact resume, base weights saved,
the example script runs."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from hyft.hf_trainer import HybridTrainer, HybridTrainingArguments
from runs import save_tiny


class Rows(torch.utils.data.Dataset):
    """Variable-length token sequences; labels = inputs (-100 on padding), so the LM loss is token-normalised."""

    def __init__(self, n=16, seed=0, equal=False):
        g = torch.Generator().manual_seed(seed)
        lengths = [10 if equal else int(torch.randint(6, 14, (1,), generator=g)) for _ in range(n)]
        self.rows = [torch.randint(0, 250, (n_,), generator=g) for n_ in lengths]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i]}


def collate(items):
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), 256)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, x in enumerate(items):
        ids[i, : len(x["input_ids"])] = x["input_ids"]
        mask[i, : len(x["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def lora_model(dropout=0.0):
    import peft

    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, task_type="CAUSAL_LM", lora_dropout=dropout)
    return peft.get_peft_model(tiny_model("llama"), config)


def trainer(out, *, bs, ga, steps=4, model=None, batch_mean=False, **kw):
    kw = {"zo_mu": 1e-3, "save_strategy": "no", **kw}
    args = HybridTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=steps,
        learning_rate=5e-2, optim="sgd", zo_lr=2e-2, lr_scheduler_type="linear", warmup_steps=1,
        logging_steps=1, report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, **kw,
    )  # fmt: skip
    t = HybridTrainer(
        model=model or lora_model(), args=args, train_dataset=Rows(equal=batch_mean), data_collator=collate
    )
    if batch_mean:  # the loss is each micro-batch's own mean and Trainer divides it by k (no num_items_in_batch)
        t.model_accepts_loss_kwargs = False
    return t


def params(t):
    return {n: p.detach().clone() for n, p in t.model.named_parameters()}


@pytest.mark.parametrize(
    "schedule,batch_mean", [("onesided", False), ("central", False), ("onesided", True)],
    ids=["onesided-token-normalised", "central-token-normalised", "onesided-batch-mean"],
)  # fmt: skip
def test_grad_accumulation_k_of_b_follows_one_batch_of_kb(tmp_path, schedule, batch_mean):
    """One ZO direction per optimizer step shared by its micro-batches, each contributing its token-weighted share:
    4 steps of 2 x 2 equal 4 steps of 1 x 4 up to float rounding (FO and ZO, base and adapter).

    The ZO coefficients are differences of fp32 losses divided by mu, so they agree to about ulp(loss) / mu
    (~5e-5 here with mu = 1e-2); the weights then agree to lr * that * |z| per step, far under how far they moved."""
    start = params(trainer(tmp_path / "s", bs=4, ga=1))
    a = trainer(tmp_path / "a", bs=2, ga=2, zo_schedule=schedule, zo_mu=1e-2, batch_mean=batch_mean)
    b = trainer(tmp_path / "b", bs=4, ga=1, zo_schedule=schedule, zo_mu=1e-2, batch_mean=batch_mean)
    a.train()
    b.train()
    pa, pb = params(a), params(b)
    base_moved = adapter_moved = 0.0
    for n in pa:
        assert torch.allclose(pa[n], pb[n], atol=2e-5, rtol=0), (n, (pa[n] - pb[n]).abs().max())
        moved = (pb[n] - start[n]).abs().max().item()
        if "lora" in n:
            adapter_moved = max(adapter_moved, moved)
        else:
            base_moved = max(base_moved, moved)
    assert base_moved > 1e-3 and adapter_moved > 1e-3  # far above the tolerance: both groups really trained
    ga, gb = a.hybrid_optimizer.ledger, b.hybrid_optimizer.ledger
    assert [s for s, *_ in ga] == [s for s, *_ in gb] == [0, 1, 2, 3]
    ca, cb = torch.stack([c for *_, c in ga]), torch.stack([c for *_, c in gb])
    assert torch.allclose(ca, cb, rtol=0, atol=5e-4) and ca.abs().max() > 0.05
    assert all(lr_a == lr_b for (_, lr_a, _, _), (_, lr_b, _, _) in zip(ga, gb))  # Trainer's scheduler drives ZO
    assert len({lr for _, lr, _, _ in ga}) > 1
    # the ZO diagnostics reach Trainer's logs
    logged = [h for h in a.state.log_history if "loss" in h]
    assert logged and all("zo_projected_grad" in h and "zo_learning_rate" in h for h in logged)


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    ref = trainer(tmp_path / "ref", bs=2, ga=2, steps=4, save_strategy="steps", save_steps=2)
    ref.train()
    ckpt = tmp_path / "ref" / "checkpoint-2"
    assert (ckpt / "base" / "model.safetensors.index.json").exists() and (ckpt / "adapter_model.safetensors").exists()
    assert (ckpt / "ledger.json").exists()
    shutil.copytree(ckpt, tmp_path / "run" / "checkpoint-2")
    fresh = trainer(tmp_path / "run", bs=2, ga=2, steps=4, save_strategy="steps", save_steps=2)
    assert not all(torch.equal(p, q) for p, q in zip(params(fresh).values(), params(ref).values()))
    fresh.train(resume_from_checkpoint=True)
    for (n, p), q in zip(params(ref).items(), params(fresh).values()):
        assert torch.equal(p, q), n  # bit-identical on CPU
    # the logs after the resume are those of the uninterrupted run (the ZO diagnostics cover only their own steps)
    keys = ("step", "loss", "zo_projected_grad", "zo_projected_grad_abs", "zo_learning_rate")
    logs = lambda t: [{k: h[k] for k in keys} for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert logs(fresh) == logs(ref) and len(logs(ref)) == 4
    assert [s for s, *_ in fresh.hybrid_optimizer.ledger] == [0, 1, 2, 3]


def test_dropout_masks_are_keyed_by_the_optimizer_step_for_plain_lora(tmp_path):
    """A frozen base (plain LoRA: no ZO step ever) with LoRA dropout: each step and micro-batch draws its own masks,
    keyed by the optimizer's step count, so a resumed run draws the masks the uninterrupted one drew."""
    kw = dict(bs=2, ga=2, steps=4, save_strategy="steps", save_steps=2, zo_base="frozen")
    ref = trainer(tmp_path / "ref", model=lora_model(dropout=0.3), **kw)
    ref.train()
    shutil.copytree(tmp_path / "ref" / "checkpoint-2", tmp_path / "run" / "checkpoint-2")
    fresh = trainer(tmp_path / "run", model=lora_model(dropout=0.3), **kw)
    fresh.train(resume_from_checkpoint=True)
    assert fresh.hybrid_optimizer.steps == 4 and not fresh.hybrid_optimizer.zo_tensors
    for (n, p), q in zip(params(ref).items(), params(fresh).values()):
        assert torch.equal(p, q), n


def test_resume_without_base_is_refused(tmp_path):
    from hyft.checkpoint import CheckpointError

    ref = trainer(tmp_path / "ref", bs=4, ga=1, steps=2, save_strategy="steps", save_steps=1)
    ref.train()
    shutil.rmtree(tmp_path / "ref" / "checkpoint-2" / "base")
    with pytest.raises(CheckpointError, match="lose the ZO progress"):
        trainer(tmp_path / "ref", bs=4, ga=1, steps=3).train(
            resume_from_checkpoint=str(tmp_path / "ref" / "checkpoint-2")
        )


def test_save_model_holds_the_updated_base_and_the_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    t = trainer(tmp_path / "t", bs=4, ga=1, steps=2)
    t.train()
    t.save_model(str(tmp_path / "saved"))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    t.model.eval()
    with torch.no_grad():
        want = t.model(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved" / "base"))
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, str(tmp_path / "saved")).eval()(input_ids=ids).logits
        orig = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "saved")).eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6)
    assert (orig - want).abs().max() > 1e-4  # the adapter alone (on the original base) is not the trained model
    ledger = json.loads((tmp_path / "saved" / "ledger.json").read_text())
    assert len(ledger["updates"]) == 2


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="zo_mu"):
        HybridTrainingArguments(output_dir="x", zo_mu=0.0, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="optim"):
        HybridTrainingArguments(output_dir="x", optim="adafactor", use_cpu=True, report_to=[])


def test_example_script_runs(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "examples" / "hf_trainer_sst2.py"
    spec = importlib.util.spec_from_file_location("hf_trainer_sst2", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    model_dir = save_tiny(tmp_path / "tiny")
    args = ["--model", str(model_dir), "--data_dir", "tests/fixtures/data", "--n_train", "16", "--n_test", "8",
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "2", "--save_steps", "1", "--use_cpu", "--report_to", "none"]  # fmt: skip
    mod.main(args)
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert (tmp_path / "out" / "checkpoint-2" / "base").is_dir() and (tmp_path / "out" / "final" / "base").is_dir()
    mod.main([*args, "--max_steps", "3", "--resume"])  # continues from checkpoint-2
    assert (tmp_path / "out" / "checkpoint-3" / "base").is_dir()


def test_zo_only_model_and_its_ledger_replays_to_the_trained_weights(tmp_path):
    """No PEFT module: HybridTrainer is MeZO inside Trainer (nothing to backpropagate); its seed ledger rebuilds the
    trained weights from the original model bit-exactly."""
    from hyft.replay import read_ledger, replay

    t = trainer(tmp_path / "t", bs=4, ga=2, steps=3, model=tiny_model("llama"), zo_schedule="central")
    t.train()
    t.save_model(str(tmp_path / "saved"))
    original = tiny_model("llama")
    moved = [n for n, p in t.model.named_parameters() if not torch.equal(p, dict(original.named_parameters())[n])]
    assert moved
    replay(read_ledger(tmp_path / "saved" / "ledger.json"), original)
    for (n, p), q in zip(t.model.named_parameters(), original.parameters()):
        assert torch.equal(p, q), n
