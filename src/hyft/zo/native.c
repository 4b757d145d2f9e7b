/* The blocked generator's fp32 passes fused into one loop each (hyft.zo.native builds this, hyft.zo.blocked calls it).
 *
 * The random numbers still come from torch (a block's int64 sign words, or its randn), so these compute exactly
 * what the torch ops of hyft/zo/blocked.py compute, bit for bit: the same IEEE fp32 operations in the same order.
 * That is why the build uses -ffp-contract=off (no silent fusing of z*s + w) and never -ffast-math; the one fused
 * multiply-add is explicit (fmaf), because torch's add_(d, alpha=-lr) is one (vec::fmadd). Tests compare every
 * entry point with the torch ops on sizes with tails (tests/zo/test_native.py).
 *
 * Sign words: element i of a block is -1 where bit i % 64 of word i / 64 is set (blocked.block_z's layout).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float as_float(uint32_t bits) {
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

static inline uint32_t as_bits(float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return bits;
}

/* +-s for the 32 elements of one half word: s with its sign bit flipped where bit k is set (32-bit shifts, so the
 * compiler vectorises the loop: 8 lanes of AVX2) */
static inline void signs32(float *restrict d, uint32_t half, uint32_t s) {
    for (int k = 0; k < 32; k++) d[k] = as_float(s ^ ((half << (31 - k)) & 0x80000000u));
}

static inline void signs(float *restrict d, uint64_t word, float s, int m) {
    float full[64];
    float *dst = m == 64 ? d : full;
    signs32(dst, (uint32_t)word, as_bits(s));
    signs32(dst + 32, (uint32_t)(word >> 32), as_bits(s));
    if (m < 64) memcpy(d, full, 4 * (size_t)m);
}

/* out[i] = w[i] + (+-s): blocked.perturbed_value, fp32, Rademacher */
void hyft_rad_perturb_f32(const float *restrict w, float *restrict out, const uint64_t *words, int64_t n, float s) {
    float v[64];
    for (int64_t i = 0; i < n; i += 64) {
        const int m = n - i < 64 ? (int)(n - i) : 64;
        signs(v, words[i >> 6], s, m);
        for (int k = 0; k < m; k++) out[i + k] = w[i + k] + v[k];
    }
}

/* out[i] = w[i] + z[i] * s: blocked.perturbed_value, fp32, Gaussian (z drawn by torch.randn) */
void hyft_gauss_perturb_f32(const float *restrict w, float *restrict out, const float *restrict z, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) {
        const float v = z[i] * s;
        out[i] = w[i] + v;
    }
}

/* w[i] = fma(d_i, neg_lr, w[i]), d_i = (+-c_0) + (+-c_1) + ...: blocked.update_job, fp32, plain SGD, Rademacher */
void hyft_rad_update_f32(float *restrict w, const uint64_t *const *words, const float *c, int q, int64_t n,
                         float neg_lr) {
    float d[64], v[64];
    for (int64_t i = 0; i < n; i += 64) {
        const int m = n - i < 64 ? (int)(n - i) : 64;
        signs(d, words[0][i >> 6], c[0], m);
        for (int j = 1; j < q; j++) {
            signs(v, words[j][i >> 6], c[j], m);
            for (int k = 0; k < m; k++) d[k] = d[k] + v[k];
        }
        for (int k = 0; k < m; k++) w[i + k] = fmaf(d[k], neg_lr, w[i + k]);
    }
}

/* the same with Gaussian z_j (torch.randn): d_i = z_0[i] * c_0 + z_1[i] * c_1 + ..., each product rounded */
void hyft_gauss_update_f32(float *restrict w, const float *const *z, const float *c, int q, int64_t n, float neg_lr) {
    float d[256];  // query by query over a chunk (the loop over q inside the loop over i does not vectorise)
    for (int64_t i = 0; i < n; i += 256) {
        const int m = n - i < 256 ? (int)(n - i) : 256;
        const float *z0 = z[0] + i;
        for (int k = 0; k < m; k++) d[k] = z0[k] * c[0];
        for (int j = 1; j < q; j++) {
            const float *zj = z[j] + i, cj = c[j];
            for (int k = 0; k < m; k++) {
                const float t = zj[k] * cj;
                d[k] = d[k] + t;
            }
        }
        for (int k = 0; k < m; k++) w[i + k] = fmaf(d[k], neg_lr, w[i + k]);
    }
}

