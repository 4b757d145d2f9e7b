"""The seed ledger and its replay: the ZO-updated base rebuilt from the original weights, bit-exactly.

Every ZO update is x <- x - lr * (sum_j c_j z_j + wd * x) (with momentum: through the buffer m <- beta*m + d), where
z_j is regenerated from (run seed, step, query j, tensor index) and 16-bit results are stochastically rounded with
noise keyed by (run seed, step, tensor index). So (step, lr, wd, c_1..c_q) per update, plus the run's seed and the
tensor order, determine the whole ZO trajectory: a few dozen bytes per step instead of the model.

Each tensor's trajectory depends only on its own updates, so replay runs one tensor at a time (memory: one tensor,
its momentum buffer / fp32 master, and one z). It uses the very same update function as training; on the same
device type and dtype the result is bit-identical (tests/test_checkpoint.py). Base tensors trained by first order
cannot be replayed (their updates are gradients, not seeds): replay refuses such ledgers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyft.checkpoint import MARKER, CheckpointError, base_names, sha256_file
from hyft.zo.perturb import Direction, ZOTensor, apply_update
from hyft.zo.rng import mix

FORMAT = "hyft-ledger/1"
GENERATORS = ("torch", "philox", "blocked", "chunked")  # "generator" field; absent: torch (ledgers before the field)
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
    from hyft.checkpoint import find_checkpoint

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


def check_replayable(doc: dict[str, Any], where: str) -> None:
    if doc.get("fo_base_tensors"):
        n = len(doc["fo_base_tensors"])
        raise CheckpointError(
            f"{where}: the run trained {n} base tensors by first order (e.g. {doc['fo_base_tensors'][0]!r}); "
            "their updates are gradients, not seeds, so replay cannot rebuild them (use the checkpoint's base/)"
        )


@torch.no_grad()
def replay(doc: dict[str, Any], model: nn.Module, *, where: str = "ledger") -> dict[str, int]:
    """Apply the ledger's ZO updates to `model` (the original weights), in place. Returns counts."""
    check_replayable(doc, where)
    params = _named(model)
    base = [t for t in doc["tensors"] if t["part"] == "base"]
    for t in base:
        p = params.get(t["name"])
        if p is None:
            raise CheckpointError(f"{where}: tensor {t['name']!r} is not in the base model (another architecture?)")
        if list(p.shape) != t["shape"] or str(p.dtype)[6:] != t["dtype"]:
            raise CheckpointError(
                f"{where}: tensor {t['name']!r} is {t['dtype']} {t['shape']} in the ledger, "
                f"{str(p.dtype)[6:]} {list(p.shape)} in the base model (another model or --dtype?)"
            )
    seed, dist, momentum = int(doc["seed"]), doc["distribution"], float(doc["momentum"])
    # Ledgers from before the field drew every direction with the reference generator. Other generators than
    # blocked replay as they did before the field existed (through the reference): not bit-exact for them.
    kind = "blocked" if doc.get("generator", "torch") == "blocked" else "torch"
    for t in base:
        p = params[t["name"]]
        zt = ZOTensor(t["index"], p, ())
        master = p.detach().float().clone() if doc.get("fp32_master") else None
        buf = torch.zeros_like(p, dtype=torch.float32) if momentum else None
        for step, lr, wd, cs in doc["updates"]:
            coeffs = torch.tensor(cs, dtype=torch.float32, device=p.device)
            directions = [Direction(seed, step, j, dist, kind) for j in range(len(cs))]
            apply_update(
                zt, directions, coeffs, lr=lr, weight_decay=wd, momentum=momentum, momentum_buffer=buf,
                master=master, rounding=doc["rounding"], rounding_seed=mix(seed, step),
            )  # fmt: skip
    skipped = len(doc["tensors"]) - len(base)
    return {"tensors": len(base), "updates": len(doc["updates"]), "skipped_adapter_tensors": skipped}


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    by_id = {id(p): p for p in model.parameters()}
    return {name: by_id[i] for i, name in base_names(model).items()}
