/* Row entropy of softmax(z) on CPU, for the HAPO sampler (megatron_hapo/ops/cpu_entropy.py builds and
 * loads this file with the host's C compiler at first use: -O3 -march=native -fopenmp).
 *
 * For each row z [v] (fp32, contiguous), with m = max z, s = z - m, e = exp(s):
 *
 *     H = log(S) - W / S,   S = sum e,   W = sum e * s
 *
 * the definition of megatron_hapo.algorithms.token_entropy, in two vectorised loops over a row (its max,
 * then both sums) instead of inductor's kernel, whose exp is Sleef's 1-ULP one. exp_nonpositive below is
 * the classic Cephes expf (range reduction by ln 2 in two parts, degree-6 polynomial, scale by 2^n built in
 * the exponent bits), about 1 ULP on s <= 0, written so that gcc/clang vectorise it.
 *
 * Edge cases follow token_entropy: -inf entries (masked tokens) contribute 0; an all -inf row gives 0;
 * a row holding +inf gives NaN and a row holding NaN gives 0 (token_entropy's results for them). Entries
 * below m - 87 contribute exactly 0 (their exp is under FLT_MIN, against S >= 1). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LOWEST (-87.0f) /* exp(-87) ~ 1.6e-38: the smallest exponent that stays a normal float */
#define BLOCK 4096      /* per-block float sums, accumulated in double: error independent of v */

static inline float exp_nonpositive(float s) {
    float x = s < LOWEST ? LOWEST : s;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick (exact for |x / ln 2| < 2^22) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f; /* |r| <= ln(2) / 2 */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n, n in [-126, 0]: a normal float */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return s < LOWEST ? 0.0f : p * scale;
}

/* Rows are shared among `threads` OpenMP threads. The library links libgomp.so.1, which resolves to the
 * copy torch has already loaded: the kernel runs on torch's own intra-op team, whose workers are still
 * spinning from the previous ATen op, instead of competing with them for the cores. */
void hapo_row_entropy(const float *z, int64_t rows, int64_t v, float *out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * v >= 65536)
    for (int64_t i = 0; i < rows; ++i) {
        const float *row = z + i * v;
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < v; ++j) m = row[j] > m ? row[j] : m;
        if (m == INFINITY) {
            out[i] = NAN;
            continue;
        }
        if (!(m > -INFINITY)) m = 0.0f; /* nothing finite: shift by 0, as token_entropy does */
        double total = 0.0, weighted = 0.0;
        for (int64_t start = 0; start < v; start += BLOCK) {
            int64_t end = start + BLOCK < v ? start + BLOCK : v;
            float block_total = 0.0f, block_weighted = 0.0f;
#pragma omp simd reduction(+ : block_total, block_weighted)
            for (int64_t j = start; j < end; ++j) {
                float s = row[j] - m;
                float e = exp_nonpositive(s);
                block_total += e;
                block_weighted += e * (s < LOWEST ? LOWEST : s); /* e = 0 there: no 0 * -inf */
            }
            total += block_total;
            weighted += block_weighted;
        }
        double h = log(total) - weighted / total;
        out[i] = total > 0.0 ? (float)(h > 0.0 ? h : 0.0) : 0.0f;
    }
}
