/* Rotary embedding (rotate-half / NeoX convention) on CPU in float32, for q and k at once.
 *
 * The PyTorch reference (kernels/reference.py) gathers cos and sin for the positions, builds the
 * rotated half with a cat and a neg, and multiplies and adds: about a dozen ops and as many
 * temporaries per call, 30 calls a decode step. Here each (token, head) row is read once and
 * written once. The arithmetic is the reference's, two products and a sum each rounded on its own
 * (no fused multiply-add: fp-contract off), so the result is the same bit for bit.
 */
#include <stdint.h>

#define PARALLEL_MIN_ROWS 256 /* (token, head) rows below which one thread does it all */

/* x: [tokens, heads, dim] with strides (tok_stride, head_stride, 1); out: [tokens, heads, dim]
 * contiguous; positions: [tokens]; cos, sin: [max_positions, dim] contiguous.
 * out = x * cos[pos] + rotate_half(x) * sin[pos], rotate_half(x) = [-x[half:], x[:half]]. */
__attribute__((optimize("fp-contract=off"))) static void rope_one(
    const float *x, float *out, const int64_t *positions, const float *cos, const float *sin,
    int64_t tokens, int64_t heads, int64_t dim, int64_t tok_stride, int64_t head_stride) {
    const int64_t half = dim / 2;
#pragma omp parallel for schedule(static) if (tokens * heads >= PARALLEL_MIN_ROWS)
    for (int64_t row = 0; row < tokens * heads; row++) {
        const int64_t t = row / heads, h = row % heads;
        const float *xr = x + t * tok_stride + h * head_stride;
        float *o = out + row * dim;
        const float *c = cos + positions[t] * dim;
        const float *s = sin + positions[t] * dim;
#pragma omp simd
        for (int64_t i = 0; i < half; i++) {
            const float a = xr[i] * c[i];
            const float b = -xr[i + half] * s[i];
            o[i] = a + b;
        }
#pragma omp simd
        for (int64_t i = half; i < dim; i++) {
            const float a = xr[i] * c[i];
            const float b = xr[i - half] * s[i];
            o[i] = a + b;
        }
    }
}

void tandem_rope(const float *q, const float *k, float *q_out, float *k_out, const int64_t *positions,
                 const float *cos, const float *sin, int64_t tokens, int64_t q_heads, int64_t k_heads,
                 int64_t dim, int64_t q_tok_stride, int64_t q_head_stride, int64_t k_tok_stride,
                 int64_t k_head_stride) {
    rope_one(q, q_out, positions, cos, sin, tokens, q_heads, dim, q_tok_stride, q_head_stride);
    rope_one(k, k_out, positions, cos, sin, tokens, k_heads, dim, k_tok_stride, k_head_stride);
}
