"""The checkpoint directory format: where checkpoints are, atomic writing, and the COMPLETE marker with the size and
sha256 of every file (what makes a directory a checkpoint). Knows nothing of tensors or of the Trainer.

Writing goes to a temporary sibling directory; every file is fsynced, the marker is written last, then one
os.rename makes the checkpoint visible. Readers only accept directories whose marker lists files of the recorded
sizes and checksums, so a crash at any point can leave garbage (a .tmp-* directory) but never a checkpoint that resume
would pick, and a file torn or changed afterwards is named instead of loaded. A write that fails (disk full) removes
its temporary directory and raises StorageError (exit 4); the previous checkpoint stays the latest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyft.errors import HyftError, StorageError

FORMAT = "hyft-checkpoint/1"
MARKER = "COMPLETE"
SUBDIR = "checkpoints"
PREFIX = "step-"


class CheckpointError(HyftError):
    """A checkpoint, ledger or weights file is missing, incomplete, corrupt or does not fit the model."""


# -- where checkpoints are ---------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SUBDIR / f"{PREFIX}{step:08d}"


def step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX):
        return None
    try:
        return int(name[len(PREFIX) :])
    except ValueError:
        return None


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (directories without the completion marker are ignored)."""
    root = Path(run_dir) / SUBDIR
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if p.is_dir() and (s := step_of(p)) is not None and is_complete(p)]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest complete checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if (path / MARKER).is_file():
        return path
    if step_of(path) is not None and path.parent.name == SUBDIR:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER} marker: its writing was interrupted)")
    found = list_checkpoints(path)
    if not found:
        root = path / SUBDIR
        partial = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        extra = f" (incomplete: {', '.join(partial)})" if partial else ""
        raise CheckpointError(f"{path}: no complete checkpoint in {root}{extra}")
    return found[-1]


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_verified: dict[str, tuple] = {}  # checkpoint -> the stat of its files when their checksums last matched


def verify(ckpt: Path, *, checksums: bool = True) -> dict[str, Any]:
    """The marker's contents after checking that every file it lists exists with its recorded size and (markers
    written since checksums were added; older ones have sizes only) its recorded sha256. The error names the file
    and, in a run directory, the newest older checkpoint that passes and the command that resumes from it."""
    try:
        return _check(ckpt, checksums)
    except CheckpointError as e:
        step = step_of(ckpt)
        if step is None or ckpt.parent.name != SUBDIR:
            raise
        older = [c for c in list_checkpoints(ckpt.parent.parent) if (step_of(c) or 0) < step and _passes(c)]
        hint = (
            f"; the previous checkpoint passes every check: continue from it with  hyft train --resume {older[-1]}"
            if older
            else "; no older checkpoint passes the checks either"
        )
        raise CheckpointError(f"{e}{hint}") from None


def _passes(c: Path) -> bool:
    try:
        _check(c, True)
        return True
    except CheckpointError:
        return False


def _check(ckpt: Path, checksums: bool) -> dict[str, Any]:
    marker = ckpt / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{marker}: unreadable completion marker ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("files"), dict):
        raise CheckpointError(f"{marker}: not a {FORMAT} completion marker")
    stats = []
    for rel, size in info["files"].items():
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint")
        st = f.stat()
        if st.st_size != size:
            raise CheckpointError(f"{f}: {st.st_size} bytes, the checkpoint recorded {size} (truncated or modified)")
        stats.append((rel, st.st_ino, st.st_size, st.st_mtime_ns))
    sums = info.get("sha256")
    if not checksums or not isinstance(sums, dict):
        return info
    key, state = os.path.realpath(ckpt), tuple(stats)
    if _verified.get(key) == state:  # resume reads a checkpoint three times; hash its files once
        return info
    for rel in info["files"]:
        if rel in sums and sha256_file(ckpt / rel) != sums[rel]:
            raise CheckpointError(
                f"{ckpt / rel}: sha256 differs from the one recorded when the checkpoint was written (the file was "
                "corrupted or modified since)"
            )
    _verified[key] = state
    return info


def run_dir_of(path: str | Path) -> Path:
    """The run directory of `path`: itself, or the run a checkpoint directory (RUN/checkpoints/step-N) belongs to."""
    path = Path(path)
    if step_of(path) is not None and path.parent.name == SUBDIR:
        return path.parent.parent
    return path


