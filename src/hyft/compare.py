"""Method comparison: every (task, seed, method) cell trained from one base config, resumable, summarised.

A cell is a complete `hyft train` config (`cell.yaml`, reusable as is with `hyft train --config`) run in a fresh
subprocess, so peak memory (CUDA max allocated, or peak RSS on CPU) is per cell. A cell whose run.json exists is
finished and is not rerun. Per cell the runner also writes `curve.jsonl`: the loss of every step and every
evaluation, each with the pure training seconds so far (evaluation time excluded), which the targets and plots use.

`jobs` cells run at once, each still its own process (on CPU with cores // jobs torch threads each; on one GPU they
share the device). A cell that was interrupted after writing a checkpoint (train.save_every) continues from its
latest complete checkpoint when the comparison runs again, through the same resume as `hyft train --resume`, so it
ends bit-identical to an uninterrupted cell. Study-level files are written atomically (temporary file, then
os.replace): a study killed at any moment and run again ends with the same results.

Method names: see hyft/variants.py and docs/results.md. The base config is read and checked by config.load_base,
each cell's config built with config.expand / merge and checked by config.from_dict (as sweep.py does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from hyft import checkpoint as ckpt
from hyft import pairs
from hyft.callbacks import Callback
from hyft.config import Config, from_dict, load_base, load_config, merge
from hyft.errors import ConfigError
from hyft.evaluate import headline
from hyft.methods import resolve
from hyft.study_files import csv_text, read_curve, remove_temporaries, write_atomic
from hyft.trainer import Trainer
from hyft.variants import Variant, parse_variant

COMPARE_KEYS = {"methods", "tasks", "seeds", "variants", "target", "eval_every", "out", "eval_start"}
# From run.json's probe summary and ZO ablation (docs/probes.md); empty for cells run without probes.
PROBE_FIELDS = [
    "probe_zo_share", "probe_cum_df_zo", "probe_cum_df_fo", "probe_drift", "probe_median_ratio_onesided",
    "probe_median_abs_cos_update", "probe_median_zo_lr_over_scale", "ablation_dev_zo_points", "ablation_test_zo_points",
]  # fmt: skip
CSV_FIELDS = [
    "task", "method", "seed", "status", "steps", "final_test", "final_dev", "best_dev", "best_dev_step", "target",
    "steps_to_target", "seconds_to_target", "wall_time_s", "train_time_s", "time_per_step_s", "peak_memory_mb",
    "memory_kind", "forwards_per_step", "backwards_per_step", "trainable_params", "zo_params", "n_dev", "n_test",
    "metric", *PROBE_FIELDS,
]  # fmt: skip


# -- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    task: str
    method: str
    seed: int
    dir: Path
    config: dict[str, Any]

    @property
    def done(self) -> bool:
        """run.json exists and is whole (the trainer writes it last; a kill mid-write leaves the cell unfinished)."""
        try:
            return "final" in json.loads((self.dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return False

    def config_changed(self) -> bool:
        """The cell was run (cell.yaml) with another config than the one asked for now."""
        if not (self.dir / "cell.yaml").is_file():
            return False
        return yaml.safe_load((self.dir / "cell.yaml").read_text(encoding="utf-8")) != _roundtrip(self.config)

    def refusal(self) -> str | None:
        """Why this cell may not run under the config asked for now, else None: it finished, or holds checkpoints,
        under another one (starting it over would delete hours of training: that must be deliberate)."""
        if not self.config_changed():
            return None
        if self.done:
            return (
                f"{self.dir}: finished with a different config than this comparison asks for; delete it or use "
                "another --out"
            )
        saved = ckpt.list_checkpoints(self.dir)
        if saved:
            return (f"{self.dir}: unfinished, with checkpoints up to {saved[-1].name} written under a different config "
                    f"than this comparison asks for (its cell.yaml); run it with that config to continue it, or delete "
                    "the cell folder to start it over, or use another --out")  # fmt: skip
        return None

    def resume_point(self) -> Path | None:
        """The latest complete checkpoint this unfinished cell can continue from: it verifies (sizes in its marker)
        and was written under exactly this cell's config; None means the cell starts from step 0."""
        try:
            if not (self.dir / "cell.yaml").is_file() or self.config_changed():
                return None
            want = from_dict(self.config).to_dict()
        except (OSError, yaml.YAMLError, ConfigError):
            return None
        for c in reversed(ckpt.list_checkpoints(self.dir)):
            try:
                ckpt.verify(c)
                if load_config(c / "config.yaml").to_dict() == want:
                    return c
            except (ckpt.CheckpointError, ConfigError, OSError):
                continue  # a torn or foreign checkpoint: try the one before
        return None

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"


