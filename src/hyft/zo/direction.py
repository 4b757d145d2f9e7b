"""The direction z of one query in one step: regenerated from its keys, never stored.

z for tensor t in query j of step k is a function of (run seed, k, j, t) only: not of the global RNG, the call order
or which other tensors exist. Three generators draw it (the ledger records which, `generator`):
    torch     the reference: one torch.Generator per tensor, seeded mix(DIRECTION, run_seed, k, j, t)
    fused     counter-based Philox, as the Triton kernels draw it (`hyft.zo.kernels.emulate_direction` in torch)
    blocked   the CPU fast path: one torch.Generator per block of a tensor (`hyft.zo.blocked`)
    counter   the CPU fast path with z a function of (key, element index) (`hyft.zo.counter`), run by hyft.zo.blocked
(the FSDP2 backend's row-block generator is `hyft.zo.sharded.ChunkedDirection`, a subclass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyft.zo import blocked, kernels
from hyft.zo.rng import DIRECTION, generator, mix
from hyft.zo.tensors import ZOTensor


@dataclass(frozen=True)
class Direction:
    """The direction of one query in one step, over all ZO tensors."""

    run_seed: int
    step: int
    query: int
    distribution: str = "gaussian"  # or "rademacher"
    kernel: str = "torch"  # whose directions: "torch", "fused", "blocked" or "counter" (the module docstring)

    def seed(self, tensor_index: int) -> int:
        return mix(DIRECTION, self.run_seed, self.step, self.query, tensor_index)

    def z(self, t: ZOTensor) -> torch.Tensor:
        """z for tensor t, in fp32 on the tensor's device."""
        w = t.param
        if self.kernel in blocked.KINDS:
            return blocked.direction(self, t)
        if self.kernel == "fused":
            step_seed = mix(DIRECTION, self.run_seed, self.step)
            z = kernels.emulate_direction(step_seed, t.index, self.query, w.numel(), self.distribution, w.device)
            return z.view(w.shape)
        g = generator(self.seed(t.index), w.device)
        if self.distribution == "gaussian":
            return torch.randn(w.shape, generator=g, device=w.device, dtype=torch.float32)
        if self.distribution == "rademacher":
            bits = torch.randint(0, 2, w.shape, generator=g, device=w.device, dtype=torch.int8)
            return bits.float().mul_(2).sub_(1)
        raise ValueError(f"unknown direction distribution {self.distribution!r}")
