"""The files a study (hyft compare, hyft sweep) writes and reads: atomic writes, CSV text, a cell's curve.jsonl."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that a reader (or a rerun after a kill) sees the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_temporaries(folder: Path) -> None:
    """Temporary copies left by a kill in the middle of write_atomic or save_figure."""
    for p in folder.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def csv_text(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in fields})
    return buf.getvalue()


def read_curve(d: Path) -> list[dict[str, Any]]:
    p = d / "curve.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
