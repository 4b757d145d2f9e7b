"""What the zeroth-order half of a run does: exact directional derivatives next to the ZO estimate, who moved the
loss, how far the base drifted, and the curvature each group's step sees. Pure torch (no transformers).

On a probe step t (every `train.probe_every` steps) and on a fixed probe batch B drawn once from the training split:

1. At the point (x_t, y_t), before the step. For each direction z_j the step will use (and `probe_directions` extra
   ones drawn from a separate stream):
       exact_j    = <grad_x f(x, y; B), z_j>     by one backward through the base weights; each weight's gradient is
                    dotted with its regenerated z_j as backward produces it, then freed (post-accumulate-grad hooks),
                    so the full base gradient never exists: extra memory is one tensor's gradient plus its z.
       onesided_j = (f(x + mu z_j) - f(x)) / mu        the paper's estimate (Eq. 3), f(x) from the grad-enabled forward
       central_j  = (f(x + mu z_j) - f(x - mu z_j)) / (2 mu)
       curv_j     = (f(x + mu z_j) - 2 f(x) + f(x - mu z_j)) / mu^2   ~ z_j^T H_xx z_j  (~ tr H_xx for Gaussian z)
   and |grad_x f|, |grad_y f| from the same backward.
2. At the update. The step's own update is applied group by group (FO first, as HybridOptimizer.step does, so the
   trajectory is bit-identical) and f(B) is measured after each: df_fo = f(x, y') - f(x, y), df_joint =
   f(x', y') - f(x, y), and df_zo = f(x', y) - f(x, y) by swapping the pre-step PEFT tensors back in for one forward.
   The PEFT curvature along its own update u = y' - y is (f(y + u) - 2 f(y) + f(y - u)) / |u|^2 at x.
3. Step-size scales. The paper's theorem bounds eta_x by O(1/(L_x n d_x)) and eta_y by O(1/(L_y n)) (n = steps per
   epoch). Measured stand-ins: z^T H z = lambda_bar_x d_x replaces L_x d_x (lambda_bar = mean eigenvalue <= L_x, so the
   scale is an upper end), the curvature along u replaces L_y. Reported: 1/curv (the step that is optimal along the
   direction) and 1/(curv n) (the theorem's scale), next to the configured learning rates.

Probe forwards run in eval mode inside fork_rng and never write a weight or a training gradient: a run with probes
has the same metrics and weights as the same run without.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyft.zo.perturb import Direction, ZOTensor, perturbed
from hyft.zo.rng import mix

PROBE = 4  # domain tag of the extra probe directions (rng.DIRECTION, ROUNDING, DATA are 1..3)
KINDS = ("attention", "mlp", "embed_head", "norm", "other")


# -- tensor kinds, by structure --------------------------------------------------------------------------------------
def _is_norm(module: nn.Module) -> bool:
    norms = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, getattr(nn, "RMSNorm", nn.LayerNorm))
    return isinstance(module, norms) or type(module).__name__.endswith("Norm")


def tensor_kinds(model: nn.Module, tensors: Sequence[ZOTensor], head: nn.Module | None = None) -> dict[int, str]:
    """ZO tensor index -> attention | mlp | embed_head | norm | other, from the owning module's type and ancestors.

    embed_head: nn.Embedding or the output head; norm: a normalisation module; attention: inside a module whose class
    is an attention block; mlp: any other weight inside a transformer layer's feed-forward (or layer) module.
    """
    parent: dict[int, nn.Module] = {}
    for m in model.modules():
        for c in m.children():
            parent.setdefault(id(c), m)

    def ancestors(m: nn.Module) -> Iterator[nn.Module]:
        while id(m) in parent:
            m = parent[id(m)]
            yield m

    out = {}
    for t in tensors:
        kinds = set()
        for module, _name in t.owners:
            names = [type(a).__name__.lower() for a in ancestors(module)]
            if isinstance(module, nn.Embedding) or module is head:
                kinds.add("embed_head")
            elif _is_norm(module):
                kinds.add("norm")
            elif any("attention" in n or "attn" in n for n in names + [type(module).__name__.lower()]):
                kinds.add("attention")
            elif any(n.endswith(("mlp", "layer", "block", "feedforward")) for n in names):
                kinds.add("mlp")
            else:
                kinds.add("other")
        out[t.index] = "embed_head" if "embed_head" in kinds else sorted(kinds)[0]
    return out


# -- exact directional derivatives by streaming backward ---------------------------------------------------------------
def _dot64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> as an fp64 scalar. fp64 inputs: one fp64 dot. Otherwise fp32 partial dots over rows of 1,024 elements
    (one batched matmul, no full-size temporaries; fp64 copies of a 134M-weight model took seconds per dot), summed
    in fp64: relative error ~1e-6, far below what the probe's figures need."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.float64 or b.dtype == torch.float64:
        return torch.dot(a.double(), b.double())
    a, b = a.float(), b.float()  # a 16-bit gradient against its fp32 z
    n, c = a.numel(), 1024
    m = n // c
    total = torch.dot(a[m * c :].double(), b[m * c :].double())
    if m:
        total = total + torch.bmm(a[: m * c].view(m, 1, c), b[: m * c].view(m, c, 1)).double().sum()
    return total


@dataclass
class Derivatives:
    loss: float  # f(x, y) from the grad-enabled forward
    exact: list[float]  # <grad_x f, z_j> per direction
    grad_x_sq: float  # |grad_x f|^2
    grad_x_sq_by_kind: dict[str, float]
    grad_y_sq: float  # |grad_y f|^2 (0 when there is no FO group)
    z_gram: list[list[float]]  # <z_j, z_k> over the ZO tensors for the first `own` directions (the step's)


def directional_derivatives(
    loss_fn: Callable[[], torch.Tensor],
    tensors: Sequence[ZOTensor],
    directions: Sequence[Direction],
    fo_params: Sequence[nn.Parameter] = (),
    kinds: dict[int, str] | None = None,
    own: int = 1,
) -> Derivatives:
    """One forward and backward of loss_fn() at the current point with gradients to the ZO tensors, streamed.

    Memory: one tensor's gradient and its z at a time (plus the other own directions' z when own > 1).
    The FO tensors' existing .grad is set aside and put back (a probe inside a step does not touch its gradients);
    ZO tensors get requires_grad only for this call and keep no .grad.
    """
    n, q = len(directions), max(1, min(own, len(directions)))
    exact = [torch.zeros((), dtype=torch.float64) for _ in range(n)]
    gram = [[torch.zeros((), dtype=torch.float64) for _ in range(q)] for _ in range(q)]
    by_kind: dict[str, torch.Tensor] = {}
    by_index = {id(t.param): t for t in tensors}

    def on_grad(p: torch.Tensor) -> None:
        t = by_index[id(p)]
        g = p.grad
        kind = (kinds or {}).get(t.index, "all")
        by_kind[kind] = by_kind.get(kind, 0.0) + _dot64(g, g).cpu()
        kept = []  # the step's own directions, for their Gram matrix; the extra ones are dropped at once
        for j, d in enumerate(directions):
            z = d.z(t)
            exact[j] += _dot64(g, z).cpu()
            if j < q:
                for i, zi in enumerate(kept):
                    gram[i][j] += _dot64(zi, z).cpu()
                gram[j][j] += _dot64(z, z).cpu()
                if q > 1:
                    kept.append(z)
            del z
        p.grad = None  # the point: no full base gradient ever exists

    saved_grads = [p.grad for p in fo_params]
    flags = [t.param.requires_grad for t in tensors]
    handles = []
    try:
        for p in fo_params:
            p.grad = None
        for t in tensors:
            t.param.requires_grad_(True)
            handles.append(t.param.register_post_accumulate_grad_hook(on_grad))
        with torch.enable_grad():
            loss = loss_fn()
            inputs = [t.param for t in tensors] + [p for p in fo_params if p.requires_grad]
            loss.backward(inputs=inputs)
        grad_y_sq = sum((float(_dot64(p.grad, p.grad)) for p in fo_params if p.grad is not None), 0.0)
    finally:
        for h in handles:
            h.remove()
        for t, flag in zip(tensors, flags):
            t.param.requires_grad_(flag)
            t.param.grad = None
        for p, g in zip(fo_params, saved_grads):
            p.grad = g
    for j in range(q):
        for k in range(j):
            gram[j][k] = gram[k][j]
    kinds_sq = {k: float(v) for k, v in by_kind.items()}
    return Derivatives(
        loss=float(loss.detach()),
        exact=[float(e) for e in exact],
        grad_x_sq=sum(kinds_sq.values()),
        grad_x_sq_by_kind=kinds_sq,
        grad_y_sq=grad_y_sq,
        z_gram=[[float(v) for v in row] for row in gram],
    )


# -- the probe of one run ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def swapped(params: Sequence[nn.Parameter], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Point each parameter at another tensor for the duration (restoring is a pointer swap: bit-exact)."""
    saved = [p.data for p in params]
    try:
        for p, v in zip(params, values):
            p.data = v
        yield
    finally:
        for p, s in zip(params, saved):
            p.data = s


