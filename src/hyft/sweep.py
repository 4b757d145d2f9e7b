"""Hyperparameter sweep: short runs over a grid (or a seeded random subset of it), each stopped as soon as it
diverges (loss NaN/inf or above a bound), the best finished run picked by dev accuracy and written as a config.

The divergence check lives here, in a Trainer subclass (`after_step`), so it needs nothing from the Trainer beyond
its hooks. The bound is --max_loss if given, else --diverge_factor times the first step's loss.

Each finished trial leaves trials/NNN/trial.json (its config and result, written atomically), so the same sweep run
again skips the trials that finished (ok or diverged) and reruns only the others: an interrupted sweep resumes at
trial granularity. `heatmap` draws dev accuracy over two grid keys (e.g. zo.lr x fo.lr, the learning-rate landscape)
with diverged cells marked, from the trial rows; heatmap.csv holds exactly the table the image shows.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hyft.callbacks import Callback
from hyft.config import ALIASES, Config, expand, from_dict, load_base, merge, parse_value
from hyft.errors import ConfigError, HyftError
from hyft.methods import resolve
from hyft.study_files import csv_text, remove_temporaries, write_atomic
from hyft.trainer import Trainer


class Diverged(Exception):
    def __init__(self, step: int, loss: float, bound: float):
        super().__init__(f"diverged at step {step}: loss {loss:.4g} (bound {bound:.4g})")
        self.step, self.loss, self.bound = step, loss, bound


class DivergenceStop(Callback):
    """Stops a trial (raises Diverged) after the first step whose loss is not finite or exceeds the bound: the given
    max_loss, else diverge_factor times the first step's loss. Keeps every step's loss for the trial's row."""

    def __init__(self, max_loss: float | None = None, diverge_factor: float = 4.0):
        self.max_loss, self.diverge_factor = max_loss, diverge_factor
        self.losses: list[float] = []

    def bound(self) -> float:
        if self.max_loss is not None:
            return self.max_loss
        first = self.losses[0] if self.losses else math.nan
        return self.diverge_factor * first if math.isfinite(first) else math.inf

    def on_step_end(self, tr: Trainer, result) -> None:
        loss = float(result.loss)
        self.losses.append(loss)
        bound = self.bound()
        if not math.isfinite(loss) or loss > bound:
            raise Diverged(tr.step, loss, bound)


@dataclass
class Trial:
    index: int
    params: dict[str, Any]
    status: str = "pending"  # ok | diverged | failed
    steps: int = 0
    final_dev: float | None = None
    final_loss: float | None = None
    seconds: float = 0.0
    message: str = ""

    def row(self) -> dict[str, Any]:
        return {"trial": self.index, **self.params, "status": self.status, "steps": self.steps,
                "final_dev": self.final_dev, "final_loss": self.final_loss, "seconds": round(self.seconds, 2),
                "message": self.message}  # fmt: skip


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['zo.lr=1e-6,1e-5', 'fo.lr=1e-3'] -> {'zo.lr': [1e-06, 1e-05], 'fo.lr': [0.001]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid: expected key=v1,v2,... got {item!r}")
        key, values = item.split("=", 1)
        key = ALIASES.get(key.strip(), key.strip())
        if values.strip().startswith("probe:"):
            vals = probe_grid(key, values.strip()[len("probe:") :])
        else:
            vals = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not key or not vals:
            raise ConfigError(f"--grid: {item!r} has no key or no values")
        if key in grid:
            raise ConfigError(f"--grid: {key} given twice")
        grid[key] = list(dict.fromkeys(vals))
    if not grid:
        raise ConfigError("--grid: nothing to sweep")
    return grid


PROBE_DECADES = (1e-3, 1e-2, 1e-1, 1.0)


def probe_grid(key: str, run_dir: str) -> list[float]:
    """zo.lr=probe:RUN or fo.lr=probe:RUN: four decades below the step-size scale a probed run measured
    (run.json probe.median_zo_lr_scale = 1/z^T H z, or median_fo_lr_scale; docs/probes.md), largest last. The
    scale is the step that is optimal along the direction; the paper's bound 1/(curvature * n) lies inside."""
    group = {"zo.lr": "zo", "fo.lr": "fo"}.get(key)
    if group is None:
        raise ConfigError(f"--grid: {key}=probe:... only works for zo.lr and fo.lr")
    path = Path(run_dir).expanduser()
    run = path / "run.json" if path.is_dir() else path
    try:
        summary = json.loads(run.read_text(encoding="utf-8")).get("probe") or {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"--grid: {key}=probe:{run_dir}: cannot read {run} ({type(e).__name__})") from None
    scale = summary.get(f"median_{group}_lr_scale")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"--grid: {run} has no {group} step-size scale (run it with --train.probe_every N)")
    return [float(f"{scale * f:.2g}") for f in PROBE_DECADES]


