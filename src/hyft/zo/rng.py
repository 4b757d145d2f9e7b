"""Counter-based seeding: every random draw is keyed, so nothing depends on the global RNG or call order."""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. mix(run_seed, step, query, tensor); distinct keys give unrelated seeds."""
    h = 0x243F6A8885A308D3
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK))
    return h >> 1


# Domain tags keep streams for directions and for rounding independent even for equal (step, tensor) keys.
DIRECTION, ROUNDING, DATA = 1, 2, 3


def generator(seed: int, device: torch.device | str) -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g
