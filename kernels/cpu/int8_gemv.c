/* A few rows of activations times an int8 weight with bf16 scales, for small-batch decode on CPU.
 *
 * y[i, n] = sum over groups g of scale[g, n] * sum over k < group of codes[g, n, k] * x[i, g * group + k]
 *
 * This is the layout engine/quant.py keeps for PyTorch's packed int8 kernel (codes [groups, N,
 * group], one group for per-channel scales); at one row that kernel rounds the activations to
 * bf16 and, on weights streamed from memory, reaches a third of this machine's bandwidth. Here the
 * activations stay float32, eight output rows go at a time (four FMA chains each per input row, one
 * transposing reduction into eight sums), each 8 codes widened once for up to 8 input rows, and
 * each thread streams its own contiguous slice of every group. */
#include <stdint.h>
#include <omp.h>

#define TANDEM_INT8_MAX_ROWS 8 /* rows a call takes (cpu_ext.SMALL_BATCH_ROWS) */
#define PARALLEL_MIN_WEIGHTS (1 << 16) /* below this, one thread: waking the others costs more */

#ifndef PREFETCH_BLOCKS
#define PREFETCH_BLOCKS 4 /* blocks of 8 rows ahead (1: slower; 2 and 4 alike) */
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include "vec_math.h"

/* eight int8 codes as floats */
static inline __m256 widen(const int8_t *codes) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)codes)));
}

/* [sum(a[0]), ..., sum(a[7])] */
static inline __m256 reduce8(const __m256 *a) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Output rows r0..r0+7 of every input row: their sums into a[i][r], then per input row one
 * transposing reduction and the scales. m is a constant where this is inlined (see
 * tandem_int8_gemm), so each 8 codes widened serve every row, and each row's arithmetic is the
 * same whatever m. x: [m, xstride] (this group's inputs at xg), y: [m, n]. */
static inline __attribute__((always_inline)) void output_block(const int64_t m, const float *xg, const int64_t xstride,
                                                               const int8_t *cg, const uint16_t *sg, float *y,
                                                               const int64_t n, const int64_t r0, const int64_t group,
                                                               const int first) {
    __m256 a[TANDEM_INT8_MAX_ROWS][8];
    const int8_t *c = cg + r0 * group;
    for (int64_t off = 0; off < 8 * group; off += 64) __builtin_prefetch(c + PREFETCH_BLOCKS * 8 * group + off);
    for (int r = 0; r < 8; r++) { /* row by row: one sequential stream, four FMA chains per input row */
        const int8_t *cr = c + r * group;
        __m256 p[TANDEM_INT8_MAX_ROWS][4];
        for (int64_t i = 0; i < m; i++) p[i][0] = p[i][1] = p[i][2] = p[i][3] = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= group; k += 32) {
            const __m256 w0 = widen(cr + k), w1 = widen(cr + k + 8), w2 = widen(cr + k + 16), w3 = widen(cr + k + 24);
            for (int64_t i = 0; i < m; i++) {
                const float *xi = xg + i * xstride + k;
                p[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xi), p[i][0]);
                p[i][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xi + 8), p[i][1]);
                p[i][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xi + 16), p[i][2]);
                p[i][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xi + 24), p[i][3]);
            }
        }
        for (; k < group; k += 8) {
            const __m256 w = widen(cr + k);
            for (int64_t i = 0; i < m; i++) p[i][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xg + i * xstride + k), p[i][0]);
        }
        for (int64_t i = 0; i < m; i++) a[i][r] = _mm256_add_ps(_mm256_add_ps(p[i][0], p[i][1]), _mm256_add_ps(p[i][2], p[i][3]));
    }
    const __m256 s = bf16x8(sg + r0);
    for (int64_t i = 0; i < m; i++) {
        float *yi = y + i * n + r0;
        const __m256 prev = first ? _mm256_setzero_ps() : _mm256_loadu_ps(yi);
        _mm256_storeu_ps(yi, _mm256_fmadd_ps(reduce8(a[i]), s, prev));
    }
}

/* x: [m, groups * group] float32 (1 <= m <= TANDEM_INT8_MAX_ROWS); codes: [groups, n, group] int8;
 * scales: [groups, n] bf16 bits; y: [m, n] float32. group % 8 == 0. Each row's result is the same
 * whatever m (a sequence's does not depend on its batch). Returns 0, or -2 where it does not apply
 * (the caller's kernel). */
int tandem_int8_gemm(const float *x, int64_t m, const int8_t *codes, const uint16_t *scales, float *y, int64_t n,
                     int64_t groups, int64_t group) {
    if (group % 8 != 0 || n <= 0 || groups <= 0 || m < 1 || m > TANDEM_INT8_MAX_ROWS) return -2;
    const int64_t xstride = groups * group;
#pragma omp parallel if (n * groups * group >= PARALLEL_MIN_WEIGHTS)
    {
        const int64_t threads = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t blocks = (n + 7) / 8;
        const int64_t begin = blocks * tid / threads * 8, end_block = blocks * (tid + 1) / threads * 8;
        const int64_t end = end_block < n ? end_block : n;
        for (int64_t g = 0; g < groups; g++) {
            const float *xg = x + g * group;
            const int8_t *cg = codes + g * n * group;
            const uint16_t *sg = scales + g * n;
            int64_t r0 = begin;
            for (; r0 + 8 <= end; r0 += 8) {
                switch (m) { /* one specialised copy per row count */
#define ROWS(M) \
    case M: output_block(M, xg, xstride, cg, sg, y, n, r0, group, g == 0); break;
                    ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8)
#undef ROWS
                }
            }
            for (; r0 < end; r0++) /* the last rows of a slice that is not a multiple of 8 */
                for (int64_t i = 0; i < m; i++) {
                    float dot = 0.0f;
                    for (int64_t k = 0; k < group; k++) dot += (float)cg[r0 * group + k] * xg[i * xstride + k];
                    y[i * n + r0] = (g == 0 ? 0.0f : y[i * n + r0]) + dot * bf16_to_float(sg[r0]);
                }
        }
    }
    return 0;
}
#else
int tandem_int8_gemm(const float *x, int64_t m, const int8_t *codes, const uint16_t *scales, float *y, int64_t n,
                     int64_t groups, int64_t group) {
    (void)x, (void)m, (void)codes, (void)scales, (void)y, (void)n, (void)groups, (void)group;
    return -2;
}
#endif
