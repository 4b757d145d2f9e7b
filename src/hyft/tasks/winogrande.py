"""WinoGrande v1.1 (JSONL: sentence with one `_` blank, option1, option2, answer "1"|"2"; `<stem>-labels.lst`).

Partial scoring (Trinh & Le 2018; GPT-3): each option fills the blank and ends its context; the rest of the sentence
is the continuation shared by both candidates, so the scorer compares how well each option predicts that rest.
"""

from __future__ import annotations

from pathlib import Path

from hyft.errors import ConfigError
from hyft.tasks.base import Example, TaskData, split_protocol
from hyft.tasks.io import data_error, label_index, read_jsonl, read_label_lines, text
from hyft.tasks.superglue import require

SIZES = ("xs", "s", "m", "l", "xl", "debiased")
LABELS = {"1": 0, "2": 1, 1: 0, 2: 1}


def split_at_blank(path: Path, lineno: int, sentence: str) -> tuple[str, str]:
    if sentence.count("_") != 1:
        raise data_error(path, f"expected one '_' blank, found {sentence.count('_')}", line=lineno, field="sentence")
    before, after = sentence.split("_")
    if not after.strip():
        raise data_error(path, "nothing after the blank to score", line=lineno, field="sentence")
    return before, after


def build(path: Path, lineno: int, row: dict, label: int) -> Example:
    before, after = split_at_blank(path, lineno, text(path, lineno, row, "sentence"))
    options = (text(path, lineno, row, "option1"), text(path, lineno, row, "option2"))
    meta = dict(line=lineno, qID=row.get("qID"), options=options)
    return Example(tuple(before + o for o in options), (after, after), label, meta)


def labels_path(path: Path) -> Path:
    return path.with_name(path.stem + "-labels.lst")


def read(path: Path) -> list[Example]:
    """Examples of one WinoGrande file; labels from `answer`, else from the `-labels.lst` file beside it."""
    rows = list(read_jsonl(path))
    lpath = labels_path(path)
    lines = read_label_lines(lpath) if lpath.exists() else None
    if lines is not None and len(lines) != len(rows):
        raise data_error(lpath, f"has {len(lines)} labels but {path.name} has {len(rows)} rows", line=len(lines))
    out = []
    for i, (lineno, row) in enumerate(rows):
        answer = row.get("answer", "")
        label = None if answer == "" else label_index(path, lineno, answer, LABELS, "answer")
        if lines is not None:
            lline, value = lines[i]
            from_file = label_index(lpath, lline, value, LABELS)
            if label is not None and from_file != label:
                msg = f"{value!r} disagrees with answer {answer!r} at {path.name}:{lineno}"
                raise data_error(lpath, msg, line=lline, field="label")
            label = from_file
        if label is None:
            raise data_error(path, f"missing, and there is no {lpath.name}", line=lineno, field="answer")
        out.append(build(path, lineno, row, label))
    return out


def load(data_dir: Path, *, n_train, n_dev, n_test, seed, size: str = "l") -> TaskData:
    """`size` picks the training file train_<size>.jsonl (the sizes are nested: xs ⊂ s ⊂ m ⊂ l ⊂ xl)."""
    if size not in SIZES:
        raise ConfigError(f"winogrande size must be one of {', '.join(SIZES)}, got {size!r}")
    folder = Path(data_dir) / "winogrande"
    train_path, eval_path = require(folder / f"train_{size}.jsonl"), require(folder / "dev.jsonl")
    train, dev, test, reports = split_protocol(
        "winogrande",
        read(train_path),
        read(eval_path),
        train_source=str(train_path),
        eval_source=str(eval_path),
        n_train=n_train,
        n_dev=n_dev,
        n_test=n_test,
        seed=seed,
    )
    return TaskData("winogrande", train, dev, test, reports)