def _roundtrip(data: dict[str, Any]) -> Any:
    """A config mapping as cell.yaml stores it (what reading cell.yaml back gives)."""
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


@dataclass
class CompareSpec:
    base: dict[str, Any]
    methods: list[Variant]
    tasks: list[str]
    seeds: list[int]
    out: Path
    target: str | float | None = "lora"
    eval_every: int = 0
    eval_start: bool = True

    def cells(self) -> list[Cell]:
        """Cells in run order: task, then seed, then the target method first (its accuracy is the others' target)."""
        order = sorted(self.methods, key=lambda v: v.name != self.target)
        steps = int(self.base.get("train", {}).get("steps", Config().train.steps))
        every = self.eval_every or max(1, steps // 10)
        log_every = math.gcd(int(self.base.get("train", {}).get("log_every", Config().train.log_every)), every)
        out = []
        for task in self.tasks:
            for seed in self.seeds:
                for v in order:
                    d = self.out / "cells" / task / v.name / f"seed{seed}"
                    fixed = {
                        "seed": seed,
                        "data": {"task": task},
                        "train": {"output_dir": str(d), "overwrite": True, "progress": False, "eval_every": every,
                                  "log_every": log_every, "eval_before": False},
                    }  # fmt: skip
                    out.append(Cell(task, v.name, seed, d, merge(merge(self.base, v.overrides), fixed)))
        return out


def _split_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    items = [str(x).strip() for x in items if str(x).strip()]
    if not items:
        raise ConfigError(f"{what}: empty list")
    return items


def load_spec(
    config: str | Path | None,
    *,
    methods: str | None = None,
    tasks: str | None = None,
    seeds: str | None = None,
    out: str | None = None,
    target: str | None = None,
    eval_every: int | None = None,
    overrides: list[str] | None = None,
) -> CompareSpec:
    """The comparison from a config file (a normal hyft config; an optional `compare:` section holds methods, tasks,
    seeds, variants, target, eval_every, out, eval_start) and command-line values, which win."""
    base, comp = load_base(config, overrides)  # validated; errors name FILE:LINE and the key
    unknown = sorted(set(comp) - COMPARE_KEYS)
    if unknown:
        raise ConfigError(f"compare: unknown key(s) {unknown}; allowed: {sorted(COMPARE_KEYS)}")
    variants = comp.get("variants") or {}
    if not isinstance(variants, dict):
        raise ConfigError("compare.variants: expected a mapping from name to config overrides")
    names = _split_list(methods if methods is not None else comp.get("methods"), "methods")
    if not names:
        raise ConfigError("methods: none given (--methods or compare.methods)")
    task_names = _split_list(tasks if tasks is not None else comp.get("tasks"), "tasks") or [
        str(base.get("data", {}).get("task", Config().data.task))
    ]
    seed_text = _split_list(seeds if seeds is not None else comp.get("seeds"), "seeds") or [str(base.get("seed", 0))]
    try:
        seed_list = [int(s) for s in seed_text]
    except ValueError:
        raise ConfigError(f"seeds: expected integers, got {seed_text}") from None
    tgt: str | float | None = target if target is not None else comp.get("target", "lora")
    if isinstance(tgt, str):
        tgt = None if tgt.lower() in ("none", "") else (float(tgt) if _is_number(tgt) else tgt)
    elif isinstance(tgt, (int, float)) and not isinstance(tgt, bool):
        tgt = float(tgt)
    elif tgt is not None:
        raise ConfigError(f"target: expected a method name, an accuracy or none, got {tgt!r}")
    spec = CompareSpec(
        base=base,
        methods=[parse_variant(n, variants) for n in names],
        tasks=task_names,
        seeds=seed_list,
        out=Path(out or comp.get("out") or "runs/compare"),
        target=tgt,
        eval_every=int(eval_every if eval_every is not None else comp.get("eval_every", 0) or 0),
        eval_start=bool(comp.get("eval_start", True)),
    )
    names = [v.name for v in spec.methods]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"methods: {sorted(dup)} given twice")
    if isinstance(spec.target, str) and spec.target not in names:
        raise ConfigError(
            f"target: {spec.target!r} is not among the methods {names}; add it (it runs first in each task and seed), "
            "or pass --target METHOD, --target ACCURACY or --target none"
        )
    for cell in spec.cells():  # fail before any training if a cell's config is invalid
        cfg = from_dict(cell.config, f"{cell.key}: ")
        resolve(cfg)
    return spec


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# -- one cell ------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CurveRecorder(Callback):
    """curve.jsonl of a cell: every step's loss and every evaluation, each with the training seconds so far (steps
    only: evaluation time excluded, CUDA synchronised around each step)."""

    def __init__(self, dev_at_start: bool = True):
        self.train_seconds = 0.0
        self.dev_at_start = dev_at_start
        self._t = 0.0

    def _curve(self, tr: Trainer, record: dict[str, Any]) -> None:
        with open(tr.out / "curve.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_prepare_output(self, tr: Trainer) -> None:
        if tr.resumed_from is not None:
            self._truncate_curve(tr)
        else:
            (tr.out / "curve.jsonl").write_text("")

    def on_train_begin(self, tr: Trainer) -> None:
        if tr.resumed_from is None and self.dev_at_start and tr.encoded["dev"]:
            tr.evaluate("dev")  # step 0 on dev only (eval_before would also score the whole test split)

    def _truncate_curve(self, tr: Trainer) -> None:
        """Keep the curve up to the checkpoint, as the trainer does with metrics.jsonl: every loss up to its step,
        every evaluation before it, and the periodic one at it (run before the checkpoint was written); the final
        evaluations, a torn last line and whatever came after are dropped and written again by this run."""
        keep = []
        path = tr.out / "curve.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            try:
                r = json.loads(line)
                step = int(r["step"])
            except (ValueError, KeyError, TypeError):
                break  # cut by the kill: nothing after it was written
            periodic = "split" not in r or step < tr.cfg.train.steps
            if step < tr.step or (step == tr.step and periodic):
                keep.append(r)
        self.train_seconds = max((float(r["train_s"]) for r in keep), default=0.0)
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    def on_step_begin(self, tr: Trainer) -> None:
        _sync(tr.device)
        self._t = time.perf_counter()

    def on_update(self, tr: Trainer, result) -> None:
        loss = float(result.loss)
        _sync(tr.device)
        self.train_seconds += time.perf_counter() - self._t
        self._curve(tr, {"step": tr.step, "loss": loss, "applied": result.applied, "train_s": self.train_seconds})

    def on_evaluate(self, tr: Trainer, report: dict[str, Any]) -> None:
        name, value = headline(report)
        record = {"step": tr.step, "split": report["split"], "metric": name, "value": value, "n": report["n"],
                  "train_s": self.train_seconds}  # fmt: skip
        if "correct" in report:  # per example, for the paired tests of hyft.pairs
            record["correct"] = report["correct"]
        self._curve(tr, record)


def run_cell_in_process(
    cfg: Config,
    model_factory: Callable[[Config], tuple[Any, Any]] | None,
    dev_at_start: bool,
    resume_from: Path | None = None,
):
    """Train one cell here; with `resume_from` (a complete checkpoint of it) continue from there as
    `hyft train --resume` does: base model from the checkpoint, then the trainer state on top."""
    model = tok = None
    if model_factory is not None:
        model, tok = model_factory(cfg)  # the checkpoint's tensors are loaded over it by resume()
    elif resume_from is not None:
        model, tok = ckpt.load_model_for(cfg, resume_from)
    if torch.cuda.is_available():  # in-process cells: free the previous cell's tensors, then count this one's peak
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # a model from the checkpoint (not from a factory) still has cfg.model as its original: the ZO ablation reloads it
    reloadable = model_factory is None
    tr = Trainer(cfg, model=model, tokenizer=tok, reloadable=reloadable, callbacks=[CurveRecorder(dev_at_start)])
    if resume_from is not None:
        tr.resume(resume_from)
    return tr.fit()


def _subprocess_env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # the directory holding this hyft package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is not None:  # OpenMP and MKL size their pools at start-up: the child sets torch's count too
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def cpu_cores() -> int:
    """Cores this process may use (its CPU affinity, which containers and taskset narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_cell(jobs: int, threads: int | None = None) -> int | None:
    """Torch threads for each of `jobs` concurrent cells: `threads` when given, else cores // jobs, and None (the
    default, untouched) for one at a time. CPU kernels may round differently at another thread count, so studies
    are identical across --jobs at equal threads per cell (pin it with --threads)."""
    if threads is not None:
        return threads
    return None if jobs <= 1 else max(1, cpu_cores() // jobs)


def prepare_cell(cell: Cell, *, in_process: bool, threads: int | None = None) -> Path | None:
    """Write cell.yaml and runner.json; return the checkpoint to resume from (None: start at step 0)."""
    resume_from = cell.resume_point()  # before cell.yaml is rewritten: it compares against the one on disk
    cell.dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(cell.dir)
    write_atomic(cell.dir / "cell.yaml", yaml.safe_dump(cell.config, sort_keys=False))
    runner = {"in_process": in_process, "threads": threads,
              "resumed_from": str(resume_from) if resume_from else None}  # fmt: skip
    write_atomic(cell.dir / "runner.json", json.dumps(runner))
    return resume_from


def cell_command(cell: Cell, *, dev_at_start: bool, resume_from: Path | None, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "hyft.compare", "--cell", str(cell.dir / "cell.yaml"), "--parent_pid",
           str(os.getpid())]  # fmt: skip
    if not dev_at_start:
        cmd.append("--no_dev_at_start")
    if resume_from is not None:
        cmd += ["--resume_from", str(resume_from)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd


def _failure(cell: Cell, rc: int) -> str:
    tail = (cell.dir / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    return f"exit {rc}: {tail[0] if tail else ''} (see {cell.dir / 'log.txt'})"


def run_cell(cell: Cell, *, dev_at_start: bool, model_factory=None, in_process: bool = False) -> tuple[bool, str]:
    """Train one cell (or continue it from its latest checkpoint); (ok, message). cell.yaml is written first."""
    in_process = in_process or model_factory is not None
    resume_from = prepare_cell(cell, in_process=in_process)
    if in_process:
        cfg = load_config(cell.dir / "cell.yaml")
        try:
            run_cell_in_process(cfg, model_factory, dev_at_start, resume_from)
        except Exception as e:  # one failed cell must not stop the study
            return False, f"{type(e).__name__}: {e}"
        return True, ""
    cmd = cell_command(cell, dev_at_start=dev_at_start, resume_from=resume_from, threads=None)
    with open(cell.dir / "log.txt", "a" if resume_from else "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_subprocess_env()).returncode
    return (True, "") if rc == 0 else (False, _failure(cell, rc))


# -- results -------------------------------------------------------------------------------------------------------
def cell_row(cell: Cell, target: float | None) -> dict[str, Any]:
    """One CSV row from a finished cell's run.json and curve.jsonl."""
    run = json.loads((cell.dir / "run.json").read_text(encoding="utf-8"))
    curve = read_curve(cell.dir)
    dev = [r for r in curve if r.get("split") == "dev"]
    test = [r for r in curve if r.get("split") == "test"]
    steps = int(run["steps"])
    best = max(dev, key=lambda r: (r["value"], -r["step"])) if dev else None
    hit = next((r for r in dev if target is not None and r["value"] >= target - 1e-12), None)
    train_s = max((r["train_s"] for r in curve), default=float("nan"))
    device = str(run.get("device", "cpu"))
    runner = cell.dir / "runner.json"
    shared = runner.is_file() and json.loads(runner.read_text()).get("in_process", False)
    memory_kind = "cuda_max_allocated" if device.startswith("cuda") else "peak_rss" + ("_process" if shared else "")
    return {
        "task": cell.task,
        "method": cell.method,
        "seed": cell.seed,
        "status": "ok",
        "steps": steps,
        "final_test": run["final"].get("test", test[-1]["value"] if test else None),
        "final_dev": run["final"].get("dev"),
        "best_dev": best["value"] if best else None,
        "best_dev_step": best["step"] if best else None,
        "target": target,
        "steps_to_target": hit["step"] if hit else None,
        "seconds_to_target": round(hit["train_s"], 3) if hit else None,
        "wall_time_s": run["wall_time_s"],
        "train_time_s": round(train_s, 3),
        "time_per_step_s": round(train_s / steps, 4) if steps else None,
        "peak_memory_mb": round(run["peak_memory_bytes"] / 2**20, 1),
        "memory_kind": memory_kind,
        "forwards_per_step": run["forwards_per_step"],
        "backwards_per_step": run["backwards_per_step"],
        "trainable_params": run["params"]["fo_params"],
        "zo_params": run["params"]["zo_params"],
        "n_dev": dev[-1]["n"] if dev else 0,
        "n_test": test[-1]["n"] if test else 0,
        "metric": (dev or test or [{}])[-1].get("metric", "accuracy"),
        **probe_columns(run),
    }


