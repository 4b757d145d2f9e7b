"""Projected-gradient estimates g = <grad f(x), z> along random directions z (SPSA).

onesided (the paper's rule, Eq. 3):  g = (f(x + mu z) - f(x)) / mu
    f(x) is the unperturbed loss that the first-order forward computes anyway: one extra forward per query.
central (MeZO):                        g = (f(x + mu z) - f(x - mu z)) / (2 mu)
    two extra forwards per query; its bias is O(mu^2) instead of O(mu).

With q queries, the update direction is (1/q) sum_j g_j z_j; each z_j is regenerated from its seed, so memory does not
grow with q. `loss` evaluates f at the current perturbation; `perturbed(j, s)` is a context in which x is shifted by
s*z_j (a backend's perturbed forward, `hyft.zo.backend`): mu is applied here, and divided here, in one place.
A new estimator is one more branch of `projected_grads` and a name in ESTIMATORS. `reduce` averages a loss across
data-parallel ranks (identity on one process): every rank then holds the same g.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

ESTIMATORS = ("onesided", "central")


def _loss32(t: torch.Tensor) -> torch.Tensor:
    """Losses are compared in fp32 at least (an fp64 loss stays fp64: the tests check the estimator's order there)."""
    return t if t.dtype == torch.float64 else t.float()


def projected_grads(
    loss: Callable[[], torch.Tensor],
    perturbed: Callable[[int, float], AbstractContextManager],
    *,
    estimator: str,
    queries: int,
    mu: float,
    baseline: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the q projected gradients as one fp32 tensor, the loss at x) on the loss's device, with no host sync.

    The loss at x is f(x) for onesided and (f(x + mu z_0) + f(x - mu z_0)) / 2, its O(mu^2) estimate, for central.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {ESTIMATORS}")
    grads = []
    with torch.no_grad():
        if estimator == "onesided":
            f0 = reduce(_loss32(loss())) if baseline is None else reduce(_loss32(baseline.detach()))
        for j in range(queries):
            with perturbed(j, +mu):
                f_plus = reduce(_loss32(loss()))
            if estimator == "onesided":
                grads.append((f_plus - f0) / mu)
            else:
                with perturbed(j, -mu):
                    f_minus = reduce(_loss32(loss()))
                grads.append((f_plus - f_minus) / (2 * mu))
                if j == 0:
                    f0 = (f_plus + f_minus) / 2
    return torch.stack(grads), f0
