/* The decode step's matrix-vector products (fused_decode.c) over weights laid out by
 * fused_layout.py: column panels ([K][NB], read down) and row blocks ([C/NB][rows][NB]). */
#ifndef GPTEVAL_FUSED_GEMV_H
#define GPTEVAL_FUSED_GEMV_H
#include <stdint.h>
#include <string.h>

#include "fused_math.h"
#include "fused_weights.h" /* wt, WLOAD: the weight copy's element type */

/* Several sequences (a batch) through the same weights: R rows of x (R <= 4, ldx floats
 * apart) against one panel, the panel's lines loaded once for all of them.  Each row gets
 * the same four accumulators (of NV vectors each) in the same order, so a sequence's
 * logits are the same bits at any batch size.  R is a constant after inlining
 * (ROWS_DISPATCH), so a[][][] stays in registers (16 zmm at R = 4 with AVX-512; with AVX2
 * the 8 ymm of R = 1 do, larger batches spill some).  Two copies: panel_dots over weights
 * (wt, WLOAD) and panel_dots_f over float panels (the attention's keys, whatever the
 * weights are). */
#define DEFINE_PANEL_DOTS(NAME, T, LD, PF)                                                  \
    static inline __attribute__((always_inline)) void NAME(const float *x, int64_t ldx,     \
                                                           int R, const T *w, int64_t K,    \
                                                           vf a[4][4][NV]) {                \
        for (int r = 0; r < R; r++)                                                         \
            for (int j = 0; j < 4; j++)                                                     \
                for (int h = 0; h < NV; h++) a[r][j][h] = (vf){0};                          \
        int64_t i = 0;                                                                      \
        for (; i + 4 <= K; i += 4) {                                                        \
            PF(w + i * NB);                                                                 \
            for (int h = 0; h < NV; h++) {                                                  \
                const T *wh = w + i * NB + h * VW;                                          \
                vf w0 = LD(wh), w1 = LD(wh + NB);                                           \
                vf w2 = LD(wh + 2 * NB), w3 = LD(wh + 3 * NB);                              \
                for (int r = 0; r < R; r++) {                                               \
                    const float *xr = x + r * ldx;                                          \
                    a[r][0][h] += xr[i] * w0;                                               \
                    a[r][1][h] += xr[i + 1] * w1;                                           \
                    a[r][2][h] += xr[i + 2] * w2;                                           \
                    a[r][3][h] += xr[i + 3] * w3;                                           \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (; i < K; i++)                                                                  \
            for (int h = 0; h < NV; h++)                                                    \
                for (int r = 0; r < R; r++)                                                 \
                    a[r][0][h] += x[r * ldx + i] * LD(w + i * NB + h * VW);                 \
    }
#define NO_PREFETCH(p) ((void)0)
DEFINE_PANEL_DOTS(panel_dots, wt, WLOAD, WPREFETCH)
DEFINE_PANEL_DOTS(panel_dots_f, float, LOAD, NO_PREFETCH)

/* out[0..NB) = x[0..K) @ a float panel (K rows of NB): the attention's 16 scores */
static inline void panel_f(const float *x, const float *w, int64_t K, float *out) {
    vf a[4][4][NV];
    panel_dots_f(x, 0, 1, w, K, a);
    for (int h = 0; h < NV; h++) {
        vf s = (a[0][0][h] + a[0][1][h]) + (a[0][2][h] + a[0][3][h]);
        STORE(out + h * VW, s);
    }
}

/* out + r * ldo = (x + r * ldx) @ panel (K rows of NB floats), for R rows */
static inline __attribute__((always_inline)) void panel_R(const float *x, int64_t ldx, int R,
                                                          const wt *w, int64_t K, float *out,
                                                          int64_t ldo) {
    vf a[4][4][NV];
    panel_dots(x, ldx, R, w, K, a);
    for (int r = 0; r < R; r++)
        for (int h = 0; h < NV; h++) {
            vf s = (a[r][0][h] + a[r][1][h]) + (a[r][2][h] + a[r][3][h]);
            STORE(out + r * ldo + h * VW, s);
        }
}

/* part + r * ldp = (h + r * ldh) @ a row block, for R rows: `rows` rows of a row-wise
 * matrix, stored as C/NB panels of [rows][NB cols] so the block is read front to back.
 * (Rows of 3 KB added into the partial one at a time streamed at 6 GB/s, a load and a
 * store of the partial per weight read; blocks of 16 rows at 20-22 GB/s; of 64 rows, as
 * fast as a panel: 24-25 GB/s on one Zen 4 core.) */
static inline __attribute__((always_inline)) void rows_block_R(const float *h, int64_t ldh, int R,
                                                               const wt *blk, int64_t rows,
                                                               int64_t C, float *part,
                                                               int64_t ldp) {
    for (int64_t cp = 0; cp < C / NB; cp++) {
        vf a[4][4][NV];
        panel_dots(h, ldh, R, blk + cp * rows * NB, rows, a);
        for (int r = 0; r < R; r++)
            for (int v = 0; v < NV; v++) {
                vf s = a[r][0][v] + ((a[r][1][v] + a[r][2][v]) + a[r][3][v]);
                STORE(part + r * ldp + cp * NB + v * VW, s);
            }
    }
}

/* n rows in groups of four (then the 1-3 left), each group with a constant R */
#define ROWS_DISPATCH(n, CALL)                                                             \
    for (int64_t r0 = 0; r0 < (n); r0 += 4) {                                              \
        switch ((n) - r0 < 4 ? (int)((n) - r0) : 4) {                                       \
        case 4: CALL(4); break;                                                             \
        case 3: CALL(3); break;                                                             \
        case 2: CALL(2); break;                                                             \
        default: CALL(1); break;                                                            \
        }                                                                                   \
    }

/* The decode step's two GEMVs over a batch (marked unused: fused_prefill.c includes this
 * header for panel_f alone). */
/* out + b * ldo = (x + b * ldx) @ panel for b < n */
static __attribute__((unused)) void gemv_panel_rows(const float *x, int64_t ldx, int64_t n,
                                                   const wt *w, int64_t K, float *out,
                                                   int64_t ldo) {
#define PANEL_CALL(R) panel_R(x + r0 * ldx, ldx, R, w, K, out + r0 * ldo, ldo)
    ROWS_DISPATCH(n, PANEL_CALL)
#undef PANEL_CALL
}

/* part + b * ldp = (h + b * ldh) @ a row block for b < n */
static __attribute__((unused)) void gemv_rows_block_rows(const float *h, int64_t ldh,
                                                        int64_t n, const wt *blk,
                                                        int64_t rows, int64_t C, float *part,
                                                        int64_t ldp) {
#define ROWS_CALL(R) rows_block_R(h + r0 * ldh, ldh, R, blk, rows, C, part + r0 * ldp, ldp)
    ROWS_DISPATCH(n, ROWS_CALL)
#undef ROWS_CALL
}
#endif
