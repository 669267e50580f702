/* A decode step (one token of each of a few sequences) through every decoder layer of a
 * Llama-family model with quantized linears, in one call.
 *
 * A batch-1 decode step of SmolLM2-135M int4 runs ~3 ms of arithmetic, but through
 * engine/models/llama.py it made ~15 Python-level calls a layer (module calls, views, checks,
 * allocations, ctypes), ~150 us a layer, 30 layers: more than the arithmetic. This walks the same
 * kernels in the same order on the same bytes (the PyTorch path's own compiled kernels, each
 * declared here as the file that defines it exports it), so its result equals that path's bit for
 * bit; the engine takes it for a decode-only step of as many tokens as every linear's kernel takes
 * at once (up to 8). */
#include <stdint.h>

/* the kernels, from the other files of this library */
int tandem_int4_gemm(const float *x, int64_t m, const uint8_t *packed, float *y, int64_t n, int64_t k);
int tandem_int8_gemm(const float *x, int64_t m, const int8_t *codes, const uint16_t *scales, float *y, int64_t n,
                     int64_t groups, int64_t group);
void tandem_rms_norm(const float *x, const float *residual, float *residual_out, float *out,
                     const float *weight, int64_t rows, int64_t dim, float eps);
void tandem_silu_and_mul(const float *x, float *out, int64_t rows, int64_t inter);
void tandem_rope(const float *q, const float *k, float *q_out, float *k_out, const int64_t *positions,
                 const float *cos, const float *sin, int64_t tokens, int64_t q_heads, int64_t k_heads,
                 int64_t dim, int64_t q_tok_stride, int64_t q_head_stride, int64_t k_tok_stride,
                 int64_t k_head_stride);
int64_t tandem_write_kv(const float *k, const float *v, float *k_cache, float *v_cache, const int64_t *slots,
                        int64_t tokens, int64_t heads, int64_t head_dim, int64_t k_token_stride,
                        int64_t k_head_stride, int64_t v_token_stride, int64_t v_head_stride,
                        int64_t cache_head_stride, int64_t capacity);
int tandem_paged_decode_attention(const float *q, const float *k_cache, const float *v_cache,
                                  const int32_t *block_tables, const int32_t *context_lens, float *out,
                                  int64_t batch, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                  int64_t page_size, int64_t head_stride, int64_t page_stride,
                                  int64_t table_stride, float scale, int64_t window);

/* Every field is 8 bytes wide, so the layout is the same whatever the compiler (kernels/cpu_ext.py
 * mirrors these with ctypes). */
enum { LINEAR_INT4 = 0, LINEAR_INT8 = 1 };

typedef struct {
    int64_t kind;           /* LINEAR_INT4: rows packed by tandem_int4_pack; LINEAR_INT8: [groups, n, group] */
    int64_t n, k;           /* out and in features */
    int64_t groups, group;  /* LINEAR_INT8's scale groups */
    const void *weight;     /* the packed rows, or the int8 codes */
    const uint16_t *scales; /* LINEAR_INT8: bf16 [groups, n] */
    const float *bias;      /* [n], or NULL */
} tandem_linear;

typedef struct {
    tandem_linear qkv, o, gate_up, down;
    const float *input_norm, *post_norm; /* [hidden] */
    float *k_cache, *v_cache;            /* this layer's [kv_heads, pages, page_size, head_dim] */
} tandem_layer;

typedef struct {
    int64_t num_layers, hidden, heads, kv_heads, head_dim, inter;
    int64_t page_size, cache_head_stride, capacity, window; /* window: 0 for none */
    double eps, scale;
    const float *cos, *sin, *final_norm; /* rope tables [max_positions, head_dim]; [hidden] */
    const tandem_layer *layers;
} tandem_model;

/* floats of scratch tandem_decode needs for `rows` tokens */
int64_t tandem_decode_scratch(const tandem_model *m, int64_t rows) {
    const int64_t q = m->heads * m->head_dim, kv = m->kv_heads * m->head_dim;
    return rows * (3 * m->hidden + (q + 2 * kv) + 2 * q + kv + 3 * m->inter);
}

