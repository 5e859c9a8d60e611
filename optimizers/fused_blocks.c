/* A fused-decode prefill's transformer blocks in one call (fused_prefill.py: ArenaPrefill).
 *
 * Why: run from Python, module by module, a gpt2 prefill of 128 positions spent ~8 ms of
 * its ~150 outside the kernels (measured with the kernels swapped for no-ops: 13.8 ms
 * left, 5.4 of them the lm_head): the layer norms and residual adds as torch ops, the KV
 * cache writes, and the Python around five kernel calls a layer, while the second thread
 * spun idle (perf: 12 % of its samples in libgomp's wait).  Here a layer is the same
 * kernels (fused_prefill.c's two GEMMs and its attention) with the glue in C between them:
 * each residual add fused with the next layer norm (one pass over the rows), the keys and
 * values written to the model's cache by the attention, which reads the values back from
 * there.  The math is the module path's except the layer norms (the decode step's,
 * fused_norm.h, in place of torch's: the logits move by rounding, ~1e-6).
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "fused_norm.h"    /* layer_norm: the decode step's own */
#include "fused_weights.h" /* wt */

/* fused_prefill.c's entry points */
int gpteval_gemm_panels(const float *x, int64_t T, int64_t K, const wt *const *w,
                        const int64_t *col, int64_t n_panels, const float *scale,
                        const float *bias, float *out, int64_t ldo, int gelu, int nthreads);
int gpteval_gemm_row_blocks(const float *x, int64_t T, const wt *const *items,
                            int64_t n_items, int64_t rows, int64_t C, const float *scale,
                            const float *bias, float *out, int nthreads);
int gpteval_prefill_attention(const float *qkv, int64_t B, int64_t T, int64_t nh, int64_t hs,
                              int last_only, float *y, float *k_cache, float *v_cache,
                              int64_t max_len, int nthreads);

/* One projection as an ArenaProjection holds it: column panels (cols: each panel's first
 * output column) or row blocks (cols NULL; `rows` rows an item). */
typedef struct {
    const wt *const *w;
    const int64_t *cols;
    int64_t n, rows, in, out;
    const float *scale, *bias; /* scale: int8 weights only, else NULL */
    int64_t gelu;
} Proj;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    Proj qkv, o, fc, fc2;
    float *k_cache, *v_cache; /* the model's cache, (B, n_head, max_len, hs) each */
    int64_t n_head;
} PrefillLayer;

static int project(const Proj *p, const float *x, int64_t rows, float *out, int nthreads) {
    if (p->cols)
        return gpteval_gemm_panels(x, rows, p->in, p->w, p->cols, p->n, p->scale, p->bias,
                                   out, p->out, (int)p->gelu, nthreads);
    return gpteval_gemm_row_blocks(x, rows, p->w, p->n, p->rows, p->out, p->scale, p->bias,
                                   out, nthreads);
}

/* For rows r < n: x[r] += a[r] (a NULL: nothing to add), then xn[r] = layer norm of x[r]
 * (w NULL: none).  The add is torch's `x + a` to the bit. */
static void add_norm(float *x, const float *a, int64_t n, int64_t C, const float *w,
                     const float *b, float eps, float *xn, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float *xr = x + r * C;
        for (int64_t c = 0; a && c < C; c++) xr[c] += a[r * C + c];
        if (w) layer_norm(xr, w, b, C, eps, xn + r * C);
    }
}

/* The widest layer's attention width (w) and MLP width (h): pruning may leave layers of
 * different widths, and the work buffer holds any of them */
static void widest(const PrefillLayer *layers, int64_t n_layer, int64_t *w, int64_t *h) {
    *w = *h = 0;
    for (int64_t l = 0; l < n_layer; l++) {
        if (layers[l].o.in > *w) *w = layers[l].o.in;
        if (layers[l].fc.out > *h) *h = layers[l].fc.out;
    }
}

/* floats of gpteval_prefill_blocks' work buffer for `rows` = B * T rows */
int64_t gpteval_prefill_work_floats(const PrefillLayer *layers, int64_t n_layer, int64_t rows,
                                    int64_t C) {
    int64_t w, h;
    widest(layers, n_layer, &w, &h);
    return rows * (2 * C + 4 * w + h); /* xn, qkv, y, the MLP's hidden, a block's output */
}

/* The blocks of a prefill from position 0: x (B * T, C), each sequence's embedded prompt,
 * through every layer, its keys and values into each layer's cache.  The last layer
 * needs every position's key and value but only the last position's output (that is
 * all a prefill returns): its attention output, c_proj and MLP run on one row a sequence,
 * and x[0..B) holds each sequence's last hidden state on return (before ln_f).
 * work: gpteval_prefill_work_floats() floats.  Returns 0, -1 on a bad argument, -2 out
 * of memory (a GEMM's packed input, the attention's keys). */
int gpteval_prefill_blocks(const PrefillLayer *layers, int64_t n_layer, int64_t B, int64_t T,
                           int64_t C, int64_t max_len, float eps, float *x, float *work,
                           int nthreads) {
    if (n_layer < 1 || B < 1 || T < 1 || T > max_len || C < 1 || nthreads < 1) return -1;
    int64_t rows = B * T, w, h;
    widest(layers, n_layer, &w, &h);
    float *xn = work, *qkv = xn + rows * C, *y = qkv + rows * 3 * w, *hid = y + rows * w;
    float *a = hid + rows * h;
    add_norm(x, NULL, rows, C, layers[0].ln1_w, layers[0].ln1_b, eps, xn, nthreads);
    for (int64_t l = 0; l < n_layer; l++) {
        const PrefillLayer *L = &layers[l];
        const int last = l == n_layer - 1;
        const int64_t hs = L->o.in / L->n_head;
        int rc = project(&L->qkv, xn, rows, qkv, nthreads);
        if (!rc)
            rc = gpteval_prefill_attention(qkv, B, T, L->n_head, hs, last, y, L->k_cache,
                                           L->v_cache, max_len, nthreads);
        if (rc) return rc;
        if (last) { /* from here on, one row a sequence: its last position's */
            rows = B;
            for (int64_t b = 0; b < B; b++) /* row b's source lies at or past row b */
                memmove(x + b * C, x + (b * T + T - 1) * C, C * sizeof(float));
        }
        if ((rc = project(&L->o, y, rows, a, nthreads))) return rc;
        add_norm(x, a, rows, C, L->ln2_w, L->ln2_b, eps, xn, nthreads);
        if ((rc = project(&L->fc, xn, rows, hid, nthreads))
            || (rc = project(&L->fc2, hid, rows, a, nthreads)))
            return rc;
        add_norm(x, a, rows, C, last ? NULL : L[1].ln1_w, last ? NULL : L[1].ln1_b, eps, xn,
                 nthreads);
    }
    return 0;
}
