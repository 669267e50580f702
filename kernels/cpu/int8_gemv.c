/* One row of activations times an int8 weight with bf16 scales, for batch-1 decode on CPU.
 *
 * y[n] = sum over groups g of scale[g, n] * sum over k < group of codes[g, n, k] * x[g * group + k]
 *
 * This is the layout engine/quant.py keeps for PyTorch's packed int8 kernel (codes [groups, N,
 * group], one group for per-channel scales); at one row that kernel rounds the activations to
 * bf16 and, on weights streamed from memory, reaches a third of this machine's bandwidth. Here the
 * activations stay float32, eight output rows go at a time (eight FMA chains, one transposing
 * reduction into eight sums), and each thread streams its own contiguous slice of every group. */
#include <stdint.h>
#include <omp.h>

#define PARALLEL_MIN_WEIGHTS (1 << 16) /* below this, one thread: waking the others costs more */

#ifndef PREFETCH_BLOCKS
#define PREFETCH_BLOCKS 4 /* blocks of 8 rows ahead (1: slower; 2 and 4 alike) */
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } bits = {.u = (uint32_t)v << 16};
    return bits.f;
}

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

/* x: [groups * group] float32; codes: [groups, n, group] int8; scales: [groups, n] bf16 bits;
 * y: [n] float32. group % 8 == 0. Returns 0, or -2 where it does not apply (the caller's kernel). */
int tandem_int8_gemv(const float *x, const int8_t *codes, const uint16_t *scales, float *y, int64_t n,
                     int64_t groups, int64_t group) {
    if (group % 8 != 0 || n <= 0 || groups <= 0) return -2;
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
                __m256 a[8];
                for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
                const int8_t *c = cg + r0 * group;
                for (int64_t off = 0; off < 8 * group; off += 64) __builtin_prefetch(c + PREFETCH_BLOCKS * 8 * group + off);
                for (int r = 0; r < 8; r++) { /* row by row: one sequential stream, four FMA chains */
                    const int8_t *cr = c + r * group;
                    __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
                    int64_t k = 0;
                    for (; k + 32 <= group; k += 32) {
                        p0 = _mm256_fmadd_ps(widen(cr + k), _mm256_loadu_ps(xg + k), p0);
                        p1 = _mm256_fmadd_ps(widen(cr + k + 8), _mm256_loadu_ps(xg + k + 8), p1);
                        p2 = _mm256_fmadd_ps(widen(cr + k + 16), _mm256_loadu_ps(xg + k + 16), p2);
                        p3 = _mm256_fmadd_ps(widen(cr + k + 24), _mm256_loadu_ps(xg + k + 24), p3);
                    }
                    for (; k < group; k += 8) p0 = _mm256_fmadd_ps(widen(cr + k), _mm256_loadu_ps(xg + k), p0);
                    a[r] = _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3));
                }
                const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sg + r0))), 16));
                const __m256 prev = g == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(y + r0);
                _mm256_storeu_ps(y + r0, _mm256_fmadd_ps(reduce8(a), s, prev));
            }
            for (; r0 < end; r0++) { /* the last rows of a slice that is not a multiple of 8 */
                float dot = 0.0f;
                for (int64_t k = 0; k < group; k++) dot += (float)cg[r0 * group + k] * xg[k];
                y[r0] = (g == 0 ? 0.0f : y[r0]) + dot * bf16_to_float(sg[r0]);
            }
        }
    }
    return 0;
}
#else
int tandem_int8_gemv(const float *x, const int8_t *codes, const uint16_t *scales, float *y, int64_t n,
                     int64_t groups, int64_t group) {
    (void)x, (void)codes, (void)scales, (void)y, (void)n, (void)groups, (void)group;
    return -2;
}
#endif
