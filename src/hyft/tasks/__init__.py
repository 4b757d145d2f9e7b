"""Built-in tasks by name. Each module exposes `load(data_dir, *, n_train, n_dev, n_test, seed) -> TaskData`."""

from __future__ import annotations

from pathlib import Path

from hyft.errors import ConfigError
from hyft.tasks import sst2
from hyft.tasks.base import Example, TaskData, resolve_data_dir

TASKS = {"sst2": sst2.load}


def load_task(
    name: str,
    data_dir: str | Path | None = None,
    *,
    n_train: int | None = 1000,
    n_dev: int | None = 100,
    n_test: int | None = 1000,
    seed: int = 0,
) -> TaskData:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](resolve_data_dir(data_dir), n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)


__all__ = ["Example", "TaskData", "TASKS", "load_task"]
