"""The "counter" direction generator: z as a pure function of (key, element index), cheap enough for memory speed.

The other CPU generators draw from torch's Mersenne Twister (one generator per tensor, or per block), which costs
4-6 ns per number here against ~0.4 ns per element for a copy of the weights: the Gaussian passes are bound by it.
Here z of tensor t in query j of step k is a function of key = mix(DIRECTION, run_seed, k, j, t) (the reference's
seed of that tensor) and the element index i, nothing else:

    word(key, m) = splitmix64's m-th output from state key: finalise(key + (m + 1) * 0x9E3779B97F4A7C15)  (mod 2^64)
    rademacher   z_i = -1 where bit i % 64 of word(key, i // 64) is set, else +1 (the blocked generator's layout)
    gaussian     elements 2p, 2p + 1 from h = word(key, p) by Box-Muller:
                     u = (h >> 40 + 1) * 2^-24 in (0, 1],  quadrant = (h >> 38) & 3,  f = ((h >> 16) & 2^22 - 1) * 2^-22
                     r = sqrt(-2 ln u),  angle = (quadrant + f) * pi / 2
                     z_2p = r cos(angle),  z_2p+1 = r sin(angle)
                 ln, sin and cos are the fp32 polynomials below (no libm): a fixed sequence of IEEE fp32 operations,
                 so the numbers are the same on every machine, in torch ops and in the compiled loops (native.c)

Blocks, threads and the order of work do not enter: any split of a tensor gives the same z. The polynomials are
accurate to a few fp32 ulps (ln: atanh series on [sqrt(1/2), sqrt(2)); sin, cos: Taylor series to x^11 / x^12 on
[0, pi/2)), so z is N(0, 1) as far as fp32 Box-Muller on 24-bit uniforms is (torch.randn is the same construction).
The 16-bit stochastic-rounding noise is the blocked generator's (per block, `hyft.zo.blocked`).

This module is the definition, in torch ops; `hyft.zo.native` computes the same numbers bit for bit (tested), and
hyft.zo.blocked uses whichever is available.
"""

from __future__ import annotations

import torch

_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
# fp32 constants, exactly (float.fromhex of the fp32 values native.c spells the same way)
SQRT2, LN2, PIO2 = float.fromhex("0x1.6a09e6p+0"), float.fromhex("0x1.62e430p-1"), float.fromhex("0x1.921fb6p+0")
LN = [float.fromhex(h) for h in ("0x1.745d18p-4", "0x1.c71c72p-4", "0x1.24924ap-3", "0x1.99999ap-3", "0x1.555556p-2")]
SIN = [float.fromhex(h) for h in ("-0x1.ae6456p-26", "0x1.71de3ap-19", "-0x1.a01a02p-13", "0x1.111112p-7")]
SIN.append(float.fromhex("-0x1.555556p-3"))
COS = [
    float.fromhex(h)
    for h in ("0x1.1eed8ep-29", "-0x1.27e4fcp-22", "0x1.a01a02p-16", "-0x1.6c16c2p-10", "0x1.555556p-5", "-0x1p-1")
]


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def words(key: int, first: int, n: int, device="cpu") -> torch.Tensor:
    """word(key, m) for m = first .. first + n - 1, as int64 (the bits of the uint64)."""
    x = torch.arange(first + 1, first + n + 1, dtype=torch.int64, device=device)
    x = x * _signed(_GOLDEN) + _signed(key)
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    return x ^ _shr(x, 31)


def _horner(x2: torch.Tensor, coeffs: list[float]) -> torch.Tensor:
    p = torch.full_like(x2, coeffs[0])
    for c in coeffs[1:]:
        p = p.mul_(x2).add_(c)
    return p.mul_(x2).add_(1.0)


def log_unit(u: torch.Tensor) -> torch.Tensor:
    """ln u for fp32 u in (0, 1] (normal numbers): u = 2^e m, m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m-1)/(m+1))."""
    bits = u.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    big = m > SQRT2
    m = torch.where(big, m * 0.5, m)
    e = e + big.to(torch.int32)
    f = m - 1.0  # exact (Sterbenz)
    s = f / (f + 2.0)
    p = _horner(s * s, LN)
    return e.to(torch.float32) * LN2 + (s + s) * p


def gaussian(key: int, first: int, n: int, device="cpu") -> torch.Tensor:
    """z_first .. z_first+n-1 (fp32) of the Gaussian direction with this key; first must be even."""
    if first % 2:
        raise ValueError("a Gaussian counter block starts at an even element")
    h = words(key, first // 2, (n + 1) // 2, device)
    u = ((h >> 40) & 0xFFFFFF).add_(1).to(torch.float32).mul_(2.0**-24)
    quadrant = (h >> 38) & 3
    x = ((h >> 16) & 0x3FFFFF).to(torch.float32).mul_(2.0**-22).mul_(PIO2)
    x2 = x * x
    sin = x * _horner(x2, SIN)
    cos = _horner(x2, COS)
    # sqrt correctly rounded (as sqrtf): torch's fp32 sqrt is not on every CPU build (17% off by an ulp here)
    r = torch.sqrt(log_unit(u).mul_(-2.0).double()).float()
    # (cos, sin) of angle + quadrant * pi/2
    c = torch.where(quadrant == 0, cos, torch.where(quadrant == 1, -sin, torch.where(quadrant == 2, -cos, sin)))
    s = torch.where(quadrant == 0, sin, torch.where(quadrant == 1, cos, torch.where(quadrant == 2, -sin, -cos)))
    return torch.stack([r * c, r * s], dim=1).view(-1)[:n]
