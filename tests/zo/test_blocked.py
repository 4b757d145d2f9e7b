"""The blocked generator (hyft.zo.blocked): its definition, thread-count independence, and that the fast passes
compute exactly the reference's formulas on its directions."""

import pytest
import torch
from torch import nn

from conftest import tiny_model
from hyft.optim import HybridOptimizer
from hyft.zo import blocked
from hyft.zo.perturb import Direction, ZOTensor, apply_update, perturbed, perturbed_value, zo_tensors
from hyft.zo.rng import DIRECTION, ROUNDING, generator, mix
from hyft.zo.rounding import stochastic_round

B = blocked.BLOCK
SIZES = (1, 31, 96, B, 2 * B + 77)  # under a word, whole words, one block, several blocks with a ragged tail


def _tensor(n, dtype=torch.float32, index=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ZOTensor(index, nn.Parameter(torch.randn(n, generator=g).to(dtype), requires_grad=False), ())


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_each_block_is_its_own_keyed_draw(dist):
    n = 2 * B + 77
    t = _tensor(n)
    d = Direction(5, 7, 1, dist, "blocked")
    z = d.z(t)
    for b in range(3):
        m = min(B, n - b * B)
        g = generator(mix(DIRECTION, 5, 7, 1, t.index, b), "cpu")
        if dist == "gaussian":
            want = torch.randn(m, generator=g)
        else:  # element 64k + i is -1 where bit i of word k is set
            words = torch.empty((m + 63) // 64, dtype=torch.int64).random_(-(1 << 63), None, generator=g)
            bits = (words[:, None] >> torch.arange(64)) & 1
            want = (1 - 2 * bits).float().view(-1)[:m]
        assert torch.equal(z[b * B : b * B + m], want)
    if dist == "rademacher":
        assert set(z.unique().tolist()) == {-1.0, 1.0}
    else:
        assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    # keyed: another query, step, tensor or seed gives another direction
    for other in (Direction(5, 7, 2, dist, "blocked"), Direction(5, 8, 1, dist, "blocked"),
                  Direction(6, 7, 1, dist, "blocked")):  # fmt: skip
        assert not torch.equal(other.z(t), z)
    assert not torch.equal(d.z(_tensor(n, index=4)), z)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_directions_and_passes_do_not_depend_on_the_number_of_threads(dist, dtype, threads):
    t = _tensor(3 * B + 5, dtype)
    d = Direction(1, 2, 0, dist, "blocked")
    results = []
    for n_threads in (1, 2, 3):
        torch.set_num_threads(n_threads)
        z = d.z(t)
        v = perturbed_value(t, d, -1e-3).clone()
        w = ZOTensor(t.index, nn.Parameter(t.param.detach().clone(), requires_grad=False), ())
        apply_update(w, [d, Direction(1, 2, 1, dist, "blocked")], torch.tensor([0.7, -1.3]), lr=1e-2,
                     rounding="stochastic", rounding_seed=11)  # fmt: skip
        results.append((z, v, w.param.detach().clone()))
    for z, v, w in results[1:]:
        assert torch.equal(z, results[0][0]) and torch.equal(v, results[0][1]) and torch.equal(w, results[0][2])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perturbed_value_is_the_reference_formula(n, dist, dtype):
    t = _tensor(n, dtype)
    d = Direction(2, 0, 0, dist, "blocked")
    for scale in (1e-3, -1e-3, 0.37):
        want = d.z(t).mul_(scale).add_(t.param.detach()).to(dtype)  # the torch path's perturbed_value, materialised
        got = perturbed_value(t, d, scale)
        assert got.dtype == dtype and torch.equal(got, want)
        blocked.release(got)


def _reference_update(w0, zs, coeffs, *, lr, wd=0.0, momentum=0.0, buf=None, master=None, rounding, seed, index):
    """apply_update's formula on materialised z (stochastic-rounding noise per block, as the generator defines)."""
    d = None
    for z, c in zip(zs, coeffs):
        z = z.clone().mul_(c.to(torch.float32))
        d = z if d is None else d.add_(z)
    if buf is not None:
        buf.mul_(momentum).add_(d)
        d = buf
    x = master if master is not None else w0
    if wd:
        d = d + wd * x.float()
    if master is not None:
        master.add_(d, alpha=-lr)
        return master.to(w0.dtype)
    if w0.dtype == torch.float32:
        return w0.clone().add_(d, alpha=-lr)
    new = w0.float().add_(d, alpha=-lr)
    if rounding != "stochastic":
        return new.to(w0.dtype)
    out = []
    for b in range(blocked.nblocks(new.numel())):
        g = generator(mix(ROUNDING, seed, index, b), "cpu")
        out.append(stochastic_round(new[b * B : (b + 1) * B], w0.dtype, g))
    return torch.cat(out)


UPDATE_CASES = {
    "fp32": (torch.float32, {}),
    "fp32-q2-wd-momentum": (torch.float32, {"q": 2, "wd": 0.1, "momentum": 0.9}),
    "bf16-stochastic-q3": (torch.bfloat16, {"q": 3}),
    "bf16-nearest-wd": (torch.bfloat16, {"rounding": "nearest", "wd": 0.05}),
    "fp16-stochastic": (torch.float16, {}),
    "fp16-master-momentum": (torch.float16, {"master": True, "momentum": 0.5}),
}


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_update_equals_the_reference_update(case, dist):
    dtype, kw = UPDATE_CASES[case]
    q, wd, mom, rounding = kw.get("q", 1), kw.get("wd", 0.0), kw.get("momentum", 0.0), kw.get("rounding", "stochastic")
    n = 2 * B + 45
    t = _tensor(n, dtype)
    w0 = t.param.detach().clone()
    dirs = [Direction(4, 3, j, dist, "blocked") for j in range(q)]
    coeffs = torch.tensor([0.9, -0.4, 2.5][:q])
    lr = 1e-2
    buf = torch.randn(n) if mom else None
    master = w0.float() + 1e-4 if kw.get("master") else None
    want = _reference_update(
        w0, [d.z(t) for d in dirs], coeffs, lr=lr, wd=wd, momentum=mom, rounding=rounding, seed=8, index=t.index,
        buf=None if buf is None else buf.clone(), master=None if master is None else master.clone(),
    )  # fmt: skip
    apply_update(t, dirs, coeffs, lr=lr, weight_decay=wd, momentum=mom, momentum_buffer=buf, master=master,
                 rounding=rounding, rounding_seed=8)  # fmt: skip
    assert torch.equal(t.param.detach(), want)
    assert not torch.equal(t.param.detach(), w0)


def _pair(dtype=torch.float32, dist="rademacher", **kw):
    torch.manual_seed(0)
    model = tiny_model("llama", dtype)
    params = [p for p in model.parameters()]
    opt = HybridOptimizer(model, zo_params=params, zo_lr=1e-3, mu=1e-3, seed=5, distribution=dist, kernels="blocked",
                          **kw)  # fmt: skip
    return model, opt


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_perturbed_forward_equals_a_forward_with_materialised_weights(dist):
    model, opt = _pair(dist=dist)
    assert opt.generator == "blocked" and opt.fused is None
    ids = torch.arange(3, 40)[None]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        with opt.perturb(0, -1.0):
            got = model(ids).logits
        direction = opt.direction(0)
        names = {id(p): n for n, p in model.named_parameters()}
        for t in opt.zo_tensors:  # materialise w + s*mu*z through the public z
            t.param.data = t.param.data + (-1.0 * opt.mu) * direction.z(t)
        want = model(ids).logits
        for t in opt.zo_tensors:
            t.param.data = before[names[id(t.param)]].clone()
    assert torch.equal(got, want)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # restore is exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimizer_step_moves_weights_along_the_public_z(dtype):
    model, opt = _pair(dtype)
    before = {id(t.param): t.param.detach().clone() for t in opt.zo_tensors}
    zs = {id(t.param): opt.direction(0).z(t) for t in opt.zo_tensors}
    opt.accumulate_zo(torch.tensor([2.0]))
    opt.step()
    for t in opt.zo_tensors:
        w0 = before[id(t.param)]
        want = _reference_update(w0, [zs[id(t.param)]], torch.tensor([2.0]), lr=1e-3, rounding="stochastic",
                                 seed=mix(5, 0), index=t.index)  # fmt: skip
        assert torch.equal(t.param.detach(), want.view(w0.shape))
    assert opt.ledger[0][0] == 0 and opt.zo_step == 1


def test_blocked_is_opt_in_and_env_selectable(monkeypatch):
    model = tiny_model("llama", torch.float32)
    assert HybridOptimizer(model, zo_params=list(model.parameters())).generator == "torch"  # CPU default unchanged
    monkeypatch.setenv("HYFT_ZO_KERNELS", "blocked")
    assert HybridOptimizer(model, zo_params=list(model.parameters())).generator == "blocked"


def test_perturbation_buffers_are_reused_not_leaked():
    model, opt = _pair()
    ids = torch.arange(3, 20)[None]
    with torch.no_grad(), opt.perturb(0, 1.0):
        model(ids)
    ptrs = {k: [b.data_ptr() for b in v] for k, v in blocked._free.items()}
    with torch.no_grad(), opt.perturb(1, 1.0):
        model(ids)
    assert {k: [b.data_ptr() for b in v] for k, v in blocked._free.items()} == ptrs  # the same buffers came back
    assert all(len(v) <= 2 for v in blocked._free.values())


def test_perturbed_forward_in_bf16_round_trips_many_cycles():
    model, opt = _pair(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(3, 20)[None]
    tensors = opt.zo_tensors
    with torch.no_grad():
        for i in range(50):
            with perturbed(tensors, Direction(5, i, 0, "gaussian", "blocked"), 1e-2 if i % 2 else -1e-2):
                model(ids)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_zo_tensors_order_is_the_key():
    model = tiny_model("llama", torch.float32)
    ts = zo_tensors(model, list(model.parameters()))
    d = Direction(0, 0, 0, "rademacher", "blocked")
    assert not torch.equal(d.z(ts[1]).view(-1)[:32], d.z(ZOTensor(2, ts[1].param, ())).view(-1)[:32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_update_on_threads_gives_the_serial_numbers(dtype, threads):
    """The torch generator's tensors are updated side by side by the pool: the numbers must not change."""
    results = []
    for n_threads in (1, 2):
        torch.set_num_threads(n_threads)
        model = tiny_model("llama", dtype)
        opt = HybridOptimizer(model, zo_params=list(model.parameters()), zo_lr=1e-2, seed=3, kernels="torch",
                              zo_momentum=0.5, min_perturbation_scale=0.0)  # fmt: skip
        for _ in range(2):
            opt.accumulate_zo(torch.tensor([1.5]))
            opt.step()
        serial = tiny_model("llama", dtype)  # the per-tensor reference, one tensor after the other
        ts = zo_tensors(serial, list(serial.parameters()))
        bufs = {t.index: torch.zeros_like(t.param, dtype=torch.float32) for t in ts}
        for step in range(2):
            for t in ts:
                apply_update(t, [Direction(3, step, 0)], torch.tensor([1.5]), lr=1e-2, momentum=0.5,
                             momentum_buffer=bufs[t.index], rounding_seed=mix(3, step))  # fmt: skip
        for p, q in zip(model.parameters(), serial.parameters()):
            assert torch.equal(p, q)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
