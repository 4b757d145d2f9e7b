"""Stochastic rounding: round an fp32 value to a 16-bit float up or down with probability given by the distance.

Round-to-nearest drops any update under half an ulp (bf16 has 8 mantissa bits: ~1e-4 at |w| = 0.02, while a ZO step
lr * g * z is ~1e-6), so ZO progress would vanish. Stochastic rounding is unbiased: E[round(x)] = x.
"""

from __future__ import annotations

import torch


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """x (fp32) rounded to `dtype`, unbiased; fp32/fp64 targets are a plain cast."""
    if dtype in (torch.float32, torch.float64) or x.dtype == dtype:
        return x.to(dtype)
    x = x.float()
    if dtype == torch.bfloat16:
        # bf16 is the top half of fp32: add uniform noise to the 16 bits that get cut, then truncate.
        bits = x.view(torch.int32)
        noise = torch.randint(0, 1 << 16, x.shape, generator=generator, device=x.device, dtype=torch.int32)
        rounded = ((bits + noise) & -65536).view(torch.float32)
        # Non-finite inputs must stay what they are (adding noise to NaN/inf bit patterns could change them).
        return torch.where(torch.isfinite(x), rounded, x).to(torch.bfloat16)
    nearest = x.to(dtype)
    low = torch.where(nearest.float() > x, torch.nextafter(nearest, torch.full_like(nearest, -float("inf"))), nearest)
    high = torch.where(nearest.float() < x, torch.nextafter(nearest, torch.full_like(nearest, float("inf"))), nearest)
    gap = high.float() - low.float()
    p_high = torch.where(gap > 0, (x - low.float()) / gap, torch.zeros_like(x))
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return torch.where(u < p_high, high, low)
