"""hyft train --config FILE.yaml [--section.key VALUE ...]"""

from __future__ import annotations

import argparse

ADD_HELP = False  # -h lists every config key instead


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("-h", "--help", action="store_true", help="list every config key")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from hyft.config import describe, load_config
    from hyft.trainer import Trainer

    if args.help:
        print("usage: hyft train [--config FILE.yaml] [--section.key VALUE ...]\n")
        print("\n".join(describe()))
        return 0
    cfg = load_config(args.config, rest)
    trainer = Trainer(cfg)
    info = trainer.fit()
    if trainer.is_main:
        print(f"[hyft] wrote {cfg.train.output_dir} (wall {info['wall_time_s']:.1f} s)")
    return 0
