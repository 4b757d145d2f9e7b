"""ZO perturbation and update on FSDP2-sharded weights (`torch.distributed.fsdp.fully_shard`).

Why not the hook swap of perturb.py: under FSDP2 a module's weights are DTensors holding one row-block (dim-0
shard) per rank, and the root pre-forward all-gathers them from the local shards. Pointing a module's parameter at
a scratch tensor does nothing useful: the all-gather reads the local shards.

What happens instead (`sharded_perturbed`): every FSDP module is resharded (so the next forward all-gathers afresh),
each rank copies its local ZO shards aside, writes round(w + mu z) into them in place, runs the forward, reshards,
and copies the saved shards back. Restoring is a copy of the untouched original, so it is bit-exact however many
times it happens. Extra memory: one copy of this rank's ZO shards, i.e. (ZO weights / world size) x bytes per
weight (Llama-2-7B in bf16 on 8 ranks: 1.7 GB per rank), plus z of one tensor's local rows in fp32.

Directions (`ChunkedDirection`): z of tensor t is drawn in fixed blocks of whole rows (about CHUNK_NUMEL elements
each), block c from its own generator seeded mix(DIRECTION, run_seed, step, query, t, c). A rank draws the blocks
that overlap its rows and keeps its rows. So the value of z at every element depends on the step seed, the tensor
and the element's global position, never on the world size or the rank: N ranks apply exactly the update one rank
would. It is not the same z as the unsharded `Direction.z` (one draw over the whole tensor), so an FSDP run and a
DDP / single-process run with the same seed follow different (equally valid) directions. Stochastic rounding noise
is keyed the same way. Cost: at a shard boundary a rank draws up to one block of rows it does not own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hyft.optim import HybridOptimizer
from hyft.zo.backend import Rule, buffers
from hyft.zo.direction import Direction
from hyft.zo.rng import ROUNDING, generator, mix
from hyft.zo.rounding import stochastic_round
from hyft.zo.tensors import ZOTensor

CHUNK_NUMEL = 1 << 22  # elements per block of rows drawn from one generator (16 MB of fp32)


@dataclass(frozen=True)
class Shard:
    """Where this rank's local tensor sits in the global tensor: rows [row0, row0 + rows) of dim 0."""

    param: nn.Parameter
    shape: tuple[int, ...]  # global shape
    row0: int
    rows: int

    def local(self) -> torch.Tensor:
        """This rank's local tensor (a view: writes go to the FSDP2 shard that the all-gather reads)."""
        p = self.param
        with torch.no_grad():
            return p.to_local() if hasattr(p, "to_local") else p.data


def shard_of(param: nn.Parameter) -> Shard:
    """Row range of a DTensor parameter sharded along dim 0 (FSDP2's layout; HSDP's replicate dims are fine)."""
    shape = tuple(param.shape)
    if not hasattr(param, "placements"):  # a plain tensor: the whole of it
        return Shard(param, shape, 0, shape[0] if shape else 1)
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor import Shard as DShard

    placements = param.placements
    sharded = [i for i, pl in enumerate(placements) if not isinstance(pl, Replicate)]
    row_sharded = all(type(placements[i]) is DShard and placements[i].dim == 0 for i in sharded)
    if not shape or len(sharded) > 1 or not row_sharded:
        raise NotImplementedError(f"hyft: ZO on a DTensor with placements {placements} (only Shard(0), as FSDP2 uses)")
    row0, rows = 0, shape[0]
    if sharded:
        n, coord = param.device_mesh.size(sharded[0]), param.device_mesh.get_coordinate()[sharded[0]]
        per = math.ceil(shape[0] / n)  # torch.chunk: ceil-sized blocks, the last ones short or empty
        row0 = min(coord * per, shape[0])
        rows = max(0, min(per, shape[0] - row0))
    with torch.no_grad():
        local = param.to_local()
    if tuple(local.shape) != (rows, *shape[1:]):
        raise NotImplementedError(
            f"hyft: unexpected local shard shape {tuple(local.shape)} for global {shape} (expected {rows} rows)"
        )
    return Shard(param, shape, row0, rows)