def probe_columns(run: dict[str, Any]) -> dict[str, Any]:
    probe, abl = run.get("probe") or {}, run.get("ablation") or {}
    out = {f"probe_{k}": probe.get(k) for k in ("zo_share", "cum_df_zo", "cum_df_fo", "drift")}
    for k in ("ratio_onesided", "abs_cos_update", "zo_lr_over_scale"):
        out[f"probe_median_{k}"] = probe.get(f"median_{k}")
    for split in ("dev", "test"):
        out[f"ablation_{split}_zo_points"] = (abl.get(split) or {}).get("zo_points")
    return out


def read_probes(d: Path) -> list[dict[str, Any]]:
    """A cell's applied probe records from its metrics.jsonl."""
    from hyft.probe import read_probe_rows

    return [r for r in read_probe_rows(d / "metrics.jsonl") if r.get("probe_applied")]


def targets(spec: CompareSpec, cells: list[Cell]) -> dict[tuple[str, int], float | None]:
    """The target accuracy per (task, seed): a fixed number, or the target method's final dev accuracy."""
    out: dict[tuple[str, int], float | None] = {}
    for task in spec.tasks:
        for seed in spec.seeds:
            if isinstance(spec.target, float):
                out[task, seed] = spec.target
                continue
            ref = next((c for c in cells if (c.task, c.method, c.seed) == (task, spec.target, seed) and c.done), None)
            dev = json.loads((ref.dir / "run.json").read_text())["final"].get("dev") if ref else None
            out[task, seed] = dev
    return out


