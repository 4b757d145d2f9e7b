"""The small interface every ZO backend implements: a perturbed forward and the update, on a fixed list of tensors.

    perturbed(step, query, scale)   a context: forwards inside see x + scale * z (z of that step and query);
                                    x is bit-exactly what it was afterwards
    update(step, coeffs, rule, state)
                                    x <- x - lr * (sum_j coeffs[j] z_j [momentum] + weight_decay * x): the rule of
                                    `hyft.zo.update`, with the z the perturbed forwards of that step saw
    direction(step, query)          a Direction (`hyft.zo.direction`) that regenerates those z per tensor
    kind, generator                 that Direction's `kernel`, and the name the ledger records

Backends: `hyft.zo.reference` (torch: the reference, and "blocked", its CPU fast path), `hyft.zo.fused` (Triton on
CUDA, or its torch emulation), `hyft.zo.sharded` (FSDP2 local shards). HybridOptimizer (`hyft.optim`) holds one and
never asks which. A new backend implements this Protocol, gets a name in optim.KERNELS and passes
tests/zo/test_backends.py (its update against `hyft.zo.update` on its own z) and tests/test_paper_rule.py.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from hyft.zo.direction import Direction
from hyft.zo.tensors import ZOTensor


@dataclass(frozen=True)
class Rule:
    """The hyper-parameters of one ZO update (the ZO param group's values at that step, and the run's settings)."""

    seed: int  # the run seed: with the step, the key of every direction and rounding stream
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0
    rounding: str = "stochastic"  # or "nearest" (16-bit weights without a master)
    fp32_master: bool = False
    distribution: str = "gaussian"


def buffers(state: MutableMapping, t: ZOTensor, rule: Rule, local: torch.Tensor | None = None) -> dict[str, Any]:
    """The optimizer state of ZO tensor t, its fp32 master and momentum buffer created (from `local`, the tensor
    this process updates: the whole weight, or its FSDP2 shard) on first use."""
    local = t.param.detach() if local is None else local
    s = state.setdefault(t.param, {})
    if rule.fp32_master and "master" not in s:
        s["master"] = local.float().clone()
    if rule.momentum and "momentum_buffer" not in s:
        s["momentum_buffer"] = torch.zeros_like(local, dtype=torch.float32)
    return s


class Backend(Protocol):
    kind: str
    generator: str

    def perturbed(self, step: int, query: int, scale: float) -> AbstractContextManager: ...

    def update(self, step: int, coeffs: torch.Tensor, rule: Rule, state: MutableMapping) -> None: ...

    def direction(self, step: int, query: int) -> Direction: ...