/* y [rows, n] = x [rows, k] W^T (+ bias), rows <= 8 */
static int linear(const tandem_linear *l, const float *x, float *y, int64_t rows) {
    int status;
    if (l->kind == LINEAR_INT4)
        status = tandem_int4_gemm(x, rows, (const uint8_t *)l->weight, y, l->n, l->k);
    else
        status = tandem_int8_gemm(x, rows, (const int8_t *)l->weight, l->scales, y, l->n, l->groups, l->group);
    if (status == 0 && l->bias != 0)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < l->n; i++) y[r * l->n + i] += l->bias[i];
    return status;
}

/* embedding: [rows, hidden], the tokens'; out: [rows, hidden], the final norm's output (what the LM
 * head reads); positions, slots: [rows], the tokens' (slot: where its K and V go); tables: [rows,
 * table_stride] block tables, context_lens: [rows], counting the token. Returns 0; 1 + t when
 * token t's slot is past the cache (the tokens before it wrote their K and V, as the layer path's
 * write does); -1 when a kernel could not allocate its scratch; -2 when a kernel does not apply
 * (a shape or row count the plan should have refused). */
int64_t tandem_decode(const tandem_model *m, const float *embedding, float *out, float *scratch, int64_t rows,
                      const int64_t *positions, const int64_t *slots, const int32_t *tables, int64_t table_stride,
                      const int32_t *context_lens) {
    const int64_t hd = m->head_dim, q_size = m->heads * hd, kv_size = m->kv_heads * hd, h = m->hidden;
    const int64_t width = q_size + 2 * kv_size;
    float *hidden = scratch, *residual = hidden + rows * h, *normed = residual + rows * h;
    float *qkv = normed + rows * h, *q_rot = qkv + rows * width, *k_rot = q_rot + rows * q_size;
    float *attn = k_rot + rows * kv_size, *gate_up = attn + rows * q_size, *act = gate_up + rows * 2 * m->inter;
    const float eps = (float)m->eps;
    const float *x = embedding; /* the hidden states entering a layer */
    if (m->num_layers <= 0 || rows <= 0) return -2;
    for (int64_t i = 0; i < m->num_layers; i++) {
        const tandem_layer *layer = &m->layers[i];
        int status;
        int64_t bad;
        /* the first layer's residual is the embedding itself (no add) */
        tandem_rms_norm(x, i == 0 ? 0 : residual, residual, normed, layer->input_norm, rows, h, eps);
        if (i == 0)
            for (int64_t j = 0; j < rows * h; j++) residual[j] = x[j];
        if ((status = linear(&layer->qkv, normed, qkv, rows)) != 0) return status;
        tandem_rope(qkv, qkv + q_size, q_rot, k_rot, positions, m->cos, m->sin, rows, m->heads, m->kv_heads, hd,
                    width, hd, width, hd);
        bad = tandem_write_kv(k_rot, qkv + q_size + kv_size, layer->k_cache, layer->v_cache, slots, rows,
                              m->kv_heads, hd, kv_size, hd, width, hd, m->cache_head_stride, m->capacity);
        if (bad != 0) return bad;
        if (tandem_paged_decode_attention(q_rot, layer->k_cache, layer->v_cache, tables, context_lens, attn, rows,
                                          m->heads, m->kv_heads, hd, m->page_size, m->cache_head_stride,
                                          m->page_size * hd, table_stride, (float)m->scale, m->window) != 0)
            return -1;
        if ((status = linear(&layer->o, attn, hidden, rows)) != 0) return status;
        tandem_rms_norm(hidden, residual, residual, normed, layer->post_norm, rows, h, eps);
        if ((status = linear(&layer->gate_up, normed, gate_up, rows)) != 0) return status;
        tandem_silu_and_mul(gate_up, act, rows, m->inter);
        if ((status = linear(&layer->down, act, hidden, rows)) != 0) return status;
        x = hidden;
    }
    tandem_rms_norm(x, residual, residual, out, m->final_norm, rows, h, eps);
    return 0;
}
