"""`hyft train | ...`: thin entry points over the library; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import sys

from hyft.errors import HyftError


def _train(args: argparse.Namespace, rest: list[str]) -> int:
    from hyft.config import load_config
    from hyft.trainer import Trainer

    cfg = load_config(args.config, rest)
    info = Trainer(cfg).fit()
    print(f"[hyft] wrote {cfg.train.output_dir} (wall {info['wall_time_s']:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyft", description="Hybrid (zeroth-order base + first-order PEFT) fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune a model", add_help=False)
    t.add_argument("--config", help="YAML config file")
    t.add_argument("-h", "--help", action="store_true", help="list every config key")
    t.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "help", False):
        from hyft.config import describe

        print("usage: hyft train [--config FILE.yaml] [--section.key VALUE ...]\n")
        print("\n".join(describe()))
        return 0
    try:
        return args.func(args, rest)
    except HyftError as e:
        print(f"hyft: error: {e}", file=sys.stderr)
        return e.exit_code
