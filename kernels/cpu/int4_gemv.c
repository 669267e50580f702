/* A few rows of activations times a group-wise int4 weight, for small-batch decode on CPU (W4A16).
 *
 * The weight: w[n, k] = (c - 8) * s + z for its 4-bit code c and the (s, z) of its group of 32
 * inputs (engine/quant.py's Int4Weight). x is rounded per group of 32 to 16-bit integers
 * (x ~ dx[g] * q, dx = max |x| / LEVELS, |q| <= LEVELS = 127 * 256), and per group g of a row n
 *
 *   sum_k w x = s * (dx * sum_k c q - 8 * xsum[g]) + z * xsum[g],   xsum[g] = sum_k x
 *
 * (xsum from x itself, unrounded, summed in float32), with q = 256 qh + ql split into two signed
 * bytes (ql in [-128, 127], qh in [-127, 127]), so the inner loop is two unsigned-code x
 * signed-byte dot products (AVX-512 VNNI's vpdpbusd, or AVX2's vpmaddubsw + vpmaddwd), exact in
 * int32. Activations rounded to 8 bits per group instead (as llama.cpp's Q8_1) cost too much on
 * SmolLM2: greedy outputs equal to fp32's for 1 of 8 prompts decoded alone, against 5 of 8 with
 * these. Codes stay 4 bits in memory: batch-1 decode is bound by reading the weights, and
 * PyTorch's packed int4 kernel, which widens codes to bf16 and multiplies in floats, reads them at
 * ~0.6 of the bandwidth this does.
 *
 * Row layout (tandem_int4_pack writes it; one contiguous stream per output row, K / 2 + 4 G bytes for
 * G = K / 32 groups): the codes, 16 bytes a group (byte i: code i in the low nibble, code i + 16 in
 * the high), groups ordered so that one 32-byte load holds two whose sums come out of the reduction
 * in order: in each block of 8 groups, load j (0..3) holds groups j and j + 4; the groups after the
 * last block of 8 go in pairs (g, g + 1). Then G bf16 scales, then G bf16 zeros. G must be even. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>

#define GROUP 32
#define LEVELS 32512.0f /* 127 * 256: the high byte of a rounded activation stays within [-127, 127] */
#define STACK_K 16384
#define TANDEM_INT4_MAX_ROWS 8 /* rows a call takes: decode batches this small read the weights once */
#define PARALLEL_MIN_WEIGHTS (1 << 16) /* below this, one thread: waking the other costs more */

/* Which group's 16 code bytes sit at byte offset 16 * slot of a row (the order described above). */
static int64_t group_at(int64_t slot, int64_t groups) {
    const int64_t full = groups / 8 * 8;
    if (slot >= full) return slot; /* tail pairs (g, g + 1): natural order */
    const int64_t block = slot / 8 * 8, j = slot % 8; /* load j / 2, half j % 2 */
    return block + j / 2 + (j % 2) * 4;
}

/* codes: [n, k] uint8 in 0..15; scales, zeros: [groups, n] bf16 bits; out: [n, k / 2 + 4 * groups].
 * Returns 0, or -2 when k is not a positive multiple of 64. */
int64_t tandem_int4_pack(const uint8_t *codes, const uint16_t *scales, const uint16_t *zeros, uint8_t *out,
                         int64_t n, int64_t k) {
    if (k <= 0 || k % (2 * GROUP) != 0) return -2;
    const int64_t groups = k / GROUP, stride = k / 2 + 4 * groups;
    for (int64_t r = 0; r < n; r++) {
        uint8_t *row = out + r * stride;
        for (int64_t slot = 0; slot < groups; slot++) {
            const uint8_t *c = codes + r * k + group_at(slot, groups) * GROUP;
            for (int i = 0; i < 16; i++) row[slot * 16 + i] = (uint8_t)((c[i] & 15) | (c[i + 16] & 15) << 4);
        }
        uint16_t *sz = (uint16_t *)(row + k / 2); /* k / 2 is a multiple of 32: aligned as the buffer */
        for (int64_t g = 0; g < groups; g++) {
            sz[g] = scales[g * n + r];
            sz[groups + g] = zeros[g * n + r];
        }
    }
    return 0;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include "vec_math.h"

/* whether this build has the small-batch GEMVs (this file's and int8_gemv.c's, same condition) */
int tandem_gemv_compiled(void) { return 1; }

/* acc + the four-byte dot products of unsigned u with signed s, per int32 lane */
static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else /* |pair sums| <= 2 * 15 * 127: maddubs cannot saturate */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* Sixteen int32 (two vectors) in [-128, 127] as sixteen bytes, in order */
static inline __m128i to_bytes(__m256i a, __m256i b) {
    const __m128i wa = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    const __m128i wb = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    return _mm_packs_epi16(wa, wb);
}

/* Sixteen activations, already scaled, rounded (to nearest even, as lrintf) and split: the low
 * signed bytes to lo, the high ones to hi (q = 256 hi + lo) */
static inline void split16(__m256 a, __m256 b, int8_t *lo, int8_t *hi) {
    const __m256i qa = _mm256_cvtps_epi32(a), qb = _mm256_cvtps_epi32(b);
    const __m256i c128 = _mm256_set1_epi32(128), c255 = _mm256_set1_epi32(255);
    const __m256i la = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(qa, c128), c255), c128);
    const __m256i lb = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(qb, c128), c255), c128);
    _mm_storeu_si128((__m128i *)lo, to_bytes(la, lb));
    _mm_storeu_si128((__m128i *)hi, to_bytes(_mm256_srai_epi32(_mm256_sub_epi32(qa, la), 8),
                                              _mm256_srai_epi32(_mm256_sub_epi32(qb, lb), 8)));
}

