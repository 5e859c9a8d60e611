/* The prefill's projections on fused-decode's own weight copy (optimizers/fused_prefill.py).
 *
 * Why: the decode kernel reads the weights laid out for it (column panels, row blocks; see
 * fused_decode.c).  A prefill that ran on another copy (oneDNN's packed layout) made the
 * variant hold every block weight twice.  These two GEMMs read the kernel's copy instead,
 * at oneDNN's speed: at 128 rows, GPT-2 small's four block projections took 8.0-8.6 ms a
 * layer here and 8.0-8.4 ms through oneDNN's packed inner product (2 threads, Zen 4).
 *
 * One microkernel: an R x NB tile of the output (R rows of NB columns, R accumulators in
 * registers), each step of k one 64-byte weight row times R broadcast inputs.  A panel
 * (K rows of NB, 48 KB at K = 768) stays in L1/L2 while every row block of the input
 * passes over it, so each weight byte comes from memory once a call.
 * Sums are float32 in k order (segment by segment for the row blocks); another order than
 * oneDNN's, so the prefill's logits move by rounding only (~1e-6 on GPT-2).
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "fused_math.h" /* NB, v16, LOAD, vgelu_tanh: the decode step's own gelu */

#define R 8 /* rows a tile: 8 measured best of 4-14 (12 and 14 spilled, 4 and 6 on par) */

/* out[r][0..NB) = act(bias + sum over segments s of x[r][s*klen .. +klen) @ w[s] + woff
 * (klen rows of NB)), for rows r < nr <= R; ldx, ldo: row strides of x and out; act:
 * GPT-2's gelu where `gelu` (c_fc: applied in registers, no pass of its own over the
 * activation), else none. */
static inline void tile(const float *x, int64_t ldx, int nr, const float *const *w,
                        int64_t woff, int64_t klen, int64_t nseg, const float *bias,
                        float *out, int64_t ldo, int gelu) {
    v16 acc[R], b = {0};
    if (bias) memcpy(&b, bias, sizeof b);
    for (int r = 0; r < R; r++) acc[r] = b;
    for (int64_t s = 0; s < nseg; s++) {
        const float *ws = w[s] + woff, *xs = x + s * klen;
        if (nr == R) { /* the constant trip count lets the compiler keep acc in registers */
            for (int64_t k = 0; k < klen; k++) {
                v16 wk = LOAD(ws + k * NB);
                for (int r = 0; r < R; r++) acc[r] += xs[r * ldx + k] * wk;
            }
        } else {
            for (int64_t k = 0; k < klen; k++) {
                v16 wk = LOAD(ws + k * NB);
                for (int r = 0; r < nr; r++) acc[r] += xs[r * ldx + k] * wk;
            }
        }
    }
    if (gelu)
        for (int r = 0; r < nr; r++) acc[r] = vgelu_tanh(acc[r]);
    for (int r = 0; r < nr; r++) memcpy(out + r * ldo, &acc[r], sizeof(v16));
}

/* Prefetch into L2 the part `part` of `parts` of n floats at p: the next tile's weights,
 * spread over the current one's row blocks (a panel's first tile would otherwise wait on
 * memory: the hardware prefetcher runs only a few lines ahead of so slow a stream). */
static inline void prefetch_part(const float *p, int64_t n, int64_t part, int64_t parts) {
    int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
    for (int64_t i = lo - lo % NB; i < hi; i += NB) __builtin_prefetch(p + i, 0, 2);
}

/* Column panels: for each panel p (K rows of NB at w[p]),
 *   out[t][col[p] .. +NB) = act(bias[col[p] .. +NB) + x[t] @ panel p),   t < T,
 * x (T, K) contiguous, out (T, ldo); act: gelu where `gelu`, else none.  col maps the
 * copy's panel order (a head's q, k, v together) back to the model's column order.
 * Returns 0, -1 on a bad argument. */
int gpteval_gemm_panels(const float *x, int64_t T, int64_t K, const float *const *w,
                        const int64_t *col, int64_t n_panels, const float *bias, float *out,
                        int64_t ldo, int gelu, int nthreads) {
    if (T < 0 || K < 1 || n_panels < 0 || nthreads < 1) return -1;
    const int64_t row_blocks = (T + R - 1) / R;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t p = 0; p < n_panels; p++)
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            int nr = (int)(T - rb * R < R ? T - rb * R : R);
            if (p + 1 < n_panels) prefetch_part(w[p + 1], K * NB, rb, row_blocks);
            tile(x + rb * R * K, K, nr, &w[p], 0, K, 1, bias ? bias + col[p] : 0,
                 out + rb * R * ldo + col[p], ldo, gelu);
        }
    return 0;
}

/* Row blocks: item i's `rows` rows of a (n_items * rows, C) matrix, stored at items[i] as
 * C/NB panels of rows x NB;
 *   out[t][0..C) = bias + sum_i x[t][i*rows .. +rows) @ block i,   t < T,
 * x (T, n_items * rows) and out (T, C) contiguous.  Returns 0, -1 on a bad argument. */
int gpteval_gemm_row_blocks(const float *x, int64_t T, const float *const *items,
                            int64_t n_items, int64_t rows, int64_t C, const float *bias,
                            float *out, int nthreads) {
    if (T < 0 || rows < 1 || n_items < 0 || C % NB || nthreads < 1) return -1;
    const int64_t row_blocks = (T + R - 1) / R, ldx = n_items * rows;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t cp = 0; cp < C / NB; cp++)
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            int nr = (int)(T - rb * R < R ? T - rb * R : R);
            if (cp + 1 < C / NB) /* the next output panel's rows of every item */
                for (int64_t i = n_items * rb / row_blocks; i < n_items * (rb + 1) / row_blocks; i++)
                    prefetch_part(items[i] + (cp + 1) * rows * NB, rows * NB, 0, 1);
            tile(x + rb * R * ldx, ldx, nr, items, cp * rows * NB, rows, n_items,
                 bias ? bias + cp * NB : 0, out + rb * R * C + cp * NB, C, 0);
        }
    return 0;
}
