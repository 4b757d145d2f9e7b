"""Which files feed which split for the SuperGLUE-format (JSONL) tasks.

Layout under the data directory, per task: `<task>/val.jsonl` (labelled validation: the test split) and either
`<task>/train.jsonl` (the full training set: train and dev are both sampled from it) or, where only FewGLUE's
32-shot files are available, `<task>/fewglue32/train.jsonl` (train) and `<task>/fewglue32/dev32.jsonl` (dev).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyft.tasks.base import Example, TaskData, split_protocol
from hyft.tasks.io import data_error, read_jsonl

# build(path, line, row) -> one example, or several (MultiRC: one per answer option)
Builder = Callable[[Path, int, dict[str, Any]], "Example | list[Example]"]


def read_examples(path: Path, build: Builder) -> list[Example]:
    out: list[Example] = []
    for lineno, row in read_jsonl(path):
        built = build(path, lineno, row)
        out.extend(built if isinstance(built, list) else [built])
    return out


def require(path: Path) -> Path:
    if not path.exists():
        raise data_error(path, "file not found (is the data directory right? set data_dir or $HYFT_DATA_DIR)")
    return path


def load_jsonl_task(name: str, data_dir: Path, build: Builder, *, n_train, n_dev, n_test, seed) -> TaskData:
    folder = Path(data_dir) / name
    full, few = folder / "train.jsonl", folder / "fewglue32"
    few_train, few_dev = few / "train.jsonl", few / "dev32.jsonl"
    if full.exists() or not few_train.exists():
        train_path, dev_path = require(full), None
    else:
        train_path, dev_path = few_train, few_dev if few_dev.exists() else None
    eval_path = require(folder / "val.jsonl")
    train, dev, test, reports = split_protocol(
        name,
        read_examples(train_path, build),
        read_examples(eval_path, build),
        train_source=str(train_path),
        eval_source=str(eval_path),
        n_train=n_train,
        n_dev=n_dev,
        n_test=n_test,
        seed=seed,
        dev_rows=None if dev_path is None else read_examples(dev_path, build),
        dev_source=None if dev_path is None else str(dev_path),
    )
    return TaskData(name, train, dev, test, reports)