def set_aside_damaged(run_dir: str | Path, after: int, warn=None) -> list[Path]:
    """Rename the checkpoints newer than step `after` that fail verify() to corrupt-step-N: a run resumed from an
    older checkpoint then never picks them, keep_checkpoints does not count them (so it cannot prune good ones in
    their favour), and they stay on disk for inspection. Returns the new paths."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    moved = []
    for c in list_checkpoints(run_dir):
        if (step_of(c) or 0) <= after or _passes(c):
            continue
        dest, n = c.parent / f"corrupt-{c.name}", 1
        while dest.exists():
            n += 1
            dest = c.parent / f"corrupt-{c.name}.{n}"
        os.rename(c, dest)
        moved.append(dest)
        warn(f"[hyft] warning: moved the damaged checkpoint {c} to {dest} (never resumed; delete it when done)")
    return moved


# -- atomic writing ----------------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error(e: BaseException) -> OSError | None:
    """`e` as an OSError when it is one, or when a native writer reported one in its text (safetensors and tokenizers
    raise e.g. SafetensorError("... I/O error: No space left on device (os error 28)") instead)."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"\(os error (\d+)\)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def storage_error(e: OSError, path: Path, what: str, then: str = "") -> StorageError:
    where = e.filename or path
    hint = " (disk full: free space, then run again)" if e.errno in (28, 122) else ""  # ENOSPC, EDQUOT
    err = StorageError(f"{where}: cannot write {what}: {e.strerror or e}{hint}{then}")
    err.errno = e.errno
    return err


def write_text_atomically(path: Path, text: str, what: str | None = None) -> None:
    """Replace `path` by `text` all at once: a failure (disk full) leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(e, path, what or path.name, f"; {path} is unchanged") from None


def restore_moved_aside(run_dir: str | Path) -> None:
    """Put back a checkpoint that a crash while replacing it (the same step written again) left moved aside as
    .old-step-N-PID with no step-N: before a resume looks for the latest one. Only the directory's lock holder."""
    root = Path(run_dir) / SUBDIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".old-"):
                final = root / p.name[len(".old-") :].rsplit("-", 1)[0]
                if step_of(final) is not None and not final.exists() and is_complete(p):
                    os.rename(p, final)


def remove_stale(run_dir: str | Path) -> None:
    """Delete temporary directories left by a crash while writing a checkpoint (after restore_moved_aside)."""
    restore_moved_aside(run_dir)
    root = Path(run_dir) / SUBDIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True)


def _delete(path: Path) -> None:
    """Remove the marker first (and make that durable), so a crash mid-delete leaves no checkpoint behind."""
    marker = path / MARKER
    if marker.exists():
        marker.unlink()
        _fsync(path)
    shutil.rmtree(path, ignore_errors=True)


def _marker(tmp: Path, step: int) -> None:
    files: dict[str, int] = {}
    sums: dict[str, str] = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            _fsync(f)
            rel = f.relative_to(tmp).as_posix()
            files[rel] = f.stat().st_size
            sums[rel] = sha256_file(f)  # read back from the page cache: ~0.4 s per 540 MB (docs/guarantees.md)
    text = json.dumps({"format": FORMAT, "step": step, "files": files, "sha256": sums}, indent=1)
    with open(tmp / MARKER, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    for d in sorted({f.parent for f in tmp.rglob("*")} | {tmp}, key=lambda p: -len(p.parts)):
        _fsync(d)


def write_atomically(run_dir: str | Path, step: int, fill: Callable[[Path], None], keep: int) -> Path:
    """Create checkpoint `step` by fill(tmp_dir), fsync, marker last, rename; then keep only the last `keep`.

    Any failure removes the temporary directory (and puts back a checkpoint of the same step it was replacing); an
    OSError (also one a native writer reports, e.g. disk full) becomes a StorageError naming the path.
    """
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    old = root / f".old-{final.name}-{os.getpid()}"
    moved = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        fill(tmp)
        _marker(tmp, step)
        if final.exists():  # the same step again (e.g. resumed from an older checkpoint): swap the old one out first
            os.rename(final, old)
            moved = True
        os.rename(tmp, final)
        _fsync(root)
    except BaseException as e:
        if moved and not final.exists():
            with contextlib.suppress(OSError):
                os.rename(old, final)
        elif moved:  # the new one is in place (only the directory fsync failed)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        err = os_error(e)
        if err is None:
            raise
        latest = list_checkpoints(run_dir)
        then = (
            f"; the latest complete checkpoint is still {latest[-1]} (resume from it: hyft train --resume {run_dir})"
            if latest
            else "; no complete checkpoint was written before"
        )
        raise storage_error(err, tmp, f"checkpoint step {step}", then) from None
    if moved:
        shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(run_dir)[: -keep if keep > 0 else None]:
        if stale != final:
            _delete(stale)
    return final
