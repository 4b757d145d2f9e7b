"""Learning-rate schedules as multipliers of the base lr: constant, linear or cosine decay after linear warmup."""

from __future__ import annotations

import math

from hyft.config import LR_SCHEDULES as SCHEDULES  # declared once, on zo.lr_schedule / fo.lr_schedule


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Multiplier for optimizer step `step` (0-based): warmup ramps 1/w .. 1, then decays to `min_ratio`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay
