"""User datasets declared in config: classification by template + candidates, generation by prompt/completion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyft.errors import ConfigError, DataError
from hyft.tasks import load_user_task
from hyft.tasks.template import Template

ALL = dict(n_train=None, n_dev=0, n_test=None, seed=0)
CLASSIFY = {
    "type": "classification",
    "template": "Review: {text}\nSentiment:",
    "candidates": [" negative", " positive"],
    "label_field": "label",
}


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_classification_jsonl_renders_template_and_labels(tmp_path):
    rows = [
        {"text": "loved it", "label": 1},
        {"text": "hated it", "label": "negative"},
        {"text": "ok", "label": " positive"},
    ]
    data = load_user_task({**CLASSIFY, "train": jsonl(tmp_path / "t.jsonl", rows)}, **ALL)
    by_line = {e.meta["line"]: e for e in data.train}
    assert by_line[1].contexts == ("Review: loved it\nSentiment:",) * 2
    assert by_line[1].continuations == (" negative", " positive")
    assert [by_line[i].label for i in (1, 2, 3)] == [1, 0, 1]  # index, stripped string, exact string
    assert by_line[1].meta["source"] == str(tmp_path / "t.jsonl")
    assert data.name == "user"


def test_classification_csv_with_quoted_multiline_cell(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\n"a film, long\nand slow",0\n"great, ""really""",positive\n')
    data = load_user_task({**CLASSIFY, "train": str(tmp_path / "t.csv")}, **ALL)
    by_line = {e.meta["line"]: e for e in data.train}
    assert sorted(by_line) == [2, 4]  # where each record starts
    assert by_line[2].contexts[0] == "Review: a film, long\nand slow\nSentiment:" and by_line[2].label == 0
    assert by_line[4].contexts[0] == 'Review: great, "really"\nSentiment:' and by_line[4].label == 1


def test_classification_tsv_and_format_override(tmp_path):
    (tmp_path / "t.txt").write_text("text\tlabel\nfine\t1\n")
    data = load_user_task({**CLASSIFY, "train": str(tmp_path / "t.txt"), "format": "tsv"}, **ALL)
    assert data.train[0].label == 1
    with pytest.raises(ConfigError, match="cannot tell the format"):
        load_user_task({**CLASSIFY, "train": str(tmp_path / "t.txt")}, **ALL)


def test_classification_parquet(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["good", "bad"], "label": [1, 0]}), tmp_path / "t.parquet")
    data = load_user_task({**CLASSIFY, "train": str(tmp_path / "t.parquet")}, **ALL)
    assert sorted((e.meta["line"], e.label) for e in data.train) == [(1, 1), (2, 0)]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet file"):
        load_user_task({**CLASSIFY, "train": str(tmp_path / "bad.parquet")}, **ALL)


def test_candidates_may_name_fields(tmp_path):
    row = {"premise": "The pond froze", "a": "it was cold.", "b": "ducks swam.", "answer": "it was cold."}
    spec = {**CLASSIFY, "template": "{premise} because", "candidates": [" {a}", " {b}"], "label_field": "answer"}
    ex = load_user_task({**spec, "train": jsonl(tmp_path / "t.jsonl", [row])}, **ALL).train[0]
    assert ex.contexts == ("The pond froze because",) * 2
    assert ex.continuations == (" it was cold.", " ducks swam.") and ex.label == 0


def test_splits_and_reports(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(10)])
    dev = jsonl(tmp_path / "dev.jsonl", [{"text": f"d{i}", "label": i % 2} for i in range(4)])
    test = jsonl(tmp_path / "test.jsonl", [{"text": f"e{i}", "label": i % 2} for i in range(5)])
    data = load_user_task({**CLASSIFY, "train": train, "dev": dev, "test": test}, n_train=6, n_dev=3, n_test=2, seed=1)
    assert [(r.split, r.source, r.rows_available, r.rows_used) for r in data.reports] == [
        ("train", train, 10, 6),
        ("dev", dev, 4, 3),
        ("test", test, 5, 2),
    ]
    # without dev and test files: dev is sampled from train, disjoint; test is empty
    data = load_user_task({**CLASSIFY, "train": train}, n_train=6, n_dev=3, n_test=2, seed=1)
    assert [(r.split, r.rows_used) for r in data.reports] == [("train", 6), ("dev", 3), ("test", 0)]
    assert data.reports[2].source == "(no test file)"
    assert not {e.meta["line"] for e in data.train} & {e.meta["line"] for e in data.dev}
    again = load_user_task({**CLASSIFY, "train": train}, n_train=6, n_dev=3, n_test=2, seed=1)
    assert again.train == data.train and again.dev == data.dev


