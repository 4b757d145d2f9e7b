"""WiC (SuperGLUE JSONL: word, sentence1, sentence2, label true|false)."""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import row_label, text
from hyft.tasks.superglue import load_jsonl_task

# MeZO's WICTemplate (from PromptSource).
TEMPLATE = 'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n'
CANDIDATES = ("No", "Yes")
LABELS = {False: 0, True: 1}


def build(path: Path, lineno: int, row: dict) -> Example:
    values = {name: text(path, lineno, row, name) for name in ("word", "sentence1", "sentence2")}
    label = row_label(path, lineno, row, LABELS)
    return Example.shared_context(TEMPLATE.format(**values), CANDIDATES, label, line=lineno)


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    return load_jsonl_task("wic", data_dir, build, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)
