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
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

/* q, out: [batch, num_heads, head_dim] contiguous. k_cache, v_cache: [num_kv_heads, pages, page_size,
 * head_dim] with the given head and page strides (elements) and contiguous tokens. block_tables:
 * [batch, table_stride] int32. context_lens: [batch] int32 (tokens of KV, the query's own included).
 * window <= 0: no sliding window, else only the last `window` tokens are attended.
 * Returns 0, or -1 if a scratch allocation failed (out is then incomplete). */
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
            const int32_t *table = block_tables + b * table_stride;
            const float *kh = k_cache + h * head_stride, *vh = v_cache + h * head_stride;
            const float *qh = q + (b * num_heads + h * group) * head_dim;
            float *oh = out + (b * num_heads + h * group) * head_dim;
            float *scores = malloc(sizeof(float) * (size_t)(group * (n > 0 ? n : 1)));
            if (scores == NULL) {
                failed = 1;
                continue;
            }
            float maxima[MAX_GROUP];
            for (int64_t g = 0; g < group; g++) maxima[g] = -INFINITY;
            for (int64_t t = first; t < len; t++) {
                const float *k = kh + (int64_t)table[t / page_size] * page_stride + (t % page_size) * head_dim;
                for (int64_t g = 0; g < group; g++) {
                    float s = dot(qh + g * head_dim, k, head_dim) * scale;
                    scores[g * n + (t - first)] = s;
                    if (s > maxima[g]) maxima[g] = s;
                }
            }
            float sums[MAX_GROUP];
            for (int64_t g = 0; g < group; g++) {
                float sum = 0.0f;
                float *row = scores + g * n;
                for (int64_t i = 0; i < n; i++) {
                    row[i] = expf(row[i] - maxima[g]);
                    sum += row[i];
                }
                sums[g] = sum;
                for (int64_t d = 0; d < head_dim; d++) oh[g * head_dim + d] = 0.0f;
            }
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
