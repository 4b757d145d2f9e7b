"""User datasets declared in config, no code: classification by template + candidates, or generation (SFT).

A spec is a dict (the `dataset:` section of a config), e.g.

    {"type": "classification", "train": "data/train.jsonl", "dev": "data/dev.csv", "test": "data/test.parquet",
     "template": "Review: {text}\\nSentiment:", "candidates": [" negative", " positive"], "label_field": "label"}
    {"type": "generation", "train": "qa.jsonl", "prompt_field": "question", "completion_field": "answer"}
    {"type": "sft", "train": "chats.jsonl"}     TRL's formats: messages, prompt/completion, text (tasks/sft.py)

`train`, `dev` and `test` are files, globs or `datasets` sources (tasks/sources.py); `columns` renames fields.

docs/tasks.md describes every key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError
from hyft.tasks import sources
from hyft.tasks.base import Example, TaskData, split_protocol
from hyft.tasks.io import data_error
from hyft.tasks.sft import sft_builder
from hyft.tasks.template import Template, value_text

COMMON = {"name", "type", "train", "dev", "test", "format", "columns"}
KEYS = {
    "classification": COMMON | {"template", "candidates", "label_field"},
    "generation": COMMON | {"prompt_field", "template", "completion_field", "answers_field"},
    "sft": COMMON | {"chat_template"},
}
Builder = Callable[[Path, int, dict[str, Any]], Example]


def _str_key(spec: dict, key: str, *, required: bool = True) -> str | None:
    value = spec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        found = "nothing" if value is None else f"{type(value).__name__} {value!r:.40}"
        raise ConfigError(f"dataset: '{key}' must be a non-empty string, got {found}")
    return value


def check_spec(spec: Any) -> dict:
    if not isinstance(spec, dict):
        raise ConfigError(f"dataset: expected a mapping of keys, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in KEYS:
        raise ConfigError(f"dataset: 'type' must be one of {list(KEYS)}, got {kind!r}")
    unknown = sorted(set(spec) - KEYS[kind])
    if unknown:
        raise ConfigError(f"dataset: unknown key(s) {unknown} for type {kind}; allowed: {sorted(KEYS[kind])}")
    for key in ("format", "name", "chat_template"):
        if key in spec and not isinstance(spec[key], (str, Path)) and spec[key] is not None:
            raise ConfigError(f"dataset: '{key}' must be a string, got {type(spec[key]).__name__}")
    if not spec.get("train"):
        raise ConfigError("dataset: 'train' (a JSONL, CSV, TSV or parquet file, a glob, or {hf: ...}) is required")
    for key in ("train", "dev", "test"):
        if spec.get(key) is not None:
            sources.check_source(key, spec[key])
    columns = spec.get("columns")
    if columns is not None and (
        not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items())
    ):
        raise ConfigError("dataset: 'columns' must map old field names to new ones, e.g. {conversations: messages}")
    return spec


def _label(path: Path, line: int, value: Any, candidates: tuple[str, ...], name: str) -> int:
    """A label is a candidate index or one of the candidate strings (compared with and without surrounding space)."""
    n = len(candidates)
    if isinstance(value, str):
        for match in (lambda c: c == value, lambda c: c.strip() == value.strip()):
            hits = [i for i, c in enumerate(candidates) if match(c)]
            if hits:
                return hits[0]
        if re.fullmatch(r"\s*[0-9]{1,9}\s*", value) and int(value) < n:  # CSV and TSV cells are always text
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    elif isinstance(value, float) and value.is_integer() and 0 <= value < n:  # parquet columns with nulls
        return int(value)
    msg = f"unknown label {value!r:.40}: neither an index below {n} nor one of {list(candidates)}"
    raise data_error(path, msg, line=line, field=name)


def classification_builder(spec: dict) -> Builder:
    template = Template(_str_key(spec, "template"), what="template")
    raw = spec.get("candidates")
    if not isinstance(raw, list) or len(raw) < 2:
        raise ConfigError("dataset: 'candidates' must be a list of at least two strings")
    candidates = [Template(c, what=f"candidates[{i}]") for i, c in enumerate(raw)]
    for i, c in enumerate(candidates):
        if not c.source:
            raise ConfigError(f"dataset: candidates[{i}] is empty; a candidate needs at least one token to score")
    label_field = _str_key(spec, "label_field")

    def build(path: Path, line: int, row: dict) -> Example:
        context = template.render(row, path=path, line=line)
        continuations = tuple(c.render(row, path=path, line=line) for c in candidates)
        for c, text in zip(candidates, continuations):
            if not text:
                where = c.fields[0] if c.fields else c.what
                raise data_error(path, "renders an empty candidate; nothing to score", line=line, field=where)
        if label_field not in row:
            raise data_error(path, "missing (named by label_field)", line=line, field=label_field)
        label = _label(path, line, row[label_field], continuations, label_field)
        return Example.shared_context(context, continuations, label, line=line, source=str(path))

    return build


def _answers(path: Path, line: int, row: dict, name: str) -> list[str]:
    if name not in row:
        raise data_error(path, "missing (named by answers_field)", line=line, field=name)
    value = row[name]
    values = value if isinstance(value, list) else [value]
    answers = [value_text({name: v}, name, path=path, line=line) for v in values]
    if not answers:
        raise data_error(path, "empty list of answers", line=line, field=name)
    return answers


def generation_builder(spec: dict) -> Builder:
    has_field, has_template = spec.get("prompt_field") is not None, spec.get("template") is not None
    if has_field == has_template:
        raise ConfigError("dataset: a generation dataset needs exactly one of 'prompt_field' and 'template'")
    template = Template(spec["template"]) if has_template else None
    prompt_field = _str_key(spec, "prompt_field", required=False)
    completion_field = _str_key(spec, "completion_field")
    answers_field = _str_key(spec, "answers_field", required=False)

    def build(path: Path, line: int, row: dict) -> Example:
        if template is not None:
            context = template.render(row, path=path, line=line)
        else:
            context = value_text(row, prompt_field, path=path, line=line, why="named by prompt_field")
        completion = value_text(row, completion_field, path=path, line=line, why="named by completion_field")
        if not completion:
            raise data_error(path, "empty completion; nothing to train on", line=line, field=completion_field)
        answers = _answers(path, line, row, answers_field) if answers_field else [completion]
        return Example((context,), (completion,), 0, dict(line=line, source=str(path), answers=answers))

    return build


def _chat_template(spec: dict, base_dir: str | Path | None) -> str | None:
    """dataset.chat_template: Jinja text, or the path of a .jinja file holding it."""
    value = spec.get("chat_template")
    if not value:
        return None
    if not str(value).endswith(".jinja"):
        return str(value)
    path = sources.resolve(str(value), base_dir)
    if not path.is_file():
        raise ConfigError(f"dataset.chat_template: {path} not found")
    return path.read_text(encoding="utf-8")


def load_user_task(
    spec: dict,
    *,
    n_train: int | None = 1000,
    n_dev: int | None = 100,
    n_test: int | None = 1000,
    seed: int = 0,
    base_dir: str | Path | None = None,
) -> TaskData:
    """Read a user dataset described by `spec`; relative paths are taken from `base_dir` (e.g. the config's
    folder), else from the working directory. Without `dev`, dev is sampled from train (disjoint); without
    `test`, the test split is empty."""
    spec = check_spec(spec)
    if spec["type"] == "sft":
        build = sft_builder(spec, _chat_template(spec, base_dir))
    else:
        build = (classification_builder if spec["type"] == "classification" else generation_builder)(spec)
    fmt, columns = spec.get("format"), spec.get("columns") or {}

    def read(key: str) -> tuple[list[Example] | None, str | None]:
        if not spec.get(key):
            return None, None
        value = spec[key]
        rows = sources.read_source(key, value, fmt, base_dir)
        examples = [build(where, line, sources.rename(where, line, row, columns)) for where, line, row in rows]
        source = sources.describe(value) if isinstance(value, dict) else str(sources.resolve(value, base_dir))
        return examples, source

    train, train_source = read("train")
    dev, dev_source = read("dev")
    test, test_source = read("test")
    name = spec.get("name") or "user"
    splits = split_protocol(
        name,
        train,
        test or [],
        train_source=train_source,
        eval_source=test_source or "(no test file)",
        n_train=n_train,
        n_dev=n_dev,
        n_test=n_test,
        seed=seed,
        dev_rows=dev,
        dev_source=dev_source,
    )
    return TaskData(name, *splits)
