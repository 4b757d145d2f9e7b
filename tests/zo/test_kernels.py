"""Fused ZO path (hyft.zo.kernels): kernel math, engine logic, kernels.

Three layers, so that CI (CPU, no triton) still checks everything but the compiled kernels themselves:
  * the kernels' math in torch (Philox, Box-Muller, bit maps, stochastic-rounding bits) against known answers and the
    torch reference path;
  * the engine (chunk planning, hooks, scratch swaps, tables, update) with backend "emulate", which runs the same
    engine with the torch emulation instead of the kernels;
  * the Triton kernels against the emulation: in the Triton interpreter on CPU where triton is installed, and
    compiled on CUDA (run on the GPU machine; results in docs/performance.md).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn

from conftest import tiny_model
from hyft.optim import HybridOptimizer
from hyft.step import hybrid_step
from hyft.zo import kernels as K
from hyft.zo.perturb import Direction, apply_update, zo_tensors
from hyft.zo.rng import DIRECTION, ROUNDING, generator, mix
from hyft.zo.rounding import stochastic_round

CUDA = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
# Triton's interpreter runs the kernels on CPU tensors; it must be chosen before hyft.zo._triton is imported.
INTERPRET = not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"
needs_triton = pytest.mark.skipif(
    not INTERPRET, reason="needs triton on a CPU-only machine (interpreter); on CUDA the compiled tests below run"
)
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="needs CUDA + triton; run on the GPU machine, results in docs/performance.md"
)

SEED = mix(DIRECTION, 5, 7)
# |z_kernel - z_emulated| for Gaussian z. Compiled: the fast-math lg2.approx has ~2^-22 absolute error, so near u = 1
# (r = sqrt(-2 ln u) ~ 0) r can be off by up to sqrt(2 ln 2 * 2^-22) ~ 6e-4 (seen on the H200: 2.1e-4); elsewhere the
# error is ~1e-6 relative. Interpreter: numpy's accurate functions against torch's, ~2e-7.
ZERR = {"cuda": 6e-4, "cpu": 1e-6}


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def _module(shapes, dtype=torch.bfloat16, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Module()
    for i, s in enumerate(shapes):
        p = torch.randn(s, generator=g).mul_(0.02).to(dtype).to(device)
        setattr(m, f"p{i}", nn.Parameter(p, requires_grad=False))
    return m, zo_tensors(m, list(m.parameters()))


# -- kernel math in torch (always runs) --------------------------------------------------------------------------------
def test_philox_matches_random123_known_answers():
    # Philox4x32-10 known-answer vectors of Random123 (kat_vectors): counter, key -> output.
    cases = [
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0x299F31D0 << 32) | 0xA4093822,
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, want in cases:
        assert tuple(int(x) for x in K.philox4x32(*counter, key)) == want


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_emulated_directions_have_the_right_moments_and_are_independent(distribution):
    n = 1 << 20
    z = K.emulate_direction(SEED, 3, 0, n, distribution)
    assert z.dtype == torch.float32 and z.shape == (n,)
    assert abs(z.mean().item()) < 5 / n**0.5
    assert abs(z.var().item() - 1) < 0.01
    if distribution == "gaussian":
        assert abs((z**4).mean().item() - 3) < 0.05  # kurtosis of N(0, 1)
        assert z.abs().max() < 5.8  # 24-bit uniforms: |z| <= sqrt(-2 ln 2^-24)
        # each quarter of the 4 Box-Muller outputs is N(0, 1) on its own (cos and sin halves)
        for j in range(4):
            assert abs(z[j::4].var().item() - 1) < 0.02
    else:
        assert set(z.unique().tolist()) == {-1.0, 1.0}
    others = [
        K.emulate_direction(SEED, 4, 0, n, distribution),  # another tensor
        K.emulate_direction(SEED, 3, 1, n, distribution),  # another query
        K.emulate_direction(mix(DIRECTION, 5, 8), 3, 0, n, distribution),  # another step
        K.emulate_direction(mix(DIRECTION, 6, 7), 3, 0, n, distribution),  # another run seed
    ]
    for o in others:
        assert abs(_corr(z, o)) < 5 / n**0.5
    # neighbours inside one tensor are uncorrelated too (lag 1, 4 = next counter, 128 = next Rademacher word group)
    for lag in (1, 2, 4, 32, 128):
        assert abs(_corr(z[:-lag], z[lag:])) < 5 / n**0.5


def test_direction_of_an_element_depends_only_on_its_offset():
    for distribution in ("gaussian", "rademacher"):
        long = K.emulate_direction(SEED, 2, 0, 5000, distribution)
        short = K.emulate_direction(SEED, 2, 0, 1237, distribution)
        assert torch.equal(long[:1237], short)


def test_round_bf16_is_the_reference_bit_logic_with_given_noise():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 0.02
    x[:3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    ref = stochastic_round(x, torch.bfloat16, generator(11, "cpu"))
    noise = torch.randint(0, 1 << 16, x.shape, generator=generator(11, "cpu"), dtype=torch.int32)
    got = K.round_bf16(x, noise)
    assert torch.equal(got[3:], ref[3:]) and got[2].isnan() and got[0] == float("inf") and got[1] == -float("inf")


def test_emulated_round_noise_is_uniform_and_rounding_unbiased():
    n = 1 << 20
    noise = K.emulate_round_noise(mix(ROUNDING, 1, 2), 5, n)
    assert noise.dtype == torch.int32 and noise.min() >= 0 and noise.max() < 1 << 16
    assert abs(noise.float().mean().item() / 65535 - 0.5) < 0.002
    for b in range(16):  # every bit fair
        assert abs(((noise >> b) & 1).float().mean().item() - 0.5) < 0.005
    x = torch.full((n,), 0.02) + 3e-6
    y = K.round_bf16(x, noise).float()
    assert abs(y.mean().item() - x.mean().item()) < 3e-7  # 5 sigma: ulp/2 / sqrt(n)
    exact = torch.tensor([0.5, -0.25, 1.0, 0.0])
    assert torch.equal(K.round_bf16(exact, noise[:4]).float(), exact)


# -- chunk planning ----------------------------------------------------------------------------------------------------
def test_plan_chunks_cover_every_tensor_and_respect_the_budget():
    model = tiny_model("llama")  # tied embedding / head
    tensors = zo_tensors(model, list(model.parameters()))
    for budget in (0, K.default_budget(tensors), 10**12):
        chunks = K.plan_chunks(model, tensors, budget)
        covered = {t.index for _, ts in chunks for t in ts}
        assert covered == {t.index for t in tensors}
        assert not any(isinstance(m, (nn.ModuleList, nn.ModuleDict)) for m, _ in chunks)
        if budget == 0:  # one group per module that owns ZO tensors
            owners = {id(m) for t in tensors for m, _ in t.owners}
            assert {id(m) for m, _ in chunks} == owners
        elif budget == 10**12:
            assert len(chunks) == 1 and chunks[0][0] is model
        else:
            assert all(K._nbytes(ts) <= budget or len({id(m) for t in ts for m, _ in t.owners}) == 1
                       for _, ts in chunks)  # fmt: skip
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    roots = {id(m) for m, _ in K.plan_chunks(model, tensors, layer_bytes)}
    assert {id(layer) for layer in model.model.layers} <= roots  # a decoder layer within budget is one launch
    tied = [t for t in tensors if t.param is model.lm_head.weight][0]
    roots = [m for m, ts in K.plan_chunks(model, tensors, 0) if tied in ts]
    assert {id(r) for r in roots} == {id(model.lm_head), id(model.model.embed_tokens)}


# -- the engine with the torch emulation (always runs) -----------------------------------------------------------------
def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _engine_model(kind="llama", dtype=torch.bfloat16, device="cpu"):
    model = tiny_model(kind, dtype=dtype).to(device).eval()
    return model, zo_tensors(model, list(model.parameters()))


def _check_exact_restore_and_functional(backend, device, cycles):
    for scope in K.SCOPES:
        model, tensors = _engine_model(device=device)
        eng = K.FusedZO(model, tensors, scope=scope, backend=backend)
        before = _snapshot(model)
        ids = torch.randint(0, 200, (2, 6), device=device)
        with torch.no_grad():
            clean = model(input_ids=ids).logits
        for i in range(cycles):
            with torch.no_grad(), eng.perturbed(mix(DIRECTION, 0, i), 0, 1e-2 if i % 2 else -1e-2, "gaussian"):
                out = model(input_ids=ids).logits
            assert not torch.equal(out, clean)
        after = _snapshot(model)
        assert all(torch.equal(before[n], after[n]) for n in before), scope
        # the perturbed forward computes f(w + s z) with the fused directions (Direction kind "fused")
        d = Direction(0, 3, 1, "rademacher", "fused")
        with torch.no_grad(), eng.perturbed(mix(DIRECTION, 0, 3), 1, 0.05, "rademacher"):
            got = model(input_ids=ids).logits
        shifted = {n: (p.float() + 0.05 * d.z(t)).to(p.dtype) for (n, p), t in zip(model.named_parameters(), tensors)}
        with torch.no_grad():
            want = torch.func.functional_call(model, shifted, (), {"input_ids": ids}).logits
        torch.testing.assert_close(got, want)


def test_engine_restores_exactly_and_perturbs_functionally_emulated():
    _check_exact_restore_and_functional("emulate", "cpu", cycles=50)


def test_engine_reports_modules_that_were_never_called():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tensors = zo_tensors(m, list(m.parameters()))
    eng = K.FusedZO(m, tensors, scope="module", backend="emulate")
    with pytest.raises(RuntimeError, match="never called"), eng.perturbed(1, 0, 0.1, "gaussian"):
        m[0](torch.ones(1, 2))
    assert all(p.data.data_ptr() for p in m.parameters())


def test_engine_undoes_swaps_after_an_exception_mid_forward():
    model, tensors = _engine_model()
    before = _snapshot(model)
    eng = K.FusedZO(model, tensors, scope="block", backend="emulate")  # the decoder layer's swap is open
    hook = model.model.layers[1].mlp.register_forward_pre_hook(lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError), torch.no_grad(), eng.perturbed(1, 0, 0.1, "gaussian"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long))
    hook.remove()
    after = _snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def _update_pair(kernels, dtype, *, momentum=0.0, fp32_master=False, weight_decay=0.0, queries=1, rounding="nearest"):
    """Two identical modules, one stepped by HybridOptimizer(kernels), one by the torch reference on fused z."""
    results = []
    for which in ("fused", "reference"):
        m, tensors = _module([(64, 33), (1000,), (5, 7)], dtype=dtype)
        opt = HybridOptimizer(
            m, zo_params=list(m.parameters()), zo_lr=1e-2, zo_momentum=momentum, zo_weight_decay=weight_decay,
            fp32_master=fp32_master, queries=queries, rounding=rounding, seed=9, kernels=kernels,
        )  # fmt: skip
        coeffs = torch.tensor([0.7, -1.3, 0.4][:queries])
        for step in range(3):
            if which == "fused":
                opt.accumulate_zo(coeffs * (step + 1))
                opt.step()
            else:
                state = {}
                for t in tensors:
                    st = opt.state[t.param]
                    if fp32_master and "master" not in st:
                        st["master"] = t.param.detach().float().clone()
                    if momentum and "momentum_buffer" not in st:
                        st["momentum_buffer"] = torch.zeros_like(t.param, dtype=torch.float32)
                    state[t.index] = st
                dirs = [Direction(9, step, j, "gaussian", "fused") for j in range(queries)]
                for t in tensors:
                    apply_update(
                        t, dirs, coeffs * (step + 1) / queries, lr=1e-2, weight_decay=weight_decay, momentum=momentum,
                        momentum_buffer=state[t.index].get("momentum_buffer"), master=state[t.index].get("master"),
                        rounding=rounding,
                    )  # fmt: skip
        results.append([p.detach().float().clone() for p in m.parameters()])
    return results


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(momentum=0.9), dict(fp32_master=True), dict(weight_decay=0.1, queries=3)],
    ids=["plain", "momentum", "master", "wd-q3"],
)
def test_fused_update_equals_torch_reference_on_the_same_z_emulated(opts):
    fused, ref = _update_pair("emulate", torch.float32, **opts)
    start = [p.detach().float() for p in _module([(64, 33), (1000,), (5, 7)], dtype=torch.float32)[0].parameters()]
    for a, b, w0 in zip(fused, ref, start):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert (a != w0).float().mean() > 0.9


def test_fused_bf16_update_tracks_fp32_emulated():
    """Stochastic rounding with counter-based bits keeps the bf16 trajectory on the fp32 one (as the torch path)."""
    n, steps = 1 << 18, 100
    w0 = (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    finals = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = nn.Module()
        m.w = nn.Parameter(w0.to(dtype).clone(), requires_grad=False)
        opt = HybridOptimizer(m, zo_params=[m.w], zo_lr=1e-6, seed=1, kernels="emulate")
        for s in range(steps):
            opt.accumulate_zo(torch.tensor([0.5 + (s % 3)]))
            opt.step()
        finals[dtype] = m.w.detach().float() - w0.float()
    ref = finals[torch.float32]
    ratio = (finals[torch.bfloat16] @ ref / (ref @ ref)).item()
    assert abs(ratio - 1) < 0.05, ratio


def test_projected_gradient_uses_the_direction_the_update_applies_emulated():
    """(f(x + mu z) - f(x)) / mu from the fused perturbation ~ <grad f, z> with the z that the update regenerates."""
    model, tensors = _engine_model("llama", dtype=torch.float64)  # smooth (SiLU): OPT's ReLU kinks bias the estimate
    _check_projected_gradient(model, tensors, "emulate", "cpu")


def _check_projected_gradient(model, tensors, kernels, device):
    ids = torch.randint(0, 200, (2, 8), device=device)
    loss_fn = lambda b: model(input_ids=b, labels=b).loss
    opt = HybridOptimizer(model, zo_params=[t.param for t in tensors], mu=1e-4, seed=4, kernels=kernels)
    loss = loss_fn(ids)
    grads = torch.autograd.grad(loss, [t.param for t in tensors], allow_unused=True)
    for t in tensors:
        t.param.requires_grad_(False)
    z = [opt.direction(0).z(t) for t in tensors]
    want = sum((g.double() * zz.double()).sum() for g, zz in zip(grads, z) if g is not None)
    res = hybrid_step(opt, loss_fn, [ids], schedule="central")
    assert abs(res.zo_grads[0].item() - want.item()) < 0.01 * max(1.0, abs(want.item())), (res.zo_grads, want)


def test_engine_follows_parameters_that_move():
    m, tensors = _module([(100,), (300,)], dtype=torch.float32)
    opt = HybridOptimizer(m, zo_params=list(m.parameters()), zo_lr=1.0, seed=3, kernels="emulate")
    opt.accumulate_zo(torch.tensor([1.0]))
    opt.step()
    for p in m.parameters():  # e.g. model.to(...) after the optimizer was built: new storages
        p.data = p.data.clone()
    before = [p.detach().clone() for p in m.parameters()]
    opt.accumulate_zo(torch.tensor([1.0]))
    opt.step()
    assert all(not torch.equal(b, p.detach()) for b, p in zip(before, m.parameters()))


def test_optimizer_kernel_choice():
    m, _ = _module([(10,)], dtype=torch.float32)
    assert HybridOptimizer(m, zo_params=list(m.parameters()), kernels="torch").fused is None
    if not CUDA and not INTERPRET:
        assert HybridOptimizer(m, zo_params=list(m.parameters())).fused is None  # auto on CPU: torch
        with pytest.raises(ValueError, match="cannot run"):
            _ = HybridOptimizer(m, zo_params=list(m.parameters()), kernels="triton").fused
    with pytest.raises(ValueError, match="unknown ZO kernels"):
        HybridOptimizer(m, zo_params=list(m.parameters()), kernels="cuda")
    with pytest.raises(ValueError, match="scratch"):
        HybridOptimizer(m, zo_params=list(m.parameters()), scratch="layer")
    h = m.p0.half()
    m.p0.data = h
    assert "fp16" in K.unavailable_reason(zo_tensors(m, [m.p0]), backend="emulate")


# -- the Triton kernels against the emulation --------------------------------------------------------------------------
SHAPES = [(3, 1000), (2048,), (7, 13), (4104,), (1,)]  # tails, a non-multiple of 8 (unaligned launch), one element


def _check_kernel_directions(device, shapes):
    for dtype in (torch.bfloat16, torch.float32):
        m, tensors = _module(shapes, dtype=dtype, device=device)
        eng = K.FusedZO(m, tensors, scope="all", backend="triton")
        eng.refresh()
        for distribution in ("gaussian", "rademacher"):
            for t in tensors:
                z = eng.direction(t, SEED, 2, distribution)
                ze = K.emulate_direction(SEED, t.index, 2, t.param.numel(), distribution, device).view(t.param.shape)
                if distribution == "rademacher":
                    assert torch.equal(z, ze)
                else:
                    err = (z - ze).abs()
                    assert err.max().item() < ZERR[device]
                    assert (err > 1e-5).float().mean() < 1e-3  # large only where r ~ 0
            # the perturbation pass: one launch per group (16-byte-vector sizes, the others), into one scratch each
            assert [g.aligned for g in eng.all.groups] == [True, False]
            for g in eng.all.groups:
                scratch = torch.full((g.scratch_numel,), float("nan"), dtype=dtype, device=device)
                eng.perturb_into(g, scratch, SEED, 1, 0.01, distribution)
                _check_pass(g, scratch, dtype, distribution, device)


def _check_pass(g, scratch, dtype, distribution, device):
    for t, view in zip(g.tensors, g.views(scratch)):
        z = K.emulate_direction(SEED, t.index, 1, t.param.numel(), distribution, device).view(t.param.shape)
        want = (t.param.float() + 0.01 * z).to(dtype)
        assert not view.isnan().any()
        if dtype == torch.float32:
            torch.testing.assert_close(view, want, rtol=1e-6, atol=1e-8)
        elif distribution == "rademacher":
            assert torch.equal(view, want)
        else:  # z differs by up to ZERR (fast math): mu * ZERR before rounding, plus a rare 1-ulp flip of the rounding
            diff = (view.float() - want.float()).abs()
            bound = want.float().abs() * 2**-7 + 0.01 * ZERR[device]
            assert (diff <= bound).all() and (diff > 0).float().mean() < 1e-3


def _check_kernel_update(device, shapes):
    variants = [dict(), dict(momentum=0.9), dict(fp32_master=True), dict(weight_decay=0.1, queries=2),
                dict(distribution="rademacher")]  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        for opts in variants:
            mf, tf = _module(shapes, dtype=dtype, device=device, seed=1)
            me, te = _module(shapes, dtype=dtype, device=device, seed=1)
            q = opts.get("queries", 1)
            kw = dict(zo_lr=1e-3, zo_momentum=opts.get("momentum", 0.0), zo_weight_decay=opts.get("weight_decay", 0.0),
                      fp32_master=opts.get("fp32_master", False), queries=q, seed=2,
                      distribution=opts.get("distribution", "gaussian"))  # fmt: skip
            of = HybridOptimizer(mf, zo_params=list(mf.parameters()), kernels="triton", **kw)
            oe = HybridOptimizer(me, zo_params=list(me.parameters()), kernels="emulate", **kw)
            assert of.fused.backend == "triton" and oe.fused.backend == "emulate"
            for s in range(3):
                c = torch.tensor([0.9, -0.4][:q], device=device) * (s + 1)
                for o in (of, oe):
                    o.accumulate_zo(c)
                    o.step()
            # what the z difference can add up to: lr * sum over steps of |c| (x2 for momentum) * ZERR
            slack = 1e-3 * 0.9 * 6 * 2 * ZERR[device]
            for a, b, w0 in zip(
                mf.parameters(), me.parameters(), _module(shapes, dtype=dtype, device=device, seed=1)[0].parameters()
            ):
                a, b = a.detach().float(), b.detach().float()
                assert (a != w0.float()).float().mean() > 0.5, (dtype, opts)  # the update did move the weights
                if dtype == torch.bfloat16:  # at most a rare rounding flip (fma vs two roundings, fast-math z)
                    assert ((a - b).abs() <= b.abs() * 2**-6 + slack).all(), (dtype, opts)
                    assert (a != b).float().mean() < 1e-3, (dtype, opts)
                else:
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=slack)
                    assert ((a - b).abs() > 1e-7).float().mean() < 1e-3, (dtype, opts)
            if opts.get("fp32_master"):
                for t in tf:
                    ma, mb = of.state[t.param]["master"], oe.state[te[t.index].param]["master"]
                    torch.testing.assert_close(ma, mb, rtol=1e-6, atol=slack)


@needs_triton
def test_interpreted_kernels_match_the_emulation():
    _check_kernel_directions("cpu", SHAPES)


@needs_triton
def test_interpreted_update_kernel_matches_the_emulation():
    _check_kernel_update("cpu", SHAPES[:4])


@needs_triton
def test_interpreted_engine_restores_exactly_and_perturbs_functionally():
    _check_exact_restore_and_functional("triton", "cpu", cycles=3)


@needs_cuda
def test_cuda_kernel_directions_match_the_emulation():
    _check_kernel_directions("cuda", SHAPES + [(1 << 22,), (4097, 513)])


@needs_cuda
def test_cuda_kernel_direction_statistics():
    n = 1 << 24
    m, tensors = _module([(n,), (n,)], dtype=torch.float32, device="cuda")
    eng = K.FusedZO(m, tensors, scope="all", backend="triton")
    eng.refresh()
    for distribution in ("gaussian", "rademacher"):
        z = eng.direction(tensors[0], SEED, 0, distribution).flatten()
        assert abs(z.mean().item()) < 5 / n**0.5 and abs(z.var().item() - 1) < 2e-3
        if distribution == "gaussian":
            assert abs((z.double() ** 4).mean().item() - 3) < 0.02
        others = [
            eng.direction(tensors[1], SEED, 0, distribution).flatten(),
            eng.direction(tensors[0], SEED, 1, distribution).flatten(),
            eng.direction(tensors[0], mix(DIRECTION, 5, 8), 0, distribution).flatten(),
        ]
        for o in others:
            assert abs(_corr(z, o)) < 5 / n**0.5
        for lag in (1, 4, 128):
            assert abs(_corr(z[:-lag], z[lag:])) < 5 / n**0.5


@needs_cuda
def test_cuda_update_kernel_matches_the_emulation():
    _check_kernel_update("cuda", SHAPES[:4] + [(1 << 20,), (4097, 513)])


@needs_cuda
def test_cuda_fused_update_equals_torch_reference_on_the_same_z():
    for opts in (dict(), dict(momentum=0.9), dict(fp32_master=True), dict(weight_decay=0.1, queries=3)):
        fused, ref = _update_pair_cuda(**opts)
        for a, b in zip(fused, ref):
            # lr 1e-2 * sum of |c| over the steps * the fast-math z error (see ZERR); rare
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-2 * 1.3 * 6 * 2 * ZERR["cuda"])
            assert ((a - b).abs() > 1e-6).float().mean() < 1e-3


def _update_pair_cuda(**opts):
    # like _update_pair, on CUDA with the compiled kernels (z of the reference from the emulation)
    results = []
    q = opts.get("queries", 1)
    for which in ("fused", "reference"):
        m, tensors = _module([(64, 33), (1000,), (5, 7)], dtype=torch.float32, device="cuda")
        opt = HybridOptimizer(
            m, zo_params=list(m.parameters()), zo_lr=1e-2, zo_momentum=opts.get("momentum", 0.0),
            zo_weight_decay=opts.get("weight_decay", 0.0), fp32_master=opts.get("fp32_master", False), queries=q,
            seed=9, kernels="triton" if which == "fused" else "torch",
        )  # fmt: skip
        coeffs = torch.tensor([0.7, -1.3, 0.4][:q], device="cuda")
        for step in range(3):
            if which == "fused":
                opt.accumulate_zo(coeffs * (step + 1))
                opt.step()
                continue
            dirs = [Direction(9, step, j, "gaussian", "fused") for j in range(q)]
            for t in tensors:
                st = opt.state[t.param]
                if opts.get("fp32_master") and "master" not in st:
                    st["master"] = t.param.detach().float().clone()
                if opts.get("momentum") and "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(t.param, dtype=torch.float32)
                apply_update(
                    t, dirs, coeffs * (step + 1) / q, lr=1e-2, weight_decay=opts.get("weight_decay", 0.0),
                    momentum=opts.get("momentum", 0.0), momentum_buffer=st.get("momentum_buffer"),
                    master=st.get("master"),
                )  # fmt: skip
        results.append([p.detach().float().clone() for p in m.parameters()])
    return results


@needs_cuda
def test_cuda_engine_restores_exactly_and_perturbs_functionally():
    _check_exact_restore_and_functional("triton", "cuda", cycles=200)


@needs_cuda
def test_cuda_projected_gradient_uses_the_direction_the_update_applies():
    model32, tensors32 = _engine_model("llama", dtype=torch.float32, device="cuda")
    opt = HybridOptimizer(model32, zo_params=[t.param for t in tensors32], mu=1e-4, seed=4, kernels="triton")
    assert opt.fused is not None and opt.fused.backend == "triton"
    ids = torch.randint(0, 200, (2, 8), device="cuda")
    loss = model32(input_ids=ids, labels=ids).loss
    grads = torch.autograd.grad(loss, [t.param for t in tensors32], allow_unused=True)
    for t in tensors32:
        t.param.requires_grad_(False)
    z = [opt.direction(0).z(t) for t in tensors32]
    want = sum((g.double() * zz.double()).sum() for g, zz in zip(grads, z) if g is not None).item()
    res = hybrid_step(opt, lambda b: model32(input_ids=b, labels=b).loss, [ids], schedule="central")
    assert abs(res.zo_grads[0].item() - want) < 0.03 * max(1.0, abs(want)), (res.zo_grads, want)


@needs_cuda
def test_cuda_step_has_no_host_sync():
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).cuda().to(torch.bfloat16)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    for scope in K.SCOPES:
        opt = HybridOptimizer(model, zo_params=list(model.parameters()), seed=1, kernels="triton", scratch=scope)
        loss_fn = lambda b: model(b).float().pow(2).mean()
        hybrid_step(opt, loss_fn, [x], schedule="central")  # first step builds the tables (one host-to-device copy)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                hybrid_step(opt, loss_fn, [x], schedule="central")
        finally:
            torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_cuda_auto_takes_the_fused_path():
    model, tensors = _engine_model(device="cuda")
    opt = HybridOptimizer(model, zo_params=[t.param for t in tensors])
    assert opt.fused is not None and opt.fused.backend == "triton" and opt.fused.compiled