def trial_params(grid: dict[str, list[Any]], random_n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every grid point in order, or `random_n` distinct points drawn with a seeded RNG (all if random_n >= size)."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if random_n is not None:
        if random_n < 1:
            raise ConfigError("--random: expected a positive number of trials")
        if random_n < len(points):
            points = random.Random(seed).sample(points, random_n)
    return points


def base_dict(config: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    """The sweep's base config mapping (a compare config works as a sweep base too: its compare: section is
    ignored), validated; errors name FILE:LINE and the key."""
    return load_base(config, overrides)[0]


def run_sweep(
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    *,
    method: str | None = None,
    out: str | Path = "runs/sweep",
    steps: int | None = None,
    random_n: int | None = None,
    sample_seed: int = 0,
    max_loss: float | None = None,
    diverge_factor: float = 4.0,
    model_factory: Callable[[Config], tuple[Any, Any]] | None = None,
    heatmap: tuple[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the trials in order (reusing those a previous run of the same sweep finished); return {'trials', 'best',
    'best_config'} and write sweep.csv, sweep.json and best.yaml (the base config with the winning values and the
    base's own train.steps) into `out`; with `heatmap` (two grid keys) also heatmap.png and heatmap.csv."""
    out = Path(out)
    if heatmap is not None:
        heatmap = check_heatmap_keys(heatmap, grid)
    if method is not None:
        base = merge(base, {"method": method})
    full_steps = int(base.get("train", {}).get("steps", Config().train.steps))
    points = trial_params(grid, random_n, sample_seed)
    configs = []
    for i, params in enumerate(points):  # validate every trial before training any
        d = merge(base, expand(params))
        d = merge(d, {"train": {"steps": steps or full_steps, "output_dir": str(out / "trials" / f"{i:03d}"),
                                "overwrite": True, "progress": False, "eval_before": False}})  # fmt: skip
        cfg = from_dict(d, f"trial {i} {params}: ")
        resolve(cfg)
        if cfg.data.n_dev == 0:
            raise ConfigError("data.n_dev: the sweep picks by dev accuracy; give it dev examples (n_dev > 0)")
        configs.append(cfg)
    trials = []
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    for i, (params, cfg) in enumerate(zip(points, configs)):
        record = Path(cfg.train.output_dir) / "trial.json"
        earlier = finished_trial(record, cfg)
        if earlier is not None:
            trials.append(earlier)
            log(f"[hyft] trial {i + 1}/{len(points)} {params}: {earlier.status} (finished earlier, reused)")
            continue
        trial = Trial(i, params)
        t0 = time.perf_counter()
        model = tok = None
        try:
            if model_factory is not None:
                model, tok = model_factory(cfg)
            stop = DivergenceStop(max_loss, diverge_factor)
            info = Trainer(cfg, model=model, tokenizer=tok, callbacks=[stop]).fit()
            trial.status, trial.steps = "ok", info["steps"]
            trial.final_dev = info["final"].get("dev")
            tail = stop.losses[-max(1, len(stop.losses) // 10) :]
            trial.final_loss = sum(tail) / len(tail)
        except Diverged as e:
            trial.status, trial.steps, trial.final_loss, trial.message = "diverged", e.step, e.loss, str(e)
        except HyftError:
            raise
        except Exception as e:  # e.g. out of memory at a large batch: record it, go on
            trial.status, trial.message = "failed", f"{type(e).__name__}: {e}"
        trial.seconds = time.perf_counter() - t0
        trials.append(trial)
        if trial.status != "failed":  # a failure (e.g. out of memory) is tried again by the next run
            record.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(record, json.dumps({"config": cfg.to_dict(), "row": trial.row()}, indent=1))
        write_trials(trials, grid, out)  # progress after every trial
        log(f"[hyft] trial {i + 1}/{len(points)} {params}: {trial.status}"
            + (f", dev {trial.final_dev:.4f}" if trial.final_dev is not None else f" ({trial.message})"))  # fmt: skip
    ok = [t for t in trials if t.status == "ok" and t.final_dev is not None]
    write_trials(trials, grid, out)
    if heatmap is not None:
        draw_heatmap([t.row() for t in trials], *heatmap, out)
    if not ok:
        raise HyftError(f"sweep: no trial finished without diverging ({len(trials)} tried); lower the learning rates")
    best = max(ok, key=lambda t: (t.final_dev, -(t.final_loss if t.final_loss is not None else math.inf), -t.index))
    best_cfg = merge(base, expand(best.params))
    from_dict(best_cfg, "best.yaml: ")
    write_atomic(
        out / "best.yaml",
        f"# hyft sweep: best of {len(trials)} trials by dev accuracy ({best.final_dev:.4f} after {best.steps} steps)\n"
        f"# {json.dumps(best.params)}\n" + yaml.safe_dump(best_cfg, sort_keys=False),
    )
    doc = {"grid": grid, "trials": [t.row() for t in trials], "best": best.row()}
    write_atomic(out / "sweep.json", json.dumps(doc, indent=1))
    return {"trials": trials, "best": best, "best_config": best_cfg, "out": out}


def finished_trial(record: Path, cfg: Config) -> Trial | None:
    """The result a previous run of this sweep left for this trial, if it ran with exactly this config."""
    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
        if doc["config"] != json.loads(json.dumps(cfg.to_dict())):
            return None
        row = dict(doc["row"])
        index, status = row.pop("trial"), row.pop("status")
        steps, dev, loss = row.pop("steps"), row.pop("final_dev"), row.pop("final_loss")
        seconds, message = row.pop("seconds"), row.pop("message")
        return Trial(index, row, status, steps, dev, loss, seconds, message)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_trials(trials: list[Trial], grid: dict[str, list[Any]], out: Path) -> None:
    fields = ["trial", *grid, "status", "steps", "final_dev", "final_loss", "seconds", "message"]
    write_atomic(out / "sweep.csv", csv_text([t.row() for t in trials], fields))


def read_trials(out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a sweep's sweep.csv and its grid keys (the columns between `trial` and `status`)."""
    import csv

    path = out / "sweep.csv"
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run the sweep first)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "trial" not in fields or "status" not in fields:
        raise ConfigError(f"{path}: not a hyft sweep table")
    return rows, fields[fields.index("trial") + 1 : fields.index("status")]


# -- the learning-rate landscape -------------------------------------------------------------------------------------
def check_heatmap_keys(keys: tuple[str, str] | list[str] | str, grid: dict[str, list[Any]]) -> tuple[str, str]:
    """Two grid keys (aliases allowed), x first; every other grid key must have one value (else a cell would mix
    several trials)."""
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    keys = [ALIASES.get(k, k) for k in keys]
    if len(keys) != 2 or keys[0] == keys[1]:
        raise ConfigError(f"--heatmap: expected two different grid keys X,Y (e.g. zo.lr,fo.lr), got {keys}")
    for k in keys:
        if k not in grid:
            raise ConfigError(f"--heatmap: {k} is not swept (grid keys: {', '.join(grid)})")
    more = [k for k, v in grid.items() if k not in keys and len(v) > 1]
    if more:
        raise ConfigError(f"--heatmap: {', '.join(more)} also vary; a heatmap cell must be one trial")
    return keys[0], keys[1]


def heatmap_table(rows: list[dict[str, Any]], x: str, y: str) -> dict[str, Any]:
    """The landscape from trial rows: sorted x and y values and per (y, x) the trial's status and final dev
    accuracy (None unless it finished). Missing grid points (a --random subset) have status 'missing'."""
    xs = sorted({_num(r[x]) for r in rows})
    ys = sorted({_num(r[y]) for r in rows})
    cells = {(_num(r[y]), _num(r[x])): r for r in rows}
    table = []
    for yv in ys:
        line = []
        for xv in xs:
            r = cells.get((yv, xv))
            status = r["status"] if r else "missing"
            dev = r.get("final_dev") if r and status == "ok" else None
            line.append({"status": status, "final_dev": None if dev in (None, "") else float(dev),
                         "trial": r["trial"] if r else None})  # fmt: skip
        table.append(line)
    return {"x": x, "y": y, "xs": xs, "ys": ys, "cells": table}


def _num(value: Any) -> Any:
    """A grid value as a number where it is one (sweep.csv gives strings), else as it is."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def heatmap_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The table in long form: one row per cell (what heatmap.csv holds)."""
    x, y = table["x"], table["y"]
    return [{y: yv, x: xv, "trial": c["trial"], "status": c["status"], "final_dev": c["final_dev"]}
            for yv, line in zip(table["ys"], table["cells"]) for xv, c in zip(table["xs"], line)]  # fmt: skip


def draw_heatmap(rows: list[dict[str, Any]], x: str, y: str, out: Path) -> dict[str, Any]:
    """heatmap.png (dev accuracy per cell, diverged cells hatched and labelled) and heatmap.csv into `out`."""
    from hyft.report import pyplot, save_figure

    table = heatmap_table(rows, x, y)
    write_atomic(out / "heatmap.csv", csv_text(heatmap_rows(table), [y, x, "trial", "status", "final_dev"]))
    plt = pyplot()
    values = [[math.nan if c["final_dev"] is None else c["final_dev"] for c in line] for line in table["cells"]]
    nx, ny = len(table["xs"]), len(table["ys"])
    fig, ax = plt.subplots(figsize=(1.6 * nx + 2.5, 1.0 * ny + 1.8))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    finite = [v for line in values for v in line if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-9, aspect="auto", origin="lower")
    for i, line in enumerate(table["cells"]):
        for j, c in enumerate(line):
            if c["final_dev"] is not None:
                v = c["final_dev"]
                dark = (v - lo) / (hi - lo) < 0.5 if hi > lo else True
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if dark else "black", fontsize=9)
            else:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="#b22222",
                                           linewidth=0))  # fmt: skip
                ax.text(j, i, c["status"], ha="center", va="center", color="#b22222", fontsize=9, weight="bold",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 2})  # fmt: skip
    label = lambda k, v: "0 (FO twin)" if v == 0 and k == "zo.lr" else f"{v:g}"
    ax.set_xticks(range(nx), [label(x, v) for v in table["xs"]])
    ax.set_yticks(range(ny), [label(y, v) for v in table["ys"]])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    steps = sorted({int(r["steps"]) for r in rows if r.get("status") == "ok" and r.get("steps") not in (None, "")})
    ax.set_title(f"final dev accuracy over {x} x {y}" + (f" ({steps[-1]} steps)" if steps else ""))
    fig.colorbar(im, ax=ax, label="final dev accuracy")
    fig.tight_layout()
    save_figure(fig, out / "heatmap.png", dpi=110)
    plt.close(fig)
    return table
