/* KV vectors to int8 and back (engine/kv_codec.py): the wire and store form of packed KV.
 *
 * A row is one head vector of `dim` floats; its encoded form is `dim` int8 codes followed by the
 * float32 scale's 4 bytes (row stride dim + 4). scale = max|x| / 127, code = round-half-even(x /
 * scale) (0 where scale is 0); decoding is code * scale. The PyTorch reference
 * (kernels/reference.py) makes a pass over the KV for each of its ~7 ops; here each row is read
 * once and written once. The arithmetic is the reference's (a division, not a multiply by the
 * inverse; rintf in the default rounding mode is round-half-even like torch.round), so the codes
 * are bit for bit the same (a vector holding NaN decodes to NaN, as there).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PARALLEL_MIN_ROWS 4096 /* below this, one thread: waking others costs more */
#define CHUNK 256                /* values converted at a time (any head_dim) */

/* x: [rows, dim] float32, contiguous; out: [rows, dim + 4] int8. */
void tandem_kv_int8_encode(const float *x, int8_t *out, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows >= PARALLEL_MIN_ROWS)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        int8_t *o = out + r * (dim + 4);
        float amax = 0.0f;
        int nan = 0;
#pragma omp simd reduction(max : amax) reduction(| : nan)
        for (int64_t i = 0; i < dim; i++) {
            const float a = fabsf(xr[i]);
            amax = a > amax ? a : amax;
            nan |= xr[i] != xr[i];
        }
        const float scale = nan ? NAN : amax / 127.0f; /* NaN in, NaN out, as the reference */
        const float divisor = scale > 0.0f ? scale : 1.0f;
        /* through int32: a float -> int8 conversion in the same loop is not vectorized (10x slower) */
        int32_t codes[CHUNK];
        for (int64_t start = 0; start < dim; start += CHUNK) {
            const int64_t n = dim - start < CHUNK ? dim - start : CHUNK;
#pragma omp simd
            for (int64_t i = 0; i < n; i++) codes[i] = (int32_t)rintf(xr[start + i] / divisor);
#pragma omp simd
            for (int64_t i = 0; i < n; i++) o[start + i] = (int8_t)codes[i];
        }
        memcpy(o + dim, &scale, sizeof scale);
    }
}

/* in: [rows, dim + 4] int8 as encode writes it, contiguous; out: [rows, dim] float32. */
void tandem_kv_int8_decode(const int8_t *in, float *out, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows >= PARALLEL_MIN_ROWS)
    for (int64_t r = 0; r < rows; r++) {
        const int8_t *ir = in + r * (dim + 4);
        float *o = out + r * dim;
        float scale;
        memcpy(&scale, ir + dim, sizeof scale);
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) o[i] = (float)ir[i] * scale;
    }
}
