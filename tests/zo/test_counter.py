"""The counter generator (hyft.zo.counter): its definition pinned, its distribution, and that blocks, threads and the
compiled loops do not change a number."""

import math

import pytest
import torch
from torch import nn

from hyft.zo import blocked, counter, native
from hyft.zo.perturb import Direction, ZOTensor
from hyft.zo.rng import DIRECTION, mix

B = blocked.BLOCK


def _u64(x):
    return int(x) & ((1 << 64) - 1)


def test_words_are_splitmix64():
    # Vigna's splitmix64 from state 0: its first outputs are these (the published reference sequence)
    assert [_u64(x) for x in counter.words(0, 0, 2)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    # the m-th word from state key is the m-th output: words(key, m, 1) == words(key, 0, m + 1)[m]
    assert _u64(counter.words(987, 5, 1)[0]) == _u64(counter.words(987, 0, 6)[5])


def test_gaussian_definition_is_pinned():
    # a change here changes every counter direction: ledgers and checkpoints written with it would no longer replay
    want = ["0x1.d4c7acp-2", "0x1.3f177cp-1", "0x1.238db0p-1", "0x1.d3ffa0p+0"]
    assert [float(x) for x in counter.gaussian(42, 0, 4)] == [float.fromhex(h) for h in want]


def test_the_compiled_generator_is_the_definition():
    lib = native.library()
    assert lib is not None, native.error()
    for key in (0, 1, 12345678901234567, (1 << 63) - 1):
        for first, n in ((0, 1), (0, 64), (6, 1001), (B // 2, B)):
            w = torch.empty(n, dtype=torch.int64)
            lib.hyft_ctr_words(w.data_ptr(), n, key, first)
            assert torch.equal(w, counter.words(key, first, n))
            z = torch.empty(n)
            lib.hyft_ctr_gauss(z.data_ptr(), n, key, first)
            assert torch.equal(z.view(torch.int32), counter.gaussian(key, first, n).view(torch.int32)), (key, first, n)


def test_gaussian_is_standard_normal():
    z = counter.gaussian(7, 0, 1 << 21).double()
    n = z.numel()
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)
    assert abs(float((z**3).mean())) < 4 * math.sqrt(15 / n)
    assert abs(float((z**4).mean()) - 3) < 4 * math.sqrt(96 / n)
    # tails: P(|z| > 2) = 0.0455, P(|z| > 3) = 0.0027
    assert abs(float((z.abs() > 2).double().mean()) - 0.0455) < 0.001
    assert abs(float((z.abs() > 3).double().mean()) - 0.0027) < 0.0003
    # the two elements of a Box-Muller pair and neighbouring pairs are uncorrelated
    pairs = z.view(-1, 2)
    assert abs(float((pairs[:, 0] * pairs[:, 1]).mean())) < 4 / math.sqrt(n / 2)
    assert abs(float((z[:-2] * z[2:]).mean())) < 4 / math.sqrt(n)


def test_log_and_trig_polynomials_are_accurate():
    u = torch.rand(1 << 18, dtype=torch.float64).clamp_min(2.0**-24).float()
    exact = u.double().log()
    err = (counter.log_unit(u).double() - exact).abs() / exact.abs().clamp_min(1e-30)
    assert float(err.max()) < 1e-6
    # r * (cos, sin) rebuilt from z has the right radius: sum of a pair's squares is -2 ln u
    key, n = 3, 4096
    h = counter.words(key, 0, n // 2)
    uu = ((h >> 40) & 0xFFFFFF).add(1).double() * 2.0**-24
    z = counter.gaussian(key, 0, n).double().view(-1, 2)
    assert torch.allclose((z**2).sum(1), -2 * uu.log(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_a_tensor_z_is_the_definition_whatever_the_blocks(dist):
    n = 2 * B + 77
    t = ZOTensor(5, nn.Parameter(torch.zeros(n), requires_grad=False), ())
    d = Direction(11, 3, 1, dist, "counter")
    key = mix(DIRECTION, 11, 3, 1, 5)
    if dist == "gaussian":
        want = counter.gaussian(key, 0, n)
    else:
        words = counter.words(key, 0, (n + 63) // 64)
        bits = (words[:, None] >> torch.arange(64)) & 1
        want = (1 - 2 * bits).float().view(-1)[:n]
    assert torch.equal(d.z(t), want)
    # keyed like every other generator: another query or tensor is another direction
    assert not torch.equal(Direction(11, 3, 2, dist, "counter").z(t), want)
    assert not torch.equal(d.z(ZOTensor(6, t.param, ())), want)
    # and it is not the blocked generator's direction
    assert not torch.equal(Direction(11, 3, 1, dist, "blocked").z(t), want)
