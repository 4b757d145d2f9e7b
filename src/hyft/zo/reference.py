"""The torch backends: the reference (hook swap + `hyft.zo.update`, z from one torch.Generator per tensor),
"blocked", the same formulas with z drawn per block of a tensor by a thread pool (`hyft.zo.blocked`, the CPU fast
path), and "counter", blocked's passes with counter-based z (`hyft.zo.counter`). The three draw different directions;
each is regenerable from (seed, step, query, tensor).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import torch

from hyft.zo import blocked
from hyft.zo.backend import Rule, buffers
from hyft.zo.direction import Direction
from hyft.zo.perturb import perturbed
from hyft.zo.rng import mix
from hyft.zo.tensors import ZOTensor
from hyft.zo.update import reference_update


class ReferenceBackend:
    """Perturbed forwards by pointer swaps (`hyft.zo.perturb.perturbed`), tensor by tensor updates."""

    kind, generator = "torch", "torch"

    def __init__(self, tensors: Sequence[ZOTensor], seed: int, distribution: str):
        self.tensors, self.seed, self.distribution = list(tensors), seed, distribution

    def direction(self, step: int, query: int) -> Direction:
        return Direction(self.seed, step, query, self.distribution, self.kind)

    def perturbed(self, step: int, query: int, scale: float):
        return perturbed(self.tensors, self.direction(step, query), scale)

    def _kw(self, t: ZOTensor, rule: Rule, step: int, state: MutableMapping) -> dict:
        s = buffers(state, t, rule)
        return dict(
            lr=rule.lr, weight_decay=rule.weight_decay, momentum=rule.momentum,
            momentum_buffer=s.get("momentum_buffer"), master=s.get("master"), rounding=rule.rounding,
            rounding_seed=mix(rule.seed, step),
        )  # fmt: skip

    def update(self, step: int, coeffs: torch.Tensor, rule: Rule, state: MutableMapping) -> None:
        directions = [self.direction(step, j) for j in range(len(coeffs))]

        def job(t: ZOTensor):
            kw = self._kw(t, rule, step, state)
            return 1, lambda first, stop, scratch: reference_update(t, directions, coeffs, **kw), 1.0

        # each tensor has its own generators: tensors updated side by side in the pool give the very same numbers
        blocked.run_jobs([job(t) for t in self.tensors])


class BlockedBackend(ReferenceBackend):
    """The reference's formulas op for op, z and rounding noise drawn per block of BLOCK elements."""

    kind, generator = "blocked", "blocked"

    def update(self, step: int, coeffs: torch.Tensor, rule: Rule, state: MutableMapping) -> None:
        directions = [self.direction(step, j) for j in range(len(coeffs))]
        # all tensors' blocks in one go: the pool also splits the many small tensors
        jobs = [blocked.update_job(t, directions, coeffs, **self._kw(t, rule, step, state)) for t in self.tensors]
        blocked.run_jobs(jobs)


class CounterBackend(BlockedBackend):
    """The blocked passes with z from `hyft.zo.counter` (no Mersenne Twister: Gaussian passes near memory speed)."""

    kind, generator = "counter", "counter"
