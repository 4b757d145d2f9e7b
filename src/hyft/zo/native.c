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
    for (int64_t i = 0; i < n; i++) {
        float d = z[0][i] * c[0];
        for (int j = 1; j < q; j++) {
            const float t = z[j][i] * c[j];
            d = d + t;
        }
        w[i] = fmaf(d, neg_lr, w[i]);
    }
}
