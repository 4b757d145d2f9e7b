"""The compiled blocked passes (hyft.zo.native): built here, and bit for bit the torch ops they replace."""

import warnings

import pytest
import torch
from torch import nn

from hyft.zo import blocked, native
from hyft.zo.perturb import Direction, ZOTensor

B = blocked.BLOCK
SIZES = (1, 63, 64, 65, 1000, B, B + 77, 3 * B - 5)  # under a word, one word, ragged words, blocks with a tail


def _tensor(n, index=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ZOTensor(index, nn.Parameter(torch.randn(n, generator=g), requires_grad=False), ())


def _bits(x):
    return x.detach().view(torch.int32).clone()


@pytest.fixture
def torch_ops(monkeypatch):
    """A context that runs its body on the torch ops (HYFT_NATIVE=0), then back to the compiled passes."""
    from contextlib import contextmanager

    @contextmanager
    def off():
        monkeypatch.setenv("HYFT_NATIVE", "0")
        try:
            yield
        finally:
            monkeypatch.delenv("HYFT_NATIVE")

    return off


def test_the_library_builds_on_this_machine():
    # CI machines have a C compiler (the brief's environment); without one hyft falls back, but CI must not
    assert native.library() is not None, native.error()


@pytest.mark.parametrize("kernel", blocked.KINDS)
@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize("n", SIZES)
def test_perturbed_value_equals_the_torch_ops(kernel, dist, n, torch_ops):
    t = _tensor(n)
    for scale in (1e-3, -1e-3, 1.0, 0.37):
        d = Direction(7, 5, 1, dist, kernel)
        with torch_ops():
            want = _bits(blocked.perturbed_value(t, d, scale))
        got = _bits(blocked.perturbed_value(t, d, scale))
        assert torch.equal(got, want), (dist, n, scale)
        assert not torch.equal(got, _bits(t.param))  # it did perturb


@pytest.mark.parametrize("kernel", blocked.KINDS)
@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("q", [1, 3])
def test_update_equals_the_torch_ops(kernel, dist, n, q, torch_ops):
    directions = [Direction(7, 5, j, dist, kernel) for j in range(q)]
    coeffs = torch.tensor([0.8, -2.5, 1e-3])[:q]
    for lr in (1e-3, 0.7):
        a, b = _tensor(n, index=2), _tensor(n, index=2)
        with torch_ops():
            blocked.apply_update(a, directions, coeffs, lr=lr)
        blocked.apply_update(b, directions, coeffs, lr=lr)
        assert torch.equal(_bits(b.param), _bits(a.param)), (dist, n, q, lr)
        assert not torch.equal(_bits(b.param), _bits(_tensor(n).param))  # it did update


@pytest.mark.parametrize("kernel", blocked.KINDS)
@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_compiled_passes_do_not_depend_on_the_number_of_threads(kernel, dist):
    n = 40 * B + 3  # enough blocks that even the compiled Rademacher pass goes to the pool
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t = _tensor(n, index=9)
            v = _bits(blocked.perturbed_value(t, Direction(1, 2, 0, dist, kernel), 1e-3))
            blocked.apply_update(t, [Direction(1, 2, 0, dist, kernel)], torch.tensor([1.5]), lr=1e-2)
            out[threads] = (v, _bits(t.param))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[1][0], out[2][0]) and torch.equal(out[1][1], out[2][1])


@pytest.mark.parametrize("kernel", blocked.KINDS)
def test_a_failed_build_falls_back_to_the_same_numbers(kernel, monkeypatch, tmp_path):
    t = _tensor(B + 5)
    d = Direction(3, 1, 0, "gaussian" if kernel == "counter" else "rademacher", kernel)
    want = _bits(blocked.perturbed_value(t, d, 1e-3))
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("HYFT_CACHE", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.library() is None
    assert any("did not build" in str(w.message) for w in caught)
    assert native.error() == "the build failed (see the warning)"
    assert torch.equal(_bits(blocked.perturbed_value(t, d, 1e-3)), want)


def test_momentum_weight_decay_and_16_bit_keep_the_torch_ops(monkeypatch):
    # only the plain fp32 update is compiled; the rest must not reach the library at all
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            raise AssertionError(f"{name} called")

    monkeypatch.setattr(native, "library", lambda: Spy())
    d = [Direction(3, 1, 0, "rademacher", "blocked")]
    t = _tensor(100)
    blocked.apply_update(t, d, torch.tensor([1.0]), lr=1e-3, weight_decay=0.1)
    buf = torch.zeros(100)
    blocked.apply_update(t, d, torch.tensor([1.0]), lr=1e-3, momentum=0.9, momentum_buffer=buf)
    half = ZOTensor(0, nn.Parameter(torch.ones(100, dtype=torch.bfloat16), requires_grad=False), ())
    blocked.apply_update(half, d, torch.tensor([1.0]), lr=1e-3, rounding_seed=1)
    blocked.perturbed_value(half, d[0], 1e-3)
    assert calls == []


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_more_queries_than_the_compiled_counter_update_holds(dist, torch_ops):
    q = native.library().max_queries + 1  # past the compiled loop's stack buffers: the per-block path takes it
    directions = [Direction(2, 9, j, dist, "counter") for j in range(q)]
    coeffs = torch.linspace(-1, 1, q)
    a, b = _tensor(B + 3, index=1), _tensor(B + 3, index=1)
    with torch_ops():
        blocked.apply_update(a, directions, coeffs, lr=1e-2)
    blocked.apply_update(b, directions, coeffs, lr=1e-2)
    assert torch.equal(_bits(b.param), _bits(a.param))
