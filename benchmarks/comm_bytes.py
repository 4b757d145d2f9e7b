"""Bytes communicated per optimizer step: hybrid (ZO base + FO LoRA) vs DDP full fine-tuning, on a tiny Llama.

    python benchmarks/comm_bytes.py [--steps 3] [--nproc 2]     # launches itself with torchrun (gloo on CPU)
    torchrun --nproc_per_node 2 benchmarks/comm_bytes.py         # the same, launched by hand (NCCL on GPUs)

Counted per rank, as the payload handed to each collective (a ring all_reduce of S bytes sends and receives about
2 (N-1)/N x S bytes per rank):
  * DDP gradient buckets, through a DDP communication hook that counts each bucket and then runs the default
    all_reduce hook;
  * every call of torch.distributed.all_reduce / all_gather_* / reduce_scatter_* / broadcast made by Python code
    (hyft's one loss/projected-gradient all_reduce per step; FSDP2's all-gathers and reduce-scatters).
The counts exclude the one-off broadcast of rank 0's weights when DDP wraps the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as tdist

ROOT = Path(__file__).resolve().parents[1]
COLLECTIVES = (
    "all_reduce",
    "all_gather_into_tensor",
    "all_gather_single",
    "reduce_scatter_tensor",
    "reduce_scatter_single",
    "broadcast",
)


class Meter:
    def __init__(self):
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.depth = 0  # > 0 inside a counted collective: the collectives it calls are not counted again

    def add(self, kind: str, t: torch.Tensor) -> None:
        self.bytes[kind] += t.numel() * t.element_size()
        self.calls[kind] += 1

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()


def _full_tensor(name: str, args, kwargs):
    """The full-size tensor of a collective: all_reduce/broadcast's tensor, all_gather's output, reduce_scatter's
    input (a ring moves about (N-1)/N of it per rank, 2 (N-1)/N for all_reduce)."""
    if name.startswith("all_gather"):
        return kwargs.get("output_tensor", args[0] if args else None)
    if name.startswith("reduce_scatter"):
        return kwargs.get("input", args[1] if len(args) > 1 else None)
    return kwargs.get("tensor", args[0] if args else None)


@contextlib.contextmanager
def count_collectives(meter: Meter):
    """Wrap torch.distributed's Python collectives so every call adds its full tensor's bytes to meter (a collective
    implemented by another wrapped one is counted once)."""
    saved = {}
    for name in COLLECTIVES:
        fn = getattr(tdist, name, None)
        if fn is None:
            continue

        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            tensor = _full_tensor(_name, args, kwargs)
            if meter.depth == 0 and isinstance(tensor, torch.Tensor):
                meter.add(_name, tensor)
            meter.depth += 1
            try:
                return _fn(*args, **kwargs)
            finally:
                meter.depth -= 1

        saved[name] = fn
        setattr(tdist, name, wrapper)
    try:
        yield meter
    finally:
        for name, fn in saved.items():
            setattr(tdist, name, fn)


def count_ddp(ddp, meter: Meter) -> None:
    """Register a DDP communication hook that counts every gradient bucket, then all-reduces it as DDP would."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        meter.add("ddp_grad_buckets", bucket.buffer())
        meter.depth += 1
        try:
            return allreduce_hook(None, bucket)
        finally:
            meter.depth -= 1

    ddp.register_comm_hook(None, hook)


def tiny_trainer(method: str, strategy: str, out: Path, *, lora_targets=("q_proj", "v_proj"), queries: int = 1):
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import byte_tokenizer, tiny_model
    from hyft.config import load_config
    from hyft.trainer import Trainer

    args = [
        "--method", method, "--model.device", "cpu", "--data.data_dir", str(ROOT / "tests/fixtures/data"),
        "--data.n_train", "40", "--data.n_dev", "4", "--data.n_test", "4", "--train.batch_size", "8",
        "--train.output_dir", str(out), "--train.progress", "false", "--train.eval_before", "false",
        "--train.overwrite", "true", "--peft.r", "8", "--peft.target_modules", ",".join(lora_targets),
        "--zo.queries", str(queries), "--dist.strategy", strategy,
    ]  # fmt: skip
    return Trainer(load_config(None, args), model=tiny_model("llama"), tokenizer=byte_tokenizer())


def measure(method: str, strategy: str, steps: int, out: Path, **kw) -> dict:
    """Per-step bytes by collective for one method, measured over `steps` steps after one warm-up step."""
    tr = tiny_trainer(method, strategy, out, **kw)
    meter = Meter()
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(tr.train_model, DistributedDataParallel):
        count_ddp(tr.train_model, meter)
    tr.prepare_output()
    with count_collectives(meter):
        tr.train_step()  # warm-up: lazy initialisation (FSDP2) happens here
        meter.reset()
        for _ in range(steps):
            tr.train_step()
    per_step = {k: v / steps for k, v in meter.bytes.items()}
    return {
        "method": method,
        "strategy": strategy,
        "fo_params": tr.partition.count("fo"),
        "zo_params": tr.partition.count("zo"),
        "bytes_per_step": per_step,
        "calls_per_step": {k: v / steps for k, v in meter.calls.items()},
        "total_bytes_per_step": sum(per_step.values()),
    }


def worker(steps: int) -> None:
    out = Path(os.environ.get("HYFT_BENCH_OUT", "/tmp/hyft-comm-bytes"))
    rows = [
        measure("hybrid", "ddp", steps, out / "hybrid"),
        measure("lora", "ddp", steps, out / "lora"),
        measure("ft", "ddp", steps, out / "ft"),
        measure("mezo", "ddp", steps, out / "mezo"),
        measure("hybrid", "fsdp", steps, out / "hybrid-fsdp"),
    ]
    if tdist.get_rank() == 0:
        print(f"world size {tdist.get_world_size()}, tiny Llama, bytes per step and rank (payload):")
        print(f"{'method':8} {'strategy':8} {'FO params':>10} {'ZO params':>10} {'bytes/step':>12}  by collective")
        for r in rows:
            calls = r["calls_per_step"]
            detail = ", ".join(f"{k} {v:,.0f} ({calls[k]:g} calls)" for k, v in r["bytes_per_step"].items())
            print(
                f"{r['method']:8} {r['strategy']:8} {r['fo_params']:>10,} {r['zo_params']:>10,} "
                f"{r['total_bytes_per_step']:>12,.0f}  {detail}"
            )
        print(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args()
    if "WORLD_SIZE" in os.environ:
        worker(args.steps)
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    raise SystemExit(subprocess.call([*cmd, __file__, "--steps", str(args.steps)], env=env, cwd=ROOT))


if __name__ == "__main__":
    main()
