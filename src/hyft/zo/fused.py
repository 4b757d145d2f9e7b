"""The fused backend: `hyft.zo.kernels.FusedZO` (Triton on CUDA, or "emulate": the same math in torch) behind the
backend interface (`hyft.zo.backend`). Directions are counter-based Philox, keyed by the step seed
mix(DIRECTION, seed, step); rounding bits by mix(ROUNDING, seed, step).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import torch
from torch import nn

from hyft.zo import kernels
from hyft.zo.backend import Rule, buffers
from hyft.zo.direction import Direction
from hyft.zo.rng import DIRECTION, ROUNDING, mix
from hyft.zo.tensors import ZOTensor


class FusedBackend:
    kind, generator = "fused", "philox"

    def __init__(
        self, model: nn.Module, tensors: Sequence[ZOTensor], seed: int, distribution: str, *, scope: str, backend: str
    ):
        self.seed, self.distribution = seed, distribution
        self.engine = kernels.FusedZO(model, tensors, scope=scope, backend=backend)

    def direction(self, step: int, query: int) -> Direction:
        return Direction(self.seed, step, query, self.distribution, self.kind)

    def perturbed(self, step: int, query: int, scale: float):
        return self.engine.perturbed(mix(DIRECTION, self.seed, step), query, scale, self.distribution)

    def update(self, step: int, coeffs: torch.Tensor, rule: Rule, state: MutableMapping) -> None:
        masters, moms = {}, {}
        # only when some state is wanted or kept: touching state[param] would add empty entries to fused checkpoints
        if rule.fp32_master or rule.momentum or state:
            for t in self.engine.tensors:
                s = buffers(state, t, rule)
                if "master" in s:
                    masters[id(t.param)] = s["master"]
                if "momentum_buffer" in s:
                    moms[id(t.param)] = s["momentum_buffer"]
        self.engine.update(
            coeffs, step_seed=mix(DIRECTION, self.seed, step), round_seed=mix(ROUNDING, self.seed, step), lr=rule.lr,
            weight_decay=rule.weight_decay, momentum=rule.momentum, distribution=self.distribution,
            rounding=rule.rounding, masters=masters, moms=moms,
        )  # fmt: skip
