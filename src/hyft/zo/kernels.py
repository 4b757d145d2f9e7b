"""Fused ZO perturbation and update: Triton kernels on CUDA, with a pure-torch emulation of the same math.

The torch path (`hyft.zo.reference`) regenerates each direction with torch.randn per tensor and works tensor by tensor:
several passes over every weight and one kernel launch per tensor and operation. The fused path here does each pass in
one read and one write of every weight, for many tensors per launch:

    perturb   scratch <- round(w + s * mu * z)          read w, write the scratch; the forward sees the scratch
    restore   a pointer swap back to w                  free, bit-exact: w is never written
    update    w <- SR(w - lr * (sum_j c_j z_j + wd w))  read w, write w; z regenerated, stochastic-rounding bits
                                                        counter-based (nothing else to read or allocate)

Randomness is counter-based (Philox-4x32-10, see `hyft/zo/_triton.py` for the element -> counter map), keyed by
(step seed, tensor index, query, element offset): deterministic, independent of launch shapes and of which other
tensors exist, and the same in the perturbed forward and the update of a step. The directions differ from the torch
path's (another generator); `emulate_direction` reproduces them in torch (bit-exact for Rademacher; Gaussian to the
last bits of the fast-math log/sin/cos) for tests, the ledger and CPU runs of the same engine (backend "emulate").

Launch tables. A launch covers a list of tensors through two small device tables (tensor addresses and sizes; one row
per block of BLOCK elements), so no parameter is moved or re-packed. The tables are rebuilt when a parameter's storage
changes (e.g. `model.to()` after the optimizer was made); the step itself never synchronises with the host.

Where the perturbed weights live during a forward (`scope`):
    block   (default) groups of modules (a decoder layer, the embedding, ...) of at most
            max(the largest single module, 1/16 of all ZO weights): one launch and one scratch per group, taken
            before the group's forward and dropped after it. Extra memory: one group's weights.
    module  one module at a time, like the torch path. Extra memory: one module's weights; one launch per module.
    all     every ZO tensor in one launch before the forward. Extra memory: one full copy of the ZO weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hyft.zo.tensors import ZOTensor

BLOCK = 2048  # elements per program: a [256, 8] tile
NUM_WARPS = 4
ROUNDS = 10
DISTRIBUTIONS = {"gaussian": 0, "rademacher": 1}
SCOPES = ("block", "module", "all")
BACKENDS = ("triton", "emulate")
_ROUND_DOMAIN = 2
_ALIGN = 64  # scratch offsets, in elements
_NCOL = 8

# -- torch emulation of the kernel math ------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32(c0, c1, c2, c3, seed: int, rounds: int = ROUNDS):
    """Philox-4x32 (Salmon et al. 2011) on int64 tensors holding uint32 values; key = (seed low, seed high) words.

    Same round function and key schedule as Random123 and `triton.language.philox`. Products of two 32-bit values
    wrap in int64, which keeps their low 64 bits exact: the high word is (p >> 32) & 0xFFFFFFFF.
    """
    device = next((c.device for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor)), None)
    c0, c1, c2, c3 = torch.broadcast_tensors(
        *(torch.as_tensor(c, dtype=torch.int64, device=device) for c in (c0, c1, c2, c3))
    )
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(rounds):
        p0 = c0 * PHILOX_M0
        p1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = ((p1 >> 32) & _M32) ^ c1 ^ k0, p1 & _M32, ((p0 >> 32) & _M32) ^ c3 ^ k1, p0 & _M32
        k0, k1 = (k0 + PHILOX_W0) & _M32, (k1 + PHILOX_W1) & _M32
    return c0, c1, c2, c3


def box_muller(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two N(0, 1) (fp32) from two uint32 words: u in (0, 1] from x1's top 24 bits, angle from x2's (|z| < 5.8)."""
    u = ((x1 >> 8) + 1).to(torch.float32) * 2.0**-24
    th = 6.283185307179586 * ((x2 >> 8).to(torch.float32) * 2.0**-24 - 0.5)
    r = torch.sqrt(-1.3862943611198906 * torch.log2(u))
    return r * torch.cos(th), r * torch.sin(th)