def _blocks(shape: Sequence[int], row0: int, rows: int, chunk_numel: int) -> Iterator[tuple[int, int, int]]:
    """(block index, first global row of the block, rows in the block) for the blocks overlapping [row0, row0+rows)."""
    n = shape[0] if shape else 1
    row_numel = math.prod(shape[1:]) if shape else 1
    per = max(1, chunk_numel // max(1, row_numel))
    if rows <= 0:
        return
    for c in range(row0 // per, (row0 + rows - 1) // per + 1):
        start = c * per
        yield c, start, min(per, n - start)


def draw_rows(
    shape: Sequence[int],
    row0: int,
    rows: int,
    seed: int,
    draw: Callable[[tuple[int, ...], torch.Generator], torch.Tensor],
    device: torch.device | str,
    chunk_numel: int = CHUNK_NUMEL,
) -> torch.Tensor:
    """Rows [row0, row0+rows) of a tensor of global `shape` whose block c is draw(block shape, gen(mix(seed, c)))."""
    shape = tuple(shape)
    if not shape:
        return draw((), generator(mix(seed, 0), device))
    parts = []
    for c, start, n in _blocks(shape, row0, rows, chunk_numel):
        block = draw((n, *shape[1:]), generator(mix(seed, c), device))
        a, b = max(row0, start), min(row0 + rows, start + n)
        parts.append(block[a - start : b - start])
    if not parts:
        return torch.empty((0, *shape[1:]), device=device, dtype=torch.float32)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def round_rows(
    x: torch.Tensor, dtype: torch.dtype, seed: int, shape: Sequence[int], row0: int, chunk_numel: int = CHUNK_NUMEL
) -> torch.Tensor:
    """Stochastic rounding of local rows x (fp32) whose noise depends on global positions only, not on the sharding."""
    if dtype in (torch.float32, torch.float64):
        return x.to(dtype)
    shape = tuple(shape)
    if not shape:
        return stochastic_round(x, dtype, generator(mix(seed, 0), x.device))
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for c, start, n in _blocks(shape, row0, x.shape[0], chunk_numel):
        a, b = max(row0, start), min(row0 + x.shape[0], start + n)
        block = torch.zeros((n, *shape[1:]), dtype=torch.float32, device=x.device)
        block[a - start : b - start] = x[a - row0 : b - row0]
        rounded = stochastic_round(block, dtype, generator(mix(seed, c), x.device))
        out[a - row0 : b - row0] = rounded[a - start : b - start]
    return out


@dataclass(frozen=True)
class ChunkedDirection(Direction):
    """A direction whose value at each element depends on (seed, step, query, tensor, global position) only."""

    chunk_numel: int = CHUNK_NUMEL

    def _draw(self, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
        device = g.device
        if self.distribution == "gaussian":
            return torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        if self.distribution == "rademacher":
            bits = torch.randint(0, 2, shape, generator=g, device=device, dtype=torch.int8)
            return bits.float().mul_(2).sub_(1)
        raise ValueError(f"unknown direction distribution {self.distribution!r}")

    def z_rows(self, index: int, shard: Shard, device: torch.device) -> torch.Tensor:
        """z of tensor `index` at this rank's rows, fp32."""
        return draw_rows(shard.shape, shard.row0, shard.rows, self.seed(index), self._draw, device, self.chunk_numel)

    def z(self, t: ZOTensor) -> torch.Tensor:  # the whole tensor (unsharded reference)
        return self.z_rows(t.index, shard_of(t.param), t.param.device)


def reshard(model: nn.Module) -> None:
    """Free every FSDP2 module's gathered weights, so that the next forward all-gathers the local shards afresh (the
    root keeps its weights gathered after a forward; without this a changed shard would go unseen)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@contextlib.contextmanager
def sharded_perturbed(
    model: nn.Module, tensors: Sequence[ZOTensor], shards: dict[int, Shard], direction: ChunkedDirection, scale: float
) -> Iterator[None]:
    """Forwards inside see x + scale*z; x is restored bit-exactly from a saved copy of the local shards."""
    reshard(model)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for t in tensors:
                s = shards[t.index]
                local = s.local()
                saved.append((local, local.clone()))
                z = direction.z_rows(t.index, s, local.device)
                local.copy_((local.float() + scale * z).to(local.dtype))
                del z
        yield
    finally:
        reshard(model)
        with torch.no_grad():
            for local, copy in saved:
                local.copy_(copy)


class ShardedBackend:
    """The backend interface (`hyft.zo.backend`) on this rank's local shards: perturbed in place around a forward
    and restored from a copy, updated with chunk-keyed directions (see the module docstring)."""

    kind, generator = "chunked", "chunked"

    def __init__(self, model: nn.Module, tensors: Sequence[ZOTensor], seed: int, distribution: str, chunk_numel: int):
        self.model, self.tensors, self.seed, self.distribution = model, list(tensors), seed, distribution
        self.chunk_numel = chunk_numel
        self.shards = {t.index: shard_of(t.param) for t in self.tensors}

    def direction(self, step: int, query: int) -> ChunkedDirection:
        return ChunkedDirection(self.seed, step, query, self.distribution, self.chunk_numel)

    def perturbed(self, step: int, query: int, scale: float):
        return sharded_perturbed(self.model, self.tensors, self.shards, self.direction(step, query), scale)

    @torch.no_grad()
    def update(self, step: int, coeffs: torch.Tensor, rule: Rule, state: MutableMapping) -> None:
        # The rule of hyft.zo.update, in this module's own arithmetic (x - lr * (d + wd x), d from zeros): what FSDP2
        # runs have always computed, tested against the reference in tests/zo/test_backends.py.
        directions = [self.direction(step, j) for j in range(len(coeffs))]
        lr, wd, momentum = rule.lr, rule.weight_decay, rule.momentum
        reshard(self.model)
        for t in self.tensors:
            s = self.shards[t.index]
            w = s.local()
            st = buffers(state, t, rule, local=w)
            master = st.get("master")
            x = master if master is not None else w.float()
            d = torch.zeros_like(x)
            for direction, c in zip(directions, coeffs):
                d.add_(direction.z_rows(t.index, s, w.device) * c.to(torch.float32))
            if momentum:
                st["momentum_buffer"].mul_(momentum).add_(d)
                d = st["momentum_buffer"]
            new = x - lr * (d + wd * x) if wd else x - lr * d
            if master is not None:
                master.copy_(new)
                w.copy_(new.to(w.dtype))
            elif rule.rounding == "stochastic":
                seed = mix(ROUNDING, mix(self.seed, step), t.index)
                w.copy_(round_rows(new, w.dtype, seed, s.shape, s.row0, self.chunk_numel))
            else:
                w.copy_(new.to(w.dtype))


class ShardedHybridOptimizer(HybridOptimizer):
    """HybridOptimizer for an FSDP2 model: each rank perturbs and updates only its local shards of the ZO tensors
    (`ShardedBackend`). FO groups are stepped as usual (on DTensors)."""

    def __init__(self, model: nn.Module, fo_params=(), zo_params=(), *, chunk_numel: int = CHUNK_NUMEL, **kw):
        reshard(model)  # the parameters to index are the sharded ones
        kw.setdefault("min_perturbation_scale", 0.0)  # the check reads whole tensors; shards are DTensors here
        self.chunk_numel = chunk_numel
        super().__init__(model, fo_params, zo_params, **kw)
        _ = self.backend  # shard_of refuses unsupported layouts now, not at the first step

    @property
    def shards(self) -> dict[int, Shard]:
        return self.backend.shards

    def _make_backend(self) -> ShardedBackend:
        return ShardedBackend(self.model, self.zo_tensors, self.seed, self.distribution, self.chunk_numel)
