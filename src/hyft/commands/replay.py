"""hyft replay LEDGER --base ORIGINAL --out DIR: rebuild the ZO-updated base model from the original weights."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ledger", metavar="LEDGER", help="ledger.json, a checkpoint directory, or a run directory")
    p.add_argument(
        "--base", metavar="NAME_OR_DIR", help="the original model the run started from (default: the ledger's)"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="where to write the rebuilt HF model directory")
    p.add_argument("--device", help="device to replay on, e.g. cuda:1 (default and required type: the run's)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code for --base")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    import time
    from dataclasses import replace
    from pathlib import Path

    import torch

    from hyft.checkpoint import load_model_for
    from hyft.config import Config
    from hyft.errors import ConfigError
    from hyft.export import save_model_dir, staged
    from hyft.replay import check_replayable, find_ledger, read_ledger, replay
    from hyft.validate import check_model_source

    if rest:
        raise ConfigError(f"replay: unexpected arguments {' '.join(rest)}")
    path = find_ledger(args.ledger)
    doc = read_ledger(path)
    check_replayable(doc, str(path))
    source = doc.get("model") or {}
    cfg = Config()
    base = args.base or source.get("name")
    if not base:
        raise ConfigError(f"{path}: the ledger names no original model; pass --base")
    run_device = doc.get("device", "cpu")
    device = args.device or run_device
    if torch.device(device).type != torch.device(run_device).type:
        raise ConfigError(
            f"--device: the run drew its ZO directions with the {run_device} random generator; {device} draws other "
            f"numbers from the same seeds, so replay must run on {run_device}"
        )
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: the run updated its weights on {run_device}, and CUDA is not available here")
    cfg.model = replace(
        cfg.model, name=base, dtype=source.get("dtype", "float32"), device=device,
        revision=source.get("revision") if not args.base else None, trust_remote_code=args.trust_remote_code,
    )  # fmt: skip
    check_model_source(cfg)
    with staged(Path(args.out), args.overwrite) as tmp:
        model, tok = load_model_for(cfg, None)
        t0 = time.perf_counter()
        counts = replay(doc, model, where=str(path))
        save_model_dir(model, tok, tmp)
    size = sum(f.stat().st_size for f in Path(args.out).glob("*.safetensors"))
    print(
        f"[hyft] replayed {counts['updates']} ZO updates on {counts['tensors']} base tensors of {base} "
        f"in {time.perf_counter() - t0:.1f} s -> {args.out}\n"
        f"  ledger {path.stat().st_size:,} bytes; the model it rebuilds {size:,} bytes of safetensors"
        + (
            f"\n  ({counts['skipped_adapter_tensors']} ZO-trained adapter tensors are in the checkpoint's adapter/)"
            if counts["skipped_adapter_tensors"]
            else ""
        )  # fmt: skip
    )
    return 0
