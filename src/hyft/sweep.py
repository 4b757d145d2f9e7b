"""Hyperparameter sweep: short runs over a grid (or a seeded random subset of it), each stopped as soon as it
diverges (loss NaN/inf or above a bound), the best finished run picked by dev accuracy and written as a config.

The divergence check lives here, in a Trainer subclass (`after_step`), so it needs nothing from the Trainer beyond
its hooks. The bound is --max_loss if given, else --diverge_factor times the first step's loss.
"""

from __future__ import annotations

import csv
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

from hyft.compare import config_from_dict, expand, merge, parse_value
from hyft.config import ALIASES, Config, parse_overrides
from hyft.errors import ConfigError, HyftError
from hyft.methods import resolve
from hyft.trainer import Trainer


class Diverged(Exception):
    def __init__(self, step: int, loss: float, bound: float):
        super().__init__(f"diverged at step {step}: loss {loss:.4g} (bound {bound:.4g})")
        self.step, self.loss, self.bound = step, loss, bound


class SweepTrainer(Trainer):
    """Stops (raises Diverged) after the first step whose loss is not finite or exceeds the bound."""

    def __init__(self, *args, max_loss: float | None = None, diverge_factor: float = 4.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_loss, self.diverge_factor = max_loss, diverge_factor
        self.losses: list[float] = []

    def bound(self) -> float:
        if self.max_loss is not None:
            return self.max_loss
        first = self.losses[0] if self.losses else math.nan
        return self.diverge_factor * first if math.isfinite(first) else math.inf

    def after_step(self, result) -> None:
        super().after_step(result)
        loss = float(result.loss)
        self.losses.append(loss)
        bound = self.bound()
        if not math.isfinite(loss) or loss > bound:
            raise Diverged(self.step, loss, bound)


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
        vals = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not key or not vals:
            raise ConfigError(f"--grid: {item!r} has no key or no values")
        if key in grid:
            raise ConfigError(f"--grid: {key} given twice")
        grid[key] = list(dict.fromkeys(vals))
    if not grid:
        raise ConfigError("--grid: nothing to sweep")
    return grid


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
    data: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.pop("compare", None)  # a compare config works as a sweep base too
    base = expand(data)
    for key, value in parse_overrides(overrides or []):
        base = merge(base, expand({ALIASES.get(key, key): value}))
    return base


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
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the trials in order; return {'trials', 'best', 'best_config'} and write sweep.csv, sweep.json and
    best.yaml (the base config with the winning values and the base's own train.steps) into `out`."""
    out = Path(out)
    if method is not None:
        base = merge(base, {"method": method})
    full_steps = int(base.get("train", {}).get("steps", Config().train.steps))
    points = trial_params(grid, random_n, sample_seed)
    configs = []
    for i, params in enumerate(points):  # validate every trial before training any
        d = merge(base, expand(params))
        d = merge(d, {"train": {"steps": steps or full_steps, "output_dir": str(out / "trials" / f"{i:03d}"),
                                "overwrite": True, "progress": False, "eval_before": False}})  # fmt: skip
        cfg = config_from_dict(d, f"trial {i} {params}: ")
        resolve(cfg)
        if cfg.data.n_dev == 0:
            raise ConfigError("data.n_dev: the sweep picks by dev accuracy; give it dev examples (n_dev > 0)")
        configs.append(cfg)
    trials = []
    for i, (params, cfg) in enumerate(zip(points, configs)):
        trial = Trial(i, params)
        t0 = time.perf_counter()
        model = tok = None
        try:
            if model_factory is not None:
                model, tok = model_factory(cfg)
            tr = SweepTrainer(cfg, model=model, tokenizer=tok, max_loss=max_loss, diverge_factor=diverge_factor)
            info = tr.fit()
            trial.status, trial.steps = "ok", info["steps"]
            trial.final_dev = info["final"].get("dev")
            tail = tr.losses[-max(1, len(tr.losses) // 10) :]
            trial.final_loss = sum(tail) / len(tail)
        except Diverged as e:
            trial.status, trial.steps, trial.final_loss, trial.message = "diverged", e.step, e.loss, str(e)
        except HyftError:
            raise
        except Exception as e:  # e.g. out of memory at a large batch: record it, go on
            trial.status, trial.message = "failed", f"{type(e).__name__}: {e}"
        trial.seconds = time.perf_counter() - t0
        trials.append(trial)
        log(f"[hyft] trial {i + 1}/{len(points)} {params}: {trial.status}"
            + (f", dev {trial.final_dev:.4f}" if trial.final_dev is not None else f" ({trial.message})"))  # fmt: skip
    ok = [t for t in trials if t.status == "ok" and t.final_dev is not None]
    out.mkdir(parents=True, exist_ok=True)
    write_trials(trials, grid, out)
    if not ok:
        raise HyftError(f"sweep: no trial finished without diverging ({len(trials)} tried); lower the learning rates")
    best = max(ok, key=lambda t: (t.final_dev, -(t.final_loss if t.final_loss is not None else math.inf), -t.index))
    best_cfg = merge(base, expand(best.params))
    (out / "best.yaml").write_text(
        f"# hyft sweep: best of {len(trials)} trials by dev accuracy ({best.final_dev:.4f} after {best.steps} steps)\n"
        f"# {json.dumps(best.params)}\n" + yaml.safe_dump(best_cfg, sort_keys=False),
        encoding="utf-8",
    )
    config_from_dict(best_cfg, "best.yaml: ")
    (out / "sweep.json").write_text(
        json.dumps({"grid": grid, "trials": [t.row() for t in trials], "best": best.row()}, indent=1)
    )
    return {"trials": trials, "best": best, "best_config": best_cfg, "out": out}


def write_trials(trials: list[Trial], grid: dict[str, list[Any]], out: Path) -> None:
    fields = ["trial", *grid, "status", "steps", "final_dev", "final_loss", "seconds", "message"]
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for t in trials:
            w.writerow(t.row())
