"""hyft compare --config FILE.yaml --methods ft,lora,... --tasks sst2,rte --seeds 0,1,2 [--out DIR] [--section.key V]

Runs every (task, seed, method) cell, --jobs N at a time, each in a fresh subprocess (peak memory per cell), skipping
cells that finished earlier (their run.json exists) and continuing interrupted ones from their latest checkpoint
(train.save_every), then writes compare.csv, compare.md (mean ± std over seeds), compare.json and plots/<task>.png
into --out. Method names and variants: see hyft/compare.py or docs/results.md.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="base config for every cell (a hyft train config; optional compare: section)")
    p.add_argument("--methods", help="comma-separated method names or variants (NAME=BASE+key=value+...)")
    p.add_argument("--tasks", help="comma-separated tasks (default: the config's data.task)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the config's seed)")
    p.add_argument("--out", help="output folder (default compare.out, else runs/compare)")
    p.add_argument("--target", help="method whose final dev accuracy is the target (default lora), an accuracy, "
                                    "or none")  # fmt: skip
    p.add_argument("--eval_every", type=int, help="dev evaluation every K steps (default train.steps // 10)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="cells run at once, each in its own process (CPU: cores // N torch threads each; one GPU: "
                        "shared); results equal --jobs 1 at equal --threads")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per cell (default: untouched with --jobs 1, else cores // N); results are "
                        "identical across --jobs at equal threads per cell")  # fmt: skip
    p.add_argument(
        "--in_process",
        action="store_true",
        help="run cells in this process (faster start; peak memory is then process-wide, not per cell)",
    )
    p.add_argument("--dry_run", action="store_true", help="list the cells and which are finished, run nothing")
    p.add_argument("--report_only", action="store_true", help="rebuild CSV, table and plots from finished cells")
    p.add_argument("--progress", action="store_true",
                   help="read a study while it runs (no lock, nothing in the study's own files changes): each cell's "
                        "step and last dev accuracy; the finished cells' report and each hybrid against its FO twin "
                        "up to the last step both reached, in OUT/progress/ (compare.*, pairs.*, plots/)")  # fmt: skip


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from hyft.compare import load_spec, run_compare, write_reports

    spec = load_spec(
        args.config, methods=args.methods, tasks=args.tasks, seeds=args.seeds, out=args.out, target=args.target,
        eval_every=args.eval_every, overrides=rest,
    )  # fmt: skip
    cells = spec.cells()
    if args.dry_run:
        for c in cells:
            point = None if c.done else c.resume_point()
            state = "done   " if c.done else "pending" + (f" (continues from {point.name})" if point else "")
            if c.refusal():
                state = "refused (run with another config: see its cell.yaml)"
            print(f"{state} {c.key}  {c.dir}")
        print(f"[hyft] {sum(c.done for c in cells)}/{len(cells)} cells finished")
        return 0
    if args.progress:
        return progress(spec)
    from hyft import lock  # one writer per study folder (faults helper: hyft/lock.py)

    lock.acquire(spec.out, "hyft compare")  # held until this process ends; refused while another one holds it
    if args.report_only:
        paths = write_reports(spec)
    else:
        result = run_compare(spec, in_process=args.in_process, jobs=args.jobs, threads=args.threads)
        paths = result
        print(f"[hyft] ran {result['ran']} cell(s), skipped {result['skipped']} finished")
        if result["failures"]:
            for key, msg in result["failures"].items():
                print(f"[hyft] FAILED {key}: {msg}")
    print(f"[hyft] wrote {paths['csv']}, {paths['markdown']}, {len(paths['plots'])} plot(s) in {spec.out / 'plots'}")
    print((spec.out / "compare.md").read_text(encoding="utf-8"))
    return 1 if not args.report_only and paths.get("failures") else 0


def progress(spec) -> int:
    from hyft.compare import write_reports
    from hyft.report import text_table
    from hyft.study_files import read_curve

    cells = spec.cells()
    rows = []
    for c in cells:
        curve = read_curve(c.dir)
        losses = [r for r in curve if "loss" in r]
        steps = losses[-1]["step"] if losses else 0
        dev = [r for r in curve if r.get("split") == "dev"]
        state = "done" if c.done else "running" if curve else "pending"
        recent = losses[-21:]  # training seconds per step over the last 20 steps (evaluations excluded)
        rate = ((recent[-1]["train_s"] - recent[0]["train_s"]) / (len(recent) - 1)) if len(recent) > 1 else None
        total = int(c.config.get("train", {}).get("steps", 0))
        eta = f"{(total - steps) * rate / 3600:.1f} h" if rate and not c.done and total > steps else "—"
        rows.append([c.key, state, steps, dev[-1]["step"] if dev else "—", dev[-1]["value"] if dev else None,
                     f"{rate:.1f}" if rate else "—", eta])  # fmt: skip
    print(text_table(["cell", "state", "step", "last dev step", "dev", "s/step (last 20)", "left (training)"], rows))
    # the finished cells' full report and every pair so far, beside the study's own reports, which stay untouched
    dest = spec.out / "progress"
    out = write_reports(spec, dest=dest, unfinished="running")
    if any(c.done for c in cells):
        print()
        print(out["markdown"].read_text(encoding="utf-8"))
    if out["pairs"]:
        print()
        print((dest / "pairs.md").read_text(encoding="utf-8"))
    print(f"[hyft] wrote {out['csv']}, {out['markdown']}{', pairs.csv, pairs.md' if out['pairs'] else ''} and "
          f"{len(out['plots'])} plot(s) in {dest}")  # fmt: skip
    return 0
