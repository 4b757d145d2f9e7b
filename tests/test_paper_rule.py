"""The paper's rule (arXiv 2604.09940: one-sided SPSA for the base, backprop for the PEFT module, one simultaneous
update), checked from first principles on a tiny LoRA model for every backend that runs on CPU: one onesided hybrid
step from (x, y) gives

    x' = x - lr_x * (1/q) sum_j g_j z_j,   g_j = (f(x + mu z_j, y) - f(x, y)) / mu
    y' = y - lr_y * grad_y f(x, y)

with both groups stepping from the same point. The test forms x + mu z_j itself (weights written into a copy of the
model), takes f and grad_y f from plain forwards and autograd, and only asks the backend for z_j (regenerable from the
seed: that is what the ledger relies on).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_model
from hyft.optim import HybridOptimizer
from hyft.step import hybrid_step
from hyft.zo.rng import DIRECTION, generator, mix
from hyft.zo.sharded import ShardedHybridOptimizer

MU, LR_X, LR_Y, SEED = 1e-3, 1e-2, 5e-2, 3
BACKENDS = ["torch", "emulate", "blocked", "counter", "sharded"]


def _model():
    import peft

    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, task_type="CAUSAL_LM", init_lora_weights=False)  # B != 0: grad_A != 0 too
    return peft.get_peft_model(tiny_model("llama"), config)


def _groups(model):
    fo = {n: p for n, p in model.named_parameters() if "lora_" in n}
    zo = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    for p in zo.values():
        p.requires_grad_(False)
    for p in fo.values():
        p.requires_grad_(True)
    return fo, zo


def _optimizer(backend, model, fo, zo, queries):
    kw = dict(fo_optimizer="sgd", fo_lr=LR_Y, zo_lr=LR_X, mu=MU, queries=queries, seed=SEED)
    if backend == "sharded":  # the FSDP2 code path on one rank: every local shard is the whole tensor
        return ShardedHybridOptimizer(model, fo.values(), zo.values(), chunk_numel=64, **kw)
    return HybridOptimizer(model, fo.values(), zo.values(), kernels=backend, **kw)


def _loss(ids):
    return lambda m: m(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("queries", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hybrid_step_is_the_papers_rule(backend, queries):
    ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(1))
    loss = _loss(ids)
    model = _model()
    fo, zo = _groups(model)
    opt = _optimizer(backend, model, fo, zo, queries)
    assert opt.generator == {"emulate": "philox", "sharded": "chunked"}.get(backend, backend)
    by_param = {id(t.param): t for t in opt.zo_tensors}
    zs = [{n: opt.direction(j).z(by_param[id(p)]).clone() for n, p in zo.items()} for j in range(queries)]
    start = copy.deepcopy(model)

    # f(x, y) and grad_y f(x, y), at the starting point
    f0 = loss(start)
    start_fo, start_zo = _groups(start)
    grad_y = dict(zip(start_fo, torch.autograd.grad(f0, list(start_fo.values()))))
    # g_j from a forward at weights x + mu z_j written into a copy of the model
    g = []
    for z in zs:
        shifted = copy.deepcopy(start)
        with torch.no_grad():
            for n, p in shifted.named_parameters():
                if n in z:
                    p.copy_(start_zo[n] + MU * z[n])
            f_plus = loss(shifted)
        g.append((f_plus.float() - f0.detach().float()) / MU)
    want_x = {n: x - LR_X * sum(g[j] * zs[j][n] for j in range(queries)) / queries for n, x in start_zo.items()}
    want_y = {n: y.detach() - LR_Y * grad_y[n] for n, y in start_fo.items()}

    result = hybrid_step(opt, lambda batch: loss(model), [None], schedule="onesided")

    torch.testing.assert_close(result.zo_grads, torch.stack(g), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.loss, f0.detach().float())
    for n, p in zo.items():
        torch.testing.assert_close(p.detach(), want_x[n], rtol=1e-6, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
        assert (p.detach() - start_zo[n]).abs().max() > 1e-5, n  # far above the tolerance: x really moved
    for n, p in fo.items():
        torch.testing.assert_close(p.detach(), want_y[n], rtol=1e-6, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
        assert (p.detach() - start_fo[n]).abs().max() > 1e-5, n
    assert opt.zo_step == 1 and opt.ledger[0][0] == 0


def test_the_reference_directions_are_seeded_torch_normals():
    """Pins the reference generator the rule test asks for z: z of tensor t in query j of step k is torch.randn from
    a generator seeded mix(DIRECTION, seed, k, j, t)."""
    model = _model()
    fo, zo = _groups(model)
    opt = _optimizer("torch", model, fo, zo, 1)
    for t in opt.zo_tensors[:4]:
        want = torch.randn(t.param.shape, generator=generator(mix(DIRECTION, SEED, 0, 0, t.index), "cpu"))
        assert torch.equal(opt.direction(0).z(t), want)
