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

from typing import Any

import torch
from torch import nn

from hyft.checkpoint.format import CheckpointError
from hyft.checkpoint.ledger import (  # noqa: F401 (the ledger's names, where they were before the checkpoint/ split)
    FORMAT,
    GENERATORS,
    LEDGER,
    checksum,
    find_ledger,
    ledger_document,
    read_ledger,
    write_ledger,
)
from hyft.checkpoint.weights import base_names
from hyft.zo.perturb import Direction, ZOTensor, apply_update
from hyft.zo.rng import mix


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
    # blocked and counter replay as they did before the field existed (through the reference): not bit-exact for them.
    gen = doc.get("generator", "torch")
    kind = gen if gen in ("blocked", "counter") else "torch"
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
