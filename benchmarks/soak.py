"""Soak: a long `hyft train` run in one process, sampling its resident memory, CUDA memory and open file handles.

    python benchmarks/soak.py --steps 1000 --every 25 --model.name DIR_OF_A_TINY_MODEL ...   # CI (tests/test_soak.py)
    nice -n 10 python benchmarks/soak.py --steps 300 --every 10 --method hybrid --data.max_length 64 ...   # SmolLM2

Every other argument is a `hyft train` override; the soak adds nothing to the run except a sample after every
`--every` steps (after the step's log line, evaluation and checkpoint: Trainer.after_step). A sample is taken after
gc.collect() (garbage that a collection frees is not a leak): RSS from /proc/self/statm, the number of entries in
/proc/self/fd, and on CUDA torch.cuda.memory_allocated / memory_reserved.

Printed: the sample at the end of warm-up (--warmup, default a fifth of the steps) and the last one, the growth
between them, and the least-squares slope per 1,000 steps over the samples after warm-up and over their last third
(an allocator's high-water mark rises in steps and then stays flat; a leak keeps its slope to the end).
`--max_rss_growth_mb` and `--max_fd_growth` turn the figures into an exit status (1 when exceeded), as the test uses
them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from hyft.callbacks import Callback  # noqa: E402
from hyft.trainer import Trainer  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def sample(step: int, device: torch.device) -> dict[str, float]:
    gc.collect()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    out = {"step": step, "rss_mb": rss / 2**20, "fds": len(os.listdir("/proc/self/fd")), "t": time.perf_counter()}
    if device.type == "cuda":
        out["cuda_allocated_mb"] = torch.cuda.memory_allocated(device) / 2**20
        out["cuda_reserved_mb"] = torch.cuda.memory_reserved(device) / 2**20
    return out


class Sampler(Callback):
    """Records a sample at the start and every `every` steps, and runs `hook(trainer)` after each step (the leak
    check)."""

    def __init__(self, every: int = 10, hook=None):
        self.every, self.hook = every, hook
        self.samples: list[dict[str, float]] = []

    def on_train_begin(self, tr) -> None:
        self.samples.append(sample(tr.step, tr.device))

    def on_step_end(self, tr, result) -> None:
        if self.hook is not None:
            self.hook(tr)
        if tr.step % self.every == 0:
            self.samples.append(sample(tr.step, tr.device))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def analyse(samples: list[dict[str, float]], warmup: int) -> dict[str, dict[str, float]]:
    """Per quantity: value at the end of warm-up, at the end, max after warm-up, growth, slope per 1,000 steps."""
    after = [s for s in samples if s["step"] >= warmup]
    if len(after) < 2:
        raise ValueError(f"need at least two samples after warm-up step {warmup} (got {len(after)})")
    out = {}
    tail = max(2, len(after) // 3)
    for key in ("rss_mb", "fds", "cuda_allocated_mb", "cuda_reserved_mb"):
        if key not in after[0]:
            continue
        ys = [s[key] for s in after]
        out[key] = {
            "start": samples[0][key],
            "warm": ys[0],
            "end": ys[-1],
            "max": max(ys),
            "growth": ys[-1] - ys[0],
            "max_growth": max(ys) - ys[0],
            "slope_per_1000_steps": 1000 * slope([s["step"] for s in after], ys),
            # an allocator's high-water mark rises in steps and then stays; a leak keeps its slope to the end
            "last_third_slope_per_1000_steps": 1000 * slope([s["step"] for s in after[-tail:]], ys[-tail:]),
        }
    return out


def report(samples, warmup: int, figures) -> str:
    steps = samples[-1]["step"] - samples[0]["step"]
    secs = samples[-1]["t"] - samples[0]["t"]
    lines = [f"soak: {steps} steps in {secs:.0f} s ({secs / max(steps, 1):.3f} s/step), {len(samples)} samples, "
             f"warm-up until step {warmup}"]  # fmt: skip
    head = ("quantity", "start", "warm", "end", "max", "growth", "/1000 steps", "last third")
    lines.append(f"{head[0]:<18} " + " ".join(f"{h:>10}" for h in head[1:-2]) + f" {head[-2]:>12} {head[-1]:>12}")
    for key, f in figures.items():
        lines.append(
            f"{key:<18} {f['start']:>10.1f} {f['warm']:>10.1f} {f['end']:>10.1f} {f['max']:>10.1f} "
            f"{f['growth']:>+10.1f} {f['slope_per_1000_steps']:>+12.2f} {f['last_third_slope_per_1000_steps']:>+12.2f}"
        )
    return "\n".join(lines)


def run(argv: list[str] | None = None, *, hook=None) -> tuple[int, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=10, help="sample every K steps")
    p.add_argument("--warmup", type=int, help="first step counted as warm (default steps // 5)")
    p.add_argument("--max_rss_growth_mb", type=float, help="exit 1 if RSS grows more than this after warm-up")
    p.add_argument("--max_fd_growth", type=int, help="exit 1 if open file handles grow more than this after warm-up")
    p.add_argument("--json", help="write samples and figures to this file")
    args, overrides = p.parse_known_args(argv)
    from hyft.config import load_config

    cfg = load_config(None, ["--train.steps", str(args.steps), "--train.progress", "false", *overrides])
    warmup = args.warmup if args.warmup is not None else args.steps // 5
    sampler = Sampler(args.every, hook)
    tr = Trainer(cfg, callbacks=[sampler])
    tr.fit()
    figures = analyse(sampler.samples, warmup)
    print(report(sampler.samples, warmup, figures), flush=True)
    ok = True
    rss, fds = figures["rss_mb"], figures["fds"]
    if args.max_rss_growth_mb is not None and rss["max_growth"] > args.max_rss_growth_mb:
        print(f"soak: RSS grew {rss['max_growth']:.1f} MB after warm-up (bound {args.max_rss_growth_mb} MB)")
        ok = False
    if args.max_fd_growth is not None and fds["max_growth"] > args.max_fd_growth:
        print(f"soak: open file handles grew by {fds['max_growth']:.0f} after warm-up (bound {args.max_fd_growth})")
        ok = False
    result = {"argv": argv if argv is not None else sys.argv[1:], "samples": sampler.samples, "figures": figures}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return (0 if ok else 1), result


if __name__ == "__main__":
    sys.exit(run()[0])
