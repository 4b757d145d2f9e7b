"""hyft train --config FILE.yaml [--section.key VALUE ...]
hyft train --resume OUTPUT_DIR [--train.steps N ...]
hyft train --resume OUTPUT_DIR/checkpoints/step-N   (an older checkpoint, e.g. when the latest is damaged)"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ADD_HELP = False  # -h lists every config key instead

# Keys a resumed run may change: they do not alter the trajectory (train.steps does when an lr schedule decays).
RESUMABLE = {
    "train.steps", "train.eval_every", "train.eval_batch_size", "train.eval_before", "train.log_every",
    "train.progress", "train.save_every", "train.save_every_minutes", "train.keep_checkpoints", "train.report_to",
    "train.max_bad_steps", "train.loss_bound", "train.output_dir", "train.overwrite", "model.device",
    "data.data_dir", "train.run_name", "train.tracker_project",
}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument(
        "--resume",
        metavar="OUTPUT_DIR",
        help="continue a run from its last complete checkpoint (or from OUTPUT_DIR/checkpoints/step-N)",
    )
    p.add_argument("-h", "--help", action="store_true", help="list every config key")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "dataset":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_config(run_dir: str, overrides: list[str]):
    """The run's own config (from its latest complete checkpoint, or the checkpoint directory given) with the
    overrides a resume allows. A damaged latest checkpoint is refused, naming the file and the command that resumes
    from the previous intact one."""
    from hyft.checkpoint import find_checkpoint, run_dir_of, verify
    from hyft.config import load_config, origin_of
    from hyft.errors import ConfigError

    ckpt = find_checkpoint(run_dir)
    verify(ckpt)
    saved = load_config(ckpt / "config.yaml")
    cfg = load_config(ckpt / "config.yaml", overrides)
    before, after = _flat(saved.to_dict()), _flat(cfg.to_dict())
    for key in sorted(k for k in after if after[k] != before.get(k) and k not in RESUMABLE):
        raise ConfigError(
            f"{origin_of(cfg, key)}: cannot change on --resume (the checkpoint was trained with {before.get(key)!r}); "
            f"a resume may change only {', '.join(sorted(RESUMABLE))}"
        )
    cfg.train.output_dir = str(run_dir_of(run_dir))  # RUN/checkpoints/step-N continues RUN
    return cfg, ckpt


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes (and locks) the output directory


def lock_output(directory: str | Path, held: list) -> None:
    """Refuse at once when another process writes into an existing output directory (hyft/lock.py); the Trainer
    takes the same lock again (it is re-entrant) when it creates a new directory."""
    from hyft import lock
    from hyft.checkpoint import restore_moved_aside

    if _rank0() and Path(directory).is_dir():
        lock.acquire(directory, "hyft train")
        held.append(directory)
        restore_moved_aside(directory)  # before a resume looks for the latest checkpoint


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from hyft.config import describe

    if args.help:
        print("usage: hyft train [--config FILE.yaml] [--section.key VALUE ...]")
        print("       hyft train --resume OUTPUT_DIR [--train.steps N ...]\n")
        print("\n".join(describe()))
        return 0
    from hyft import lock

    held: list[str | Path] = []  # the lock is the process's while it trains; given back for in-process callers
    try:
        return _train(args, rest, held)
    finally:
        for d in held:
            lock.release(d)


def _train(args: argparse.Namespace, rest: list[str], held: list) -> int:
    from hyft import dist as hdist
    from hyft.checkpoint import load_model_for, run_dir_of
    from hyft.config import load_config
    from hyft.errors import ConfigError
    from hyft.trainer import Trainer
    from hyft.validate import validate

    ckpt = None
    if args.resume:
        if args.config:
            raise ConfigError("--resume uses the run's own config (from its checkpoint); drop --config")
        lock_output(run_dir_of(args.resume), held)
        cfg, ckpt = resume_config(args.resume, rest)
    else:
        cfg = load_config(args.config, rest)
        lock_output(cfg.train.output_dir, held)
    data = validate(cfg, resume=ckpt is not None)
    dctx = hdist.setup(cfg)  # before loading: under DDP each rank loads onto its own device, under FSDP2 the host
    model, tokenizer = load_model_for(cfg, ckpt, dctx.model_config(cfg.model))
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer, data=data, reloadable=True)  # cfg.model is its source
    if ckpt is not None:
        trainer.resume(ckpt)
        if trainer.is_main:
            print(f"[hyft] resumed from {ckpt} (step {trainer.step})")
    info = trainer.fit()
    if trainer.is_main:
        print(f"[hyft] wrote {cfg.train.output_dir} (wall {info['wall_time_s']:.1f} s)")
    return 0
