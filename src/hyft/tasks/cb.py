"""CommitmentBank (SuperGLUE JSONL: premise, hypothesis, label entailment|contradiction|neutral)."""

from __future__ import annotations

from pathlib import Path

from hyft.tasks.base import Example, TaskData
from hyft.tasks.io import row_label, text
from hyft.tasks.superglue import load_jsonl_task

# MeZO's CBTemplate (from PromptSource); verbalizer order follows the SuperGLUE label ids.
TEMPLATE = 'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'
CANDIDATES = ("Yes", "No", "Maybe")
LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}


def build(path: Path, lineno: int, row: dict) -> Example:
    premise, hypothesis = text(path, lineno, row, "premise"), text(path, lineno, row, "hypothesis")
    label = row_label(path, lineno, row, LABELS)
    context = TEMPLATE.format(premise=premise, hypothesis=hypothesis)
    return Example.shared_context(context, CANDIDATES, label, line=lineno)


def load(data_dir: Path, *, n_train, n_dev, n_test, seed) -> TaskData:
    return load_jsonl_task("cb", data_dir, build, n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed)
