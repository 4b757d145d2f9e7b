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

A Direction with kernel="counter" runs through these same passes with z from `hyft.zo.counter` (a function of the
element index: there BLOCK only splits the work). The fp32 passes call the compiled loops of `hyft.zo.native` where
they built, which give the torch ops' numbers bit for bit.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch

from hyft.zo import counter, native
from hyft.zo.rng import DIRECTION, ROUNDING, generator, mix
from hyft.zo.tensors import ZOTensor
from hyft.zo.update import descend


class Direction(Protocol):
    """The keys of a direction (`hyft.zo.direction.Direction`, which imports this module: hence no import)."""

    run_seed: int
    step: int
    query: int
    distribution: str
    kernel: str  # "blocked" (a torch.Generator per block) or "counter" (`hyft.zo.counter`)


KINDS = ("blocked", "counter")  # the Direction kernels whose perturbation and update run here


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


def _generator(direction: Direction, tensor_index: int, b: int, device) -> torch.Generator:
    return generator(mix(DIRECTION, direction.run_seed, direction.step, direction.query, tensor_index, b), device)


def _key(direction: Direction, tensor_index: int) -> int:
    return mix(DIRECTION, direction.run_seed, direction.step, direction.query, tensor_index)


def block_words(direction: Direction, tensor_index: int, b: int, n: int, words: torch.Tensor) -> torch.Tensor:
    """The Rademacher sign words of block b (n elements): words[: ceil(n / 64)] (int64), element i is -1 where bit
    i % 64 of word i // 64 is set. From the block's torch.Generator, or for kernel="counter" `hyft.zo.counter`."""
    w = words[: (n + 63) // 64]
    if getattr(direction, "kernel", "blocked") == "counter":
        key, first, lib = _key(direction, tensor_index), b * BLOCK // 64, native.library()
        if lib is not None and w.device.type == "cpu" and w.is_contiguous():
            lib.hyft_ctr_words(w.data_ptr(), w.numel(), key, first)
            return w
        return w.copy_(counter.words(key, first, w.numel(), w.device))
    return w.random_(-(1 << 63), None, generator=_generator(direction, tensor_index, b, words.device))


def block_z(direction: Direction, tensor_index: int, b: int, n: int, out: torch.Tensor, scale: float = 1.0) -> None:
    """out[:n] (fp32) <- scale * z of block b (n elements: BLOCK, or fewer for the last block)."""
    o = out[:n]
    if direction.distribution == "gaussian":
        if getattr(direction, "kernel", "blocked") == "counter":
            key, lib = _key(direction, tensor_index), native.library()
            if lib is not None and o.device.type == "cpu" and o.is_contiguous():
                lib.hyft_ctr_gauss(o.data_ptr(), n, key, b * BLOCK)
            else:
                o.copy_(counter.gaussian(key, b * BLOCK, n, o.device))
        else:
            g = _generator(direction, tensor_index, b, out.device)
            torch.randn(n, generator=g, device=out.device, dtype=torch.float32, out=o)
        if scale != 1.0:
            o.mul_(scale)
        return
    if direction.distribution == "rademacher":
        # (+-1) * fp32(scale) is fp32(scale) with its sign bit flipped where the random bit is set: exactly what
        # z.mul_(scale) gives, built in the integer domain (three int32 passes over the block; faster here than
        # tables of sign patterns or copysign)
        words = torch.empty((n + 63) // 64, dtype=torch.int64, device=out.device)
        block_words(direction, tensor_index, b, n, words)
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


# (blocks, work(first_block, stop_block, scratch), cost of a block relative to drawing its Gaussian z)
Job = tuple[int, Callable[[int, int, dict], None], float]
# Jobs worth less than this many Gaussian blocks (~1.5 ms each here) run on the calling thread: a pool round trip
# and the GIL hand-offs between the threads' Python parts cost more than they save on a compiled Rademacher pass.
PARALLEL_MIN = 2.0
_local = threading.local()  # per thread: reused block buffers


def _scratch() -> dict:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = {}
    return s


def run_jobs(jobs: Sequence[Job]) -> None:
    """Every job's blocks in contiguous ranges over the pool (one pool for many tensors: small ones too)."""
    global _pool, _pool_size
    total = sum(n for n, _, _ in jobs)
    threads = max(1, min(torch.get_num_threads(), total))
    if threads == 1 or sum(n * cost for n, _, cost in jobs) < PARALLEL_MIN:
        for n, work, _ in jobs:
            work(0, n, _scratch())
        return
    with _lock:
        if _pool is None or _pool_size < threads:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool, _pool_size = ThreadPoolExecutor(threads, thread_name_prefix="hyft-zo"), threads
    # about 4 ranges per thread (the shared CPU is uneven: whoever is free takes the next one), and the calling
    # thread works too instead of waiting: a pool round trip costs about as much as a small tensor's pass
    size = max(1, -(-total // (threads * 4)))
    ranges = [(work, first, min(n, first + size)) for n, work, _ in jobs for first in range(0, n, size)]
    taken = itertools.count()  # next() on a count is atomic under the GIL

    def drain() -> None:
        scratch = _scratch()
        for i in iter(lambda: next(taken), None):
            if i >= len(ranges):
                return
            work, first, stop = ranges[i]
            work(first, stop, scratch)

    futures = [_pool.submit(drain) for _ in range(min(threads, len(ranges)) - 1)]
    drain()
    for f in futures:
        f.result()


def _cost(distribution: str, compiled: bool) -> float:
    """A block's cost relative to a Gaussian block (drawing randn dominates); for `PARALLEL_MIN`."""
    return 1.0 if distribution == "gaussian" else 0.1 if compiled else 0.2


def _run(n_blocks: int, work: Callable[[int, int, dict], None], cost: float = 1.0) -> None:
    run_jobs([(n_blocks, work, cost)])


def _spans(first: int, stop: int, n: int):
    """(block, its first element, its length) for blocks first .. stop - 1 of an n-element tensor."""
    for b in range(first, stop):
        s = b * BLOCK
        yield b, s, min(BLOCK, n - s)


def _buf(scratch: dict, key: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = scratch.get(key)
    if t is None:
        size = BLOCK if dtype == torch.float32 else BLOCK // 64
        t = scratch[key] = torch.empty(size, dtype=dtype, device=device)
    return t


# The compiled loops (hyft.zo.native) compute what the torch ops below compute, bit for bit, from the same random
# words / randn blocks; they take fp32 CPU tensors that are contiguous, and the plain update (no momentum, weight
# decay or master), the default. Everything else runs as torch ops.
def _native(*tensors: torch.Tensor):
    if not all(x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() for x in tensors):
        return None
    return native.library()


def _native_perturb(lib, direction, index, flat, dst, first, stop, scratch, scale) -> None:
    n, src, out = flat.numel(), flat.data_ptr(), dst.data_ptr()
    rademacher = direction.distribution == "rademacher"
    if direction.kernel == "counter":  # z made as the weights stream by: one call for the whole range
        s, e = first * BLOCK, min(n, stop * BLOCK)
        perturb = lib.hyft_ctr_rad_perturb_f32 if rademacher else lib.hyft_ctr_gauss_perturb_f32
        return perturb(src + 4 * s, out + 4 * s, e - s, scale, _key(direction, index), s)
    buf = _buf(scratch, "words" if rademacher else "z", flat.device, torch.int64 if rademacher else torch.float32)
    for b, s, m in _spans(first, stop, n):
        if rademacher:
            block_words(direction, index, b, m, buf)
            lib.hyft_rad_perturb_f32(src + 4 * s, out + 4 * s, buf.data_ptr(), m, scale)
        else:
            block_z(direction, index, b, m, buf)
            lib.hyft_gauss_perturb_f32(src + 4 * s, out + 4 * s, buf.data_ptr(), m, scale)


def _native_update(lib, directions, cs, index, flat, neg_lr, first, stop, scratch) -> None:
    n, dst, q = flat.numel(), flat.data_ptr(), len(directions)
    rademacher = directions[0].distribution == "rademacher"
    if directions[0].kernel == "counter" and q <= lib.max_queries:
        s, e = first * BLOCK, min(n, stop * BLOCK)
        keys = (ctypes.c_uint64 * q)(*(_key(d, index) for d in directions))
        update = lib.hyft_ctr_rad_update_f32 if rademacher else lib.hyft_ctr_gauss_update_f32
        return update(dst + 4 * s, e - s, keys, (ctypes.c_float * q)(*cs), q, neg_lr, s)
    dtype = torch.int64 if rademacher else torch.float32
    bufs = [_buf(scratch, f"{dtype}-{j}", flat.device, dtype) for j in range(q)]
    ptrs, coeffs = (ctypes.c_void_p * q)(*(x.data_ptr() for x in bufs)), (ctypes.c_float * q)(*cs)
    update = lib.hyft_rad_update_f32 if rademacher else lib.hyft_gauss_update_f32
    for b, s, m in _spans(first, stop, n):
        for direction, buf in zip(directions, bufs):
            if rademacher:
                block_words(direction, index, b, m, buf)
            else:
                block_z(direction, index, b, m, buf)
        update(dst + 4 * s, ptrs, coeffs, q, m, neg_lr)


def direction(direction: Direction, t: ZOTensor) -> torch.Tensor:
    """The whole z of tensor t (fp32, t's shape)."""
    w = t.param
    n = w.numel()
    z = torch.empty(n, dtype=torch.float32, device=w.device)

    def work(first, stop, scratch):
        for b, s, m in _spans(first, stop, n):
            block_z(direction, t.index, b, m, z[s : s + m])

    _run(nblocks(n), work, _cost(direction.distribution, False))
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

    lib = _native(flat, dst)

    def work(first, stop, scratch):
        if lib is not None:
            return _native_perturb(lib, direction, t.index, flat, dst, first, stop, scratch, scale)
        buf = _buf(scratch, "z", w.device)
        for b, s, m in _spans(first, stop, n):
            block_z(direction, t.index, b, m, buf, scale)
            if exact:
                torch.add(buf[:m], flat[s : s + m], out=dst[s : s + m])
            else:
                dst[s : s + m].copy_(buf[:m].add_(flat[s : s + m]))

    _run(nblocks(n), work, _cost(direction.distribution, lib is not None))
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
    plain = w.dtype == torch.float32 and mom is None and mst is None and not weight_decay
    lib = _native(flat) if plain else None

    def work(first, stop, scratch):
        if lib is not None:
            return _native_update(lib, directions, cs, t.index, flat, -lr, first, stop, scratch)
        d, z = _buf(scratch, "d", w.device), _buf(scratch, "z", w.device)
        for b, s, m in _spans(first, stop, n):
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

    return nblocks(n), work, len(cs) * _cost(directions[0].distribution if directions else "gaussian", lib is not None)
