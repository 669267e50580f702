/* New K and V rows into their cache slots on CPU, float32.
 *
 * The PyTorch reference (kernels/reference.py) is an indexed assignment per cache, which at decode
 * batch sizes costs more in dispatch and index handling than the bytes it moves (~75 us for 48
 * tokens). Here each (token, KV head) row is one memcpy of head_dim floats. */
#include <stdint.h>
#include <string.h>

/* k, v: [tokens, heads, head_dim] with the given token and head strides (elements), rows
 * contiguous. k_cache, v_cache: [heads, capacity, head_dim] (capacity = pages * page_size), rows
 * contiguous, `cache_head_stride` elements between heads. slots: [tokens]; a negative slot is
 * padding and skipped. Returns 0, or 1 + the index of the first token whose slot is >= capacity
 * (nothing written for it or after it). */
int64_t tandem_write_kv(const float *k, const float *v, float *k_cache, float *v_cache, const int64_t *slots,
                        int64_t tokens, int64_t heads, int64_t head_dim, int64_t k_token_stride,
                        int64_t k_head_stride, int64_t v_token_stride, int64_t v_head_stride,
                        int64_t cache_head_stride, int64_t capacity) {
    const size_t row = sizeof(float) * (size_t)head_dim;
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t slot = slots[t];
        if (slot < 0) continue;
        if (slot >= capacity) return t + 1;
        for (int64_t h = 0; h < heads; h++) {
            memcpy(k_cache + h * cache_head_stride + slot * head_dim, k + t * k_token_stride + h * k_head_stride, row);
            memcpy(v_cache + h * cache_head_stride + slot * head_dim, v + t * v_token_stride + h * v_head_stride, row);
        }
    }
    return 0;
}
