"""HybridOptimizer: one torch Optimizer over tagged first-order ("fo") and zeroth-order ("zo") parameter groups.

FO groups are stepped by an inner torch optimizer (SGD or AdamW) that shares the very same group dicts, so an lr
scheduler, HF Trainer or anything else that edits `param_groups[i]["lr"]` drives both groups. The ZO group holds the
ZO-updated tensors; its gradient is not a tensor but q projected-gradient scalars handed in by the estimator
(`accumulate_zo`), and `step()` turns them into x <- x - lr * (1/q) sum_j g_j z_j by regenerating each z_j.

Every applied ZO update is appended to `ledger` as (step, lr, weight_decay, coefficients): with the run seed this is
enough to replay the whole ZO trajectory onto the original weights.

The ZO perturbation and update are done by one backend (`hyft.zo.backend`), chosen by `kernels` at the first use
and fixed for the run (the ledger records its generator): "torch", the reference (`hyft.zo.reference`: hook swap,
`hyft.zo.update`, torch.randn directions per tensor); "triton", the fused kernels (`hyft.zo.fused`: one read and one
write of every weight per pass, many tensors per launch, counter-based Philox directions; "emulate" is the same engine
with torch math); "blocked", the CPU fast path (the reference's formulas with directions drawn per block of a tensor by
a thread pool); "counter", the same passes with counter-based directions (`hyft.zo.counter`: no Mersenne Twister, the
fastest on CPU). "auto" takes triton when the ZO tensors are on CUDA and triton is importable (env
HYFT_ZO_KERNELS=torch|triton|blocked|counter overrides auto), else torch: auto never picks blocked or counter, which
draw other directions, so CPU runs, their ledgers and checkpoints stay on the reference generator unless asked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hyft.config import choices
from hyft.guard import SIXTEEN_BIT, realised_scale
from hyft.zo import kernels as zk
from hyft.zo.backend import Backend, Rule
from hyft.zo.direction import Direction
from hyft.zo.fused import FusedBackend
from hyft.zo.reference import BlockedBackend, CounterBackend, ReferenceBackend
from hyft.zo.tensors import ZOTensor, zo_tensors

FO_OPTIMIZERS = choices("fo.optimizer")
KERNELS = (*choices("zo.kernels"), "emulate")  # emulate: the fused engine with torch math (tests)
# The direction generator each backend kind draws from, as recorded in the ledger ("generator"; absent: torch).
GENERATORS = {b.kind: b.generator for b in (ReferenceBackend, FusedBackend, BlockedBackend, CounterBackend)}
EXCLUDABLE_SHARE = 0.1  # at most this share of the ZO elements is left out for a perturbation that rounds away


def _report_excluded(model: nn.Module, excluded, mu: float, threshold: float) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    listed = ", ".join(f"{names.get(id(t.param), t.index)} ({r:.2f})" for t, r in excluded[:6])
    more = f" and {len(excluded) - 6} more" if len(excluded) > 6 else ""
    print(
        f"[hyft] zo: {len(excluded)} 16-bit ZO tensors left out of the ZO group (frozen): a perturbation of mu {mu:g} "
        f"mostly rounds away in their dtype, realised/intended scale under {threshold:g}: {listed}{more}. "
        "Raise zo.mu, train in float32, or set zo.min_perturbation_scale 0 to keep them",
        file=sys.stderr,
    )


class HybridOptimizer(torch.optim.Optimizer):
    def __init__(
        self,
        model: nn.Module,
        fo_params: Iterable[nn.Parameter] = (),
        zo_params: Iterable[nn.Parameter] = (),
        *,
        fo_optimizer: str = "sgd",
        fo_lr: float = 1e-3,
        fo_weight_decay: float = 0.0,
        fo_momentum: float = 0.0,
        fo_betas: tuple[float, float] = (0.9, 0.999),
        zo_lr: float = 1e-6,
        zo_weight_decay: float = 0.0,
        zo_momentum: float = 0.0,
        mu: float = 1e-3,
        queries: int = 1,
        distribution: str = "gaussian",
        rounding: str = "stochastic",
        fp32_master: bool = False,
        seed: int = 0,
        kernels: str = "auto",
        scratch: str = "block",
        min_perturbation_scale: float = 0.9,
    ):
        fo_params = [p for p in fo_params]
        zo_list = [p for p in zo_params]
        if not fo_params and not zo_list:
            raise ValueError("HybridOptimizer needs at least one FO or ZO parameter")
        if not 0 <= min_perturbation_scale <= 1:
            raise ValueError(f"min_perturbation_scale {min_perturbation_scale} is not in [0, 1]")
        if fo_optimizer not in FO_OPTIMIZERS:
            raise ValueError(f"unknown FO optimizer {fo_optimizer!r}; choose from {FO_OPTIMIZERS}")
        if kernels not in KERNELS:
            raise ValueError(f"unknown ZO kernels {kernels!r}; choose from {KERNELS[:-1]}")
        if scratch not in zk.SCOPES:
            raise ValueError(f"unknown ZO scratch scope {scratch!r}; choose from {zk.SCOPES}")
        self.fo: torch.optim.Optimizer | None = None
        groups: list[dict[str, Any]] = []
        if fo_params:
            if fo_optimizer == "sgd":
                self.fo = torch.optim.SGD(fo_params, lr=fo_lr, momentum=fo_momentum, weight_decay=fo_weight_decay)
            else:
                self.fo = torch.optim.AdamW(fo_params, lr=fo_lr, betas=fo_betas, weight_decay=fo_weight_decay)
            for g in self.fo.param_groups:
                g["kind"] = "fo"
            groups.extend(self.fo.param_groups)
        self.zo_tensors: list[ZOTensor] = zo_tensors(model, zo_list) if zo_list else []
        # 16-bit tensors whose perturbation mostly rounds away in the forward (bf16 norm weights near 1: a realised
        # scale ~0.23 of mu*z) would feed the estimate at the wrong scale: they are left out of ZO, with the reason
        # printed, as long as they are a small part of the ZO weights (norms: a few kB). When more is lost, mu does
        # not fit the dtype at all: nothing is left out and the trainer's resolution warning says so. Indices stay as
        # they were, so every other tensor keeps its directions. fp32 tensors are never checked.
        self.excluded_zo: list[tuple[ZOTensor, float]] = []
        if min_perturbation_scale > 0 and any(t.param.dtype in SIXTEEN_BIT for t in self.zo_tensors):
            scales = [
                realised_scale(t.param, mu, distribution) if t.param.dtype in SIXTEEN_BIT else 1.0
                for t in self.zo_tensors
            ]
            low = [(t, r) for t, r in zip(self.zo_tensors, scales) if r < min_perturbation_scale]
            total = sum(t.param.numel() for t in self.zo_tensors)
            if low and sum(t.param.numel() for t, _ in low) <= EXCLUDABLE_SHARE * total:
                self.excluded_zo = low
                gone = {t.index for t, _ in low}
                self.zo_tensors = [t for t in self.zo_tensors if t.index not in gone]
                _report_excluded(model, self.excluded_zo, mu, min_perturbation_scale)
        if self.zo_tensors:
            groups.append(
                dict(
                    params=[t.param for t in self.zo_tensors],
                    kind="zo",
                    lr=zo_lr,
                    weight_decay=zo_weight_decay,
                    momentum=zo_momentum,
                )
            )
        super().__init__(groups, defaults={})
        if self.fo is not None:  # the inner optimizer must see the same dicts as ours (add_param_group may copy)
            self.fo.param_groups = [g for g in self.param_groups if g["kind"] == "fo"]
        self.mu, self.queries, self.distribution = mu, queries, distribution
        self.rounding, self.fp32_master, self.seed = rounding, fp32_master, seed
        self.zo_step = 0  # counts applied ZO updates: the step key of every direction
        self.steps = 0  # counts applied optimizer steps of any group: the key of per-step randomness (dropout)
        self.model, self.kernels, self.scratch = model, kernels, scratch
        self._backend: Backend | None = None
        self._grads: torch.Tensor | None = None
        self._micro = 0
        self.ledger: list[tuple[int, float, float, torch.Tensor]] = []

    # -- ZO interface used by the step and by the Trainer integration ---------------------------------------------
    @property
    def zo_group(self) -> dict[str, Any] | None:
        return next((g for g in self.param_groups if g["kind"] == "zo"), None)

    @property
    def backend(self) -> Backend:
        """The ZO backend (`hyft.zo.backend`); chosen once, at the first use (the model may move before that)."""
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> Backend:
        mode = self.kernels
        if mode == "auto":
            mode = os.environ.get("HYFT_ZO_KERNELS", "auto") or "auto"
            if mode not in KERNELS:
                raise ValueError(f"HYFT_ZO_KERNELS={mode!r}; choose from {KERNELS[:-1]}")
        keys = (self.zo_tensors, self.seed, self.distribution)
        if mode == "blocked":
            return BlockedBackend(*keys)
        if mode == "counter":
            return CounterBackend(*keys)
        if mode == "torch" or not self.zo_tensors:
            return ReferenceBackend(*keys)
        if mode == "auto" and self.zo_tensors[0].param.device.type != "cuda":
            # auto means CUDA only: Triton's CPU interpreter (TRITON_INTERPRET=1) is for tests
            return ReferenceBackend(*keys)
        engine = "emulate" if mode == "emulate" else "triton"
        reason = zk.unavailable_reason(
            self.zo_tensors, backend=engine, rounding=self.rounding, fp32_master=self.fp32_master
        )
        if reason is not None:
            if mode == "auto":
                return ReferenceBackend(*keys)
            raise ValueError(f"zo.kernels={mode}: the fused path cannot run here: {reason}")
        return FusedBackend(self.model, *keys, scope=self.scratch, backend=engine)

    @property
    def fused(self) -> zk.FusedZO | None:
        """The fused engine when the backend is the fused one, else None."""
        return getattr(self.backend, "engine", None)

    @property
    def direction_kind(self) -> str:
        """Direction.kernel of this run's directions: torch, fused or blocked."""
        return self.backend.kind

    @property
    def generator(self) -> str:
        """The direction generator, as the ledger records it: torch, philox (fused kernels), blocked or chunked."""
        return self.backend.generator

    def direction(self, query: int) -> Direction:
        return self.backend.direction(self.zo_step, query)

    def perturbed(self, query: int, scale: float):
        """Context manager: forwards inside it see x + scale * z_query (x itself is never written). The estimator
        (`hyft.zo.estimator`) passes scale = +-mu."""
        return self.backend.perturbed(self.zo_step, query, scale)

    def perturb(self, query: int, sign: float):
        """`perturbed` at sign * mu."""
        return self.perturbed(query, sign * self.mu)

    def accumulate_zo(self, grads: torch.Tensor) -> None:
        """Add one micro-batch's projected gradients (shape [q]); step() averages over micro-batches."""
        self._grads = grads.detach().float() if self._grads is None else self._grads + grads.detach().float()
        self._micro += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.fo is not None:
            self.fo.zero_grad(set_to_none=set_to_none)

    def discard(self) -> None:
        """Drop this step's gradients of both groups without updating (divergence guard)."""
        self.zero_grad(set_to_none=True)
        self._grads, self._micro = None, 0

    @torch.no_grad()
    def step(self, closure=None, *, groups: Sequence[str] = ("fo", "zo")):
        if closure is not None:
            raise ValueError("HybridOptimizer.step takes no closure; the ZO estimate comes from accumulate_zo")
        if "fo" in groups and self.fo is not None:
            self.fo.step()
        if "zo" in groups and self.zo_tensors:
            if self._grads is None:
                raise RuntimeError("ZO step without a projected gradient: call accumulate_zo first")
            self._apply_zo(self._grads / (self._micro * self.queries))
            self._grads, self._micro = None, 0
        if "zo" in groups or not self.zo_tensors:  # alternating steps FO then ZO: one step
            self.steps += 1

    def _apply_zo(self, coeffs: torch.Tensor, step: int | None = None) -> None:
        group = self.zo_group
        step = self.zo_step if step is None else step
        rule = Rule(
            seed=self.seed, lr=group["lr"], weight_decay=group["weight_decay"], momentum=group["momentum"],
            rounding=self.rounding, fp32_master=self.fp32_master, distribution=self.distribution,
        )  # fmt: skip
        self.backend.update(step, coeffs, rule, self.state)
        # Kept on device: moving it to the host here would synchronise every step; state_dict() converts.
        self.ledger.append((step, group["lr"], group["weight_decay"], coeffs.detach().clone()))
        self.zo_step = step + 1

    # -- state ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        zo = super().state_dict()
        return {
            "fo": self.fo.state_dict() if self.fo is not None else None,
            "zo": zo,
            "zo_step": self.zo_step,
            "steps": self.steps,
            "ledger": [(s, lr, wd, c.tolist()) for s, lr, wd, c in self.ledger],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.fo is not None and state_dict.get("fo") is not None:
            self.fo.load_state_dict(state_dict["fo"])
        super().load_state_dict(state_dict["zo"])
        if self.fo is not None:
            self.fo.param_groups = [g for g in self.param_groups if g["kind"] == "fo"]
        # torch casts floating state to each parameter's dtype; the ZO state (fp32 master copy, fp32 momentum
        # buffer of a 16-bit weight) must keep its own dtype, or a resumed run would not continue bit-exactly.
        params = [p for g in self.param_groups for p in g["params"]]
        for index, saved in state_dict["zo"]["state"].items():
            p = params[int(index)]
            for key, value in saved.items():
                if torch.is_tensor(value) and value.is_floating_point() and key != "step":
                    self.state[p][key] = value.to(device=p.device, dtype=value.dtype, copy=True)
        self.zo_step = int(state_dict["zo_step"])
        self.steps = int(state_dict.get("steps", self.zo_step))  # before the field: the only step key there was
        self.ledger = [(s, lr, wd, torch.tensor(c)) for s, lr, wd, c in state_dict.get("ledger", [])]
