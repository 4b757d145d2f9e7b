"""THE reference ZO update (arXiv 2604.09940: x <- x - lr_x * g * z, with the usual SGD extras), in plain torch:

    d  = sum_j c_j z_j                  c_j = g_j / q (the estimator's projected gradients), z_j regenerated
    d <- m = momentum * m + d           only with momentum (one fp32 buffer per tensor)
    d <- d + weight_decay * x
    x <- x - lr * d                     x is the fp32 master copy when there is one (the weight then mirrors it,
                                        round to nearest), else the weight itself: an fp32 weight in place, a 16-bit
                                        one through fp32 and back by stochastic rounding (unbiased) or to nearest

`combine` forms d, `descend` does the rest. The torch backend (`hyft.zo.reference`) is `reference_update`; the CPU
blocked backend runs `descend` on each block of a tensor (`hyft.zo.blocked`); the fused kernels (`hyft.zo._triton`,
emulated in `hyft.zo.kernels`) and the FSDP2 shards (`hyft.zo.sharded`) compute the same formula in their own
arithmetic and are tested against this one (tests/zo/test_backends.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch

from hyft.zo.rng import ROUNDING, generator, mix
from hyft.zo.rounding import stochastic_round
from hyft.zo.tensors import ZOTensor


class Regenerable(Protocol):
    """A direction (`hyft.zo.direction.Direction` and its subclasses): z of any ZO tensor, on demand."""

    def z(self, t: ZOTensor) -> torch.Tensor: ...


def combine(zs: Iterable[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
    """d = sum_j coeffs[j] * z_j in fp32, accumulated in the first z's buffer (the z's are consumed)."""
    d = None
    for z, c in zip(zs, coeffs):
        z = z.mul_(c.to(torch.float32))
        d = z if d is None else d.add_(z)
    return d


def descend(
    w: torch.Tensor,
    d: torch.Tensor,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    momentum_buffer: torch.Tensor | None = None,
    master: torch.Tensor | None = None,
    rounding: str = "stochastic",
    rounding_generator: Callable[[], torch.Generator] | None = None,
) -> None:
    """w <- w - lr * (d [through momentum] + weight_decay * w), in place (see the module docstring)."""
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
        if rounding == "stochastic" and w.dtype in (torch.bfloat16, torch.float16):
            new = stochastic_round(new, w.dtype, rounding_generator())
        w.copy_(new)


def reference_update(
    t: ZOTensor,
    directions: Sequence[Regenerable],
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
    """The update of one whole tensor, z from each Direction, rounding noise keyed mix(ROUNDING, rounding_seed, t).

    rounding_seed is mix(run_seed, step) in training, so a ledger's (step, coefficients) replay it exactly.
    """
    w = t.param.data
    descend(
        w, combine((direction.z(t) for direction in directions), coeffs), lr=lr, weight_decay=weight_decay,
        momentum=momentum, momentum_buffer=momentum_buffer, master=master, rounding=rounding,
        rounding_generator=lambda: generator(mix(ROUNDING, rounding_seed, t.index), w.device),
    )  # fmt: skip
