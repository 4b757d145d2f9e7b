"""Run safety: the divergence guard, the perturbation-resolution check, deferred SIGINT/SIGTERM, out-of-memory errors.

Divergence guard. A step whose loss or ZO projected gradient is not finite is skipped before anything is updated
(both groups; the ZO step key does not advance, so the next step uses the same directions a run without that batch
would). `max_bad_steps` consecutive skipped steps, or a loss above `loss_bound`, stop the run: the checkpoints already
written are kept and nothing is written from the bad state.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from hyft.errors import HyftError


class TrainingDiverged(HyftError):
    """The loss or the ZO estimate went bad for too long, or the loss crossed train.loss_bound."""

    exit_code = 3


class TrainingInterrupted(HyftError):
    """SIGINT / SIGTERM: the current step finished and a checkpoint was written; exit 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class ResourceError(HyftError):
    """Out of accelerator memory; names the phase and the knobs that reduce memory."""


@dataclass
class DivergenceGuard:
    max_bad_steps: int = 3
    loss_bound: float | None = None
    consecutive: int = 0  # bad steps in a row
    skipped: int = 0  # bad steps in the whole run
    stop: str | None = None  # why the run must stop (set by check)

    def check(self, loss: torch.Tensor, zo_grads: torch.Tensor | None, step: int) -> str | None:
        """None if the step may be applied, else why it is skipped. One host sync."""
        parts = [loss.detach().reshape(1).float()]
        if zo_grads is not None:
            parts.append(zo_grads.detach().reshape(-1).float().to(parts[0].device))
        values = torch.cat(parts).tolist()
        value, grads = values[0], values[1:]
        if not math.isfinite(value):
            reason = f"non-finite loss {value}"
        elif any(not math.isfinite(g) for g in grads):
            reason = f"non-finite ZO projected gradient {next(g for g in grads if not math.isfinite(g))}"
        elif self.loss_bound is not None and value > self.loss_bound:
            self.stop = f"step {step}: loss {value:.6g} exceeds train.loss_bound {self.loss_bound:g}"
            return f"loss {value:.6g} above train.loss_bound"
        else:
            return None
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive >= self.max_bad_steps:
            self.stop = (
                f"step {step}: {reason}; {self.consecutive} consecutive bad steps "
                f"(train.max_bad_steps {self.max_bad_steps})"
            )
        return reason

    def good(self) -> None:
        self.consecutive = 0

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive, self.skipped = int(state["consecutive"]), int(state["skipped"])


# -- perturbation resolution -------------------------------------------------------------------------------------------
_PRECISION = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}


@torch.no_grad()
def vanishing_share(weights: Sequence[torch.Tensor], mu: float, distribution: str) -> float:
    """Share of elements where mu * E|z| is under half an ulp of the weight: round(w + mu z) == w for a typical z.

    The perturbed forward runs in the weight's dtype, so there the perturbation is lost and the ZO estimate sees
    only the other weights (an fp32 master copy does not help).
    """
    typical = mu * (math.sqrt(2 / math.pi) if distribution == "gaussian" else 1.0)
    total = lost = 0
    for w in weights:
        if w.dtype not in _PRECISION or w.numel() == 0:
            continue
        _, exp = torch.frexp(w.detach().float())
        ulp = torch.ldexp(torch.ones((), device=w.device), (exp - _PRECISION[w.dtype]).float())
        ulp = ulp.clamp_min(torch.finfo(w.dtype).tiny * torch.finfo(w.dtype).eps)  # subnormal spacing
        lost += int(((ulp / 2 > typical) & (w != 0)).sum())
        total += w.numel()
    return lost / total if total else 0.0


def warn_if_perturbation_vanishes(weights: Sequence[torch.Tensor], mu: float, distribution: str, threshold=0.1):
    share = vanishing_share(weights, mu, distribution)
    if share > threshold:
        dtypes = sorted({str(w.dtype)[6:] for w in weights})
        print(
            f"[hyft] warning: zo.mu {mu:g} is under half an ulp of {'/'.join(dtypes)} for {share:.0%} of the ZO "
            "weights: their perturbation rounds away in the forward and the ZO estimate ignores them; raise zo.mu "
            "or train in float32",
            file=sys.stderr,
        )
    return share


_SAMPLES = 1 << 16  # elements per tensor for the realised-scale estimate (a strided sample: cheap, deterministic)
SIXTEEN_BIT = (torch.float16, torch.bfloat16)


