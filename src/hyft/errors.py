"""User-facing errors: one clear line and a distinct exit code (2 bad input, 4 cannot write), never a traceback."""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2
EXIT_STORAGE = 4


class HyftError(Exception):
    """An error caused by the user's input (config, data, paths); the CLI prints it and exits 2."""

    exit_code = EXIT_USAGE


class ConfigError(HyftError):
    """A config key, type or combination is wrong."""


class DataError(HyftError):
    """A data file is malformed; names the file, line (1-based) and field."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = str(path), line, field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class StorageError(HyftError, OSError):
    """Writing the run's files failed (disk full, quota, I/O error); names the path. What was saved before is intact:
    the latest complete checkpoint stays the latest. Also an OSError, so code catching those still does."""

    exit_code = EXIT_STORAGE
