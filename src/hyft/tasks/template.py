"""`{field}` substitution for user-written templates.

Deliberately not str.format: a template comes from a config file, and format's `{x.attr}`, `{x[0]}`, `{x!r}` and
`{x:spec}` would let it reach into objects or fail in surprising ways. Only `{name}` is a placeholder; `{{` and
`}}` are literal braces; anything else between braces is a ConfigError when the template is read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError
from hyft.tasks.io import data_error

# A field name: a letter or underscore, then letters, digits, '_' or '-' (so CSV headers like "question-text" work).
NAME = re.compile(r"[^\W\d][\w-]*")


class Template:
    def __init__(self, source: str, *, what: str = "template"):
        if not isinstance(source, str):
            raise ConfigError(f"{what} must be a string, got {type(source).__name__}")
        self.source, self.what = source, what
        self.parts: list[tuple[bool, str]] = []  # (is_placeholder, text or field name)
        literal, i = [], 0
        while i < len(source):
            ch, nxt = source[i], source[i + 1 : i + 2]
            if ch in "{}" and nxt == ch:
                literal.append(ch)
                i += 2
            elif ch == "{":
                end = source.find("}", i + 1)
                name = source[i + 1 : end] if end >= 0 else None
                if name is None or not NAME.fullmatch(name):
                    raise self._bad(i, source[i : end + 1] if end >= 0 else source[i:])
                if literal:
                    self.parts.append((False, "".join(literal)))
                    literal = []
                self.parts.append((True, name))
                i = end + 1
            elif ch == "}":
                raise self._bad(i, "}")
            else:
                literal.append(ch)
                i += 1
        if literal:
            self.parts.append((False, "".join(literal)))

    def _bad(self, i: int, found: str) -> ConfigError:
        return ConfigError(
            f"{self.what}: {found[:40]!r} at column {i + 1} is not a placeholder; only {{field_name}} "
            "(letters, digits, '_', '-') is allowed; write {{ or }} for a literal brace"
        )

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(text for is_field, text in self.parts if is_field)

    def render(self, row: dict[str, Any], *, path: str | Path, line: int) -> str:
        out = []
        for is_field, text in self.parts:
            out.append(value_text(row, text, path=path, line=line, why=f"named by {self.what}") if is_field else text)
        return "".join(out)


def value_text(row: dict[str, Any], name: str, *, path: str | Path, line: int, why: str = "") -> str:
    """row[name] as text: strings as they are, numbers and booleans printed; null and nested values are errors."""
    if name not in row:
        raise data_error(path, f"missing{' (' + why + ')' if why else ''}", line=line, field=name)
    value = row[name]
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    found = "null" if value is None else type(value).__name__
    raise data_error(path, f"expected text or a number, found {found}", line=line, field=name)
