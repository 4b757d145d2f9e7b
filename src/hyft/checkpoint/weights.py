"""Tensors in checkpoints: safetensors files checked before they are read (no pickle), nested state (optimizer,
scheduler, trainer) as JSON + safetensors, the base model's tensors under their Hugging Face names in the HF sharded
layout, the peft adapter in peft's layout, and the global RNG state."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyft.checkpoint.format import CheckpointError

SHARD_BYTES = 2 * 1024**3
INDEX = "model.safetensors.index.json"


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


# -- peft adapters and the model's own buffers ---------------------------------------------------------------------
def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent buffers of the plain HF model (part of its state dict), under their HF names."""
    inner = unwrap(model)
    keys = set(inner.state_dict().keys())
    return {n.replace(".base_layer.", "."): b for n, b in inner.named_buffers() if n in keys}


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
