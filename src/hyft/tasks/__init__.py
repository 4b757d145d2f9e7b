"""Built-in tasks by name. Each module exposes `load(data_dir, *, n_train, n_dev, n_test, seed) -> TaskData`."""

from __future__ import annotations

import inspect
from pathlib import Path

from hyft.errors import ConfigError
from hyft.tasks import boolq, cb, copa, multirc, rte, sst2, wic, winogrande, wsc
from hyft.tasks.base import Example, SplitReport, TaskData, resolve_data_dir, sample, split_protocol
from hyft.tasks.metrics import exact_match, token_f1
from hyft.tasks.user import load_user_task

TASKS = {
    "sst2": sst2.load,
    "rte": rte.load,
    "cb": cb.load,
    "boolq": boolq.load,
    "wic": wic.load,
    "wsc": wsc.load,
    "copa": copa.load,
    "multirc": multirc.load,
    "winogrande": winogrande.load,
}


def load_task(
    name: str,
    data_dir: str | Path | None = None,
    *,
    n_train: int | None = 1000,
    n_dev: int | None = 100,
    n_test: int | None = 1000,
    seed: int = 0,
    **options,
) -> TaskData:
    """A built-in task's seeded splits. `options` are task-specific (winogrande: size=xs|s|m|l|xl)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    loader = TASKS[name]
    accepted = set(inspect.signature(loader).parameters) - {"data_dir", "n_train", "n_dev", "n_test", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(f"task {name!r} has no option(s) {unknown}; its options: {allowed}")
    return loader(resolve_data_dir(data_dir), n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed, **options)


__all__ = [
    "Example",
    "SplitReport",
    "TASKS",
    "TaskData",
    "exact_match",
    "load_task",
    "load_user_task",
    "resolve_data_dir",
    "sample",
    "split_protocol",
    "token_f1",
]
