"""Where a user split's rows come from: a file, a glob of files, or the HF `datasets` library.

    train: data/train.jsonl                                   one file (JSONL, CSV, TSV, parquet), hyft's readers
    train: data/shards/*.jsonl                                every match, sorted, hyft's readers
    train: {hf: data/saved}                                   a `Dataset.save_to_disk` directory (load_from_disk)
    train: {hf: HuggingFaceH4/no_robots, split: train}        a hub id or a dataset script/folder (load_dataset)
    train: {data_files: "data/*.parquet", split: train}       load_dataset's builder for the files' suffix

Every row comes with where it came from, (source, line, row), so that errors name it: the file and line for files,
`hf:ID[split]` and the 1-based row number for `datasets`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError
from hyft.tasks.io import data_error, read_rows

HF_KEYS = {"hf", "data_files", "split", "name", "revision", "format"}
DEFAULT_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
_BUILDERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def resolve(value: str | Path, base_dir: str | Path | None) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def is_glob(value: str) -> bool:
    return any(ch in value for ch in "*?[")


def describe(value: Any) -> str:
    if isinstance(value, dict):
        where = value.get("hf") or value.get("data_files")
        return f"hf:{where}[{value.get('split', '?')}]"
    return str(value)


def check_source(key: str, value: Any) -> None:
    if isinstance(value, (str, Path)):
        return
    if not isinstance(value, dict):
        raise ConfigError(f"dataset: '{key}' must be a path, a glob or a mapping with 'hf' or 'data_files', got "
                          f"{type(value).__name__}")  # fmt: skip
    unknown = sorted(set(value) - HF_KEYS)
    if unknown:
        raise ConfigError(f"dataset.{key}: unknown key(s) {unknown}; allowed: {sorted(HF_KEYS)}")
    if ("hf" in value) == ("data_files" in value):
        raise ConfigError(f"dataset.{key}: give exactly one of 'hf' (a hub id or directory) and 'data_files' (a glob)")
    for k in ("hf", "split", "name", "revision", "format"):
        if k in value and not isinstance(value[k], str):
            raise ConfigError(f"dataset.{key}.{k}: expected a string, got {type(value[k]).__name__}")


def read_source(
    key: str, value: Any, fmt: str | None, base_dir: str | Path | None
) -> Iterator[tuple[str | Path, int, dict[str, Any]]]:
    """(where, line, row) for every row of one split's source."""
    if isinstance(value, dict):
        yield from _read_hf(key, value, base_dir)
        return
    if isinstance(value, str) and is_glob(value):
        pattern = str(resolve(value, base_dir))
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise data_error(pattern, "the glob matches no file")
        for p in matches:
            for line, row in read_rows(p, fmt):
                yield Path(p), line, row
        return
    path = resolve(value, base_dir)
    for line, row in read_rows(path, fmt):
        yield path, line, row


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError("a dataset given by 'hf' or 'data_files' needs the datasets package: "
                          "pip install 'hyft[data]'") from None  # fmt: skip
    return datasets


def _is_saved(path: Path) -> bool:
    """A `save_to_disk` directory: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def load_hf(key: str, value: dict, base_dir: str | Path | None):
    """The `datasets.Dataset` a source mapping names."""
    datasets = _datasets()
    split = value.get("split", DEFAULT_SPLIT.get(key, "train"))
    where = describe({**value, "split": split})
    try:
        if "data_files" in value:
            files = value["data_files"]
            files = [files] if isinstance(files, str) else list(files)
            files = [str(resolve(f, base_dir)) for f in files]
            builder = value.get("format") or _BUILDERS.get(Path(files[0]).suffix.lower())
            if builder is None:
                raise ConfigError(f"dataset.{key}: cannot tell the builder from {files[0]!r}; set format: json, csv "
                                  "or parquet")  # fmt: skip
            kw = {"delimiter": "\t"} if builder == "csv" and files[0].endswith(".tsv") else {}
            return datasets.load_dataset(builder, data_files={split: files}, split=split, **kw), where
        local = resolve(value["hf"], base_dir)
        if local.is_dir() and _is_saved(local):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"dataset.{key}: {local} has splits {sorted(ds)}, not {split!r}; set split:")
                ds = ds[split]
            return ds, where
        # A hub id, or a local folder of data files / a dataset script: load_dataset's own resolution. Remote code
        # is never run (datasets 4 dropped scripts); offline mode is the user's HF_DATASETS_OFFLINE / HF_HUB_OFFLINE.
        target = str(local) if local.exists() else value["hf"]
        return datasets.load_dataset(target, value.get("name"), split=split, revision=value.get("revision")), where
    except ConfigError:
        raise
    except Exception as e:  # FileNotFoundError, datasets' DatasetNotFoundError, hub connection errors, ...
        detail = " ".join(str(e).split())[:200]
        raise data_error(where, f"datasets could not load it ({type(e).__name__}: {detail})") from None


def _read_hf(key: str, value: dict, base_dir) -> Iterator[tuple[str, int, dict[str, Any]]]:
    ds, where = load_hf(key, value, base_dir)
    if len(ds) == 0:
        raise data_error(where, "the dataset split has no rows", line=1)
    for i, row in enumerate(ds, start=1):
        yield where, i, dict(row)


def rename(where: str | Path, line: int, row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The row with columns renamed {old: new}, as `Dataset.rename_columns` takes them."""
    if not columns:
        return row
    out = dict(row)
    for old, new in columns.items():
        if old not in row:
            raise data_error(where, f"missing (renamed to '{new}' by columns; found {sorted(row)})", line=line,
                             field=old)  # fmt: skip
        out[new] = out.pop(old)
    return out