/* The activations of the groups a 32-byte code load holds (a, b), 128 bytes per load: the low bytes
 * that meet its low nibbles [a[0..15], b[0..15]], those that meet its high nibbles [a[16..31],
 * b[16..31]], then the high bytes in the same order. */
static void quantize_x(const float *x, int64_t groups, int8_t *q, float *dx, float *xsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t slot = 0; slot < groups; slot++) {
        const int64_t g = group_at(slot, groups);
        const float *xg = x + g * GROUP;
        const __m256 x0 = _mm256_loadu_ps(xg), x1 = _mm256_loadu_ps(xg + 8);
        const __m256 x2 = _mm256_loadu_ps(xg + 16), x3 = _mm256_loadu_ps(xg + 24);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, x0), _mm256_andnot_ps(sign, x1)),
                                       _mm256_max_ps(_mm256_andnot_ps(sign, x2), _mm256_andnot_ps(sign, x3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        const __m256 inv = _mm256_set1_ps(amax > 0.0f ? LEVELS / amax : 0.0f);
        dx[g] = amax / LEVELS;
        xsum[g] = hsum(_mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)));
        /* slot 2m + h of load m: its first sixteen at 128 m + 16 h, its last sixteen 32 bytes on */
        int8_t *dst = q + (slot / 2) * 128 + (slot % 2) * 16;
        split16(_mm256_mul_ps(x0, inv), _mm256_mul_ps(x1, inv), dst, dst + 64);
        split16(_mm256_mul_ps(x2, inv), _mm256_mul_ps(x3, inv), dst + 32, dst + 96);
    }
}

/* A 32-byte load of two groups' codes as their low and high nibbles */
typedef struct {
    __m256i lo, hi;
} nibbles;

static inline nibbles unpack(const uint8_t *codes) {
    const __m256i bytes = _mm256_loadu_si256((const __m256i *)codes), mask = _mm256_set1_epi8(15);
    return (nibbles){_mm256_and_si256(bytes, mask), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask)};
}

/* The int32 dot products of two groups' codes with their activations (128 bytes, see quantize_x):
 * lanes 0-3 sum to the first group's, 4-7 to the second's */
static inline __m256i dot_pair(nibbles c, const int8_t *q) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i low = dot_u8s8(zero, c.lo, _mm256_loadu_si256((const __m256i *)q));
    low = dot_u8s8(low, c.hi, _mm256_loadu_si256((const __m256i *)(q + 32)));
    __m256i high = dot_u8s8(zero, c.lo, _mm256_loadu_si256((const __m256i *)(q + 64)));
    high = dot_u8s8(high, c.hi, _mm256_loadu_si256((const __m256i *)(q + 96)));
    return _mm256_add_epi32(low, _mm256_slli_epi32(high, 8)); /* |sum| <= 32 * 15 * 32512 < 2^24 */
}

/* Output row r of every input row: m is a constant where this is inlined (see tandem_int4_gemm),
 * so the loops over rows unroll and the accumulators stay in registers */
