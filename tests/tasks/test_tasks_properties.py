"""Property tests: whatever bytes a file holds, or whatever a template says, the readers and the renderer return a
result or raise DataError/ConfigError (one line for the CLI), never another exception."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hyft.errors import ConfigError, DataError
from hyft.tasks import load_user_task
from hyft.tasks.io import read_csv, read_jsonl, read_label_lines, read_tsv
from hyft.tasks.template import Template

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
USER_ERRORS = (DataError, ConfigError)

# Bytes that look like the formats more often than uniform noise: structure characters, quotes, separators,
# newlines, and a few invalid UTF-8 bytes.
FRAGMENTS = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\t", b"\n", b"\r\n", b" ", b"a", b"label", b"text", b"0", b"1",
     b"true", b"null", b"\\", b"\xff", b"\xe9", b"\xef\xbb\xbf", b'{"text": "x", "label": 1}', b"text,label", b"_"]
)  # fmt: skip
STRUCTURED = st.lists(FRAGMENTS, max_size=30).map(b"".join)
CONTENT = st.one_of(st.binary(max_size=200), STRUCTURED)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("prop")


def _consume(rows):
    out = list(rows)
    for line, row in out:
        assert isinstance(line, int) and line >= 1 and isinstance(row, dict)
    return out


@pytest.mark.parametrize(
    "suffix,reader",
    [
        (".jsonl", read_jsonl),
        (".csv", read_csv),
        (".tsv", read_tsv),
        (".tsv", lambda p: read_tsv(p, ("sentence", "label"))),
        (".lst", lambda p: [(n, {"label": v}) for n, v in read_label_lines(p)]),
    ],
)
@SETTINGS
@given(content=CONTENT)
def test_readers_return_rows_or_data_error(scratch, suffix, reader, content):
    path = scratch / f"f{suffix}"
    path.write_bytes(content)
    try:
        _consume(reader(path))
    except DataError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(["text", "label", "y", "a"]), JSON_VALUES), max_size=5))
def test_user_loader_on_arbitrary_json_rows(scratch, rows):
    path = scratch / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"type": "classification", "train": str(path), "template": "{text}", "candidates": ["0", " {a}"]}
    try:
        data = load_user_task({**spec, "label_field": "label"}, n_train=None, n_dev=0, n_test=0, seed=0)
    except USER_ERRORS:
        return
    assert all(0 <= e.label < 2 for e in data.train)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
@SETTINGS
@given(content=CONTENT)
def test_user_loader_on_arbitrary_bytes(scratch, suffix, content):
    path = scratch / f"user{suffix}"
    path.write_bytes(content)
    for spec in (
        {"type": "classification", "template": "{text}", "candidates": [" a", " b"], "label_field": "label"},
        {"type": "generation", "prompt_field": "text", "completion_field": "label"},
    ):
        with contextlib.suppress(USER_ERRORS):
            load_user_task({**spec, "train": str(path)}, n_train=None, n_dev=None, n_test=0, seed=0)


@SETTINGS
@given(
    source=st.text(alphabet=st.sampled_from("{}ab_-.[]!:0 \n"), max_size=20) | st.text(max_size=20),
    row=st.dictionaries(st.sampled_from(["a", "b", "a_b", "b-a", "0"]), JSON_VALUES, max_size=4),
)
def test_template_renders_or_raises_user_errors(source, row):
    try:
        template = Template(source)
    except ConfigError:
        return
    try:
        out = template.render(row, path="f.jsonl", line=3)
    except DataError as e:
        assert str(e).startswith("f.jsonl:3: field '")
        return
    assert isinstance(out, str)


@SETTINGS
@given(source=st.text(max_size=30))
def test_template_keeps_literal_text(source):
    assume("\0" not in source and "\1" not in source)
    try:
        template = Template(source)
    except ConfigError:
        return
    # rendering each field as its own placeholder gives back the source with {{ and }} unescaped
    out = template.render({f: "{" + f + "}" for f in template.fields}, path="f", line=1)
    assert out == source.replace("{{", "\0").replace("}}", "\1").replace("\0", "{").replace("\1", "}")