/* ---- the "counter" generator (hyft/zo/counter.py is its definition, in torch ops; these are the same numbers) ---- */

static inline uint64_t word(uint64_t key, uint64_t m) {
    uint64_t x = key + (m + 1) * 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* words[m] = word(key, first + m): the Rademacher signs of elements 64 (first + m) .. */
void hyft_ctr_words(uint64_t *words, int64_t n, uint64_t key, int64_t first) {
    for (int64_t m = 0; m < n; m++) words[m] = word(key, (uint64_t)(first + m));
}

static inline float horner(float x2, const float *c, int n) {
    float p = c[0];
    for (int k = 1; k < n; k++) {
        p = p * x2;
        p = p + c[k];
    }
    p = p * x2;
    return p + 1.0f;
}

static const float LN[5] = {0x1.745d18p-4f, 0x1.c71c72p-4f, 0x1.24924ap-3f, 0x1.99999ap-3f, 0x1.555556p-2f};
static const float SIN[5] = {-0x1.ae6456p-26f, 0x1.71de3ap-19f, -0x1.a01a02p-13f, 0x1.111112p-7f, -0x1.555556p-3f};
static const float COS[6] = {0x1.1eed8ep-29f, -0x1.27e4fcp-22f, 0x1.a01a02p-16f,
                             -0x1.6c16c2p-10f, 0x1.555556p-5f, -0x1p-1f};

static inline float log_unit(float u) {
    const uint32_t bits = as_bits(u);
    int32_t e = (int32_t)(bits >> 23) - 127;
    float m = as_float((bits & 0x7FFFFFu) | 0x3F800000u);
    const int32_t big = m > 0x1.6a09e6p+0f;
    m = as_float(as_bits(m) - ((uint32_t)big << 23));  // m * 0.5 (exact), without a branch: the loop vectorises
    e = e + big;
    const float f = m - 1.0f;
    const float s = f / (f + 2.0f);
    const float p = horner(s * s, LN, 5);
    const float a = (float)e * 0x1.62e430p-1f;
    const float b = (s + s) * p;
    return a + b;
}

/* z[0 .. 2m) = the Gaussian pairs first_pair .. first_pair + m - 1 (m <= CH). One simple loop per stage, so that
 * the compiler vectorises each (one loop with the hash, the polynomials and the quadrant select in it ran at
 * 12 ns per element here, these at ~1.5) */
enum { CH = 64 };

static void gauss_pairs(float *restrict z, int m, uint64_t key, int64_t first_pair) {
    float u[CH], x[CH], r[CH], sn[CH], cs[CH], rc[CH], rs[CH];
    int32_t quadrant[CH];
    for (int k = 0; k < m; k++) {
        const uint64_t h = word(key, (uint64_t)(first_pair + k));
        u[k] = (float)(int32_t)((h >> 40) + 1) * 0x1p-24f;
        quadrant[k] = (int32_t)((h >> 38) & 3u);
        x[k] = (float)(int32_t)((h >> 16) & 0x3FFFFFu) * 0x1p-22f;
    }
    for (int k = 0; k < m; k++) r[k] = sqrtf(log_unit(u[k]) * -2.0f);
    for (int k = 0; k < m; k++) {
        const float xk = x[k] * 0x1.921fb6p+0f;
        const float x2 = xk * xk;
        sn[k] = xk * horner(x2, SIN, 5);
        cs[k] = horner(x2, COS, 6);
    }
    for (int k = 0; k < m; k++) {
        // (cos, sin) of angle + q pi/2: odd q swaps them, q 1 and 2 negate cos, q 2 and 3 negate sin
        const uint32_t q = (uint32_t)quadrant[k], swap = -(q & 1u);
        const uint32_t cb = as_bits(cs[k]), sb = as_bits(sn[k]);
        const uint32_t c = ((cb & ~swap) | (sb & swap)) ^ ((uint32_t)((q + 1) >> 1 & 1u) << 31);
        const uint32_t s = ((sb & ~swap) | (cb & swap)) ^ ((q >> 1) << 31);
        rc[k] = r[k] * as_float(c);
        rs[k] = r[k] * as_float(s);
    }
    for (int k = 0; k < m; k++) {
        z[2 * k] = rc[k];
        z[2 * k + 1] = rs[k];
    }
}

/* z[0 .. n) = z_first .. of the Gaussian counter direction (first even) */
void hyft_ctr_gauss(float *restrict z, int64_t n, uint64_t key, int64_t first) {
    float zc[2 * CH];
    for (int64_t i = 0; i < n; i += 2 * CH) {
        const int64_t left = n - i;
        const int m = left < 2 * CH ? (int)((left + 1) / 2) : CH;
        gauss_pairs(zc, m, key, (first + i) / 2);
        memcpy(z + i, zc, 4 * (size_t)(left < 2 * CH ? left : 2 * CH));
    }
}

/* The whole passes of the counter generator, z made in registers / L1 as the weights stream by (first: the index of
 * w[0] in its tensor; a multiple of 64). The same numbers as the passes above on z from hyft_ctr_words / _gauss. */
void hyft_ctr_rad_perturb_f32(const float *restrict w, float *restrict out, int64_t n, float s, uint64_t key,
                              int64_t first) {
    uint64_t words[CH];
    for (int64_t i = 0; i < n; i += 64 * CH) {
        const int64_t len = n - i < 64 * CH ? n - i : 64 * CH;
        hyft_ctr_words(words, (len + 63) / 64, key, (first + i) / 64);
        hyft_rad_perturb_f32(w + i, out + i, words, len, s);
    }
}

void hyft_ctr_gauss_perturb_f32(const float *restrict w, float *restrict out, int64_t n, float s, uint64_t key,
                                int64_t first) {
    float z[2 * CH];
    for (int64_t i = 0; i < n; i += 2 * CH) {
        const int64_t len = n - i < 2 * CH ? n - i : 2 * CH;
        hyft_ctr_gauss(z, len, key, first + i);
        hyft_gauss_perturb_f32(w + i, out + i, z, len, s);
    }
}

/* the counter updates keep q chunks of z on the stack: q <= MAX_QUERIES (hyft_max_queries tells the caller) */
enum { MAX_QUERIES = 16 };

int hyft_max_queries(void) { return MAX_QUERIES; }

void hyft_ctr_rad_update_f32(float *restrict w, int64_t n, const uint64_t *keys, const float *c, int q, float neg_lr,
                             int64_t first) {
    uint64_t words[MAX_QUERIES][CH];
    const uint64_t *ptrs[MAX_QUERIES];
    for (int j = 0; j < q; j++) ptrs[j] = words[j];
    for (int64_t i = 0; i < n; i += 64 * CH) {
        const int64_t len = n - i < 64 * CH ? n - i : 64 * CH;
        for (int j = 0; j < q; j++) hyft_ctr_words(words[j], (len + 63) / 64, keys[j], (first + i) / 64);
        hyft_rad_update_f32(w + i, ptrs, c, q, len, neg_lr);
    }
}

void hyft_ctr_gauss_update_f32(float *restrict w, int64_t n, const uint64_t *keys, const float *c, int q,
                               float neg_lr, int64_t first) {
    float z[MAX_QUERIES][2 * CH];
    const float *ptrs[MAX_QUERIES];
    for (int j = 0; j < q; j++) ptrs[j] = z[j];
    for (int64_t i = 0; i < n; i += 2 * CH) {
        const int64_t len = n - i < 2 * CH ? n - i : 2 * CH;
        for (int j = 0; j < q; j++) hyft_ctr_gauss(z[j], len, keys[j], first + i);
        hyft_gauss_update_f32(w + i, ptrs, c, q, len, neg_lr);
    }
}
