/* Paged decode attention on CPU, reading K and V in place in their pages.
 *
 * One query token per sequence attends to its sequence's cached tokens, which sit in fixed-size
 * pages named by the sequence's block table. The PyTorch reference (kernels/reference.py) gathers
 * those pages into a padded copy first; this kernel walks the block table and reads each page
 * where it is, so a step reads the KV once and writes nothing but the output.
 *
 * Work is split over (sequence, KV head) pairs with OpenMP: the process's OpenMP runtime is the one
 * torch loaded (same soname), so the threads are torch's and follow torch.set_num_threads. Each
 * pair computes the scores of its query heads (GQA: num_heads / num_kv_heads of them share the KV
 * head) against every attended token, a softmax in float32, then the weighted sum of V.
 * float32 only; the Python side falls back to the reference for anything else.
 *
 * With AVX2 and FMA (the build is -march=native) and head_dim a multiple of 8: the scores go
 * four tokens at a time (four FMA chains share each load of q, one horizontal reduction gives
 * four scores), the exponentials are a vector polynomial (below), and the weighted sum of V keeps
 * 32 output dimensions of every query head of the group in registers across the tokens. The next
 * page of K (and the page of V the sum will read) is prefetched as a page starts: pages are
 * scattered, and the hardware prefetcher stops at each jump. Batch 50, 200-400 tokens of context:
 * 1.6-2.1 -> 0.8 ms a layer (14 -> 28 GB/s of KV read; this machine reads ~35 GB/s from DRAM);
 * at 40 tokens, where the KV stays in cache, 0.13 -> 0.06 ms. Otherwise (or without AVX2), plain
 * loops the compiler vectorizes as it can.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include "vec_math.h"

#define MAX_GROUP 32

static float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

#if defined(__AVX2__) && defined(__FMA__)
#define VECTOR_PATH 1
#endif

/* q, out: [batch, num_heads, head_dim] contiguous. k_cache, v_cache: [num_kv_heads, pages, page_size,
 * head_dim] with the given head and page strides (elements) and contiguous tokens. block_tables:
 * [batch, table_stride] int32. context_lens: [batch] int32 (tokens of KV, the query's own included).
 * window <= 0: no sliding window, else only the last `window` tokens are attended.
 * Returns 0, or -1 if a scratch allocation failed (out is then incomplete). */
/* Page `page` of V and page `page + 1` of K (if any) of one KV head into the cache: the scores
 * are about to walk into the next K page, and the weighted sum will read this V page. */
static void prefetch_pages(const float *kh, const float *vh, const int32_t *table, int64_t page, int64_t num_pages,
                           int64_t page_stride, int64_t page_bytes) {
    const char *v_page = (const char *)(vh + (int64_t)table[page] * page_stride);
    const char *k_next = page + 1 < num_pages ? (const char *)(kh + (int64_t)table[page + 1] * page_stride) : NULL;
    for (int64_t off = 0; off < page_bytes; off += 64) {
        __builtin_prefetch(v_page + off);
        if (k_next) __builtin_prefetch(k_next + off);
    }
}

int tandem_paged_decode_attention(
    const float *q, const float *k_cache, const float *v_cache, const int32_t *block_tables,
    const int32_t *context_lens, float *out, int64_t batch, int64_t num_heads, int64_t num_kv_heads,
    int64_t head_dim, int64_t page_size, int64_t head_stride, int64_t page_stride, int64_t table_stride,
    float scale, int64_t window) {
    const int64_t group = num_heads / num_kv_heads;
    int failed = 0;
    if (group > MAX_GROUP) return -1;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < num_kv_heads; h++) {
            const int64_t len = context_lens[b];
            const int64_t first = (window > 0 && len > window) ? len - window : 0;
            const int64_t n = len - first;
            const int64_t num_pages = (len + page_size - 1) / page_size;
            const int64_t page_bytes = page_size * head_dim * (int64_t)sizeof(float);
            const int32_t *table = block_tables + b * table_stride;
            const float *kh = k_cache + h * head_stride, *vh = v_cache + h * head_stride;
            const float *qh = q + (b * num_heads + h * group) * head_dim;
            float *oh = out + (b * num_heads + h * group) * head_dim;
            float *scores = malloc(sizeof(float) * (size_t)(group * (n > 0 ? n : 1)));
            if (scores == NULL) {
                failed = 1;
                continue;
            }
#ifdef VECTOR_PATH
            const int vec = head_dim % 8 == 0 && head_dim <= 256;
#else
            const int vec = 0;
            (void)vec;
#endif
            int64_t t = first, prefetched = -1; /* pages up to here have their prefetch issued */
#ifdef VECTOR_PATH
            /* four tokens at a time: four independent FMA chains share each load of q, and one
             * horizontal reduction yields the four scores */
            for (; vec && t + 4 <= len; t += 4) {
                if ((t + 3) / page_size > prefetched) {
                    prefetched = (t + 3) / page_size;
                    prefetch_pages(kh, vh, table, prefetched, num_pages, page_stride, page_bytes);
                }
                const float *k[4];
                for (int i = 0; i < 4; i++)
                    k[i] = kh + (int64_t)table[(t + i) / page_size] * page_stride + ((t + i) % page_size) * head_dim;
                for (int64_t g = 0; g < group; g++) {
                    const float *qg = qh + g * head_dim;
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    for (int64_t d = 0; d < head_dim; d += 8) {
                        const __m256 qv = _mm256_loadu_ps(qg + d);
                        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[0] + d), a0);
                        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[1] + d), a1);
                        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[2] + d), a2);
                        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[3] + d), a3);
                    }
                    const __m256 sums4 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(sums4), _mm256_extractf128_ps(sums4, 1));
                    _mm_storeu_ps(scores + g * n + (t - first), _mm_mul_ps(s4, _mm_set1_ps(scale)));
                }
            }