def emulate_direction(
    step_seed: int, tensor_index: int, query: int, numel: int, distribution: str, device=None
) -> torch.Tensor:
    """The fused kernels' z for one tensor, flat, fp32."""
    if distribution == "gaussian":
        k = torch.arange((numel + 3) // 4, device=device, dtype=torch.int64)
        x0, x1, x2, x3 = philox4x32(k, tensor_index, query, DISTRIBUTIONS[distribution], step_seed)
        n0, n1 = box_muller(x0, x1)
        n2, n3 = box_muller(x2, x3)
        return torch.stack([n0, n1, n2, n3], 1).reshape(-1)[:numel]
    if distribution == "rademacher":
        k = torch.arange((numel + 127) // 128, device=device, dtype=torch.int64)
        words = torch.stack(philox4x32(k, tensor_index, query, DISTRIBUTIONS[distribution], step_seed), 1)
        bits = (words[:, :, None] >> torch.arange(32, device=device)) & 1
        return (1 - 2 * bits).to(torch.float32).reshape(-1)[:numel]
    raise ValueError(f"unknown direction distribution {distribution!r}")


def emulate_round_noise(round_seed: int, tensor_index: int, numel: int, device=None) -> torch.Tensor:
    """The update kernel's 16 stochastic-rounding bits per element (int32 in [0, 65536))."""
    k = torch.arange((numel + 7) // 8, device=device, dtype=torch.int64)
    words = torch.stack(philox4x32(k, tensor_index, 0, _ROUND_DOMAIN, round_seed), 1)
    halves = (words[:, :, None] >> torch.tensor([0, 16], device=device)) & 0xFFFF
    return halves.reshape(-1)[:numel].to(torch.int32)


def round_bf16(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Stochastic rounding of fp32 x to bf16 with the given 16 random bits per element (non-finite x unchanged)."""
    bits = x.float().contiguous().view(torch.int32)
    rounded = ((bits + noise) & -65536).view(torch.float32)
    finite = (bits & 0x7F800000) != 0x7F800000
    return torch.where(finite, rounded, x).to(torch.bfloat16)


def emulate_update(
    w: torch.Tensor,
    tensor_index: int,
    coeffs: torch.Tensor,
    *,
    step_seed: int,
    round_seed: int,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    momentum_buffer: torch.Tensor | None = None,
    master: torch.Tensor | None = None,
    distribution: str = "gaussian",
    rounding: str = "stochastic",
) -> None:
    """The update kernel in torch, in place on w (and master / momentum_buffer)."""
    flat = w.view(-1)
    n = flat.numel()
    x = master.view(-1) if master is not None else flat.to(torch.promote_types(w.dtype, torch.float32))
    d = torch.zeros_like(x)
    for j in range(coeffs.shape[0]):
        d.add_(emulate_direction(step_seed, tensor_index, j, n, distribution, w.device) * coeffs[j].float())
    if momentum_buffer is not None:
        m = momentum_buffer.view(-1)
        m.mul_(momentum).add_(d)
        d = m
    new = x - lr * (d + weight_decay * x) if weight_decay else x - lr * d
    if master is not None:
        master.view(-1).copy_(new)
        flat.copy_(new.to(w.dtype))
    elif rounding == "stochastic" and w.dtype == torch.bfloat16:
        flat.copy_(round_bf16(new, emulate_round_noise(round_seed, tensor_index, n, w.device)))
    else:
        flat.copy_(new.to(w.dtype))


# -- availability ------------------------------------------------------------------------------------------------------
_TRITON = None


def triton_module():
    """hyft.zo._triton (imports triton); raises ImportError where triton is missing."""
    global _TRITON
    if _TRITON is None:
        from hyft.zo import _triton

        _TRITON = _triton
    return _TRITON


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def unavailable_reason(
    tensors: Sequence[ZOTensor], *, backend: str = "triton", rounding: str = "stochastic", fp32_master: bool = False
) -> str | None:
    """Why the fused path cannot run these tensors (None: it can)."""
    if not tensors:
        return "no ZO tensors"
    devices = {t.param.device for t in tensors}
    if len(devices) > 1:
        return f"ZO tensors on several devices ({sorted(map(str, devices))})"
    device = next(iter(devices))
    if backend == "triton":
        if device.type != "cuda" and not _interpreting():
            return f"ZO tensors are on {device}, the Triton kernels need CUDA"
        if not triton_available():
            return "triton is not importable"
    dtypes = (torch.bfloat16, torch.float16, torch.float32) + ((torch.float64,) if backend == "emulate" else ())
    for t in tensors:
        p = t.param
        if p.dtype not in dtypes:
            return f"dtype {p.dtype} (fused kernels: bf16, fp16, fp32)"
        if p.dtype == torch.float16 and rounding == "stochastic" and not fp32_master:
            return "stochastic rounding to fp16 (fused kernels round bf16 stochastically; fp16 needs the torch path)"
        if not p.is_contiguous():
            return "a non-contiguous ZO tensor"
        if p.numel() >= 1 << 34:
            return "a ZO tensor with 2**34 elements or more"
    return None


# -- what one launch covers --------------------------------------------------------------------------------------------
def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


class _Group:
    """Tensors of one dtype perturbed or updated by one launch; scratch layout and block table are fixed."""

    def __init__(self, tensors: list[ZOTensor], device: torch.device):
        self.tensors = tensors
        self.dtype = tensors[0].param.dtype
        self.device = device
        self.numels = [t.param.numel() for t in tensors]
        self.offsets, off = [], 0
        for n in self.numels:
            self.offsets.append(off)
            off += _round_up(n, _ALIGN)
        self.scratch_numel = off
        shapes = [tuple(t.param.shape) for t in tensors]
        self.layout = [(s, _contiguous_strides(s), o) for s, o in zip(shapes, self.offsets)]
        nb = torch.tensor([(n + BLOCK - 1) // BLOCK for n in self.numels], dtype=torch.int64)
        self.nblocks = int(nb.sum())
        slot = torch.repeat_interleave(torch.arange(len(tensors)), nb)
        first = torch.repeat_interleave(torch.cumsum(nb, 0) - nb, nb)
        self.blocks = torch.stack([slot, torch.arange(self.nblocks) - first], 1).to(torch.int32).to(device)
        self.table: torch.Tensor | None = None
        self.aligned = False

    def build(self, data: dict[int, torch.Tensor], masters: dict[int, torch.Tensor], moms: dict[int, torch.Tensor]):
        rows, aligned = [], True
        for t, n, off in zip(self.tensors, self.numels, self.offsets):
            key = id(t.param)
            addr = data[key].data_ptr()
            m = masters[key].data_ptr() if key in masters else 0
            v = moms[key].data_ptr() if key in moms else 0
            rows.append([addr, t.index, n, off, m, v, 0, 0])
            aligned &= addr % 16 == 0 and n % 8 == 0 and m % 16 == 0 and v % 16 == 0
        self.table = torch.tensor(rows, dtype=torch.int64).to(self.device)
        self.aligned = aligned

    def views(self, scratch: torch.Tensor) -> list[torch.Tensor]:
        return [scratch.as_strided(size, stride, off) for size, stride, off in self.layout]


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _groups(tensors: list[ZOTensor], device: torch.device) -> list[_Group]:
    """One launch per dtype, and sizes that are not a multiple of 8 apart (their launch cannot use 16-byte vectors)."""
    by_kind: dict[tuple, list[ZOTensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.param.dtype, t.param.numel() % 8 == 0), []).append(t)
    return [_Group(ts, device) for ts in by_kind.values()]


def _nbytes(tensors) -> int:
    return sum(t.param.numel() * t.param.element_size() for t in tensors)


def plan_chunks(root: nn.Module, tensors: Sequence[ZOTensor], budget_bytes: int) -> list[tuple[nn.Module, list]]:
    """Split the ZO tensors into (module, tensors) groups perturbed together around that module's forward.

    Top-down: a module (not a ModuleList/ModuleDict, which are never called) whose subtree holds at most
    `budget_bytes` of ZO tensors is one group; a larger one contributes its own tensors as a group and its children
    are split the same way. budget 0 gives one group per module that owns ZO tensors (the torch path's granularity).
    A tied tensor (e.g. embedding = output head) is in the group of each module that uses it.
    """
    own: dict[int, dict[int, ZOTensor]] = {}
    for t in tensors:
        for module, _name in t.owners:
            own.setdefault(id(module), {})[t.index] = t
    memo: dict[int, dict[int, ZOTensor]] = {}

    def subtree(m: nn.Module) -> dict[int, ZOTensor]:
        if id(m) not in memo:
            s = dict(own.get(id(m), {}))
            for ch in m.children():
                s.update(subtree(ch))
            memo[id(m)] = s
        return memo[id(m)]

    chunks: list[tuple[nn.Module, list]] = []
    seen: set[int] = set()

    def visit(m: nn.Module) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        s = subtree(m)
        if not s:
            return
        if not isinstance(m, (nn.ModuleList, nn.ModuleDict)) and _nbytes(s.values()) <= budget_bytes:
            chunks.append((m, sorted(s.values(), key=lambda t: t.index)))
            return
        if own.get(id(m)):
            chunks.append((m, sorted(own[id(m)].values(), key=lambda t: t.index)))
        for ch in m.children():
            visit(ch)

    visit(root)
    return chunks


def default_budget(tensors: Sequence[ZOTensor]) -> int:
    """max(largest single module's ZO bytes, 1/16 of all ZO bytes)."""
    per_module: dict[int, int] = {}
    for t in tensors:
        for module, _ in t.owners:
            per_module[id(module)] = per_module.get(id(module), 0) + _nbytes([t])
    return max(max(per_module.values(), default=0), _nbytes(tensors) // 16)


class _Chunk:
    def __init__(self, root: nn.Module | None, tensors: list[ZOTensor], device: torch.device):
        self.root = root
        self.tensors = tensors
        self.groups = _groups(tensors, device)


# -- the engine --------------------------------------------------------------------------------------------------------
class FusedZO:
    """Fused perturbation and update of a fixed list of ZO tensors (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tensors: Sequence[ZOTensor],
        *,
        scope: str = "block",
        backend: str = "triton",
        budget_bytes: int | None = None,
    ):
        if scope not in SCOPES:
            raise ValueError(f"unknown scratch scope {scope!r}; choose from {SCOPES}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown fused backend {backend!r}; choose from {BACKENDS}")
        self.tensors = list(tensors)
        self.scope, self.backend = scope, backend
        self.device = self.tensors[0].param.device
        self.compiled = backend == "triton" and not _interpreting()
        self.all = _Chunk(None, self.tensors, self.device)
        if scope == "all":
            self.chunks = [self.all]
        else:
            budget = budget_bytes if budget_bytes is not None else default_budget(self.tensors)
            budget = 0 if scope == "module" else budget
            self.chunks = [_Chunk(m, ts, self.device) for m, ts in plan_chunks(model, self.tensors, budget)]
        self.budget_bytes = None if scope == "all" else budget
        self._sig: tuple | None = None
        self._data: dict[int, torch.Tensor] = {}
        self.launches = 0  # kernel launches issued (for tests and benchmarks)

    # -- tables ----------------------------------------------------------------------------------------------------
    def refresh(self, masters: dict[int, torch.Tensor] | None = None, moms: dict[int, torch.Tensor] | None = None):
        """Re-read parameter storages; rebuild the launch tables if any moved. Call outside perturbed forwards."""
        masters, moms = masters or {}, moms or {}
        sig = (
            tuple(t.param.data_ptr() for t in self.tensors),
            tuple((k, v.data_ptr()) for k, v in masters.items()),
            tuple((k, v.data_ptr()) for k, v in moms.items()),
        )
        if sig == self._sig:
            return
        data = {id(t.param): t.param.data for t in self.tensors}
        self._data = data  # holds the storages the tables point at
        self._masters, self._moms = masters, moms
        if self.backend == "triton":
            for chunk in [self.all, *self.chunks]:
                for g in chunk.groups:
                    g.build(data, masters, moms)
        self._sig = sig

    # -- perturbation ------------------------------------------------------------------------------------------------
    def perturb_into(
        self, group: _Group, scratch: torch.Tensor, step_seed: int, query: int, scale: float, distribution: str
    ) -> None:
        """scratch (flat, the group's layout) <- round(w + scale * z_query) for every tensor of the group."""
        self.launches += 1
        if self.backend == "triton":
            k = triton_module()
            k.perturb_kernel[(group.nblocks,)](
                group.table, group.blocks, scratch, step_seed, query, float(scale),
                DIST=DISTRIBUTIONS[distribution], DT=_tl_dtype(group.dtype), ALIGNED=group.aligned,
                COMPILED=self.compiled, BLOCK=BLOCK, num_warps=NUM_WARPS,
            )  # fmt: skip
            return
        for t, n, off in zip(group.tensors, group.numels, group.offsets):
            w = self._data[id(t.param)].reshape(-1)
            z = emulate_direction(step_seed, t.index, query, n, distribution, w.device)
            scratch.narrow(0, off, n).copy_((w.to(torch.promote_types(w.dtype, z.dtype)) + scale * z).to(group.dtype))

    def _swap_in(self, chunk: _Chunk, step_seed: int, query: int, scale: float, distribution: str) -> list:
        saved = []
        for g in chunk.groups:
            scratch = torch.empty(g.scratch_numel, dtype=g.dtype, device=self.device)
            self.perturb_into(g, scratch, step_seed, query, scale, distribution)
            for t, v in zip(g.tensors, g.views(scratch)):
                saved.append((t.param, t.param.data))
                t.param.data = v
        return saved

    @staticmethod
    def _swap_out(saved: list) -> None:
        for p, d in reversed(saved):
            p.data = d

    @contextlib.contextmanager
    def perturbed(self, step_seed: int, query: int, scale: float, distribution: str) -> Iterator[None]:
        """Forwards inside see every ZO tensor at w + scale * z_query; w itself is never written."""
        self.refresh(getattr(self, "_masters", None), getattr(self, "_moms", None))
        if self.scope == "all":
            saved = self._swap_in(self.all, step_seed, query, scale, distribution)
            try:
                yield
            finally:
                self._swap_out(saved)
            return
        stack: list[list] = []  # swaps in order; undone in reverse (also after an exception mid-forward)
        open_: dict[int, list[int]] = {}
        called: set[int] = set()
        handles = []

        def hooks(i: int, chunk: _Chunk):
            def pre(module, args):
                stack.append(self._swap_in(chunk, step_seed, query, scale, distribution))
                open_.setdefault(i, []).append(len(stack) - 1)
                called.add(i)

            def post(module, args, output):
                pos = open_[i].pop()
                self._swap_out(stack[pos])
                stack[pos] = []

            return pre, post

        try:
            for i, chunk in enumerate(self.chunks):
                pre, post = hooks(i, chunk)
                handles.append(chunk.root.register_forward_pre_hook(pre))
                handles.append(chunk.root.register_forward_hook(post, always_call=True))
            yield
        finally:
            for h in handles:
                h.remove()
            for saved in reversed(stack):
                self._swap_out(saved)
        missed = [c for i, c in enumerate(self.chunks) if i not in called]
        if missed:
            names = ", ".join(type(c.root).__name__ for c in missed[:3])
            raise RuntimeError(
                f"{sum(len(c.tensors) for c in missed)} ZO tensors were not perturbed because their modules were "
                f"never called ({names}); exclude them from the ZO group or use scratch scope 'all'"
            )

    # -- update ------------------------------------------------------------------------------------------------------
    def update(
        self,
        coeffs: torch.Tensor,
        *,
        step_seed: int,
        round_seed: int,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        distribution: str = "gaussian",
        rounding: str = "stochastic",
        masters: dict[int, torch.Tensor] | None = None,
        moms: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """x <- x - lr * (sum_j coeffs[j] z_j + wd x) on every ZO tensor, fused (see `_triton.update_kernel`).

        coeffs: fp32 device tensor [q] (read by the kernel: no host sync). masters / moms: fp32 buffers by id(param).
        """
        self.refresh(masters, moms)
        masters, moms = masters or {}, moms or {}
        coeffs = coeffs.detach().to(device=self.device, dtype=torch.float32).contiguous()
        if self.backend == "emulate":
            for t in self.tensors:
                key = id(t.param)
                emulate_update(
                    self._data[key], t.index, coeffs, step_seed=step_seed, round_seed=round_seed, lr=lr,
                    weight_decay=weight_decay, momentum=momentum, momentum_buffer=moms.get(key),
                    master=masters.get(key), distribution=distribution, rounding=rounding,
                )  # fmt: skip
            return
        k = triton_module()
        stochastic = rounding == "stochastic"
        for g in self.all.groups:
            self.launches += 1
            has_master = bool(masters)
            k.update_kernel[(g.nblocks,)](
                g.table, g.blocks, coeffs, step_seed, round_seed, float(lr), float(weight_decay), float(momentum),
                NQ=coeffs.shape[0], DIST=DISTRIBUTIONS[distribution], DT=_tl_dtype(g.dtype), ALIGNED=g.aligned,
                COMPILED=self.compiled, BLOCK=BLOCK, HAS_MASTER=has_master, HAS_MOM=bool(moms),
                HAS_WD=bool(weight_decay), STOCHASTIC=stochastic and g.dtype == torch.bfloat16 and not has_master,
                num_warps=NUM_WARPS,
            )  # fmt: skip

    def direction(self, t: ZOTensor, step_seed: int, query: int, distribution: str) -> torch.Tensor:
        """z of tensor t as the perturbation kernel computes it (fp32, t's shape): perturbs zeros by 1 * z."""
        if self.backend == "emulate":
            return emulate_direction(step_seed, t.index, query, t.param.numel(), distribution, self.device).view(
                t.param.shape
            )
        zeros = torch.zeros(t.param.shape, dtype=torch.float32, device=self.device)
        fake = type(t)(t.index, nn.Parameter(zeros, requires_grad=False), t.owners)
        g = _Group([fake], self.device)
        g.build({id(fake.param): zeros}, {}, {})
        out = torch.empty(g.scratch_numel, dtype=torch.float32, device=self.device)
        self.perturb_into(g, out, step_seed, query, 1.0, distribution)
        return out[: t.param.numel()].view(t.param.shape)


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[dtype]
