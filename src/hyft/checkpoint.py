"""Checkpoints: everything a bit-exact resume and an export need, in safetensors + JSON (no pickle), written atomically.

A hybrid run changes the base model, so a checkpoint holds the base tensors that can change (ZO- and FO-updated),
not only the adapter. Layout of OUTPUT_DIR/checkpoints/step-00000120/ (docs/checkpoints.md):

    base/           the changeable base tensors under their Hugging Face names, HF sharded layout
                    (model-0000i-of-0000n.safetensors + model.safetensors.index.json whose "hyft" entry says which
                    tensors are ZO / FO and whether the set is the whole model) and the model's config.json
    adapter/        the PEFT module in peft's layout (adapter_config.json + adapter_model.safetensors)
    tokenizer/      the tokenizer (save_pretrained)
    optimizer.*     optimizer state: tensors in .safetensors, the rest in .json
    scheduler.json  learning-rate scheduler state
    trainer.*       step, data order, metric window, guard, elapsed time; the global torch RNG as uint8 tensors
    ledger.json     the seed ledger: every ZO update as (step, lr, weight decay, coefficients)
    config.yaml     the resolved run config
    COMPLETE        written last: format, step, the size and the sha256 of every file above

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
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyft.errors import HyftError, StorageError

FORMAT = "hyft-checkpoint/1"
MARKER = "COMPLETE"
SUBDIR = "checkpoints"
PREFIX = "step-"
SHARD_BYTES = 2 * 1024**3
INDEX = "model.safetensors.index.json"


class CheckpointError(HyftError):
    """A checkpoint, ledger or weights file is missing, incomplete, corrupt or does not fit the model."""


# -- where checkpoints are ---------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SUBDIR / f"{PREFIX}{step:08d}"


def _step_of(path: Path) -> int | None:
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
    found = [(s, p) for p in root.iterdir() if p.is_dir() and (s := _step_of(p)) is not None and is_complete(p)]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest complete checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if (path / MARKER).is_file():
        return path
    if _step_of(path) is not None and path.parent.name == SUBDIR:
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
        step = _step_of(ckpt)
        if step is None or ckpt.parent.name != SUBDIR:
            raise
        older = [c for c in list_checkpoints(ckpt.parent.parent) if (_step_of(c) or 0) < step and _passes(c)]
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
    if _step_of(path) is not None and path.parent.name == SUBDIR:
        return path.parent.parent
    return path


def set_aside_damaged(run_dir: str | Path, after: int, warn=None) -> list[Path]:
    """Rename the checkpoints newer than step `after` that fail verify() to corrupt-step-N: a run resumed from an
    older checkpoint then never picks them, keep_checkpoints does not count them (so it cannot prune good ones in
    their favour), and they stay on disk for inspection. Returns the new paths."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    moved = []
    for c in list_checkpoints(run_dir):
        if (_step_of(c) or 0) <= after or _passes(c):
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
                if _step_of(final) is not None and not final.exists() and is_complete(p):
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


# -- safetensors with checks -------------------------------------------------------------------------------------------
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ / zip (torch.save) archives


