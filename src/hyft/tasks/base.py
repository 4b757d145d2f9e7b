"""What every task produces: candidate-scoring examples and seeded train/dev/test splits.

A classification example is scored as a set of (context, continuation) pairs, one per candidate; only the
continuation's tokens are scored. Most tasks share one context and differ in the continuation (the verbalizer);
WinoGrande's partial scoring differs in the context and shares the continuation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError


@dataclass(frozen=True)
class Example:
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int  # index of the correct candidate
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.contexts) != len(self.continuations) or not self.contexts:
            raise ValueError("an example needs one context and one continuation per candidate")
        if not 0 <= self.label < len(self.contexts):
            raise ValueError(f"label {self.label} out of range for {len(self.contexts)} candidates")

    @property
    def n_candidates(self) -> int:
        return len(self.contexts)

    @classmethod
    def shared_context(cls, context: str, candidates: list[str] | tuple[str, ...], label: int, **meta) -> Example:
        return cls(tuple(context for _ in candidates), tuple(candidates), label, meta)


@dataclass
class SplitReport:
    """Which file fed a split and how many of its rows were used (printed and written to run.json)."""

    split: str
    source: str
    rows_available: int
    rows_used: int

    def as_dict(self) -> dict[str, Any]:
        return dict(split=self.split, source=self.source, rows_available=self.rows_available, rows_used=self.rows_used)


@dataclass
class TaskData:
    name: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    reports: list[SplitReport]

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def sample(rows: list, n: int | None, seed: int) -> list:
    """A seeded sample without replacement, in the sampled order; n=None or n >= len keeps all (shuffled)."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    if n is not None:
        idx = idx[:n]
    return [rows[i] for i in idx]


def _check_size(name: str, n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(f"{name} must be a non-negative integer or null (all rows), got {n!r}")


def split_protocol(
    name: str,
    train_rows: list,
    eval_rows: list,
    *,
    train_source: str,
    eval_source: str,
    n_train: int | None,
    n_dev: int | None,
    n_test: int | None,
    seed: int,
    dev_rows: list | None = None,
    dev_source: str | None = None,
) -> tuple[list, list, list, list[SplitReport]]:
    """The paper's protocol: N train and a dev split sampled from the training file, test from labelled validation.

    Dev is disjoint from train. Where the training file cannot fill both, dev keeps its size and train gets the
    rest, as in MeZO (CB: 150 train + 100 dev); with n_dev=None dev is whatever train leaves. Where a task ships a
    separate labelled dev file (FewGLUE's dev32, a user's `dev:`), pass it as `dev_rows`: dev is then sampled
    from it and train may use the whole training file.
    """
    for key, n in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        _check_size(key, n)
    shuffled = sample(train_rows, None, seed)
    n_tr = len(shuffled) if n_train is None else min(n_train, len(shuffled))
    if dev_rows is None and n_dev is not None:
        n_tr = min(n_tr, len(shuffled) - min(n_dev, len(shuffled)))
    train = shuffled[:n_tr]
    if dev_rows is None:
        rest = shuffled[n_tr:]
        dev = rest if n_dev is None else rest[:n_dev]
        dev_source, dev_available = train_source, len(train_rows)
    else:
        dev = sample(dev_rows, n_dev, seed + 2)
        dev_source, dev_available = dev_source or "dev", len(dev_rows)
    test = sample(eval_rows, n_test, seed + 1)
    reports = [
        SplitReport("train", train_source, len(train_rows), len(train)),
        SplitReport("dev", dev_source, dev_available, len(dev)),
        SplitReport("test", eval_source, len(eval_rows), len(test)),
    ]
    return train, dev, test, reports


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data directory: the argument, else $HYFT_DATA_DIR, else ../shared/data next to the working directory."""
    import os

    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("HYFT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path("..") / "shared" / "data"
