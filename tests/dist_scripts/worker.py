"""Run by tests/test_dist.py as `torchrun --nproc_per_node 2 tests/dist_scripts/worker.py OUT` (CPU, gloo).

Trains tiny models with DDP and FSDP2 through the real Trainer and leaves, for the test to compare with
single-process runs: OUT/<scenario>/metrics.jsonl (written by rank 0 only), OUT/<scenario>.pt (the gathered full
state dict) and OUT/results.json (per-rank parameter checksums, measured communication, errors seen by each rank).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src"), str(ROOT / "benchmarks")]

# Global batch 8: 2 ranks take 4 each. The same arguments with --dist.strategy none give the 1-process reference.
SCENARIOS = {
    "ddp_hybrid": ["--method", "hybrid", "--dist.strategy", "ddp", "--train.grad_accum", "2", "--zo.queries", "2",
                   "--train.steps", "4", "--fo.optimizer", "adamw"],
    "ddp_mezo": ["--method", "mezo", "--dist.strategy", "ddp", "--train.steps", "3", "--zo.schedule", "onesided"],
    "fsdp_hybrid": ["--method", "hybrid", "--dist.strategy", "fsdp",
                    "--train.keep_checkpoints", "0", "--train.grad_accum", "2", "--zo.queries", "2",
                    "--train.steps", "4", "--zo.momentum", "0.5"],
}  # fmt: skip


def args_for(name: str, out: Path, strategy: str | None = None) -> list[str]:
    args = [
        "--model.device", "cpu", "--data.data_dir", str(ROOT / "tests/fixtures/data"), "--data.n_train", "40",
        "--data.n_dev", "4",
        "--data.n_test", "4", "--train.batch_size", "8", "--train.log_every", "1", "--train.output_dir",
        str(out / name), "--train.progress", "false", "--train.eval_before", "false", "--zo.lr", "1e-3",
        "--fo.lr", "1e-2", *SCENARIOS[name],
    ]  # fmt: skip
    if strategy is not None:
        args += ["--dist.strategy", strategy]
    return args


def checksums(model) -> dict[str, str]:
    """sha256 of every parameter's local tensor on this rank (the whole tensor under DDP, the shard under FSDP2)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t
        out[name] = hashlib.sha256(t.cpu().contiguous().numpy().tobytes()).hexdigest()
    return out


def main(out: Path) -> None:
    import comm_bytes
    import torch
    import torch.distributed as tdist

    from conftest import byte_tokenizer, tiny_model
    from hyft.config import load_config
    from hyft.dist import full_state_dict
    from hyft.errors import ConfigError
    from hyft.trainer import Trainer

    results: dict = {}
    for name in SCENARIOS:
        tr = Trainer(load_config(None, args_for(name, out)), model=tiny_model("llama"), tokenizer=byte_tokenizer())
        info = tr.fit()
        sd = full_state_dict(tr.model)  # a collective under FSDP2: every rank calls it
        ranks = [None] * tdist.get_world_size()
        tdist.all_gather_object(ranks, checksums(tr.model))
        results[name] = {"checksums": ranks, "distributed": info["distributed"], "ddp": type(tr.train_model).__name__}
        if tr.is_main:
            torch.save(sd, out / f"{name}.pt")

    # Bytes per step: hybrid (LoRA r=8 on q, v) vs DDP full fine-tuning.
    results["comm"] = [comm_bytes.measure(m, "ddp", 2, out / f"comm-{m}") for m in ("hybrid", "ft")]

    # An error found by rank 0 (the output directory holds a run) is raised on every rank instead of hanging them.
    err_dir = out / "taken"
    if tdist.get_rank() == 0:
        err_dir.mkdir(parents=True, exist_ok=True)
        (err_dir / "run.json").write_text("{}")
    tdist.barrier()
    args = args_for("ddp_mezo", out) + ["--train.output_dir", str(err_dir)]
    tr = Trainer(load_config(None, args), model=tiny_model("llama"), tokenizer=byte_tokenizer())
    try:
        tr.prepare_output()
        message = None
    except ConfigError as e:
        message = str(e)
    errors = [None] * tdist.get_world_size()
    tdist.all_gather_object(errors, message)
    results["errors"] = errors

    if tdist.get_rank() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