def collect(spec: CompareSpec, failures: dict[str, str] | None = None, unfinished: str = "missing") -> list[dict]:
    """One row per cell: a finished cell's results, else its status (failed, or `unfinished`)."""
    cells = spec.cells()
    tg = targets(spec, cells)
    rows = []
    for c in cells:
        if c.done:
            rows.append(cell_row(c, tg[c.task, c.seed]))
        else:
            status = "failed" if failures and c.key in failures else unfinished
            rows.append({"task": c.task, "method": c.method, "seed": c.seed, "status": status})
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    write_atomic(path, csv_text(rows, CSV_FIELDS))


def markdown(spec: CompareSpec, rows: list[dict[str, Any]]) -> str:
    from hyft.report import column, fmt_mean_std, markdown_table, mean_std

    lines = ["# Comparison", ""]
    tdesc = (f"a fixed dev accuracy of {spec.target}" if isinstance(spec.target, float)
             else f"the final dev accuracy of `{spec.target}` for the same task and seed" if spec.target
             else "none")  # fmt: skip
    lines += [f"Mean ± sample std over seeds {spec.seeds}. Target: {tdesc}. Steps and seconds to target average the",
              "seeds that reached it (`reached` says how many); seconds are training time only (evaluation excluded).",
              ""]  # fmt: skip
    headers = ["method", "test", "best dev", "final dev", "steps to target", "s to target", "reached", "s/step",
               "peak MB", "F/B per step", "trainable", "ZO params", "steps"]  # fmt: skip
    for task in spec.tasks:
        table = []
        for v in spec.methods:
            rs = [r for r in rows if r["task"] == task and r["method"] == v.name and r["status"] == "ok"]
            if not rs:
                table.append([v.name] + ["—"] * (len(headers) - 1))
                continue
            col = column(rs)
            reached = [r for r in rs if r["steps_to_target"] is not None]
            mem, _, _ = mean_std(col("peak_memory_mb"))
            table.append([
                v.name, fmt_mean_std(col("final_test")), fmt_mean_std(col("best_dev")), fmt_mean_std(col("final_dev")),
                fmt_mean_std([r["steps_to_target"] for r in reached], 1),
                fmt_mean_std([r["seconds_to_target"] for r in reached], 1),
                f"{len(reached)}/{len(rs)}" if rs[0]["target"] is not None else "—",
                fmt_mean_std(col("time_per_step_s"), 2), f"{mem:.0f}",
                f"{rs[0]['forwards_per_step']}/{rs[0]['backwards_per_step']}",
                f"{rs[0]['trainable_params']:,}", f"{rs[0]['zo_params']:,}", rs[0]["steps"],
            ])  # fmt: skip
        metric = next((r["metric"] for r in rows if r["task"] == task and r.get("metric")), "accuracy")
        lines += [f"## {task} ({metric})", "", markdown_table(headers, table), ""]
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        lines += ["Not finished: " + ", ".join(f"{r['task']}/{r['method']}/seed{r['seed']} ({r['status']})"
                                             for r in missing), ""]  # fmt: skip
    return "\n".join(lines)


