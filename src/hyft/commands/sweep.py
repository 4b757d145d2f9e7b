"""hyft sweep --config FILE.yaml --method hybrid --grid zo.lr=1e-6,1e-5 fo.lr=1e-4,1e-3 [--random N] [...]

Short runs over the grid (every point, or N seeded random points), each stopped at the first step whose loss is
NaN/inf or above the bound; the finished run with the best final dev accuracy wins and its config is written to
<out>/best.yaml (with the base config's own train.steps, ready for `hyft train --config`). Run again, the same sweep
reuses the trials that finished. --heatmap X,Y draws <out>/heatmap.png and heatmap.csv: final dev accuracy over two
grid keys (e.g. zo.lr,fo.lr), diverged cells marked; with --report_only it is redrawn from <out>/sweep.csv.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="base config (a hyft train config)")
    p.add_argument("--method", help="method or preset for every trial (default: the config's)")
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                   help="config keys and their values, e.g. zo.lr=1e-6,1e-5 fo.lr=1e-4,1e-3")  # fmt: skip
    p.add_argument("--random", type=int, default=None, metavar="N", help="run N random grid points instead of all")
    p.add_argument("--sample_seed", type=int, default=0, help="seed of the --random draw")
    p.add_argument("--steps", type=int, default=None, help="steps per trial (default: the config's train.steps)")
    p.add_argument("--max_loss", type=float, default=None, help="divergence bound on the training loss")
    p.add_argument(
        "--diverge_factor",
        type=float,
        default=4.0,
        help="without --max_loss: the bound is this factor times the first step's loss (default 4)",
    )
    p.add_argument("--out", default="runs/sweep", help="output folder (trials/, sweep.csv, sweep.json, best.yaml)")
    p.add_argument("--heatmap", metavar="X,Y", help="draw heatmap.png/.csv of final dev accuracy over two grid keys, "
                                                    "e.g. zo.lr,fo.lr (every other grid key fixed)")  # fmt: skip
    p.add_argument("--report_only", action="store_true", help="train nothing: redraw --heatmap from <out>/sweep.csv")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from pathlib import Path

    from hyft.errors import ConfigError
    from hyft.report import text_table
    from hyft.sweep import base_dict, check_heatmap_keys, draw_heatmap, parse_grid, read_trials, run_sweep

    if args.report_only:
        if not args.heatmap:
            raise ConfigError("--report_only: give --heatmap X,Y (what to draw from the finished sweep)")
        rows, keys = read_trials(Path(args.out))
        x, y = check_heatmap_keys(args.heatmap, {k: sorted({r[k] for r in rows}) for k in keys})
        draw_heatmap(rows, x, y, Path(args.out))
        print(f"[hyft] wrote {Path(args.out) / 'heatmap.png'} and heatmap.csv ({len(rows)} trials)")
        return 0
    if not args.grid:
        raise ConfigError("--grid: nothing to sweep (give KEY=V1,V2 ...)")
    grid = parse_grid(args.grid)
    heatmap = check_heatmap_keys(args.heatmap, grid) if args.heatmap else None
    res = run_sweep(
        base_dict(args.config, rest), grid, method=args.method, out=args.out, steps=args.steps,
        random_n=args.random, sample_seed=args.sample_seed, max_loss=args.max_loss,
        diverge_factor=args.diverge_factor, heatmap=heatmap,
    )  # fmt: skip
    headers = ["trial", *grid, "status", "steps", "final_dev", "final_loss", "seconds"]
    shown = lambda h, v: f"{v:g}" if h in grid and isinstance(v, float) else v  # 1e-06, not 0.0000
    print(text_table(headers, [[shown(h, t.row()[h]) for h in headers] for t in res["trials"]]))
    best = res["best"]
    print(f"[hyft] best: trial {best.index} {best.params} dev {best.final_dev:.4f}; wrote {res['out'] / 'best.yaml'}")
    if heatmap:
        print(f"[hyft] wrote {res['out'] / 'heatmap.png'} and heatmap.csv ({heatmap[0]} x {heatmap[1]})")
    return 0
