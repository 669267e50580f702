/* RMSNorm after the residual add, and SiLU(gate) * up, fused, on CPU in float32.
 *
 * The PyTorch reference (kernels/reference.py) runs each as a chain of elementwise ops, every one
 * a pass over the activations with a tensor allocated for its result and a dispatch through
 * torch's op machinery: at decode batch sizes the dispatches cost more than the arithmetic. Here
 * each is one pass per row. Rows are split over OpenMP threads (torch's, see decode_attention.c)
 * when there are enough of them to pay for waking the threads.
 */
#include <math.h>
#include <stdint.h>
#include "vec_math.h"

#define PARALLEL_MIN_ELEMENTS (1 << 14) /* below this, one thread: waking others costs more */

/* x, out: [rows, dim]; residual, residual_out: [rows, dim] or NULL; weight: [dim]; all contiguous.
 * h = x + residual (residual_out = h) or h = x; out = weight * (h / sqrt(mean(h^2) + eps)). */
void tandem_rms_norm(const float *x, const float *residual, float *residual_out, float *out,
                     const float *weight, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim >= PARALLEL_MIN_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *outr = out + r * dim;
        const float *h = xr;
        if (residual != 0) {
            const float *res = residual + r * dim;
            float *hr = residual_out + r * dim;
#pragma omp simd
            for (int64_t i = 0; i < dim; i++) hr[i] = xr[i] + res[i];
            h = hr;
        }
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < dim; i++) ss += h[i] * h[i];
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) outr[i] = weight[i] * (h[i] * inv);
    }
}

/* x: [rows, 2 * inter] holding [gate | up] per row; out: [rows, inter]; contiguous.
 * out = gate * sigmoid(gate) * up. With AVX2, sigmoid from z = exp(-|gate|), which never
 * overflows: 1 / (1 + z) for gate >= 0, z / (1 + z) below (glibc's expf is not vectorized, and
 * calling it per element made this slower than torch's own kernel). */
void tandem_silu_and_mul(const float *x, float *out, int64_t rows, int64_t inter) {
#pragma omp parallel for schedule(static) if (rows * inter >= PARALLEL_MIN_ELEMENTS)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = x + r * 2 * inter;
        const float *up = gate + inter;
        float *o = out + r * inter;
        int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
        for (; i + 8 <= inter; i += 8) {
            const __m256 g = _mm256_loadu_ps(gate + i);
            const __m256 z = exp_neg(_mm256_or_ps(g, sign)); /* exp(-|g|) */
            const __m256 num = _mm256_blendv_ps(one, z, g); /* g's sign bit picks z: g < 0 (and -0) */
            const __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, z));
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
        }
#endif
        for (; i < inter; i++) o[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}
