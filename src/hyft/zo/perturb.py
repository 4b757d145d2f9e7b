"""Directions z, the perturbed forward at x + s*mu*z, and the ZO update x <- x - lr * sum_i c_i z_i.

Notation follows the paper (arXiv 2604.09940, Sec. 3): x are the base weights updated by zeroth order, z ~ N(0, I)
(or Rademacher) a random direction, mu the smoothing radius.

Exactness. Adding mu*z to a weight in place and subtracting it again does not restore the weight in floating point
(in bf16, 50 cycles changed 92% of elements). So the master weights are never written during a perturbed forward:
a forward pre-hook on each module that owns ZO tensors points them at a scratch tensor w + mu*z for the duration of that
module's forward, and the post-hook points them back. Restoring is a pointer swap, bit-exact by construction.
Extra memory: the scratch of one module at a time (largest: the embedding / lm_head matrix), plus z for one tensor.

Randomness. z for tensor t in query j of step k is drawn from a generator seeded with mix(run_seed, k, j, t): it is
regenerated, never stored, and it does not depend on the global RNG, on call order or on which other tensors exist.

This module is the reference (torch) implementation. The fused Triton path (`hyft.zo.kernels`) draws its directions
from a counter-based generator instead; a Direction with kernel="fused" regenerates those (torch emulation), so the
functions here can check and replay the fused path too. A Direction with kernel="blocked" uses the CPU fast path's
generator (`hyft.zo.blocked`: one generator per block of a tensor, worked on by a thread pool); perturbed_value and
apply_update hand such directions to that module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hyft.zo import blocked, kernels
from hyft.zo.rng import DIRECTION, ROUNDING, generator, mix
from hyft.zo.rounding import stochastic_round


@dataclass(frozen=True)
class ZOTensor:
    """One ZO-updated tensor: its stable index (the RNG key), the module that owns it and its attribute name."""

    index: int
    param: nn.Parameter
    owners: tuple[tuple[nn.Module, str], ...]  # several for tied weights (e.g. embedding and lm_head)


def zo_tensors(model: nn.Module, params: Sequence[nn.Parameter]) -> list[ZOTensor]:
    """Index ZO parameters by their first appearance in model.named_modules() order (stable across runs and ranks)."""
    wanted = {id(p) for p in params}
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    order: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in wanted:
                if id(p) not in owners:
                    owners[id(p)] = []
                    order.append(p)
                owners[id(p)].append((module, name))
    missing = wanted - set(owners)
    if missing:
        raise ValueError(f"{len(missing)} ZO parameters are not registered in the model")
    return [ZOTensor(i, p, tuple(owners[id(p)])) for i, p in enumerate(order)]


@dataclass(frozen=True)
class Direction:
    """The direction of one query in one step, over all ZO tensors."""

    run_seed: int
    step: int
    query: int
    distribution: str = "gaussian"  # or "rademacher"
    kernel: str = "torch"  # whose directions: "torch" (torch.Generator per tensor), "fused" (hyft.zo.kernels) or
    # "blocked" (hyft.zo.blocked: a torch.Generator per block of BLOCK elements)

    def seed(self, tensor_index: int) -> int:
        return mix(DIRECTION, self.run_seed, self.step, self.query, tensor_index)

    def z(self, t: ZOTensor) -> torch.Tensor:
        """z for tensor t, in fp32 on the tensor's device."""
        w = t.param
        if self.kernel == "blocked":
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


def perturbed_value(t: ZOTensor, direction: Direction, scale: float) -> torch.Tensor:
    """w + scale * z, computed in fp32 and rounded once to w's dtype (a new tensor; w is untouched)."""
    if direction.kernel == "blocked":
        return blocked.perturbed_value(t, direction, scale)
    w = t.param.detach()
    # z's own buffer holds the sum: one fresh allocation per tensor, not three (large ones dominate CPU step time).
    # An fp64 weight is perturbed in fp64 (z.to is a no-op for every other dtype: their sum is formed in fp32).
    return direction.z(t).to(torch.promote_types(torch.float32, w.dtype)).mul_(scale).add_(w).to(w.dtype)


