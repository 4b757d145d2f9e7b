"""Triton source of the fused ZO kernels. Imported only by `hyft.zo.kernels` when the fused path is used.

Every kernel works on a list of tensors described by two tables (built in `hyft.zo.kernels`):
    tensors  int64 [n, NCOL]: source address, RNG tensor index, numel, destination offset (elements, into `dst`),
             fp32 master address, fp32 momentum address (0 when absent)
    blocks   int32 [nb, 2]:   (row of `tensors`, block index inside that tensor); one program per block.
A program owns BLOCK consecutive elements of one tensor, seen as a [BLOCK / 8, 8] tile (16 bytes of bf16 per row).

Randomness is counter-based: Philox-4x32-10 keyed by a 64-bit step seed, counter (c0, c1, c2, c3) =
(counter index inside the tensor, tensor index, query, domain). The mapping element -> random bits depends only on the
element's offset inside its tensor, never on BLOCK, the launch or the other tensors:
    gaussian    element e: counter e // 4, normal (e % 4) of the two Box-Muller pairs of the counter's 4 words
    rademacher  element e: counter e // 128, bit (e % 32) of word (e % 128) // 32; bit 1 -> -1
    rounding    element e: counter e // 8, 16-bit half (e % 2) of word (e % 8) // 2 (its own seed and domain)
`hyft.zo.kernels` holds a pure-torch emulation of exactly this math (bit-exact except the fast-math transcendental
functions of Box-Muller, which differ in the last bits).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

NCOL = 8
ROUNDS: tl.constexpr = tl.constexpr(10)
INV_2_24: tl.constexpr = tl.constexpr(5.9604644775390625e-08)  # 2**-24
NEG_2LN2: tl.constexpr = tl.constexpr(-1.3862943611198906)  # -2 ln 2: -2 ln u = -2 ln2 * log2 u
TWO_PI: tl.constexpr = tl.constexpr(6.283185307179586)


@triton.jit
def _box_muller(x1, x2, COMPILED: tl.constexpr):
    """Two N(0, 1) from two uint32 words: u in (0, 1] from the top 24 bits of x1, angle from the top 24 of x2.

    COMPILED (for the GPU): the fast-math MUFU log2/cos/sin; else (Triton's interpreter) the accurate ones."""
    u = ((x1 >> 8) + 1).to(tl.float32) * INV_2_24
    th = TWO_PI * ((x2 >> 8).to(tl.float32) * INV_2_24 - 0.5)
    if COMPILED:
        r = tl.sqrt(NEG_2LN2 * libdevice.fast_log2f(u))
        a = r * libdevice.fast_cosf(th)
        b = r * libdevice.fast_sinf(th)
    else:
        r = tl.sqrt(NEG_2LN2 * tl.log2(u))
        a = r * tl.cos(th)
        b = r * tl.sin(th)
    return a, b


@triton.jit
def _to(x, DT: tl.constexpr, COMPILED: tl.constexpr):
    """fp32 -> DT, rounding to nearest even (compiled code does; the interpreter would truncate to bf16)."""
    if DT == tl.bfloat16 and not COMPILED:  # noqa: SIM300
        b = x.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        x = b.to(tl.float32, bitcast=True)
    return x.to(DT)


@triton.jit
def _philox(seed, cnt, tid, query, DOMAIN: tl.constexpr):
    c0 = cnt.to(tl.uint32)
    zero = c0 * 0
    c1 = zero + tid.to(tl.uint32)
    c2 = zero + query  # a uint32 scalar or a constexpr int
    c3 = zero + DOMAIN
    return tl.philox(seed, c0, c1, c2, c3, ROUNDS)


@triton.jit
def _direction(seed, tid, query, start, r, c, DIST: tl.constexpr, COMPILED: tl.constexpr):
    """z for the [R, 8] tile whose first element has offset `start` (a multiple of 128) in tensor `tid`; fp32."""
    cc = c[None, :]
    if DIST == 0:  # gaussian: row r holds counters start/4 + 2r (columns 0-3) and start/4 + 2r + 1 (columns 4-7)
        cnt = start // 4 + 2 * r
        a0, a1, a2, a3 = _philox(seed, cnt, tid, query, 0)
        b0, b1, b2, b3 = _philox(seed, cnt + 1, tid, query, 0)
        n0, n1 = _box_muller(a0, a1, COMPILED)
        n2, n3 = _box_muller(a2, a3, COMPILED)
        n4, n5 = _box_muller(b0, b1, COMPILED)
        n6, n7 = _box_muller(b2, b3, COMPILED)
        lo = tl.where(
            cc < 2,
            tl.where(cc == 0, n0[:, None], n1[:, None]),
            tl.where(cc == 2, n2[:, None], n3[:, None]),
        )
        hi = tl.where(
            cc < 6,
            tl.where(cc == 4, n4[:, None], n5[:, None]),
            tl.where(cc == 6, n6[:, None], n7[:, None]),
        )
        z = tl.where(cc < 4, lo, hi)
    else:  # rademacher: the 8 elements of row r are bits 8*(r % 4) .. +7 of word (r % 16) // 4 of counter
        e0 = start + 8 * r
        w0, w1, w2, w3 = _philox(seed, e0 // 128, tid, query, 1)
        j = (r % 16) // 4
        word = tl.where(j < 2, tl.where(j == 0, w0, w1), tl.where(j == 2, w2, w3))
        shift = (8 * (r % 4))[:, None] + cc
        bit = (word[:, None] >> shift.to(tl.uint32)) & 1
        z = 1.0 - 2.0 * bit.to(tl.float32)
    return z


@triton.jit
def _round_noise(rseed, tid, start, r, c):
    """16 uniform random bits per element (int32) for stochastic rounding; row r is counter start/8 + r."""
    v0, v1, v2, v3 = _philox(rseed, start // 8 + r, tid, 0, 2)
    cc = c[None, :]
    word = tl.where(
        cc < 4,
        tl.where(cc < 2, v0[:, None], v1[:, None]),
        tl.where(cc < 6, v2[:, None], v3[:, None]),
    )
    return ((word >> ((cc % 2) * 16).to(tl.uint32)) & 0xFFFF).to(tl.int32)


@triton.jit
def _tile(tensors, blocks, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    slot = tl.load(blocks + 2 * pid).to(tl.int64)
    bidx = tl.load(blocks + 2 * pid + 1).to(tl.int64)
    row = tensors + slot * 8
    addr = tl.load(row)
    tid = tl.load(row + 1)
    numel = tl.load(row + 2)
    doff = tl.load(row + 3)
    if ALIGNED:  # every tensor starts 16-byte aligned and has a multiple of 8 elements: 16-byte vector accesses
        numel = tl.multiple_of(numel, 8)
        doff = tl.multiple_of(doff, 8)
    start = bidx * BLOCK
    r = tl.arange(0, BLOCK // 8).to(tl.int64)
    c = tl.arange(0, 8)
    offs = start + r[:, None] * 8 + c[None, :]
    return row, addr, tid, numel, doff, start, r, c, offs


@triton.jit(do_not_specialize=["seed", "query"])
def perturb_kernel(
    tensors,
    blocks,
    dst,
    seed,
    query,
    scale,
    DIST: tl.constexpr,
    DT: tl.constexpr,
    ALIGNED: tl.constexpr,
    COMPILED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dst[doff + e] = round(w[e] + scale * z[e]): one read of w, one write of the scratch."""
    row, addr, tid, numel, doff, start, r, c, offs = _tile(tensors, blocks, BLOCK, ALIGNED)
    src = addr.to(tl.pointer_type(DT))
    if ALIGNED:
        src = tl.multiple_of(src, 16)
    mask = offs < numel
    w = tl.load(src + offs, mask=mask, other=0.0)
    z = _direction(seed, tid, query.to(tl.uint32), start, r, c, DIST, COMPILED)
    y = w.to(tl.float32) + scale * z
    tl.store(dst + doff + offs, _to(y, DT, COMPILED), mask=mask)


@triton.jit(do_not_specialize=["seed", "rseed"])
def update_kernel(
    tensors,
    blocks,
    coef,
    seed,
    rseed,
    lr,
    wd,
    momentum,
    NQ: tl.constexpr,
    DIST: tl.constexpr,
    DT: tl.constexpr,
    ALIGNED: tl.constexpr,
    COMPILED: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_MASTER: tl.constexpr,
    HAS_MOM: tl.constexpr,
    HAS_WD: tl.constexpr,
    STOCHASTIC: tl.constexpr,
):
    """x <- x - lr * (d + wd * x), d = sum_j coef[j] * z_j (momentum: m <- momentum * m + d, d = m), in place.

    x is the fp32 master when there is one (the weight then mirrors it, round to nearest), else the weight itself,
    written back by stochastic rounding with counter-based bits (bf16) or round to nearest.
    """
    row, addr, tid, numel, doff, start, r, c, offs = _tile(tensors, blocks, BLOCK, ALIGNED)
    wp = addr.to(tl.pointer_type(DT))
    if ALIGNED:
        wp = tl.multiple_of(wp, 16)
    mask = offs < numel
    if HAS_MASTER:
        mp = tl.multiple_of(tl.load(row + 4).to(tl.pointer_type(tl.float32)), 16)
        x = tl.load(mp + offs, mask=mask, other=0.0)
    else:
        x = tl.load(wp + offs, mask=mask, other=0.0).to(tl.float32)
    d = tl.zeros([BLOCK // 8, 8], dtype=tl.float32)
    for j in tl.static_range(NQ):
        d += tl.load(coef + j) * _direction(seed, tid, j, start, r, c, DIST, COMPILED)
    if HAS_MOM:
        vp = tl.multiple_of(tl.load(row + 5).to(tl.pointer_type(tl.float32)), 16)
        m = tl.load(vp + offs, mask=mask, other=0.0) * momentum + d
        tl.store(vp + offs, m, mask=mask)
        d = m
    if HAS_WD:
        new = x - lr * (d + wd * x)
    else:
        new = x - lr * d
    if HAS_MASTER:
        tl.store(mp + offs, new, mask=mask)
        out = _to(new, DT, COMPILED)
    elif STOCHASTIC:  # bf16 is the top half of fp32: add 16 random bits to the half that is cut, then truncate
        bits = new.to(tl.int32, bitcast=True)
        rounded = (bits + _round_noise(rseed, tid, start, r, c)) & -65536
        finite = (bits & 0x7F800000) != 0x7F800000
        out = tl.where(finite, rounded, bits).to(tl.float32, bitcast=True).to(DT)
    else:
        out = _to(new, DT, COMPILED)
    tl.store(wp + offs, out, mask=mask)
