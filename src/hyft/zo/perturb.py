"""The perturbed forward at x + scale*z by a hook swap (the reference backend's), and `apply_update` for any
Direction.

Notation follows the paper (arXiv 2604.09940, Sec. 3): x are the base weights updated by zeroth order, z ~ N(0, I)
(or Rademacher) a random direction (`hyft.zo.direction`), mu the smoothing radius.

Exactness. Adding mu*z to a weight in place and subtracting it again does not restore the weight in floating point
(in bf16, 50 cycles changed 92% of elements). So the master weights are never written during a perturbed forward:
a forward pre-hook on each module that owns ZO tensors points them at a scratch tensor w + mu*z for the duration of that
module's forward, and the post-hook points them back. Restoring is a pointer swap, bit-exact by construction.
Extra memory: the scratch of one module at a time (largest: the embedding / lm_head matrix), plus z for one tensor.

A Direction with kernel="blocked" is perturbed and updated by the CPU fast path (`hyft.zo.blocked`: one generator per
block of a tensor, worked on by a thread pool); a Direction with kernel="fused" regenerates the fused kernels' z in
torch, so the functions here can check and replay the fused path too. ZOTensor, zo_tensors and Direction are
re-exported from their modules (`hyft.zo.tensors`, `hyft.zo.direction`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hyft.zo import blocked
from hyft.zo.direction import Direction
from hyft.zo.tensors import ZOTensor, zo_tensors
from hyft.zo.update import reference_update

__all__ = ["Direction", "ZOTensor", "apply_update", "perturbed", "perturbed_value", "zo_tensors"]


def perturbed_value(t: ZOTensor, direction: Direction, scale: float) -> torch.Tensor:
    """w + scale * z, computed in fp32 and rounded once to w's dtype (a new tensor; w is untouched)."""
    if direction.kernel in blocked.KINDS:
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
            if direction.kernel in blocked.KINDS and not torch.is_grad_enabled():  # autograd may still hold it
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


def apply_update(t: ZOTensor, directions: Sequence[Direction], coeffs: torch.Tensor, **kw) -> None:
    """x <- x - lr * (sum_j coeffs[j] z_j [momentum] + weight_decay * x) on tensor t: `hyft.zo.update`'s rule.

    coeffs[j] is projected_grad_j / q. Keywords: those of `hyft.zo.update.reference_update`.
    """
    if directions and directions[0].kernel in blocked.KINDS:
        blocked.apply_update(t, directions, coeffs, **kw)
    else:
        reference_update(t, directions, coeffs, **kw)
