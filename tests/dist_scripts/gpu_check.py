"""Device check, not part of the suite: `torchrun --standalone --nproc_per_node 1 tests/dist_scripts/gpu_check.py`.

On one GPU (NCCL, 1 rank) trains hybrid / MeZO with DDP and FSDP2 in bf16 through the Trainer, and prints per case:
whether 10 perturbed forwards left the (local shards of the) ZO weights bit-identical, the losses, the time per
step, the gathered full state dict and the peak memory. Runs on the CPU (gloo) too, for a dry run (--quick).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

import torch  # noqa: E402

from conftest import byte_tokenizer, save_tiny_model, tiny_model  # noqa: E402
from hyft.config import load_config  # noqa: E402
from hyft.dist import full_state_dict  # noqa: E402
from hyft.trainer import Trainer  # noqa: E402

CUDA = torch.cuda.is_available()


def medium_model(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).to(dtype)


def local(p):
    p = p.detach()
    return p.to_local() if hasattr(p, "to_local") else p


def sync():
    if CUDA:
        torch.cuda.synchronize()


def case(name: str, strategy: str, model, extra=(), steps: int = 6) -> None:
    args = [
        "--data.data_dir", str(ROOT / "tests/fixtures/data"), "--data.n_train", "40", "--data.n_dev", "4",
        "--data.n_test", "4", "--train.batch_size", "8", "--train.steps", str(steps), "--zo.lr", "1e-3",
        "--fo.lr", "1e-2", "--train.progress", "false", "--train.eval_before", "false", "--train.overwrite", "true",
        "--train.output_dir", f"/tmp/hyft-gpu-{name}", "--dist.strategy", strategy, *extra,
    ]  # fmt: skip
    if strategy != "fsdp" and CUDA:
        model = model.cuda()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    tr = Trainer(load_config(None, args), model=model, tokenizer=byte_tokenizer())
    snap = [local(t.param).clone() for t in tr.opt.zo_tensors]
    batch = tr.next_micro_batches()[0]
    tr.set_mode()
    with torch.no_grad():
        base = tr.loss_fn(batch).item()
        shifts = []
        for i in range(10):
            with tr.opt.perturb(0, 1.0 if i % 2 else -1.0):
                shifts.append(tr.loss_fn(batch).item() - base)
        after = tr.loss_fn(batch).item()
    exact = all(torch.equal(local(t.param), s) for t, s in zip(tr.opt.zo_tensors, snap))
    tr.train_step()  # warm-up
    sync()
    t0 = time.perf_counter()
    losses = [tr.train_step().loss.item() for _ in range(steps - 1)]
    sync()
    ms = (time.perf_counter() - t0) / (steps - 1) * 1e3
    sd = full_state_dict(tr.model)
    finite = all(torch.isfinite(v.float()).all().item() for v in sd.values())
    moved = sum(not torch.equal(local(t.param), s) for t, s in zip(tr.opt.zo_tensors, snap))
    peak = torch.cuda.max_memory_allocated() / 2**20 if CUDA else float("nan")
    print(
        f"[{name}] {type(tr.opt).__name__} on {tr.device} ({tr.dist.backend}): exact_restore={exact} "
        f"unperturbed_again={base == after} perturbed_shift={max(map(abs, shifts)):.3g} "
        f"zo_tensors_moved={moved}/{len(snap)} losses={[round(x, 4) for x in losses]} step={ms:.1f} ms "
        f"state_dict={len(sd)} keys finite={finite} peak={peak:.0f} MiB",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="tiny models only")
    p.add_argument("--save-tiny", help="save the tiny Llama and byte tokenizer to this directory and exit")
    a = p.parse_args()
    if a.save_tiny:
        save_tiny_model(a.save_tiny)
        return
    bf16 = torch.bfloat16
    case("ddp-tiny-hybrid", "ddp", tiny_model("llama", dtype=bf16))
    case("fsdp-tiny-hybrid-accum-master", "fsdp", tiny_model("llama", dtype=bf16),
         ["--train.grad_accum", "2", "--zo.fp32_master", "true", "--zo.queries", "2"])  # fmt: skip
    case("fsdp-tiny-mezo", "fsdp", tiny_model("llama", dtype=bf16), ["--method", "mezo"])
    if a.quick:
        return
    case("ddp-medium-hybrid", "ddp", medium_model(bf16))
    case("fsdp-medium-hybrid", "fsdp", medium_model(bf16))
    central = ["--zo.schedule", "central", "--fo.optimizer", "adamw"]
    case("fsdp-medium-hybrid-central", "fsdp", medium_model(bf16), central)


if __name__ == "__main__":
    main()
