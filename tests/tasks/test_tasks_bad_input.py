"""Every kind of bad input is a DataError naming the file, the line and (where there is one) the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyft.errors import DataError
from hyft.tasks import load_task, load_user_task

RTE_OK = json.dumps({"premise": "It rained.", "hypothesis": "It was wet.", "label": "entailment", "idx": 0})
CLASSIFY = {"type": "classification", "template": "{text} It was", "candidates": [" bad", " good"], "label_field": "y"}
SIZES = dict(n_train=10, n_dev=0, n_test=0, seed=0)


def rte(line2: bytes):
    """An RTE train file whose second line is `line2`, loaded as the built-in task."""

    def write(root: Path) -> Path:
        (root / "rte").mkdir()
        (root / "rte/train.jsonl").write_bytes(RTE_OK.encode() + b"\n" + line2 + b"\n" + RTE_OK.encode() + b"\n")
        (root / "rte/val.jsonl").write_text(RTE_OK + "\n")
        load_task("rte", root, **SIZES)
        return root / "rte/train.jsonl"

    return write


def user(name: str, content: bytes, **spec):
    """A user dataset file `name` holding `content`, loaded with CLASSIFY updated by `spec`."""

    def write(root: Path) -> Path:
        (root / name).write_bytes(content)
        load_user_task({**CLASSIFY, "train": str(root / name), **spec}, **SIZES)
        return root / name

    return write


CSV_OK = b"text,y\nfine film,1\n"
CASES = {
    # kind: (loader, line, field or None where the input has no field to name)
    "malformed JSON line": (rte(b'{"premise": "x", "hypothesis": "y" "label": "entailment"}'), 2, "hypothesis"),
    "malformed CSV quoting": (user("d.csv", CSV_OK + b'"unclosed,0\n'), 3, None),
    "malformed TSV row": (user("d.tsv", b"text\ty\nfine\t1\ntoo\tmany\tcells\n"), 3, None),
    "missing field": (rte(b'{"premise": "x", "label": "entailment"}'), 2, "hypothesis"),
    "field of the wrong type": (rte(b'{"hypothesis": "y", "premise": 3, "label": "entailment"}'), 2, "premise"),
    "missing label field": (user("d.jsonl", b'{"text": "a"}\n'), 1, "y"),
    "unknown label": (rte(b'{"premise": "x", "hypothesis": "y", "label": "maybe"}'), 2, "label"),
    "unknown user label": (user("d.csv", CSV_OK + b"awful,neutral\n"), 3, "y"),
    "label index out of range": (user("d.jsonl", b'{"text": "a", "y": 2}\n'), 1, "y"),
    "empty file": (user("d.jsonl", b""), 1, None),
    "blank file": (user("d.jsonl", b"\n  \n"), 1, None),
    "header-only CSV": (user("d.csv", b"text,y\n"), 2, None),
    "template names a missing field": (user("d.jsonl", b'{"text": "a", "y": 0}\n', template="{review}"), 1, "review"),
    "template field is null": (user("d.jsonl", b'{"text": null, "y": 0}\n'), 1, "text"),
    "non-UTF-8 in a JSONL field": (
        rte(b'{"premise": "x", "hypothesis": "caf\xe9", "label": "entailment"}'),
        2,
        "hypothesis",
    ),
    "non-UTF-8 in a CSV cell": (user("d.csv", CSV_OK + b"caf\xe9 noir,0\n"), 3, "text"),
    "non-UTF-8 in a TSV cell": (user("d.tsv", b"text\ty\nok\t1\nok\t\xff\n"), 3, "y"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_names_file_line_and_field(kind, tmp_path):
    load, line, field = CASES[kind]
    with pytest.raises(DataError) as info:
        load(tmp_path)
    err, msg = info.value, str(info.value)
    name = {"rte": "train.jsonl"}.get(Path(err.path).parent.name, Path(err.path).name)
    assert Path(err.path).name == name and name in msg
    assert err.line == line and f":{line}:" in msg
    assert err.field == field
    if field:
        assert f"field '{field}'" in msg
    assert "\n" not in msg  # the CLI prints it as one line


def test_json_escape_making_a_lone_surrogate(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine \\ud83d\\ude00", "y": 0}\n{"text": "bad \\udc00", "y": 0}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'text': a \\u escape makes a lone surrogate"):
        load_user_task({**CLASSIFY, "train": str(path)}, **SIZES)