def check_safetensors(path: Path) -> dict[str, Any]:
    """The header of a safetensors file, after checking it is one and is not truncated (reads the header only)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if any(head.startswith(m) for m in _PICKLE_MAGIC):
                raise CheckpointError(
                    f"{path}: a pickle / torch.save file where safetensors belong; hyft never unpickles weights "
                    "(convert it with safetensors first)"
                )
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 1024**2:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            if 8 + n > size:
                raise CheckpointError(f"{path}: truncated ({size} bytes, its header alone needs {8 + n})")
            header = json.loads(fh.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (corrupt header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (corrupt header)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated ({size} bytes, its header needs {8 + n + end})")
    return header


def read_tensors(path: Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    header = check_safetensors(path)
    wanted = [k for k in header if k != "__metadata__"] if names is None else list(names)
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in wanted}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors ({e})") from None


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


# -- JSON + safetensors for nested state (optimizer, scheduler, trainer) -----------------------------------------------
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(obj):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(state: Any, directory: Path, name: str) -> None:
    """name.json (structure and scalars) + name.safetensors (every tensor, referenced from the JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    (directory / f"{name}.json").write_text(json.dumps(tree, indent=1), encoding="utf-8")
    if tensors:
        write_tensors(tensors, directory / f"{name}.safetensors")


def load_state(directory: Path, name: str) -> Any:
    path = directory / f"{name}.json"
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    st = directory / f"{name}.safetensors"
    tensors = read_tensors(st) if st.exists() else {}
    try:
        return _decode(tree, tensors)
    except KeyError as e:
        raise CheckpointError(f"{path}: refers to tensor {e} missing from {name}.safetensors") from None


# -- base tensors under their Hugging Face names -----------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) and hasattr(model, "peft_config") else model


def base_names(model: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> dict[int, str]:
    """id(param) -> its name in the plain HF model (peft's `.base_layer` removed), for every base parameter.

    Tied tensors appear once, under their first name. `exclude` (the adapter's tensors) are left out.
    """
    skip = {id(p) for p in exclude}
    out: dict[int, str] = {}
    for name, p in unwrap(model).named_parameters():
        if id(p) not in skip and id(p) not in out:
            out[id(p)] = name.replace(".base_layer.", ".")
    return out


def save_hf_weights(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    *,
    extra: dict[str, Any] | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> int:
    """Write tensors in the HF sharded safetensors layout (+ index with an optional "hyft" entry); total bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_tensors(shard, directory / fname, metadata={"format": "pt"})
        total += (directory / fname).stat().st_size
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    index["weight_map"] = weight_map
    if extra:
        index["hyft"] = extra
    (directory / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return total


def read_index(directory: Path) -> dict[str, Any]:
    path = directory / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AssertionError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable weights index ({type(e).__name__}: {e})") from None
    return index


def load_hf_weights(directory: Path, params: dict[str, nn.Parameter], *, exact_set: bool = True) -> list[str]:
    """Copy the tensors of an HF sharded directory into `params` (by name), checking names, shapes and dtypes.

    exact_set: the directory must hold exactly `params` (a resume), else a subset of them is fine. Returns the names.
    """
    index = read_index(directory)
    weight_map: dict[str, str] = index["weight_map"]
    unknown = sorted(set(weight_map) - set(params))
    if unknown:
        raise CheckpointError(
            f"{directory}: holds {len(unknown)} tensors the model does not have or does not update "
            f"(e.g. {unknown[0]!r}); was it written for another model or method?"
        )
    missing = sorted(set(params) - set(weight_map))
    if exact_set and missing:
        raise CheckpointError(
            f"{directory}: lacks {len(missing)} tensors this run updates (e.g. {missing[0]!r}); "
            "was it written for another method or zo.include/exclude?"
        )
    by_file: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        by_file.setdefault(fname, []).append(name)
    for fname, names in sorted(by_file.items()):
        path = directory / fname
        header = check_safetensors(path)
        for name in names:
            if name not in header:
                raise CheckpointError(f"{path}: tensor {name!r} listed in the index is not in the file")
        for name, value in read_tensors(path, names).items():
            p = params[name]
            if tuple(value.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {list(value.shape)}, the model's is {list(p.shape)}"
                )
            if value.dtype != p.dtype:
                raise CheckpointError(
                    f"{path}: tensor {name!r} is {str(value.dtype)[6:]}, the model's is {str(p.dtype)[6:]} "
                    "(model.dtype differs from the run's)"
                )
            with torch.no_grad():
                p.copy_(value)
    return sorted(weight_map)


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


def rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"].to(torch.uint8))
    cuda = [state[k] for k in sorted(state, key=lambda k: int(k[4:]) if k.startswith("cuda") else -1) if k != "cpu"]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda[: torch.cuda.device_count()]])


# -- a Trainer's checkpoint --------------------------------------------------------------------------------------------
def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent buffers of the plain HF model (part of its state dict), under their HF names."""
    inner = unwrap(model)
    keys = set(inner.state_dict().keys())
    return {n.replace(".base_layer.", "."): b for n, b in inner.named_buffers() if n in keys}


def save_run(tr) -> Path:
    """Write checkpoint `tr.step` of a Trainer (see the module docstring for the layout)."""
    from hyft.config import save_config
    from hyft.models import adapter_parameters
    from hyft.replay import LEDGER, ledger_document, write_ledger

    model = tr.model
    adapter = adapter_parameters(model)
    changeable = tr.changeable_tensors()
    complete = len(changeable) == len(base_names(model, adapter))

    def fill(d: Path) -> None:
        tensors = {name: p.detach() for name, (p, _) in changeable.items()}
        buffers: list[str] = []
        if complete:  # then base/ is a whole HF model directory: add the persistent buffers
            seen = {t.data_ptr() for t in tensors.values()}
            for name, b in persistent_buffers(model).items():
                if name not in tensors and b.data_ptr() not in seen:
                    tensors[name] = b.detach()
                    buffers.append(name)
        extra = {
            "zo": sorted(n for n, (_, k) in changeable.items() if k == "zo"),
            "fo": sorted(n for n, (_, k) in changeable.items() if k == "fo"),
            "buffers": buffers,
            "complete": complete,
            "source": {"name": tr.cfg.model.name, "revision": tr.cfg.model.revision, "dtype": tr.cfg.model.dtype},
        }
        save_hf_weights(d / "base", tensors, extra=extra, shard_bytes=SHARD_BYTES)
        unwrap(model).config.save_pretrained(d / "base")
        if _is_peft(model):
            model.save_pretrained(str(d / "adapter"), save_embedding_layers=False)
        if tr.tokenizer is not None:
            tr.tokenizer.save_pretrained(str(d / "tokenizer"))
        state = tr.state_dict()
        for key in ("trainer", "optimizer", "scheduler"):
            save_state(state[key], d, key)
        save_config(tr.cfg, d / "config.yaml")
        doc = ledger_document(
            tr.opt, model, adapter_ids={id(p) for p in adapter}, fo_base=extra["fo"], source=extra["source"]
        )
        write_ledger(doc, d / LEDGER)

    return write_atomically(tr.out, tr.step, fill, tr.cfg.train.keep_checkpoints)


def load_adapter(model: nn.Module, directory: Path) -> None:
    """Load a peft adapter_model.safetensors into an already wrapped model, requiring exactly its adapter keys."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    path = directory / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the run has a PEFT module)")
    saved = read_tensors(path)
    want = get_peft_model_state_dict(model, save_embedding_layers=False)
    if set(saved) != set(want):
        odd = sorted(set(saved) ^ set(want))
        raise CheckpointError(f"{path}: adapter tensors do not match the run's PEFT module (e.g. {odd[0]!r})")
    for k, v in saved.items():
        if v.shape != want[k].shape or v.dtype != want[k].dtype:
            raise CheckpointError(
                f"{path}: adapter tensor {k!r} is {str(v.dtype)[6:]} {list(v.shape)}, "
                f"the run's is {str(want[k].dtype)[6:]} {list(want[k].shape)} (another peft.r or dtype?)"
            )
    set_peft_model_state_dict(model, saved)


def load_run(tr, c: Path) -> Path:
    """Restore a Trainer from checkpoint `c`: base tensors, adapter, optimizer, scheduler, data order, RNG, ledger."""
    from hyft.replay import LEDGER, read_ledger

    verify(c)
    changeable = tr.changeable_tensors()
    index = read_index(c / "base")
    hy = index.get("hyft", {})
    kinds = {n: k for n, (_, k) in changeable.items()}
    for kind in ("zo", "fo"):
        for n in hy.get(kind, []):
            if n in kinds and kinds[n] != kind:
                raise CheckpointError(f"{c}: tensor {n!r} was {kind}-trained in the checkpoint, {kinds[n]} in this run")
    buffers = set(hy.get("buffers", []))
    targets: dict[str, torch.Tensor] = {n: p for n, (p, _) in changeable.items()}
    if buffers:
        targets.update({n: b for n, b in persistent_buffers(tr.model).items() if n in buffers})
    load_hf_weights(c / "base", targets, exact_set=True)
    if _is_peft(tr.model):
        load_adapter(tr.model, c / "adapter")
    state = {key: load_state(c, key) for key in ("trainer", "optimizer", "scheduler")}
    doc = read_ledger(c / LEDGER)
    if int(doc["seed"]) != tr.cfg.seed:
        raise CheckpointError(f"{c / LEDGER}: written by a run with seed {doc['seed']}, this run has {tr.cfg.seed}")
    here = tr.opt.zo_tensors[0].param.device.type if tr.opt.zo_tensors else None
    if here is not None and doc["updates"] and doc.get("device", here) != here:
        raise CheckpointError(
            f"{c}: the run drew its ZO directions on {doc['device']}; the {here} generator draws other numbers from "
            f"the same seeds, so continuing on {here} would change the trajectory and the ledger could no longer "
            f"replay it; resume with --model.device {doc['device']}"
        )
    # absent: written before the field, by the reference or (on CUDA) the fused kernels' generator, never blocked
    gen = doc.get("generator", "torch" if tr.opt.generator == "blocked" else tr.opt.generator)
    if here is not None and doc["updates"] and gen != tr.opt.generator:
        raise CheckpointError(
            f"{c / LEDGER}: the run drew its ZO directions with the {gen} generator, this run with "
            f"{tr.opt.generator}; resume with the same --zo.kernels (torch: reference, blocked: CPU fast path)"
        )
    ledger = [(s, lr, wd, cs) for s, lr, wd, cs in doc["updates"]]
    try:
        tr.load_state_dict(state, ledger)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{c}: state does not fit this run ({type(e).__name__}: {e})") from None
    return c


def load_base_model(c: Path, model_cfg, *, original: str | None = None):
    """(model, tokenizer) as checkpoint `c` left them, without the adapter: from c/base when it holds the whole
    model (no hub access), else the original `model_cfg.name` (or `original`) with the checkpoint's tensors on top."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyft.models import DTYPES, finish_loading, load_model

    verify(c)
    base = c / "base"
    index = read_index(base)
    if index.get("hyft", {}).get("complete"):
        check_base_shapes(base, index, model_cfg.trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(base), dtype=DTYPES[model_cfg.dtype], trust_remote_code=model_cfg.trust_remote_code
            )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{base}: cannot load ({type(e).__name__}: {first})") from None
    else:
        src = replace(model_cfg, name=original or model_cfg.name, device="cpu", gradient_checkpointing=False)
        model, _ = load_model(src)
        by_id = {id(p): p for p in model.parameters()}
        params = {name: by_id[i] for i, name in base_names(model).items()}
        load_hf_weights(base, params, exact_set=False)
    tok = AutoTokenizer.from_pretrained(str(c / "tokenizer"), trust_remote_code=model_cfg.trust_remote_code)
    return finish_loading(model, tok, model_cfg)


def check_base_shapes(base: Path, index: dict[str, Any], trust_remote_code: bool) -> None:
    """Every tensor of a complete base/ against the shapes its config.json implies (a meta-device skeleton, no
    memory), so a mismatch is one clear line instead of a loader traceback."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(base), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{base}/config.json: unusable ({type(e).__name__}: {e})") from None
    shapes = {n: list(t.shape) for n, t in skeleton.state_dict().items()}
    for fname in sorted(set(index["weight_map"].values())):
        header = check_safetensors(base / fname)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name not in shapes:
                raise CheckpointError(f"{base / fname}: tensor {name!r} is not part of this model (config.json)")
            if list(info["shape"]) != shapes[name]:
                raise CheckpointError(
                    f"{base / fname}: tensor {name!r} has shape {list(info['shape'])}, the model's is {shapes[name]}"
                )
