"""Helpers for tests that train tiny runs, write checkpoints and compare weights (imported by test modules)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import byte_tokenizer, tiny_model

DATA = "tests/fixtures/data"


def base_args(out: Path | str, method: str = "hybrid", steps: int = 6, extra=()) -> list[str]:
    return [
        "--method", method, "--data.data_dir", DATA, "--data.n_train", "40", "--data.n_dev", "8",
        "--data.n_test", "8", "--train.steps", str(steps), "--train.batch_size", "4", "--train.log_every", "2",
        "--train.output_dir", str(out), "--train.progress", "false", "--train.eval_before", "false",
        "--zo.lr", "1e-3", "--fo.lr", "1e-2", *extra,
    ]  # fmt: skip


def make_trainer(out, method="hybrid", steps=6, extra=(), kind="llama", dtype=torch.float32):
    from hyft.config import load_config
    from hyft.trainer import Trainer

    cfg = load_config(None, base_args(out, method, steps, extra))
    return Trainer(cfg, model=tiny_model(kind, dtype), tokenizer=byte_tokenizer())


def save_tiny(path: Path, kind="llama", dtype=torch.float32) -> Path:
    """A tiny random model + byte tokenizer as a plain HF directory (what --model.name / --base can point at)."""
    if not (path / "config.json").exists():
        model = tiny_model(kind, dtype)
        model.save_pretrained(str(path))
        tok = byte_tokenizer()
        tok.save_pretrained(str(path))
    return path


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s", None)
    return rows


def checkpoint_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds: base/ under 'base.' and the adapter under 'adapter.'."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted((ckpt / "base").glob("*.safetensors")):
        out.update({f"base.{k}": v for k, v in load_file(f).items()})
    adapter = ckpt / "adapter" / "adapter_model.safetensors"
    if adapter.exists():
        out.update({f"adapter.{k}": v for k, v in load_file(adapter).items()})
    return out


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k


def interrupted_copy(ref: Path, run: Path) -> Path:
    """A finished run "interrupted" after its first checkpoint: a copy of `ref` at `run` that keeps only that
    checkpoint and no run.json, ready to be resumed and compared with `ref`."""
    import shutil

    from hyft.checkpoint import list_checkpoints

    shutil.copytree(ref, run)
    for c in list_checkpoints(run)[1:]:
        shutil.rmtree(c)
    (Path(run) / "run.json").unlink()
    return Path(run)


def final_checkpoint(run_dir: Path) -> Path:
    from hyft.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    assert found, f"no checkpoint in {run_dir}"
    return found[-1]