@torch.no_grad()
def _realised(w: torch.Tensor, mu: float, distribution: str) -> tuple[float, float]:
    """(sum of (round(w + mu z) - w) * z, mu * sum of z^2) over a fixed sample of w and a fixed z."""
    w = w.detach()
    if hasattr(w, "to_local"):  # an FSDP2 shard (DTensor): this rank's elements are a sample like any other
        w = w.to_local()
    flat = w.reshape(-1)
    n = flat.numel()
    if n == 0:
        return 0.0, 0.0
    # float64: a float32 linspace rounds n - 1 up to n past 2**24 elements (SmolLM2's embedding) and indexes off the end
    idx = torch.linspace(0, n - 1, _SAMPLES, dtype=torch.float64, device=w.device).long()
    x = flat[idx] if n > _SAMPLES else flat
    x = x.float()
    g = torch.Generator(device=w.device).manual_seed(0x5CA1E)
    if distribution == "rademacher":
        z = torch.randint(0, 2, x.shape, generator=g, device=w.device).float().mul_(2).sub_(1)
    else:
        z = torch.randn(x.shape, generator=g, device=w.device)
    realised = (z * mu + x).to(w.dtype).float() - x  # what the perturbed forward sees, as perturbed_value forms it
    return float((realised * z).sum()), float(mu * (z * z).sum())


def realised_scale(w: torch.Tensor, mu: float, distribution: str) -> float:
    """The perturbation a forward at round(w + mu z) really sees, projected on z, over the intended mu z (1: exact).

    Round-to-nearest in the weight's dtype loses every |mu z| under half an ulp: for bf16 weights near 1.0 (ulp 2^-7)
    and mu = 1e-3 the ratio is about 0.23, so the SPSA estimate sees those coordinates at a quarter of their scale.
    """
    num, den = _realised(w, mu, distribution)
    return num / den if den else 1.0


def tensor_kind(t) -> str:
    """norm, embedding, linear, bias or other: a ZO tensor's role, from the module that owns it."""
    from torch import nn

    module, name = t.owners[0] if t.owners else (None, "")
    if isinstance(module, nn.Embedding):
        return "embedding"
    if name == "bias":
        return "bias"
    if t.param.dim() == 1 and "norm" in type(module).__name__.lower():
        return "norm"
    if isinstance(module, nn.Linear) or t.param.dim() >= 2:
        return "linear"
    return "other"


def perturbation_scales(opt) -> dict[str, dict]:
    """Per tensor kind of a HybridOptimizer's ZO tensors: realised / intended perturbation scale (for run.json).

    {kind: {"tensors", "dtype", "realised_over_intended" (over the kind's elements), "min_tensor",
    "excluded" (tensors left out of ZO because theirs was under zo.min_perturbation_scale)}}.
    """
    out: dict[str, dict] = {}
    sums: dict[str, list[float]] = {}
    excluded = {t.index for t, _ in getattr(opt, "excluded_zo", [])}
    everything = list(opt.zo_tensors) + [t for t, _ in getattr(opt, "excluded_zo", [])]
    for t in sorted(everything, key=lambda t: t.index):
        kind = tensor_kind(t)
        num, den = _realised(t.param, opt.mu, opt.distribution)
        r = num / den if den else 1.0
        row = out.setdefault(kind, {"tensors": 0, "dtype": [], "min_tensor": r, "excluded": 0})
        row["tensors"] += 1
        row["min_tensor"] = round(min(row["min_tensor"], r), 4)
        row["excluded"] += t.index in excluded
        dt = str(t.param.dtype).removeprefix("torch.")
        if dt not in row["dtype"]:
            row["dtype"].append(dt)
        acc = sums.setdefault(kind, [0.0, 0.0])
        acc[0] += num
        acc[1] += den
    for kind, row in out.items():
        num, den = sums[kind]
        row["realised_over_intended"] = round(num / den, 4) if den else 1.0
        row["dtype"] = "/".join(row["dtype"])
    return out


# -- deferred signals --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_signals(describe_step) -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag (the yielded list gets the signal number) instead of killing the process; a second
    SIGINT aborts at once. Only in the main thread (signal handlers cannot be installed elsewhere)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        print(
            f"\n[hyft] {signal.Signals(signum).name}: finishing {describe_step()}, then writing a checkpoint "
            "(Ctrl-C again aborts without one)",
            file=sys.stderr,
            flush=True,
        )

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- out of memory -----------------------------------------------------------------------------------------------------
_KNOBS = {
    "FO backward": "model.gradient_checkpointing true (with train.dropout shared), a larger train.grad_accum "
    "(smaller micro-batches), a smaller train.batch_size or data.max_length",
    "FO forward": "a larger train.grad_accum (smaller micro-batches), a smaller train.batch_size or data.max_length",
    "ZO forward": "a larger train.grad_accum (smaller micro-batches), a smaller train.batch_size or data.max_length",
    "eval": "a smaller train.eval_batch_size or data.max_length",
}


def out_of_memory(phase: str, step: int, device: torch.device, error: BaseException) -> ResourceError:
    used = ""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            free, total = torch.cuda.mem_get_info(device)
            used = f" ({(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB in use on {device})"
    first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
    return ResourceError(
        f"out of memory in the {phase} of step {step}{used}: {first[:160]}; try {_KNOBS.get(phase, _KNOBS['eval'])}"
    )
