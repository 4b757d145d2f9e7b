"""One writer per output directory: an exclusive flock on DIR/.hyft.lock, held for as long as the process uses DIR.

The kernel drops a flock when the last descriptor of its open file goes away, which includes every kind of process
death (SIGKILL, OOM kill, a crash), so a lock can never stay stuck. The file itself is left in place (unlinking lock
files races with a process that opened it a moment earlier); what it records (pid, host, command, start time) is
only read to word the refusal. The descriptor is not inherited by subprocesses (Python opens files close-on-exec),
so a child that outlives its parent does not keep the parent's lock.

Within one process the lock is re-entrant: Trainer, `hyft train` and in-process compare cells may take the same
directory's lock more than once; it is released when the last holder releases it (or the process ends). flock is
advisory and local: it does not protect against writers that do not take it, and on some network filesystems it
only covers one host.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from hyft.errors import HyftError

NAME = ".hyft.lock"
_held: dict[str, list] = {}  # real path of the lock file -> [fd, count]


class DirectoryInUse(HyftError):
    """Another process holds the output directory's lock (exit 2: nothing was written)."""


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"pid {info['pid']} on {info['host']} ({info['command']}), started {info['started']}"
            if isinstance(info, dict)
            else "another process"
        )
    except (OSError, ValueError, KeyError):
        return "another process"  # it took the lock but has not written its details yet


def acquire(directory: str | Path, command: str) -> Path:
    """Take DIR's lock (creating DIR if needed) or raise DirectoryInUse naming the holder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NAME
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryInUse(
            f"{directory}: in use by {_describe(path)}; two writers would corrupt each other's checkpoints and "
            f"metrics. Wait for it to finish or stop it (its lock is {path}; it is released when that process ends, "
            "also when it is killed), or choose another output directory"
        ) from None
    except OSError:
        os.close(fd)
        raise
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "argv": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:  # best effort: the lock is the flock, not the text (a full disk must not stop the run here)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:
        pass
    _held[key] = [fd, 1]
    return path


def release(directory: str | Path) -> None:
    """Give one hold of DIR's lock back; the flock goes when the last one does."""
    key = os.path.realpath(Path(directory) / NAME)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        os.close(entry[0])  # closing the only descriptor releases the flock


def held(directory: str | Path) -> bool:
    """Whether this process holds DIR's lock."""
    return os.path.realpath(Path(directory) / NAME) in _held
