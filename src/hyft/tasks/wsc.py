"""WSC (SuperGLUE JSONL: text, target.span1_text, target.span2_text, label true|false)."""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import field, row_label, text
from hyft.tasks.superglue import load_jsonl_task

# MeZO's WSCTemplate (from PromptSource); the pronoun (span2) is lowercased as there.
TEMPLATE = '{text}\nIn the previous sentence, does the pronoun "{span2}" refer to {span1}? Yes or No?\n'
CANDIDATES = ("No", "Yes")
LABELS = {False: 0, True: 1}


def build(path: Path, lineno: int, row: dict) -> Example:
    sentence = text(path, lineno, row, "text")
    target = field(path, lineno, row, "target", dict)
    span1 = text(path, lineno, target, "span1_text", where="target.span1_text")
    span2 = text(path, lineno, target, "span2_text", where="target.span2_text").lower()
    label = row_label(path, lineno, row, LABELS)
    context = TEMPLATE.format(text=sentence, span1=span1, span2=span2)
    return Example.shared_context(context, CANDIDATES, label, line=lineno)


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    return load_jsonl_task("wsc", data_dir, build, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)