@contextlib.contextmanager
def perturbed(tensors: Sequence[ZOTensor], direction: Direction, scale: float) -> Iterator[None]:
    """Run forwards at x + scale*z without ever writing x (see module docstring).

    Raises if some ZO tensor's owning module was not called: its weight may have been read outside the module's
    forward, unperturbed, which would bias the estimate silently.
    """
    by_module: dict[nn.Module, list[tuple[str, ZOTensor]]] = {}
    for t in tensors:
        for module, name in t.owners:
            by_module.setdefault(module, []).append((name, t))
    saved: dict[int, torch.Tensor] = {}
    called: set[int] = set()

    def pre(module, args):
        for name, t in by_module[module]:
            p = module._parameters[name]
            saved[id(p)] = p.data
            p.data = perturbed_value(t, direction, scale)
            called.add(t.index)

    def post(module, args, output):
        for name, _t in by_module[module]:
            p = module._parameters[name]
            scratch = p.data
            p.data = saved.pop(id(p))
            if direction.kernel == "blocked" and not torch.is_grad_enabled():  # autograd may still hold it
                blocked.release(scratch)

    handles = []
    try:
        for module in by_module:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        yield
    finally:
        for h in handles:
            h.remove()
        for module, pairs in by_module.items():  # an exception mid-forward must not leave scratch tensors in place
            for name, _t in pairs:
                p = module._parameters[name]
                if id(p) in saved:
                    p.data = saved.pop(id(p))
    not_called = [t for t in tensors if t.index not in called]
    if not_called:
        names = ", ".join(f"{type(t.owners[0][0]).__name__}.{t.owners[0][1]}" for t in not_called[:3])
        raise RuntimeError(
            f"{len(not_called)} ZO tensors were not perturbed because their modules were never called ({names}); "
            "exclude them from the ZO group"
        )


def apply_update(
    t: ZOTensor,
    directions: Sequence[Direction],
    coeffs: torch.Tensor,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    momentum_buffer: torch.Tensor | None = None,
    master: torch.Tensor | None = None,
    rounding: str = "stochastic",
    rounding_seed: int = 0,
) -> None:
    """x <- x - lr * (d + weight_decay * x), d = sum_j coeffs[j] * z_j  (with momentum: m <- momentum*m + d, d = m).

    coeffs[j] is projected_grad_j / q. The sum is formed in fp32; the result is written to the 16-bit weight by
    stochastic rounding (unbiased), or into an fp32 master copy (`master`) that the weight then mirrors.
    """
    if directions and directions[0].kernel == "blocked":
        blocked.apply_update(
            t, directions, coeffs, lr=lr, weight_decay=weight_decay, momentum=momentum,
            momentum_buffer=momentum_buffer, master=master, rounding=rounding, rounding_seed=rounding_seed,
        )  # fmt: skip
        return
    w = t.param.data
    d = None  # sum_j c_j z_j, accumulated in the first z's buffer
    for direction, c in zip(directions, coeffs):
        z = direction.z(t).mul_(c.to(torch.float32))
        d = z if d is None else d.add_(z)
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).add_(d)
        d = momentum_buffer
    x = master if master is not None else w
    if weight_decay:
        d = d + weight_decay * x.float()  # a new tensor: d may be the momentum buffer
    if master is not None:
        master.add_(d, alpha=-lr)
        w.copy_(master)  # round-to-nearest copy; the progress lives in the master
    elif w.dtype == torch.float32:
        w.add_(d, alpha=-lr)
    else:
        new = w.float().add_(d, alpha=-lr)
        if rounding == "stochastic":
            new = stochastic_round(new, w.dtype, generator(mix(ROUNDING, rounding_seed, t.index), w.device))
        w.copy_(new)
