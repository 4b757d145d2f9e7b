"""The "blocked" direction generator: the CPU fast path of the ZO perturbation and update, in plain torch ops.

The reference generator (`hyft.zo.direction`, "torch") draws z of a tensor from one torch.Generator: one serial
Mersenne-Twister stream over the whole tensor, several full-size passes per use, no parallelism. On a 2-core CPU that
costs ~4x a copy of the weights per pass. Here z is cut into blocks of BLOCK elements and block b of tensor t in query j
of step k is drawn from its own generator, seeded mix(DIRECTION, run_seed, k, j, t, b):

    gaussian    z = torch.randn(block) from that generator (exactly torch's N(0, 1), as the reference)
    rademacher  z = +-1 from random bits: one int64 draw (random_ over the full range) gives 64 signs, element
                64m + i is -1 where bit i of word m is set; shifted straight into the sign bits of fp32(scale)

Blocks are independent, so they are worked on by a pool of threads (torch.get_num_threads() of them) while each block's
intermediates stay in cache; the numbers depend only on the keys, never on the number of threads or the order the
blocks run in (every op here is element-wise, so a block gives the same values as the whole tensor would). The same
blocks give the 16-bit stochastic-rounding noise, keyed mix(ROUNDING, rounding_seed, t, b).

The formulas are the reference's, op for op (perturbed value z*s + w rounded once; d = sum_j c_j z_j, then
`hyft.zo.update.descend` on each block), so `perturb.apply_update` on a Direction with kernel="blocked" (which lands
here) is the very same computation that training does, and replay is bit-exact by construction. BLOCK is part of
the generator's definition: changing it changes every direction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch

from hyft.zo.rng import DIRECTION, ROUNDING, generator, mix
from hyft.zo.tensors import ZOTensor
from hyft.zo.update import descend


class Direction(Protocol):
    """The keys of a direction (`hyft.zo.direction.Direction`, which imports this module: hence no import)."""

    run_seed: int
    step: int
    query: int
    distribution: str


# 2**18 elements (1 MB of fp32: a block's buffers stay in L2): few enough blocks that seeding a generator per block
# (~10 us) is noise, enough of them for the pool to balance. Part of the definition: changing it changes every z.
BLOCK = 1 << 18
_SHIFTS = 31 - torch.arange(32, dtype=torch.int32)  # bit i of a 32-bit half -> the sign bit of its element i
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.RLock()
_free: dict[tuple, list[torch.Tensor]] = {}  # perturbed-value buffers, reused: fresh pages cost more than the pass


def _fp32_bits(x: float) -> int:
    return int(torch.tensor(x, dtype=torch.float32).view(torch.int32))


def nblocks(numel: int) -> int:
    return (numel + BLOCK - 1) // BLOCK


def block_z(direction: Direction, tensor_index: int, b: int, n: int, out: torch.Tensor, scale: float = 1.0) -> None:
    """out[:n] (fp32) <- scale * z of block b (n elements: BLOCK, or fewer for the last block)."""
    g = generator(mix(DIRECTION, direction.run_seed, direction.step, direction.query, tensor_index, b), out.device)
    o = out[:n]
    if direction.distribution == "gaussian":
        torch.randn(n, generator=g, device=out.device, dtype=torch.float32, out=o)
        if scale != 1.0:
            o.mul_(scale)
        return
    if direction.distribution == "rademacher":
        # (+-1) * fp32(scale) is fp32(scale) with its sign bit flipped where the random bit is set: exactly what
        # z.mul_(scale) gives, built in the integer domain (three int32 passes over the block; faster here than
        # tables of sign patterns or copysign)
        nw = (n + 63) // 64
        words = torch.empty(nw, dtype=torch.int64, device=out.device).random_(-(1 << 63), None, generator=g)
        halves = words.view(torch.int32)[:, None]  # little-endian: half 2k + j holds bits 32j.. of word k
        shifts = _SHIFTS.to(out.device)
        if n % 64 == 0:
            bits = o.view(torch.int32).view(-1, 32)
            torch.bitwise_left_shift(halves, shifts, out=bits)
        else:
            bits = torch.bitwise_left_shift(halves, shifts)
        bits.bitwise_and_(-(1 << 31)).bitwise_xor_(_fp32_bits(scale))
        if n % 64:
            o.copy_(bits.view(-1)[:n].view(torch.float32))
        return
    raise ValueError(f"unknown direction distribution {direction.distribution!r}")


Job = tuple[int, Callable[[int, int, dict], None]]  # (blocks, work(first_block, stop_block, scratch))
_local = threading.local()  # per thread: reused block buffers


def _scratch() -> dict:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = {}
    return s


def run_jobs(jobs: Sequence[Job]) -> None:
    """Every job's blocks in contiguous ranges over the pool (one pool for many tensors: small ones too)."""
    global _pool, _pool_size
    total = sum(n for n, _ in jobs)
    threads = max(1, min(torch.get_num_threads(), total))
    if threads == 1:
        for n, work in jobs:
            work(0, n, _scratch())
        return
    with _lock:
        if _pool is None or _pool_size < threads:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool, _pool_size = ThreadPoolExecutor(threads, thread_name_prefix="hyft-zo"), threads
    # about 4 ranges per thread: the shared CPU is uneven, idle threads pick up the rest
    size = max(1, -(-total // (threads * 4)))
    futures = [
        _pool.submit(_task, work, first, min(n, first + size)) for n, work in jobs for first in range(0, n, size)
    ]
    for f in futures:
        f.result()


def _task(work, first: int, stop: int) -> None:
    work(first, stop, _scratch())


def _run(n_blocks: int, work: Callable[[int, int, dict], None]) -> None:
    run_jobs([(n_blocks, work)])


def _buf(scratch: dict, key: str, device: torch.device) -> torch.Tensor:
    t = scratch.get(key)
    if t is None:
        t = scratch[key] = torch.empty(BLOCK, dtype=torch.float32, device=device)
    return t


def direction(direction: Direction, t: ZOTensor) -> torch.Tensor:
    """The whole z of tensor t (fp32, t's shape)."""
    w = t.param
    n = w.numel()
    z = torch.empty(n, dtype=torch.float32, device=w.device)

    def work(first, stop, scratch):
        for b in range(first, stop):
            s = b * BLOCK
            m = min(BLOCK, n - s)
            block_z(direction, t.index, b, m, z[s : s + m])

    _run(nblocks(n), work)
    return z.view(w.shape)


def acquire(w: torch.Tensor) -> torch.Tensor:
    """A buffer shaped like w (contiguous), from the free list when one is there; give it back with `release`."""
    free = _free.get((tuple(w.shape), w.dtype, w.device))
    return free.pop() if free else torch.empty(w.shape, dtype=w.dtype, device=w.device)


def release(buf: torch.Tensor) -> None:
    free = _free.setdefault((tuple(buf.shape), buf.dtype, buf.device), [])
    if len(free) < 2:
        free.append(buf)


def perturbed_value(t: ZOTensor, direction: Direction, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """round(z * scale + w) to w's dtype, block by block (the reference's `perturbed_value` with this generator)."""
    w = t.param.detach()
    flat = w.reshape(-1)
    n = flat.numel()
    if out is None:
        out = acquire(w)
    dst = out.view(-1)
    exact = w.dtype == torch.float32

    def work(first, stop, scratch):
        buf = _buf(scratch, "z", w.device)
        for b in range(first, stop):
            s = b * BLOCK
            m = min(BLOCK, n - s)
            block_z(direction, t.index, b, m, buf, scale)
            if exact:
                torch.add(buf[:m], flat[s : s + m], out=dst[s : s + m])
            else:
                dst[s : s + m].copy_(buf[:m].add_(flat[s : s + m]))

    _run(nblocks(n), work)
    return out


def apply_update(t: ZOTensor, directions: Sequence[Direction], coeffs: torch.Tensor, **kw) -> None:
    """`perturb.apply_update` for blocked directions: the same formula, one block at a time, in the thread pool."""
    run_jobs([update_job(t, directions, coeffs, **kw)])


def update_job(
    t: ZOTensor,
    directions: Sequence[Direction],
    coeffs: torch.Tensor,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    momentum_buffer: torch.Tensor | None = None,
    master: torch.Tensor | None = None,
    rounding: str = "stochastic",
    rounding_seed: int = 0,
) -> Job:
    """The update of tensor t as a job for `run_jobs` (see `apply_update`)."""
    w = t.param.data
    flat = w.view(-1)
    n = flat.numel()
    cs = [float(c) for c in coeffs.detach().to(torch.float32)]  # fp32 values, exact as floats
    mom = momentum_buffer.view(-1) if momentum_buffer is not None else None
    mst = master.view(-1) if master is not None else None

    def work(first, stop, scratch):
        d, z = _buf(scratch, "d", w.device), _buf(scratch, "z", w.device)
        for b in range(first, stop):
            s = b * BLOCK
            m = min(BLOCK, n - s)
            dm = d[:m]
            for j, (direction, c) in enumerate(zip(directions, cs)):
                # z * c as the reference forms it (z.mul_(c)); for +-1 that is exact, so it is drawn pre-scaled
                pre = direction.distribution == "rademacher"
                block_z(direction, t.index, b, m, dm if j == 0 else z, c if pre else 1.0)
                if j == 0:
                    if not pre:
                        dm.mul_(c)
                else:
                    dm.add_(z[:m] if pre else z[:m].mul_(c))
            descend(
                flat[s : s + m], dm, lr=lr, weight_decay=weight_decay, momentum=momentum,
                momentum_buffer=None if mom is None else mom[s : s + m],
                master=None if mst is None else mst[s : s + m], rounding=rounding,
                rounding_generator=lambda b=b: generator(mix(ROUNDING, rounding_seed, t.index, b), w.device),
            )  # fmt: skip

    return nblocks(n), work
