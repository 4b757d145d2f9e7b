import contextlib

import torch
from torch import nn

from hyft.zo.estimator import projected_grads
from hyft.zo.perturb import Direction, perturbed, zo_tensors


class Quadratic(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.x = nn.Parameter(torch.linspace(-1, 1, d))
        self.register_buffer("a", torch.linspace(0.5, 2.0, d))

    def forward(self):
        return 0.5 * (self.a * self.x**2).sum() + self.x.sum()


def _estimate(estimator, queries, dist="gaussian", mu=1e-3, seed=0):
    f = Quadratic(20)
    tensors = zo_tensors(f, [f.x])
    perturb = lambda j, s: perturbed(tensors, Direction(seed, 0, j, dist), s)
    g, _ = projected_grads(f, perturb, estimator=estimator, queries=queries, mu=mu)
    est = sum(g[j] * Direction(seed, 0, j, dist).z(tensors[0]) for j in range(queries)) / queries
    true = f.a * f.x.detach() + 1
    return torch.nn.functional.cosine_similarity(est, true, dim=0).item()


def test_averaged_zo_estimate_aligns_with_true_gradient():
    for estimator in ("onesided", "central"):
        for dist in ("gaussian", "rademacher"):
            assert _estimate(estimator, 2000, dist) > 0.9, (estimator, dist)


def test_one_query_is_a_noisy_but_positive_estimate_on_average():
    cos = [_estimate("central", 1, seed=s) for s in range(200)]
    assert sum(cos) / len(cos) > 0.05


def test_onesided_uses_the_given_baseline_and_counts_forwards():
    f = Quadratic(5)
    tensors = zo_tensors(f, [f.x])
    calls = []
    loss = lambda: calls.append(1) or f()
    perturb = lambda j, s: perturbed(tensors, Direction(0, 0, j), s)
    projected_grads(loss, perturb, estimator="onesided", queries=3, mu=1e-3, baseline=f().detach())
    assert len(calls) == 3
    calls.clear()
    projected_grads(loss, perturb, estimator="central", queries=3, mu=1e-3)
    assert len(calls) == 6
    calls.clear()
    projected_grads(loss, lambda j, s: contextlib.nullcontext(), estimator="onesided", queries=2, mu=1e-3)
    assert len(calls) == 3
