"""COPA (SuperGLUE JSONL: premise, choice1, choice2, question cause|effect, label 0|1)."""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import data_error, field, row_label, text
from hyft.tasks.superglue import load_jsonl_task

# MeZO's CopaTemplate: the premise without its final period, then the connective; the choice continues the
# sentence, so its first letter is lowercased (except the pronoun "I").
CONNECTIVES = {"effect": " so", "cause": " because"}
LABELS = {0: 0, 1: 1}


def continuation(choice: str) -> str:
    first = choice.split(" ", 1)[0]
    if first == "I" or first.startswith("I'"):
        return " " + choice
    return " " + choice[0].lower() + choice[1:]


def context(premise: str, question: str) -> str:
    return premise.removesuffix(".") + CONNECTIVES[question]


def build(path: Path, lineno: int, row: dict) -> Example:
    premise = text(path, lineno, row, "premise")
    question = field(path, lineno, row, "question")
    if question not in CONNECTIVES:
        raise data_error(path, f"expected 'cause' or 'effect', found {question!r:.40}", line=lineno, field="question")
    choices = [continuation(text(path, lineno, row, name)) for name in ("choice1", "choice2")]
    label = row_label(path, lineno, row, LABELS)
    return Example.shared_context(context(premise, question), choices, label, line=lineno, question=question)


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    return load_jsonl_task("copa", data_dir, build, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)
