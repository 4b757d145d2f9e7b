"""Subprocess body for kill/resume tests: train a tiny in-code model with the Trainer API.

    python tests/run_tiny.py OUT STEPS SAVE_EVERY [--resume] [--sleep S]

Builds the same tiny model and data every time (seeded), so an uninterrupted run and an interrupted + resumed one
must end with bit-identical weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

torch.set_num_threads(1)  # the same reduction order in every process

from hyft.errors import HyftError  # noqa: E402
from runs import make_trainer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("save_every", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after every step (widens kill windows)")
    a = p.parse_args()
    extra = ["--train.save_every", str(a.save_every), "--train.keep_checkpoints", "3", "--zo.queries", "2",
             "--fo.optimizer", "adamw", "--zo.momentum", "0.5", "--train.log_every", "3"]  # fmt: skip
    tr = make_trainer(a.out, "hybrid", a.steps, extra)
    if a.sleep:
        after = tr.after_step

        def slow(result):
            time.sleep(a.sleep)
            after(result)

        tr.after_step = slow
    if a.resume:
        tr.resume(a.out)
    try:
        tr.fit()
    except HyftError as e:
        print(f"hyft: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
