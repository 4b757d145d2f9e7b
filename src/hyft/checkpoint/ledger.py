"""The seed ledger file (ledger.json): the run's seed, ZO rules and tensor order, and every applied ZO update as
(step, lr, weight decay, coefficients), with a sha256 of its content. hyft.replay rebuilds the ZO-updated base
from it; this module only writes, finds and reads it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from hyft.checkpoint.format import MARKER, CheckpointError, find_checkpoint, sha256_file
from hyft.checkpoint.weights import base_names

FORMAT = "hyft-ledger/1"
# the "generator" field; absent: torch (ledgers before the field)
GENERATORS = ("torch", "philox", "blocked", "chunked", "counter")
LEDGER = "ledger.json"


def ledger_document(opt, model: nn.Module, *, adapter_ids: set[int], fo_base: list[str], source: dict[str, Any]):
    """The ledger of a HybridOptimizer: header (seed, rules, tensor order and names, the original model) + updates."""
    names = base_names(model, exclude=[p for p in model.parameters() if id(p) in adapter_ids])
    full = {id(p): n for n, p in model.named_parameters()}
    group = opt.zo_group or {}
    tensors = []
    for t in opt.zo_tensors:
        part = "adapter" if id(t.param) in adapter_ids else "base"
        name = names.get(id(t.param)) if part == "base" else full.get(id(t.param))
        shape, dtype = list(t.param.shape), str(t.param.dtype)[6:]
        tensors.append({"index": t.index, "name": name, "part": part, "shape": shape, "dtype": dtype})
    device = opt.zo_tensors[0].param.device.type if opt.zo_tensors else "cpu"
    return {
        "format": FORMAT,
        "seed": opt.seed,
        "distribution": opt.distribution,
        "generator": opt.generator,
        "rounding": opt.rounding,
        "fp32_master": opt.fp32_master,
        "momentum": float(group.get("momentum", 0.0)),
        "queries": opt.queries,
        "mu": opt.mu,
        "device": device,
        "model": source,
        "tensors": tensors,
        "fo_base_tensors": fo_base,
        "updates": [[int(s), float(lr), float(wd), [float(c) for c in cs.tolist()]] for s, lr, wd, cs in opt.ledger],
    }


def checksum(doc: dict[str, Any]) -> str:
    """sha256 of the ledger's content in a canonical form (sorted keys, no spaces; floats as JSON writes them, which
    round-trip exactly), so a ledger copied out of its checkpoint still detects a changed digit."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_ledger(doc: dict[str, Any], path: Path) -> int:
    """Header as indented JSON (with the content's sha256), one update per line (readable, diffable, and about 40
    bytes + 20 per query each)."""
    head = {k: v for k, v in doc.items() if k not in ("updates", "sha256")}
    head["sha256"] = checksum(doc)
    body = json.dumps(head, indent=1)[:-2]
    lines = ",\n".join(json.dumps(u, separators=(",", ":")) for u in doc["updates"])
    text = f'{body},\n "updates": [\n{lines}\n ]\n}}\n'
    path.write_text(text, encoding="utf-8")
    return len(text.encode())


def find_ledger(path: str | Path) -> Path:
    """ledger.json itself, or the one in a checkpoint directory, or in the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / LEDGER).is_file():
        return path / LEDGER
    return find_checkpoint(path) / LEDGER


def read_ledger(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such ledger") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable ledger ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} ledger")
    if "sha256" in doc and checksum(doc) != doc["sha256"]:  # ledgers written before checksums have none
        raise CheckpointError(
            f"{path}: its content does not match the sha256 recorded in it (the ledger was corrupted or edited)"
        )
    recorded = _marker_sha256(path)
    if recorded is not None and sha256_file(path) != recorded:
        raise CheckpointError(f"{path}: sha256 differs from the one its checkpoint recorded (corrupted or modified)")
    try:
        for t in doc["tensors"]:
            assert isinstance(t["index"], int) and isinstance(t["shape"], list) and t["part"] in ("base", "adapter")
        for u in doc["updates"]:
            step, lr, wd, cs = u
            assert isinstance(step, int) and isinstance(cs, list) and cs
            float(lr), float(wd), [float(c) for c in cs]
        int(doc["seed"]), str(doc["distribution"]), str(doc["rounding"]), float(doc["momentum"])
        assert doc.get("generator", "torch") in GENERATORS
    except (KeyError, TypeError, ValueError, AssertionError):
        raise CheckpointError(f"{path}: malformed ledger (fields or updates do not have the {FORMAT} layout)") from None
    return doc


def _marker_sha256(path: Path) -> str | None:
    """The sha256 that the completion marker next to a checkpoint's ledger recorded for it (None: none recorded)."""
    try:
        info = json.loads((path.parent / MARKER).read_text(encoding="utf-8"))
        return info["sha256"][path.name] if path.name == LEDGER else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
