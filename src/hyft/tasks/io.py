"""Readers for the original file formats that report the file, line and field of any bad input.

Every reader yields `(line, row)` pairs, where `line` is the 1-based line the row starts on (for parquet, the
1-based row number), so that any later check on the row can name where it came from. Anything wrong with the
bytes themselves raises DataError here; nothing else escapes (the property tests hold the readers to that).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError, DataError

_BOM = b"\xef\xbb\xbf"
_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')
# Far above any real cell; csv's default (128 KiB) is smaller than some SuperGLUE passages.
csv.field_size_limit(64 * 1024 * 1024)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def data_error(path: str | Path, message: str, *, line: int | None = None, field: str | None = None) -> DataError:
    """A DataError whose message stays one printable line even when a field name or value came from the file."""
    return DataError(path, _printable(message), line=line, field=None if field is None else _printable(field))


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes without a UTF-8 byte-order mark; an empty (or all-blank) file is an error."""
    path = Path(path)
    if not path.exists():
        raise data_error(path, "file not found")
    if not path.is_file():
        raise data_error(path, "not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise data_error(path, f"cannot read ({e.strerror})") from None
    raw = raw[len(_BOM) :] if raw.startswith(_BOM) else raw
    if not raw.strip():
        raise data_error(path, "file is empty", line=1)
    return raw


def _decode(raw: bytes) -> tuple[str, str | None]:
    """Text, and where its first invalid byte is (None if valid). Invalid bytes survive as lone surrogates so the
    caller can still parse the line and say which field holds them."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", "surrogateescape"), f"byte 0x{raw[e.start]:02X} at column {e.start + 1}"


def _has_escape(text: str, low: str = "\udc80") -> bool:
    """Whether `text` holds a lone surrogate at or above `low`: by default only U+DC80..U+DCFF, the undecodable bytes
    kept by surrogateescape; from U+D800, also those that JSON escapes such as \\udc00 produce, which no tokenizer
    can encode."""
    return any(low <= ch <= "\udfff" for ch in text)


def _escaped_field(value: Any, prefix: str = "", low: str = "\udc80") -> str | None:
    """The dotted path of the first string (or key) in `value` that holds a lone surrogate (see _has_escape)."""
    if isinstance(value, str):
        return prefix if prefix and _has_escape(value, low) else None
    if isinstance(value, dict):
        for k, v in value.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if _has_escape(str(k), low):
                return name
            found = _escaped_field(v, name, low)
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _escaped_field(v, f"{prefix}[{i}]", low)
            if found:
                return found
    return None


def _not_utf8(path: Path, lineno: int, where: str, field: str | None) -> DataError:
    return data_error(path, f"not valid UTF-8 ({where})", line=lineno, field=field)


def _bad_byte(value: str) -> str:
    """Where the first undecodable byte sits in a cell, e.g. 'byte 0xE9 at character 4'."""
    i = next(i for i, ch in enumerate(value) if "\udc80" <= ch <= "\udcff")
    return f"byte 0x{ord(value[i]) - 0xDC00:02X} at character {i + 1}"


def _last_key(prefix: str) -> str | None:
    """The last object key that starts before a JSON syntax error: a hint at where in a long line to look."""
    keys = _KEY.findall(prefix)
    return keys[-1] if keys else None


def _lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    for lineno, line in enumerate(read_bytes(path).split(b"\n"), start=1):
        if line.strip():
            text, bad = _decode(line.rstrip(b"\r"))
            yield lineno, text, bad


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    path = Path(path)
    for lineno, line, bad in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if bad is not None:
                raise _not_utf8(path, lineno, bad, None) from None
            near = _last_key(line[: e.pos])
            msg = f"malformed JSON ({e.msg} at column {e.colno}{', after this field' if near else ''})"
            raise data_error(path, msg, line=lineno, field=near) from None
        except (ValueError, RecursionError) as e:  # e.g. an integer too long to convert, nesting too deep
            raise data_error(path, f"malformed JSON ({type(e).__name__}: {str(e)[:80]})", line=lineno) from None
        if bad is not None:
            raise _not_utf8(path, lineno, bad, _escaped_field(obj))
        if "\\ud" in line.lower():
            where = _escaped_field(obj, low="\ud800")
            if where:
                raise data_error(path, "a \\u escape makes a lone surrogate, not a character", line=lineno, field=where)
        if not isinstance(obj, dict):
            raise data_error(path, f"expected a JSON object, found {type(obj).__name__}", line=lineno)
        yield lineno, obj


def _header(path: Path, cells: list[str], lineno: int, columns: tuple[str, ...]) -> list[str]:
    for i, name in enumerate(cells):
        if _has_escape(name):
            raise _not_utf8(path, lineno, _bad_byte(name), f"column {i + 1} of the header")
        if not name.strip():
            raise data_error(path, f"header column {i + 1} has no name", line=lineno)
        if name in cells[:i]:
            raise data_error(path, "header names this column twice", line=lineno, field=name)
    for col in columns:
        if col not in cells:
            raise data_error(path, f"header lacks column (found {cells})", line=lineno, field=col)
    return cells


def _table(path: Path, records: Iterator[tuple[int, list[str]]], columns: tuple[str, ...], sep: str):
    header, n, lineno = None, 0, 0
    for lineno, cells in records:
        if header is None:
            header = _header(path, cells, lineno, columns)
            continue
        if len(cells) != len(header):
            what = "tab-separated" if sep == "\t" else "comma-separated"
            raise data_error(path, f"expected {len(header)} {what} cells, found {len(cells)}", line=lineno)
        row = dict(zip(header, cells))
        for name, value in row.items():
            if _has_escape(value):
                raise _not_utf8(path, lineno, _bad_byte(value), name)
        n += 1
        yield lineno, row
    if header is None:
        raise data_error(path, "file has no header line", line=1)
    if n == 0:
        raise data_error(path, "no data rows after the header", line=lineno + 1)


def read_tsv(path: str | Path, columns: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """A TSV (GLUE style: no quoting) with a header line that must name at least `columns`."""
    path = Path(path)
    records = ((lineno, line.split("\t")) for lineno, line, _ in _lines(path))
    yield from _table(path, records, columns, "\t")


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    text, _ = _decode(read_bytes(path))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines; report where the record starts
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise data_error(path, f"malformed CSV ({e})", line=start) from None
        if cells and any(c.strip() for c in cells):
            yield start, cells


def read_csv(path: str | Path, columns: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """A CSV (RFC 4180 quoting) with a header line; blank lines are skipped."""
    path = Path(path)
    yield from _table(path, _csv_records(path), columns, ",")


def read_parquet(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file; the 'line' is the 1-based row number."""
    path = Path(path)
    read_bytes(path)  # same not-found / empty-file errors as the text formats
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading parquet needs pyarrow: pip install 'hyft[data]'") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        detail = " ".join(str(e).split())[:80]
        raise data_error(path, f"not a readable parquet file ({type(e).__name__}: {detail})") from None
    if not rows:
        raise data_error(path, "parquet file has no rows", line=1)
    yield from enumerate(rows, start=1)


FORMATS = {"jsonl": read_jsonl, "csv": read_csv, "tsv": read_tsv, "parquet": read_parquet}
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def read_rows(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a user file in the format named, else the one its suffix says."""
    path = Path(path)
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError(f"{path}: cannot tell the format from the suffix; set format: to one of {list(FORMATS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {list(FORMATS)}")
    return FORMATS[fmt](path)


def read_label_lines(path: str | Path) -> list[tuple[int, str]]:
    """One label per line (WinoGrande's `-labels.lst`); a blank line inside the file would shift every later
    label, so only trailing blank lines are allowed."""
    path = Path(path)
    lines = read_bytes(path).split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for lineno, raw in enumerate(lines, start=1):
        text, bad = _decode(raw.strip())
        if bad is not None:
            raise _not_utf8(path, lineno, bad, "label")
        if not text:
            raise data_error(path, "blank line inside the labels file", line=lineno, field="label")
        out.append((lineno, text))
    return out


def expect(path: Path | str, lineno: int, value: Any, kind: type | tuple[type, ...], where: str):
    """`value` (found at field `where`), checked for type."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise data_error(
            path,
            f"expected {'/'.join(k.__name__ for k in kinds)}, found {type(value).__name__} {value!r:.40}",
            line=lineno,
            field=where,
        )
    return value


def field(
    path: Path | str,
    lineno: int,
    row: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...] = str,
    *,
    where: str | None = None,
):
    """row[name], checked for presence and type. `where` names the field in errors when it is nested."""
    if name not in row:
        raise data_error(path, "missing", line=lineno, field=where or name)
    return expect(path, lineno, row[name], kind, where or name)


def text(path: Path | str, lineno: int, row: dict[str, Any], name: str, *, where: str | None = None) -> str:
    """row[name] as stripped, non-empty text."""
    value = field(path, lineno, row, name, where=where).strip()
    if not value:
        raise data_error(path, "empty text", line=lineno, field=where or name)
    return value


def label_index(path: Path | str, lineno: int, value: Any, labels: dict[Any, int], name: str = "label") -> int:
    # A JSON `true` must not match a label key 1 (True == 1 in Python), nor 1.0 match 1.
    if isinstance(value, (bool, int, float)) and not any(type(k) is type(value) for k in labels):
        value_ok = False
    else:
        try:
            value_ok = value in labels
        except TypeError:  # an unhashable value (a list or object)
            value_ok = False
    if not value_ok:
        raise data_error(path, f"unknown label {value!r:.40} (expected one of {list(labels)})", line=lineno, field=name)
    return labels[value]


def row_label(
    path: Path | str, lineno: int, row: dict[str, Any], labels: dict[Any, int], name: str = "label", *, where=None
) -> int:
    """The candidate index for row[name], which must be present and one of `labels`."""
    if name not in row:
        raise data_error(path, "missing", line=lineno, field=where or name)
    return label_index(path, lineno, row[name], labels, where or name)
