"""One optimisation step of any method: the FO forward/backward and the ZO forwards, in the chosen schedule.

Schedules (forwards + backwards per step with q queries, when both groups exist):
    onesided     the paper's rule: the FO forward at (x, y) gives f(x, y) and the PEFT gradients; q no-grad forwards
                 at x + mu z_j give the ZO estimate; both groups step from the same point.   (1 + q) F + 1 B
    central      MeZO's rule for the ZO group, FO as above.                                 (1 + 2q) F + 1 B
    alternating  LMAO-style: the FO step on the PEFT group first, then a central ZO step on the base at the new
                 PEFT weights, on the same batch.                                            (1 + 2q) F + 1 B
With only a ZO group (mezo, zo-lora): onesided needs its own baseline forward, (1 + q) F; central 2q F.
With only an FO group (ft, lora, ...): 1 F + 1 B.

Dropout: the forwards whose losses are compared must compute the same function. With dropout="off" the model runs in
eval mode throughout; with dropout="shared" every forward of one micro-batch in a step draws the same masks (the RNG is
re-seeded from (seed, optimizer step, micro-batch) before each forward, inside fork_rng so the global stream is
untouched). The key is the optimizer's step count, not its ZO step: FO-only methods have no ZO step, and they too must
draw new masks every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hyft.config import choices
from hyft.optim import HybridOptimizer
from hyft.zo.estimator import projected_grads
from hyft.zo.rng import DATA, mix

SCHEDULES = choices("zo.schedule")


@dataclass
class StepResult:
    loss: torch.Tensor  # mean loss at the unperturbed point over the micro-batches (device tensor)
    zo_grads: torch.Tensor | None  # mean projected gradient per query
    forwards: int
    backwards: int
    applied: bool = True


def step_counts(schedule: str, has_fo: bool, has_zo: bool, queries: int) -> tuple[int, int]:
    """(forwards, backwards) per micro-batch: the table in the module docstring."""
    if not has_zo:
        return 1, 1
    zo_fwd = queries if schedule == "onesided" else 2 * queries
    if not has_fo:
        return zo_fwd + (1 if schedule == "onesided" else 0), 0
    return 1 + zo_fwd, 1


def hybrid_step(
    opt: HybridOptimizer,
    loss_fn: Callable[[object], torch.Tensor],
    micro_batches: Sequence[object],
    *,
    schedule: str = "onesided",
    dropout: str = "off",
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    accept: Callable[[StepResult], bool] | None = None,
    no_sync: Callable[[], object] | None = None,
    update: Callable[[tuple[str, ...]], None] | None = None,
) -> StepResult:
    """Run one step over `micro_batches` (gradient accumulation shares one ZO direction) and update both groups.

    accept(result) may veto the update (e.g. a non-finite loss): then nothing changes and the step key does not
    advance. no_sync() is a context that suppresses DDP gradient all-reduce for all but the last micro-batch.
    update(groups) applies the update of those groups (default opt.step(groups=groups)); the probe (probe.py) passes
    one that measures the loss between the groups' parts.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
    has_fo, has_zo = opt.fo is not None, bool(opt.zo_tensors)
    k = len(micro_batches)
    apply = update if update is not None else (lambda groups: opt.step(groups=groups))
    counts = {"F": 0, "B": 0}
    device = next(iter(opt.param_groups[0]["params"])).device
    shared = dropout == "shared"

    def forward(batch, i: int) -> torch.Tensor:
        counts["F"] += 1
        if not shared:
            return loss_fn(batch)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(mix(DATA, opt.seed, opt.steps, i, 7))
            return loss_fn(batch)

    def fo_pass() -> list[torch.Tensor]:
        losses = []
        for i, b in enumerate(micro_batches):
            ctx = no_sync() if (no_sync is not None and i < k - 1) else contextlib.nullcontext()
            with ctx:
                loss = forward(b, i)
                (loss / k).backward()
            counts["B"] += 1
            losses.append(loss.detach())
        return losses

    def zo_pass(estimator: str, baselines: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        grads, refs = [], []
        for i, (b, base) in enumerate(zip(micro_batches, baselines)):
            g, ref = projected_grads(
                lambda b=b, i=i: forward(b, i),
                opt.perturbed,
                estimator=estimator,
                queries=opt.queries,
                mu=opt.mu,
                baseline=base,
                reduce=reduce,
            )
            opt.accumulate_zo(g)
            grads.append(g)
            refs.append(ref)
        return torch.stack(grads).mean(0), torch.stack(refs).mean()

    zo_grads = None
    both = has_fo and has_zo
    if schedule == "alternating" and both:
        losses = fo_pass()
        result = StepResult(reduce(torch.stack(losses).mean().float()), None, counts["F"], counts["B"])
        if accept is not None and not accept(result):
            return _discard(opt, result, counts)
        apply(("fo",))
        opt.zero_grad()
        zo_grads, _ = zo_pass("central", [None] * k)
    elif has_zo:
        estimator = "onesided" if schedule == "onesided" else "central"
        losses = fo_pass() if has_fo else []
        zo_grads, ref = zo_pass(estimator, losses or [None] * k)
        losses = losses or [ref]
    else:
        losses = fo_pass()
    loss = torch.stack(losses).mean()
    result = StepResult(reduce(loss.float()), zo_grads, counts["F"], counts["B"])
    if accept is not None and not accept(result):
        return _discard(opt, result, counts)
    apply(("zo",) if schedule == "alternating" and both else ("fo", "zo"))
    opt.zero_grad()
    return result


def _discard(opt: HybridOptimizer, result: StepResult, counts: dict[str, int]) -> StepResult:
    opt.discard()
    result.applied, result.forwards, result.backwards = False, counts["F"], counts["B"]
    return result
