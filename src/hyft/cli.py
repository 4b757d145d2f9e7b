"""`hyft <command>`: thin entry points over the library; user errors print one line and exit 2.

Each command lives in its own module with `add_arguments(parser)` and `run(args, rest) -> int`; COMMANDS maps the
command name to that module, so adding a command is one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hyft.errors import HyftError

COMMANDS = {
    "train": ("hyft.commands.train", "fine-tune a model"),
    "export": ("hyft.commands.export", "export a run as a merged HF model or as base model + peft adapter"),
    "replay": ("hyft.commands.replay", "rebuild the ZO-updated base model from the original and the seed ledger"),
    "eval": ("hyft.commands.eval", "evaluate a model, an exported model or a run directory (mean ± std over seeds)"),
    "compare": ("hyft.commands.compare", "run methods x tasks x seeds, resumable; CSV, Markdown table and plots"),
    "sweep": ("hyft.commands.sweep", "grid / random hyperparameter search, early stop on divergence, best config"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyft", description="Hybrid (zeroth-order base + first-order PEFT) fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=help_text, add_help=getattr(mod, "ADD_HELP", True), description=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    try:
        return int(args.run(args, rest) or 0)
    except HyftError as e:
        print(f"hyft: error: {e}", file=sys.stderr)
        return e.exit_code