@dataclass
class ProbeState:
    """What a probe carries across steps (and checkpoints): cumulative loss changes and the base's starting norms."""

    cum_zo: float = 0.0
    cum_fo: float = 0.0
    cum_joint: float = 0.0
    x0_sq_by_kind: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"cum_zo": self.cum_zo, "cum_fo": self.cum_fo, "cum_joint": self.cum_joint,
                "x0_sq_by_kind": dict(self.x0_sq_by_kind)}  # fmt: skip

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.cum_zo, self.cum_fo, self.cum_joint = float(s["cum_zo"]), float(s["cum_fo"]), float(s["cum_joint"])
        self.x0_sq_by_kind = {k: float(v) for k, v in s["x0_sq_by_kind"].items()}


class Probe:
    """Diagnostics of one run on a fixed probe batch; see the module docstring for what is measured.

    opt: a HybridOptimizer. loss_fn(batch) evaluates f on the model as it is now (no DDP wrapper). fo_params: the FO
    group's tensors. steps_per_epoch: the theorem's n. drift: "ledger" (estimate from the seed ledger, no memory) or
    "exact" (keeps a copy of x_0: one more copy of the ZO tensors).
    """

    def __init__(
        self,
        opt,
        model: nn.Module,
        loss_fn: Callable[[object], torch.Tensor],
        batch: object,
        *,
        fo_params: Sequence[nn.Parameter],
        extra_directions: int = 0,
        steps_per_epoch: int = 1,
        drift: str = "ledger",
        head: nn.Module | None = None,
    ):
        if drift not in ("ledger", "exact"):
            raise ValueError(f"unknown drift mode {drift!r}; choose ledger or exact")
        self.opt, self.model, self.batch = opt, model, batch
        self._loss_fn = loss_fn
        self.fo_params = list(fo_params)
        self.extra, self.n, self.drift_mode = extra_directions, steps_per_epoch, drift
        self.kinds = tensor_kinds(model, opt.zo_tensors, head) if opt.zo_tensors else {}
        self.kind_numel: dict[str, int] = {}
        for t in opt.zo_tensors:
            k = self.kinds[t.index]
            self.kind_numel[k] = self.kind_numel.get(k, 0) + t.param.numel()
        self.state = ProbeState()
        self.x0: dict[int, torch.Tensor] | None = None
        self._ledger_seen, self._drift_sq_sum = 0, 0.0
        self._pre: dict[str, Any] | None = None

    # -- helpers ----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """At step 0 (not on resume): remember |x_0| per kind (and x_0 itself for exact drift)."""
        sq: dict[str, float] = {}
        for t in self.opt.zo_tensors:
            k = self.kinds[t.index]
            sq[k] = sq.get(k, 0.0) + float(_dot64(t.param.detach(), t.param.detach()))
        self.state.x0_sq_by_kind = sq
        if self.drift_mode == "exact":
            self.x0 = {t.index: t.param.detach().clone() for t in self.opt.zo_tensors}

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Probe forwards: eval mode (the same function every time) and the global RNG left as it was."""
        was = self.model.training
        devices = [d for d in {p.device for p in self.model.parameters()} if d.type == "cuda"]
        with torch.random.fork_rng(devices=devices):
            self.model.eval()
            try:
                yield
            finally:
                self.model.train(was)

    def f(self) -> float:
        with torch.no_grad():
            return float(self._loss_fn(self.batch))

    def directions(self) -> list[Direction]:
        """The step's own q directions, then the extra probe directions (their own stream: they never coincide)."""
        own = [self.opt.direction(j) for j in range(self.opt.queries)] if self.opt.zo_tensors else []
        kernel = own[0].kernel if own else "torch"
        seed = mix(PROBE, self.opt.seed)
        extra = [Direction(seed, self.opt.zo_step, j, self.opt.distribution, kernel) for j in range(self.extra)]
        return own + extra

    # -- 1. before the step --------------------------------------------------------------------------------------------
    def before_step(self) -> None:
        rec: dict[str, Any] = {}
        with self._quiet():
            if not self.opt.zo_tensors:
                self._pre = {"f0": self.f(), "rec": rec}
                return
            dirs = self.directions()
            der = directional_derivatives(
                lambda: self._loss_fn(self.batch),
                self.opt.zo_tensors,
                dirs,
                self.fo_params,
                self.kinds,
                own=self.opt.queries,
            )
            f0, mu = der.loss, self.opt.mu
            plus, minus = [], []
            for d in dirs:
                with perturbed(self.opt.zo_tensors, d, mu):
                    plus.append(self.f())
                with perturbed(self.opt.zo_tensors, d, -mu):
                    minus.append(self.f())
        exact = der.exact
        one = [(p - f0) / mu for p in plus]
        cen = [(p - m) / (2 * mu) for p, m in zip(plus, minus)]
        curv = [(p - 2 * f0 + m) / mu**2 for p, m in zip(plus, minus)]
        gx = math.sqrt(der.grad_x_sq)
        rec.update(
            probe_loss=f0,
            probe_grad_x_norm=gx,
            probe_grad_y_norm=math.sqrt(der.grad_y_sq),
            probe_exact=exact[0],
            probe_onesided=one[0],
            probe_central=cen[0],
            probe_ratio_onesided=_ratio(one[0], exact[0]),
            probe_ratio_central=_ratio(cen[0], exact[0]),
            probe_cos_z=exact[0] / (math.sqrt(der.z_gram[0][0]) * gx) if gx > 0 else math.nan,
            probe_zHz=sum(curv) / len(curv),
        )
        for k, v in der.grad_x_sq_by_kind.items():
            rec[f"probe_grad_x_norm_{k}"] = math.sqrt(v)
        if len(dirs) > 1:  # over all probe directions: the estimator's error and spread
            rel = [abs(o - e) / abs(e) for o, e in zip(one, exact) if e != 0]
            relc = [abs(c - e) / abs(e) for c, e in zip(cen, exact) if e != 0]
            rec["probe_relerr_onesided"] = _median(rel)
            rec["probe_relerr_central"] = _median(relc)
            # E[(z.g)^2] = |g|^2 for Gaussian/Rademacher z: the estimator's second moment against the exact one.
            rec["probe_est_sq_over_grad_sq"] = sum(o * o for o in one) / len(one) / der.grad_x_sq if gx else math.nan
            rec["probe_est_var"] = _var(one)
            rec["probe_exact_var"] = _var(exact)
        zhz = rec["probe_zHz"]
        rec["probe_zo_lr_scale"] = 1.0 / zhz if zhz > 0 else math.nan
        rec["probe_zo_lr_theory"] = 1.0 / (zhz * self.n) if zhz > 0 else math.nan
        rec["probe_zo_lr_over_scale"] = self.opt.zo_group["lr"] * zhz if zhz > 0 else math.nan
        self._pre = {"f0": f0, "rec": rec, "exact": exact[: self.opt.queries], "gram": der.z_gram,
                     "grad_x_sq": der.grad_x_sq}  # fmt: skip

    # -- 2. the update, group by group ---------------------------------------------------------------------------------
    def update(self, groups: Sequence[str]) -> None:
        """Apply the step's update like opt.step(groups=...) and measure f after each group's part."""
        opt, pre = self.opt, self._pre
        if pre is None:  # not a probe step
            opt.step(groups=groups)
            return
        rec = pre["rec"]
        with self._quiet():
            if "fo" in groups and opt.fo is not None:
                y0 = [p.detach().clone() for p in self.fo_params]
                opt.step(groups=("fo",))
                pre["y0"] = y0
                f_fo = self.f()
                u = [p.detach() - a for p, a in zip(self.fo_params, y0)]
                u_sq = sum(float(_dot64(v, v)) for v in u)
                with swapped(self.fo_params, [a - v for a, v in zip(y0, u)]):
                    f_back = self.f()  # f(x, y - u)
                rec["probe_df_fo"] = f_fo - pre["f0"]
                rec["probe_fo_step_norm"] = math.sqrt(u_sq)
                if u_sq > 0:
                    curv = (f_fo - 2 * pre["f0"] + f_back) / u_sq
                    rec["probe_fo_curv"] = curv
                    rec["probe_fo_lr_scale"] = 1.0 / curv if curv > 0 else math.nan
                    rec["probe_fo_lr_theory"] = 1.0 / (curv * self.n) if curv > 0 else math.nan
                    rec["probe_fo_lr_over_scale"] = self.fo_lr() * curv if curv > 0 else math.nan
            if "zo" in groups and opt.zo_tensors:
                opt.step(groups=("zo",))
                rec["probe_df_joint"] = self.f() - pre["f0"]
                if "y0" in pre:
                    with swapped(self.fo_params, pre["y0"]):
                        rec["probe_df_zo"] = self.f() - pre["f0"]
                else:
                    rec["probe_df_zo"] = rec["probe_df_joint"]
            elif "fo" in groups and "probe_df_fo" in rec:
                rec.setdefault("probe_df_joint", rec["probe_df_fo"])

    def fo_lr(self) -> float:
        return next(g["lr"] for g in self.opt.param_groups if g["kind"] == "fo")

    # -- 3. after the step ---------------------------------------------------------------------------------------------
    def after_step(self, zo_grads: torch.Tensor | None, applied: bool) -> dict[str, Any]:
        """The probe record of this step (metrics.jsonl fields); updates the cumulative attribution."""
        pre, self._pre = self._pre, None
        if pre is None:
            return {}
        rec = dict(pre["rec"])
        rec["probe_applied"] = applied
        if applied and zo_grads is not None and "exact" in pre:
            c = [float(g) / self.opt.queries for g in zo_grads.detach().float().cpu()]
            along = sum(ci * e for ci, e in zip(c, pre["exact"]))
            norm_d = math.sqrt(max(sum(ci * cj * pre["gram"][i][j] for i, ci in enumerate(c) for j, cj in enumerate(c)),
                                   0.0))  # fmt: skip
            denom = norm_d * math.sqrt(pre["grad_x_sq"])
            # the update moves along -d: its cosine with the descent direction -grad is <d, grad> / (|d||grad|)
            rec["probe_cos_update"] = along / denom if denom > 0 else math.nan
        if applied:
            st = self.state
            st.cum_zo += rec.get("probe_df_zo", 0.0)
            st.cum_fo += rec.get("probe_df_fo", 0.0)
            st.cum_joint += rec.get("probe_df_joint", 0.0)
            rec["probe_cum_df_zo"], rec["probe_cum_df_fo"], rec["probe_cum_df_joint"] = (
                st.cum_zo,
                st.cum_fo,
                st.cum_joint,
            )
            total = st.cum_zo + st.cum_fo
            rec["probe_zo_share"] = st.cum_zo / total if total != 0 else math.nan
        if self.opt.zo_tensors:
            rec.update(self.drift())
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}

    # -- base drift -------------------------------------------------------------------------------------------------
    def drift(self) -> dict[str, float]:
        """|x_t - x_0| / |x_0|, overall and per kind: exact from x_0, or from the ledger.

        Ledger estimate: x_t - x_0 = -sum_k lr_k sum_j c_kj z_kj (no momentum or weight decay), and independent
        directions are nearly orthogonal in high dimension, so |x_t - x_0|^2 ~ sum_k lr_k^2 sum_j c_kj^2 E|z|^2 with
        E|z|^2 = d (Gaussian; exact for Rademacher), per kind with that kind's d.
        """
        x0 = self.state.x0_sq_by_kind
        if not x0:
            return {}
        if self.x0 is not None:
            sq: dict[str, float] = {}
            for t in self.opt.zo_tensors:
                k = self.kinds[t.index]
                diff = t.param.detach().float() - self.x0[t.index].float()
                sq[k] = sq.get(k, 0.0) + float(_dot64(diff, diff))
        else:
            ledger = self.opt.ledger
            if len(ledger) < self._ledger_seen:  # a fresh ledger (resume): start over
                self._ledger_seen, self._drift_sq_sum = 0, 0.0
            for _step, lr, _wd, coeffs in ledger[self._ledger_seen :]:
                self._drift_sq_sum += lr * lr * float((coeffs.detach().double().cpu() ** 2).sum())
            self._ledger_seen = len(ledger)
            sq = {k: self._drift_sq_sum * n for k, n in self.kind_numel.items()}
        out = {"probe_drift": math.sqrt(sum(sq.values()) / sum(x0.values())) if sum(x0.values()) else math.nan}
        for k, v in sq.items():
            if x0.get(k):
                out[f"probe_drift_{k}"] = math.sqrt(v / x0[k])
        return out


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def _var(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


def read_probe_rows(metrics_jsonl) -> list[dict[str, Any]]:
    """The applied-or-not probe records of a run's metrics.jsonl (unreadable lines, e.g. torn by a kill, skipped)."""
    path = Path(metrics_jsonl)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "probe_applied" in row:
            rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, Any]], opt) -> dict[str, Any] | None:
    """run.json's probe summary: medians over probe steps, the last drift and cumulative attribution."""
    if not rows:
        return None

    def values(key: str) -> list[float]:
        return [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]

    last = rows[-1]
    out: dict[str, Any] = {"probes": len(rows), "last_step": last.get("step")}
    for key in ("ratio_onesided", "ratio_central", "cos_z", "cos_update", "relerr_onesided", "relerr_central",
                "est_sq_over_grad_sq", "zHz", "zo_lr_scale", "zo_lr_theory", "zo_lr_over_scale", "fo_curv",
                "fo_lr_scale", "fo_lr_theory", "fo_lr_over_scale", "grad_x_norm", "grad_y_norm"):  # fmt: skip
        v = values(f"probe_{key}")
        if v:
            out[f"median_{key}"] = _median(v)
    abs_cos = [abs(v) for v in values("probe_cos_update")]
    if abs_cos:
        out["median_abs_cos_update"] = _median(abs_cos)
    for key in ("cum_df_zo", "cum_df_fo", "cum_df_joint", "zo_share", "drift"):
        if last.get(f"probe_{key}") is not None:
            out[key] = last[f"probe_{key}"]
    out["drift_by_kind"] = {k[len("probe_drift_") :]: v for k, v in last.items() if k.startswith("probe_drift_")}
    out["lr"] = {g["kind"]: g["lr"] for g in opt.param_groups}
    return out