#endif
            for (; t < len; t++) {
                if (t / page_size > prefetched) {
                    prefetched = t / page_size;
                    prefetch_pages(kh, vh, table, prefetched, num_pages, page_stride, page_bytes);
                }
                const float *k = kh + (int64_t)table[t / page_size] * page_stride + (t % page_size) * head_dim;
                for (int64_t g = 0; g < group; g++) scores[g * n + (t - first)] = dot(qh + g * head_dim, k, head_dim) * scale;
            }
            float maxima[MAX_GROUP];
            for (int64_t g = 0; g < group; g++) {
                float m = -INFINITY;
                for (int64_t i = 0; i < n; i++)
                    if (scores[g * n + i] > m) m = scores[g * n + i];
                maxima[g] = m;
            }
            float sums[MAX_GROUP];
            for (int64_t g = 0; g < group; g++) {
                float *row = scores + g * n;
                int64_t i = 0;
                float sum = 0.0f;
#ifdef VECTOR_PATH
                const __m256 m = _mm256_set1_ps(maxima[g]);
                __m256 vsum = _mm256_setzero_ps();
                for (; i + 8 <= n; i += 8) {
                    __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(row + i), m));
                    _mm256_storeu_ps(row + i, e);
                    vsum = _mm256_add_ps(vsum, e);
                }
                sum = hsum(vsum);
#endif
                for (; i < n; i++) {
                    row[i] = expf(row[i] - maxima[g]);
                    sum += row[i];
                }
                sums[g] = sum;
            }
#ifdef VECTOR_PATH
            if (vec && group <= 4) {
                /* 32 output dims of every query head at a time, accumulated in registers */
                for (int64_t d0 = 0; d0 < head_dim; d0 += 32) {
                    const int64_t w = head_dim - d0 < 32 ? head_dim - d0 : 32; /* 8, 16, 24 or 32 */
                    __m256 acc[4][4];
                    for (int g = 0; g < 4; g++)
                        for (int j = 0; j < 4; j++) acc[g][j] = _mm256_setzero_ps();
                    for (int64_t t = first; t < len; t++) {
                        const float *v =
                            vh + (int64_t)table[t / page_size] * page_stride + (t % page_size) * head_dim + d0;
                        __m256 vv[4];
                        for (int j = 0; j < 4; j++) vv[j] = j * 8 < w ? _mm256_loadu_ps(v + j * 8) : _mm256_setzero_ps();
                        for (int g = 0; g < group; g++) {
                            __m256 p = _mm256_set1_ps(scores[g * n + (t - first)]);
                            for (int j = 0; j < 4; j++) acc[g][j] = _mm256_fmadd_ps(p, vv[j], acc[g][j]);
                        }
                    }
                    for (int g = 0; g < group; g++) {
                        __m256 inv = _mm256_set1_ps(1.0f / sums[g]);
                        for (int j = 0; j * 8 < w; j++)
                            _mm256_storeu_ps(oh + g * head_dim + d0 + j * 8, _mm256_mul_ps(acc[g][j], inv));
                    }
                }
                free(scores);
                continue;
            }
#endif
            for (int64_t g = 0; g < group; g++)
                for (int64_t d = 0; d < head_dim; d++) oh[g * head_dim + d] = 0.0f;
            for (int64_t t = first; t < len; t++) {
                const float *v = vh + (int64_t)table[t / page_size] * page_stride + (t % page_size) * head_dim;
                for (int64_t g = 0; g < group; g++) axpy(oh + g * head_dim, scores[g * n + (t - first)], v, head_dim);
            }
            for (int64_t g = 0; g < group; g++) {
                const float inv = 1.0f / sums[g];
                for (int64_t d = 0; d < head_dim; d++) oh[g * head_dim + d] *= inv;
            }
            free(scores);
        }
    }
    return failed ? -1 : 0;
}