static inline __attribute__((always_inline)) void output_row(const int64_t m, const int64_t r, const uint8_t *packed,
                                                             const int64_t k, const int8_t *q, const float *dx,
                                                             const float *xsum, float *y, const int64_t n) {
    const int64_t groups = k / GROUP, full = groups / 8 * 8, stride = k / 2 + 4 * groups;
    const uint8_t *row = packed + r * stride;
    const uint16_t *s = (const uint16_t *)(row + k / 2), *z = s + groups;
    __m256 acc[TANDEM_INT4_MAX_ROWS];
    for (int64_t i = 0; i < m; i++) acc[i] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g < full; g += 8) { /* four loads, one reduction: the sums of groups g..g+7 in order */
        const uint8_t *c = row + g * 16;
        const nibbles c0 = unpack(c), c1 = unpack(c + 32), c2 = unpack(c + 64), c3 = unpack(c + 96);
        const __m256 sv = bf16x8(s + g), zv = bf16x8(z + g);
        for (int64_t i = 0; i < m; i++) {
            const int8_t *qg = q + i * 2 * k + g * 64;
            const __m256i v0 = dot_pair(c0, qg), v1 = dot_pair(c1, qg + 128);
            const __m256i v2 = dot_pair(c2, qg + 256), v3 = dot_pair(c3, qg + 384);
            const __m256i sums = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
            const __m256 xs = _mm256_loadu_ps(xsum + i * groups + g);
            const __m256 t = _mm256_fmsub_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(dx + i * groups + g),
                                             _mm256_mul_ps(_mm256_set1_ps(8.0f), xs));
            acc[i] = _mm256_fmadd_ps(sv, t, acc[i]);
            acc[i] = _mm256_fmadd_ps(zv, xs, acc[i]);
        }
    }
    float total[TANDEM_INT4_MAX_ROWS];
    for (int64_t i = 0; i < m; i++) total[i] = hsum(acc[i]);
    for (; g < groups; g += 2) { /* tail pairs: lanes 0-3 group g, 4-7 group g + 1 */
        const nibbles c = unpack(row + g * 16);
        for (int64_t i = 0; i < m; i++) {
            __m256i v = dot_pair(c, q + i * 2 * k + g * 64);
            v = _mm256_hadd_epi32(v, v);
            v = _mm256_hadd_epi32(v, v);
            const int32_t dots[2] = {_mm256_extract_epi32(v, 0), _mm256_extract_epi32(v, 4)};
            for (int h = 0; h < 2; h++) {
                const int64_t gi = g + h, xi = i * groups + gi;
                total[i] += bf16_to_float(s[gi]) * ((float)dots[h] * dx[xi] - 8.0f * xsum[xi]) +
                            bf16_to_float(z[gi]) * xsum[xi];
            }
        }
    }
    for (int64_t i = 0; i < m; i++) y[i * n + r] = total[i];
}

/* x: [m, k] float32 (1 <= m <= TANDEM_INT4_MAX_ROWS); packed: [n, k / 2 + 4 * k / 32]
 * (tandem_int4_pack); y: [m, n] float32. Each weight load serves every row, and each row's
 * arithmetic is the same whatever m (so a sequence's result does not depend on its batch).
 * Returns 0, -1 when scratch could not be allocated, -2 where it does not apply (the caller's kernel). */
int tandem_int4_gemm(const float *x, int64_t m, const uint8_t *packed, float *y, int64_t n, int64_t k) {
    if (k <= 0 || k % (2 * GROUP) != 0 || n <= 0 || m < 1 || m > TANDEM_INT4_MAX_ROWS) return -2;
    const int64_t groups = k / GROUP;
    /* the quantized rows: on the stack up to STACK_K inputs in all (one row of any model we serve), else allocated */
    _Alignas(64) int8_t q_stack[2 * STACK_K];
    float dx_stack[2 * STACK_K / GROUP];
    const int on_heap = m * k > STACK_K;
    int8_t *q = on_heap ? aligned_alloc(64, (size_t)(2 * m * k)) : q_stack;
    float *dx = on_heap ? malloc(sizeof(float) * (size_t)(2 * m * groups)) : dx_stack;
    if (q == NULL || dx == NULL) {
        if (on_heap) free(q), free(dx);
        return -1;
    }
    float *xsum = dx + m * groups; /* row i's: dx + i * groups, xsum + i * groups, q + i * 2k */
    for (int64_t i = 0; i < m; i++) quantize_x(x + i * k, groups, q + i * 2 * k, dx + i * groups, xsum + i * groups);
    switch (m) { /* one specialised copy of the loop per row count */
#define ROWS(M)                                                                    \
    case M:                                                                        \
        _Pragma("omp parallel for schedule(static) if (n * k >= PARALLEL_MIN_WEIGHTS)") \
        for (int64_t r = 0; r < n; r++) output_row(M, r, packed, k, q, dx, xsum, y, n); \
        break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8)
#undef ROWS
    }
    if (on_heap) free(q), free(dx);
    return 0;
}
#else
int tandem_gemv_compiled(void) { return 0; }

int tandem_int4_gemm(const float *x, int64_t m, const uint8_t *packed, float *y, int64_t n, int64_t k) {
    (void)x, (void)m, (void)packed, (void)y, (void)n, (void)k;
    return -2;
}
#endif
