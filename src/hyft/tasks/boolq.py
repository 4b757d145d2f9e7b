"""BoolQ (SuperGLUE JSONL: passage, question, label true|false)."""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import row_label, text
from hyft.tasks.superglue import load_jsonl_task

# MeZO's default BoolQ template (BoolQTemplateV3): the question is capitalised and ends in "?", then a newline.
TEMPLATE = "{passage} {question}\n"
CANDIDATES = ("Yes", "No")
LABELS = {True: 0, False: 1}


def question_text(question: str) -> str:
    question = question if question.endswith("?") else question + "?"
    return question[0].upper() + question[1:]


def build(path: Path, lineno: int, row: dict) -> Example:
    passage, question = text(path, lineno, row, "passage"), question_text(text(path, lineno, row, "question"))
    label = row_label(path, lineno, row, LABELS)
    return Example.shared_context(TEMPLATE.format(passage=passage, question=question), CANDIDATES, label, line=lineno)


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    return load_jsonl_task("boolq", data_dir, build, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)
