"""Every ZO backend (`hyft.zo.backend`) against the reference: its perturbed forward sees round(w + s z) of its own
directions and restores w bit-exactly; its update is `hyft.zo.update`'s rule on those directions.

The torch and blocked backends run the reference's own code (bit-equal); the fused emulation and the FSDP2 shards
compute the rule in their own fp32 arithmetic (x - lr * (d + wd x)), so they are held to fp32 rounding, and 16-bit
results to the two neighbours of the fp32 reference value (which is all that rounding, stochastic or not, may give).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyft.zo.backend import Rule
from hyft.zo.fused import FusedBackend
from hyft.zo.reference import BlockedBackend, ReferenceBackend
from hyft.zo.sharded import ShardedBackend
from hyft.zo.tensors import zo_tensors
from hyft.zo.update import combine, descend

BACKENDS = ["torch", "blocked", "counter", "emulate", "sharded"]
EXACT = {"torch", "blocked"}


class Net(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        # 520 x 520 > blocked.BLOCK elements: the blocked backend works on more than one block of it
        self.a = nn.Linear(520, 520, bias=True)
        self.b = nn.Linear(520, 7, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                p.requires_grad_(False)
        self.to(dtype)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _backend(kind, model, distribution="gaussian"):
    tensors = zo_tensors(model, list(model.parameters()))
    if kind == "torch":
        return ReferenceBackend(tensors, 7, distribution), tensors
    if kind == "blocked":
        return BlockedBackend(tensors, 7, distribution), tensors
    if kind == "emulate":
        return FusedBackend(model, tensors, 7, distribution, scope="block", backend="emulate"), tensors
    return ShardedBackend(model, tensors, 7, distribution, chunk_numel=4096), tensors


def _bracket(ref: torch.Tensor, dtype: torch.dtype, slack: float):
    """The nearest values of `dtype` at or below / at or above ref, ref first widened by `slack` for fp32 noise
    (absolute: where x - lr * d cancels, the error is the operands' ulp, not the result's)."""
    lo, hi = ref - slack, ref + slack
    down, up = lo.to(dtype), hi.to(dtype)
    down = torch.where(down.float() > lo, torch.nextafter(down, torch.full_like(down, -float("inf"))), down)
    up = torch.where(up.float() < hi, torch.nextafter(up, torch.full_like(up, float("inf"))), up)
    return down.float(), up.float()


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_perturbed_forward_sees_w_plus_sz_and_restores_w_exactly(kind, dtype, distribution):
    model = Net(dtype)
    backend, tensors = _backend(kind, model, distribution)
    before = [t.param.detach().clone() for t in tensors]
    seen = {}
    model.a.register_forward_hook(lambda m, i, o: seen.setdefault("a", m.weight.detach().clone()))
    x = torch.randn(3, 520).to(dtype)
    scale = 0.01
    with torch.no_grad(), backend.perturbed(2, 1, scale):
        out = model(x)
    z = backend.direction(2, 1).z(tensors[0])
    want = (before[0].float() + scale * z).to(dtype)
    assert torch.equal(seen["a"], want)
    assert not torch.equal(want, before[0])
    assert all(torch.equal(t.param.detach(), b) for t, b in zip(tensors, before))
    with torch.no_grad():
        assert not torch.equal(out, model(x))


CASES = {
    "fp32": (torch.float32, dict()),
    "fp32-momentum-wd-q3": (torch.float32, dict(momentum=0.9, weight_decay=0.1, q=3)),
    "bf16-stochastic": (torch.bfloat16, dict()),
    "bf16-nearest-wd": (torch.bfloat16, dict(rounding="nearest", weight_decay=0.05)),
    "bf16-master-momentum": (torch.bfloat16, dict(fp32_master=True, momentum=0.5)),
}


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_update_is_the_reference_rule_on_the_backends_own_directions(kind, case):
    dtype, kw = CASES[case]
    q = kw.pop("q", 1)
    model = Net(dtype)
    backend, tensors = _backend(kind, model)
    rule = Rule(seed=7, lr=0.05, **kw)
    coeffs = torch.tensor([0.8, -1.7, 0.3][:q])
    state: dict = {}
    x0 = {t.index: t.param.detach().float().clone() for t in tensors}
    moms = {t.index: torch.zeros_like(x0[t.index]) for t in tensors}
    for step in range(2):  # the second step reads the momentum buffer and master the first one left
        zs = {t.index: [backend.direction(step, j).z(t) for j in range(q)] for t in tensors}
        backend.update(step, coeffs * (step + 1), rule, state)
        for t in tensors:
            # the rule in fp32 on the fp32 value of the last step (the master when there is one)
            ref = x0[t.index].clone()
            d = combine(zs[t.index], coeffs * (step + 1))
            descend(ref, d, lr=rule.lr, weight_decay=rule.weight_decay, momentum=rule.momentum,
                    momentum_buffer=moms[t.index] if rule.momentum else None)  # fmt: skip
            x0[t.index] = ref
            got = t.param.detach()
            s = state.get(t.param, {})
            if rule.fp32_master:
                master = s["master"]
                if kind in EXACT:
                    assert torch.equal(master, ref)
                else:
                    torch.testing.assert_close(master, ref, rtol=1e-6, atol=1e-7)
                assert torch.equal(got, master.to(dtype))  # the weight mirrors its master
                x0[t.index] = master.clone()
            elif dtype == torch.float32:
                if kind in EXACT:
                    assert torch.equal(got, ref)
                else:
                    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
            else:
                down, up = _bracket(ref, dtype, 0.0 if kind in EXACT else 1e-7)
                inside = (got.float() >= down) & (got.float() <= up)
                assert bool(inside.all()), (step, t.index, ref[~inside][:3], got[~inside][:3], down[~inside][:3])
                if rule.rounding == "nearest" and kind in EXACT:
                    assert torch.equal(got, ref.to(dtype))
                x0[t.index] = got.float().clone()
            if rule.momentum:
                if kind in EXACT:
                    assert torch.equal(s["momentum_buffer"], moms[t.index])
                else:
                    torch.testing.assert_close(s["momentum_buffer"], moms[t.index], rtol=1e-6, atol=1e-7)
                moms[t.index] = s["momentum_buffer"].clone()