def plots(spec: CompareSpec, rows: list[dict[str, Any]], dest: Path | None = None) -> list[Path]:
    from hyft.report import plot_curves

    dest = spec.out if dest is None else dest

    out = []
    for task in spec.tasks:
        dev: dict[str, list] = {}
        loss: dict[str, list] = {}
        share: dict[str, list] = {}
        for c in spec.cells():
            if c.task != task or not c.done:
                continue
            curve = read_curve(c.dir)
            dev.setdefault(c.method, []).append(
                [(r["step"], r["train_s"], r["value"]) for r in curve if r.get("split") == "dev"]
            )
            loss.setdefault(c.method, []).append([(r["step"], r["train_s"], r["loss"]) for r in curve if "loss" in r])
            probes = read_probes(c.dir)
            if probes:  # (step, cumulative df of the ZO update, of the FO update) on the probe batch
                share.setdefault(c.method, []).append(
                    [(r["step"], r["probe_cum_df_zo"], r["probe_cum_df_fo"]) for r in probes]
                )
        if not dev:
            continue
        tg = [r["target"] for r in rows if r["task"] == task and r.get("target") is not None]
        target = sum(tg) / len(tg) if tg else None
        steps = max(r["steps"] for r in rows if r["task"] == task and r["status"] == "ok")
        title = f"{task}: mean over seeds {spec.seeds} (band: ± std)"
        out.append(plot_curves(dest / "plots" / f"{task}.png", title, dev, loss, target=target,
                               smooth_window=max(1, steps // 20, min(3, steps)), share=share))  # fmt: skip
    return out


def write_reports(
    spec: CompareSpec, failures: dict[str, str] | None = None, dest: Path | None = None, unfinished: str = "missing"
) -> dict[str, Path]:
    """compare.csv / .md / .json, plots/ and the pairs of the finished cells into `dest` (default the study folder;
    `hyft compare --progress` writes OUT/progress/, leaving the study's own reports to the running study)."""
    dest = spec.out if dest is None else Path(dest)
    rows = collect(spec, failures, unfinished)
    order = {c.key: i for i, c in enumerate(spec.cells())}  # failures in cell order, whatever finished first
    failures = dict(sorted((failures or {}).items(), key=lambda kv: order.get(kv[0], len(order))))
    dest.mkdir(parents=True, exist_ok=True)
    write_csv(rows, dest / "compare.csv")
    write_atomic(dest / "compare.md", markdown(spec, rows))
    write_atomic(dest / "compare.json", json.dumps({"rows": rows, "failures": failures}, indent=1))
    paired = pairs.write(spec.cells(), spec.tasks, dest)  # each hybrid against its FO twin, paired
    pngs = plots(spec, rows, dest) + paired["plots"]
    return {"csv": dest / "compare.csv", "markdown": dest / "compare.md", "plots": pngs, "pairs": paired["rows"]}


def save_spec(spec: CompareSpec) -> None:
    spec.out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(spec.out)
    remove_temporaries(spec.out / "plots")
    doc = {"base": spec.base, "methods": {v.name: v.overrides for v in spec.methods}, "tasks": spec.tasks,
           "seeds": spec.seeds, "target": spec.target, "eval_every": spec.eval_every}  # fmt: skip
    write_atomic(spec.out / "spec.yaml", yaml.safe_dump(doc, sort_keys=False))


def run_compare(
    spec: CompareSpec,
    *,
    model_factory: Callable[[Config], tuple[Any, Any]] | None = None,
    in_process: bool = False,
    jobs: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every unfinished cell (continuing those with a checkpoint), `jobs` at a time, then write compare.csv,
    compare.md, compare.json and plots/. Reports are rewritten after every cell; rows are always in cell order."""
    if jobs < 1:
        raise ConfigError(f"--jobs: expected a positive number of concurrent cells, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: expected a positive number of torch threads per cell, got {threads}")
    in_process = in_process or model_factory is not None
    if in_process and jobs > 1:
        raise ConfigError("--jobs: concurrent cells run as separate processes; drop --in_process (or use --jobs 1)")
    save_spec(spec)
    cells = spec.cells()
    for c in cells:  # a cell run with another config is neither silently reused nor silently started over
        why = c.refusal()
        if why:
            raise ConfigError(why)
    failures: dict[str, str] = {}
    n = len(cells)
    todo = []
    for i, c in enumerate(cells, 1):
        if c.done:
            log(f"[hyft] {i}/{n} {c.key}: finished earlier, skipped")
        else:
            todo.append((i, c))
    skipped = n - len(todo)

    def finished(i: int, c: Cell, ok: bool, msg: str, t0: float) -> None:
        if ok:
            log(f"[hyft] {i}/{n} {c.key}: done in {time.perf_counter() - t0:.0f} s")
        else:
            failures[c.key] = msg
            log(f"[hyft] {i}/{n} {c.key}: FAILED {msg}")
        write_reports(spec, failures)  # partial results after every cell

    if in_process:
        for i, c in todo:
            t0 = time.perf_counter()
            log(f"[hyft] {i}/{n} {c.key}: running")
            ok, msg = run_cell(c, dev_at_start=spec.eval_start, model_factory=model_factory, in_process=True)
            finished(i, c, ok, msg, t0)
    else:
        _run_pool(spec, todo, n, jobs, finished, log, threads_per_cell(jobs, threads))
    paths = write_reports(spec, failures)
    return {"ran": len(todo), "skipped": skipped, "failures": failures, **paths}


def _run_pool(
    spec: CompareSpec, todo: list[tuple[int, Cell]], n: int, jobs: int, finished, log, threads: int | None
) -> None:
    """Keep up to `jobs` cell processes running, launched in cell order. Launching and reaping happen on this thread:
    each child asks the kernel for SIGTERM when its parent dies (see _cell_main), which is tied to the thread that
    started it."""
    env = _subprocess_env(threads)
    pending = list(todo)
    running: list[tuple[subprocess.Popen, int, Cell, float, Any]] = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                i, c = pending.pop(0)
                resume_from = prepare_cell(c, in_process=False, threads=threads)
                how = f", continued from step {ckpt.step_of(resume_from)} ({resume_from})" if resume_from else ""
                log(f"[hyft] {i}/{n} {c.key}: running{how}")
                fh = open(c.dir / "log.txt", "a" if resume_from else "w", encoding="utf-8")  # noqa: SIM115 (closed when reaped)
                cmd = cell_command(c, dev_at_start=spec.eval_start, resume_from=resume_from, threads=threads)
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
                running.append((proc, i, c, time.perf_counter(), fh))
            done = [r for r in running if r[0].poll() is not None]
            if not done:
                time.sleep(0.05 if jobs > 1 else 0.02)
                continue
            for r in done:
                running.remove(r)
                proc, i, c, t0, fh = r
                fh.close()
                rc = proc.returncode
                finished(i, c, rc == 0, "" if rc == 0 else _failure(c, rc), t0)
    finally:
        for proc, *_ in running:  # interrupted (Ctrl-C): the cells checkpoint on SIGINT/SIGTERM and exit
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, *_, fh in running:
            proc.wait()
            fh.close()


# -- `python -m hyft.compare --cell cell.yaml`: the subprocess entry point ------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to send this process SIGTERM when the compare process that started it dies (whatever kills it),
    so no orphaned cell keeps training (and writing) while the study is rerun; SIGTERM makes the trainer write a
    checkpoint at the next step and stop. Elsewhere this is a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _cell_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m hyft.compare")
    p.add_argument("--cell", required=True)
    p.add_argument("--no_dev_at_start", action="store_true")
    p.add_argument("--resume_from", help="a complete checkpoint of this cell to continue from")
    p.add_argument("--threads", type=int, help="torch intra-op threads (set when cells run concurrently)")
    p.add_argument("--parent_pid", type=int, help="the compare process; this cell stops when it dies")
    args = p.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"[hyft] cell {args.cell}: pid {os.getpid()}, {torch.get_num_threads()} torch thread(s)"
          + (f", continuing from {args.resume_from}" if args.resume_from else ""))  # fmt: skip
    cfg = load_config(args.cell)
    info = run_cell_in_process(
        cfg, None, not args.no_dev_at_start, Path(args.resume_from) if args.resume_from else None
    )
    print(f"[hyft] cell done: steps {info['steps']}, final {info['final']}")
    return 0


if __name__ == "__main__":
    # Run the functions of the imported module, not of this __main__ copy, so hyft.compare is one module.
    from hyft.compare import _cell_main as main

    sys.exit(main(sys.argv[1:]))
