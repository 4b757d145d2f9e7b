"""Device check (run by hand on a CUDA machine; not part of the CPU test suite):

    PYTHONPATH=src python tests/gpu_check.py [--device cuda] [--out DIR]

1. resume on CUDA is bit-exact (bf16 stochastic rounding, ZO momentum, shared dropout -> CUDA RNG state);
2. `hyft replay` of a CUDA ledger on CUDA rebuilds the checkpoint's base bit-exactly, and is refused on CPU;
3. a real CUDA out-of-memory in the ZO forward becomes a one-line HyftError naming the phase;
4. HybridTrainer on CUDA: grad accumulation 2x2 vs 1x4, and resume_from_checkpoint equal to uninterrupted.
Prints one JSON line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

RESULTS: list[dict] = []


def check(name):
    def wrap(fn):
        def run(*a):
            t0 = time.time()
            try:
                info = fn(*a) or {}
                RESULTS.append({"check": name, "ok": True, "s": round(time.time() - t0, 1), **info})
            except Exception as e:  # report and continue with the other checks
                RESULTS.append({"check": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:600],
                                "trace": traceback.format_exc()[-1500:]})  # fmt: skip
            print(json.dumps(RESULTS[-1]), flush=True)

        return run

    return wrap


def trainer(out, device, method="hybrid", steps=6, extra=(), kind="llama", dtype=torch.bfloat16):
    from conftest import byte_tokenizer, tiny_model
    from hyft.config import load_config
    from hyft.trainer import Trainer
    from runs import base_args

    name = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    cfg = load_config(None, base_args(out, method, steps, ["--model.dtype", name, "--model.device", device, *extra]))
    return Trainer(cfg, model=tiny_model(kind, dtype).to(device), tokenizer=byte_tokenizer())


@check("resume bit-exact on cuda (bf16, momentum, shared dropout)")
def resume_exact(tmp: Path, device: str):
    from hyft import checkpoint as ck
    from runs import assert_bit_identical, checkpoint_tensors, final_checkpoint, metrics

    extra = [
        "--zo.momentum",
        "0.9",
        "--zo.queries",
        "2",
        "--train.dropout",
        "shared",
        "--zo.mu",
        "1e-2",
        "--zo.lr",
        "1e-2",
        "--train.save_every",
        "3",
        "--train.keep_checkpoints",
        "5",
        "--fo.optimizer",
        "adamw",
    ]
    ref = trainer(tmp / "ref", device, steps=7, extra=extra, kind="opt")
    ref.fit()
    run = tmp / "run"
    shutil.copytree(tmp / "ref", run)
    for c in ck.list_checkpoints(run)[1:]:
        shutil.rmtree(c)
    (run / "run.json").unlink()
    tr = trainer(run, device, steps=7, extra=extra, kind="opt")
    tr.resume(run)
    tr.fit()
    assert_bit_identical(checkpoint_tensors(final_checkpoint(tmp / "ref")), checkpoint_tensors(final_checkpoint(run)))
    assert metrics(run) == metrics(tmp / "ref")
    return {"ledger_device": json.loads((final_checkpoint(run) / "ledger.json").read_text())["device"]}


@check("replay of a cuda ledger on cuda is bit-exact; on cpu refused")
def replay_exact(tmp: Path, device: str):
    from safetensors.torch import load_file

    from hyft.cli import main
    from runs import assert_bit_identical, checkpoint_tensors, final_checkpoint, save_tiny

    original = save_tiny(tmp / "orig", "llama", torch.bfloat16)
    tr = trainer(tmp / "run", device, steps=6, extra=["--zo.lr", "1e-2", "--zo.momentum", "0.5"])
    tr.fit()
    assert main(["replay", str(tmp / "run"), "--base", str(original), "--out", str(tmp / "re")]) == 0
    rebuilt = {}
    for f in (tmp / "re").glob("*.safetensors"):
        rebuilt.update(load_file(f))
    saved = {k[5:]: v for k, v in checkpoint_tensors(final_checkpoint(tmp / "run")).items() if k.startswith("base.")}
    assert_bit_identical(saved, {k: rebuilt[k] for k in saved})
    refused = main(["replay", str(tmp / "run"), "--base", str(original), "--out", str(tmp / "cpu"), "--device", "cpu"])
    # what a CPU replay would give (why it is refused): apply the ledger with CPU-drawn directions
    from hyft.config import load_config
    from hyft.models import load_model
    from hyft.replay import read_ledger, replay

    model, _ = load_model(load_config(None, ["--model.name", str(original), "--model.dtype", "bfloat16",
                                             "--model.device", "cpu"]).model)  # fmt: skip
    replay(read_ledger(final_checkpoint(tmp / "run") / "ledger.json"), model)
    cpu = dict(model.named_parameters())
    n = next(iter(saved))
    moved = (saved[n].float() - load_file(next((original).glob("*.safetensors")))[n].float()).abs().mean().item()
    off = (cpu[n].detach().float() - saved[n].float()).abs().mean().item()
    return {"cpu_refused_exit": refused, "tensor": n, "mean_abs_update": moved, "cpu_replay_mean_abs_error": off}


@check("cuda out of memory in the ZO forward -> one-line HyftError")
def oom(tmp: Path, device: str):
    import hyft.scoring
    from hyft.guard import ResourceError

    real = hyft.scoring.loss

    def loss(*a, **k):
        out = real(*a, **k)
        if not torch.is_grad_enabled():
            torch.empty(400 * 2**30, dtype=torch.uint8, device=device)  # 400 GiB: a real allocator failure
        return out

    hyft.scoring.loss = loss
    try:
        tr = trainer(tmp / "oom", device, steps=2)
        tr.prepare_output()
        tr.train_step()
        raise AssertionError("no out-of-memory error")
    except ResourceError as e:
        msg = str(e)
        assert "out of memory in the ZO forward of step 1" in msg and "\n" not in msg, msg
        return {"message": msg}
    finally:
        hyft.scoring.loss = real


@check("HybridTrainer on cuda: grad accumulation and resume")
def hf(tmp: Path, device: str):
    import test_hf_trainer as t
    from hyft.hf_trainer import HybridTrainer, HybridTrainingArguments

    def make(out, bs, ga, **kw):
        kw = {"save_strategy": "no", **kw}
        args = HybridTrainingArguments(
            output_dir=str(out), per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=4,
            learning_rate=5e-2, optim="sgd", zo_lr=2e-2, zo_mu=1e-2, logging_steps=1, report_to=[], seed=0,
            disable_tqdm=True, **kw,
        )  # fmt: skip
        return HybridTrainer(model=t.lora_model(), args=args, train_dataset=t.Rows(), data_collator=t.collate)

    a, b = make(tmp / "a", 2, 2), make(tmp / "b", 4, 1)
    a.train()
    b.train()
    diff = max((p - q).abs().max().item() for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert diff < 5e-5, diff
    ref = make(tmp / "ref", 2, 2, save_strategy="steps", save_steps=2)
    ref.train()
    shutil.copytree(tmp / "ref" / "checkpoint-2", tmp / "res" / "checkpoint-2")
    res = make(tmp / "res", 2, 2, save_strategy="steps", save_steps=2)
    res.train(resume_from_checkpoint=True)
    exact = all(torch.equal(p, q) for p, q in zip(ref.model.parameters(), res.model.parameters()))
    worst = max((p - q).abs().max().item() for p, q in zip(ref.model.parameters(), res.model.parameters()))
    assert worst < 1e-5, worst
    return {"ga_max_abs_diff": diff, "resume_bit_identical": exact, "resume_max_abs_diff": worst,
            "device": str(next(a.model.parameters()).device)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="also write the results here as JSON")
    a = p.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(), "gpu": gpu}), flush=True)
    with tempfile.TemporaryDirectory() as d:
        checks = (resume_exact, replay_exact, oom, hf) if a.device != "cpu" else (resume_exact, replay_exact, hf)
        for i, fn in enumerate(checks):
            (Path(d) / str(i)).mkdir()
            fn(Path(d) / str(i), a.device)
    if a.out:
        Path(a.out).write_text(json.dumps(RESULTS, indent=1))
    return 0 if all(r["ok"] for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
