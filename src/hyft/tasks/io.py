"""Readers for the original file formats that report the file, line and field of any bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hyft.errors import DataError


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(path, "file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(path, "file is empty")
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataError(path, f"not valid UTF-8 (byte {e.start})", line=lineno) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    path = Path(path)
    for lineno, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, "expected a JSON object", line=lineno)
        yield lineno, obj


def read_tsv(path: str | Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """A TSV with a header line that must name at least `columns`."""
    path = Path(path)
    it = _lines(path)
    _, header_line = next(it)
    header = header_line.split("\t")
    for col in columns:
        if col not in header:
            raise DataError(path, f"header lacks column (found {header})", line=1, field=col)
    for lineno, line in it:
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataError(path, f"expected {len(header)} tab-separated cells, found {len(cells)}", line=lineno)
        yield lineno, dict(zip(header, cells))


def field(path: Path | str, lineno: int, row: dict[str, Any], name: str, kind: type | tuple[type, ...] = str):
    """row[name], checked for presence and type."""
    if name not in row:
        raise DataError(path, "missing", line=lineno, field=name)
    value = row[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise DataError(
            path,
            f"expected {'/'.join(k.__name__ for k in kinds)}, found {type(value).__name__} {value!r:.40}",
            line=lineno,
            field=name,
        )
    return value


def label_index(path: Path | str, lineno: int, value: Any, labels: dict[Any, int], name: str = "label") -> int:
    if value not in labels:
        raise DataError(path, f"unknown label {value!r:.40} (expected one of {list(labels)})", line=lineno, field=name)
    return labels[value]