def test_relative_paths_resolve_against_base_dir(tmp_path):
    jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": 0}])
    data = load_user_task({**CLASSIFY, "train": "t.jsonl", "name": "mine"}, base_dir=tmp_path, **ALL)
    assert data.name == "mine" and data.reports[0].source == str(tmp_path / "t.jsonl")


def test_generation_prompt_completion_and_answers(tmp_path):
    rows = [
        {"q": "Capital of France?", "a": " Paris", "alts": ["Paris", "paris, France"]},
        {"q": "2+2?", "a": " 4", "alts": "four"},
    ]
    path = jsonl(tmp_path / "qa.jsonl", rows)
    spec = {"type": "generation", "train": path, "prompt_field": "q", "completion_field": "a"}
    by_line = {e.meta["line"]: e for e in load_user_task(spec, **ALL).train}
    assert by_line[1].contexts == ("Capital of France?",) and by_line[1].continuations == (" Paris",)
    assert by_line[1].label == 0 and by_line[1].meta["answers"] == [" Paris"]
    by_line = {e.meta["line"]: e for e in load_user_task({**spec, "answers_field": "alts"}, **ALL).train}
    assert by_line[1].meta["answers"] == ["Paris", "paris, France"] and by_line[2].meta["answers"] == ["four"]
    spec = {"type": "generation", "train": path, "template": "Q: {q}\nA:", "completion_field": "a"}
    assert {e.contexts for e in load_user_task(spec, **ALL).train} == {("Q: Capital of France?\nA:",), ("Q: 2+2?\nA:",)}


def test_generation_errors(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", [{"q": "x", "a": ""}])
    spec = {"type": "generation", "train": path, "prompt_field": "q", "completion_field": "a"}
    with pytest.raises(DataError, match=r"qa.jsonl:1: field 'a': empty completion"):
        load_user_task(spec, **ALL)
    with pytest.raises(ConfigError, match="exactly one of 'prompt_field' and 'template'"):
        load_user_task({**spec, "template": "{q}"}, **ALL)
    with pytest.raises(DataError, match=r"qa.jsonl:1: field 'answers': missing \(named by answers_field\)"):
        load_user_task({**spec, "completion_field": "q", "answers_field": "answers"}, **ALL)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"type": "regression"}, r"'type' must be one of \['classification', 'generation', 'sft'\]"),
        ({"prompt_field": "x"}, r"unknown key\(s\) \['prompt_field'\] for type classification"),
        ({"train": None}, "'train' .* is required"),
        ({"train": 3}, "'train' must be a path, a glob or a mapping"),
        ({"candidates": [" only"]}, "at least two strings"),
        ({"candidates": [" a", 2]}, r"candidates\[1\] must be a string"),
        ({"candidates": [" a", ""]}, r"candidates\[1\] is empty"),
        ({"label_field": ""}, "'label_field' must be a non-empty string"),
        ({"template": "{text.upper}"}, r"'\{text.upper\}' at column 1 is not a placeholder"),
        ({"template": "{text[0]}"}, "is not a placeholder"),
        ({"template": "{text!r}"}, "is not a placeholder"),
        ({"template": "{text:>9}"}, "is not a placeholder"),
        ({"template": "{0}"}, "is not a placeholder"),
        ({"template": "{}"}, "is not a placeholder"),
        ({"template": "{text"}, r"'\{text' at column 1 is not a placeholder"),
        ({"template": "text}"}, r"'\}' at column 5 is not a placeholder"),
        ({"template": ["{text}"]}, "must be a non-empty string"),
    ],
)
def test_spec_errors(change, message, tmp_path):
    spec = {**CLASSIFY, "train": jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": 0}]), **change}
    with pytest.raises(ConfigError, match=message):
        load_user_task(spec, **ALL)


def test_spec_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_user_task(["train.jsonl"], **ALL)


def test_template_placeholders_and_literal_braces():
    t = Template('{{"json": {text}}} and {question-id}')
    assert t.fields == ("text", "question-id")
    assert t.render({"text": 1.5, "question-id": True}, path="f", line=1) == '{"json": 1.5} and True'


def test_field_values_never_go_through_format():
    # a value that looks like a placeholder is inserted as text, not expanded
    assert Template("{a}").render({"a": "{b.__class__}"}, path="f", line=1) == "{b.__class__}"
