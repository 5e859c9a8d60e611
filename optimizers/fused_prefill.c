/* The prefill's projections on fused-decode's own weight copy (optimizers/fused_prefill.py).
 *
 * Why: the decode kernel reads the weights laid out for it (column panels, row blocks; see
 * fused_decode.c).  A prefill that ran on another copy (oneDNN's packed layout) made the
 * variant hold every block weight twice.  These two GEMMs read the kernel's copy instead,
 * at oneDNN's speed: at 128 rows, GPT-2 small's four block projections took 8.0-8.6 ms a
 * layer here and 8.0-8.4 ms through oneDNN's packed inner product (2 threads, Zen 4).
 *
 * One microkernel: an R x (NP*NB) tile of the output (R rows of NP panels' NB columns,
 * R*NP accumulators in registers), each step of k NP 64-byte weight rows times R broadcast
 * inputs, so one broadcast feeds NP FMAs.  The input is first packed (pack_block) so that
 * a tile's R inputs of one k sit side by side.  A panel (K rows of NB, 48 KB at K = 768) stays
 * in L1/L2 while every row block of the input passes over it, so each weight byte comes
 * from memory once a call.  R = 8, NP = 3 on a Zen 5 (two full-width 512-bit FMA pipes):
 * the prefill took 0.88x the time of one panel a tile (NP = 2: 0.90; NP = 4 with R = 6:
 * 0.89; R = 6, 10, 12, 14 with NP = 2: 0.93-0.97), the same bits.  On Zen 4 one panel of
 * R = 8 had matched oneDNN (its 512-bit FMA is two 256-bit halves: fewer accumulators do).
 * Sums are float32 in k order (segment by segment for the row blocks); another order than
 * oneDNN's, so the prefill's logits move by rounding only (~1e-6 on GPT-2).
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "fused_attend.h"  /* key_scores, softmax, weighted_rows: the decode step's own */
#include "fused_math.h"    /* NB, VW, NV, vf, LOAD, vgelu_tanh: the decode step's own gelu */
#include "fused_steal.h"   /* Span, items_begin, next_item: the decode step's work stealing */
#include "fused_weights.h" /* wt, WLOAD: the weight copy's element type */

#ifndef GPTEVAL_TILE_R /* -D overrides: for measuring other tiles */
#if VW == 16
#define GPTEVAL_TILE_R 8  /* rows a tile */
#define GPTEVAL_TILE_NP 3 /* output panels a tile (a panel count that is not a multiple: the
                             rest one by one) */
#elif VW == 8 /* AVX2: 16 registers of 8 floats, a panel row is two: R * NP * 2 accumulators.
       * Zen 3, gpt2 prefill of 128, 12 rounds, time over eager's oneDNN one: R = 6 0.98-1.03,
       * 5 1.04, 7 0.97 (int8 1.3x slower), 4 1.29; NP = 2 with R = 3 1.23; 8 x 3 1.85.
       * Again once the rows left over had code of their own (ROWS_LEFT; 128 = 21 x 6 + 2),
       * the four GEMMs' time over R = 6's: R = 5 1.04, 7 1.17, 8 1.18 */
#define GPTEVAL_TILE_R 6
#define GPTEVAL_TILE_NP 1
#else /* 4-float vectors (SSE: 16 registers): 4 a panel row, 3 rows keep 12 accumulators */
#define GPTEVAL_TILE_R 3
#define GPTEVAL_TILE_NP 1
#endif
#endif
#define R GPTEVAL_TILE_R
#define NP GPTEVAL_TILE_NP
#define PF_STEPS 16 /* k steps a row block's tile prefetches ahead: 16 lines of float32 */

/* Where one output panel's weights (segments w, each at + woff), bias and output columns
 * are: the only thing the two GEMMs below do differently. */
typedef struct {
    const wt *const *w; /* the panel's weight segments */
    int64_t woff;
    const float *scale; /* int8 weights: the panel's columns' scales (else NULL) */
    const float *bias;
    float *out;
} PanelAt;

/* at[j].out[r][0..NB) = act(at[j].bias + sum over segments s of x[r][s*klen .. +klen) @
 * (klen rows of NB at at[j].w[s] + at[j].woff)), for panels j < NPT and rows r < nr <= R;
 * x: the row block's packed input (pack_block: x[r][k] at x[k * R + r]); ldo: out's row
 * stride; act: GPT-2's gelu where `gelu` (c_fc: applied in registers, no pass of its own
 * over the activation), else none.  NPT is NP, or 1 for
 * the panels left over: a macro, so that each copy has constant trip counts and keeps
 * its accumulators in registers. */
#define STEPS(NPT, ROWS, K0, K1, PREFETCH, PF, PFOFF)                                      \
    for (int64_t k = (K0); k < (K1); k++) {                                                \
        vf wk[NPT][NV];                                                                    \
        for (int j = 0; j < NPT; j++)                                                      \
            for (int h = 0; h < NV; h++) wk[j][h] = WLOAD(ws[j] + k * NB + h * VW);        \
        for (int j = 0; j < NPT && (PREFETCH); j++)                                        \
            __builtin_prefetch(PF[j] + (k + (PFOFF)) * NB, 0, 3);                          \
        for (int r = 0; r < (ROWS); r++) {                                                 \
            float xr = xs[k * R + r];                                                      \
            for (int j = 0; j < NPT; j++)                                                  \
                for (int h = 0; h < NV; h++) acc[j][r][h] += xr * wk[j][h];                \
        }                                                                                  \
    }
/* A segment's k steps.  PREFETCH (the row blocks' tiles): each step also prefetches into
 * L1 the weights PF_STEPS steps ahead, in the segment, then (its last PF_STEPS steps) the
 * next segment's first.  Why only there: a row block's segment is `rows` k steps (64 on
 * gpt2) and the next one lies elsewhere (another item's block), so the hardware
 * prefetcher starts over every 64 steps; a column panel is one run of K.  Zen 3, one core,
 * a 6-row tile over K = 3072 in segments of 64 (data in L2): 90 GF/s against 96 in one run
 * of K, 94-95 with this prefetch.  gpt2, each GEMM over its 12 layers' weights, 2 threads,
 * paired rounds: the MLP's second projection 1.084x, 1.074x (30 each) and 1.012x (20),
 * attention's 0.98-1.02x; the column panels' GEMMs 0.99-1.00x with it (so not there).  The
 * whole prefill: 0.999x (50) and 1.026x (80): a small gain against this host's noise. */
#define TILE_STEPS(NPT, ROWS, PREFETCH)                                                    \
    if (PREFETCH) {                                                                        \
        STEPS(NPT, ROWS, 0, klen - PF_STEPS, 1, ws, PF_STEPS)                              \
        STEPS(NPT, ROWS, klen - PF_STEPS < 0 ? 0 : klen - PF_STEPS, klen, 1, wn,           \
              PF_STEPS - klen)                                                             \
    } else                                                                                 \
        STEPS(NPT, ROWS, 0, klen, 0, ws, 0)
/* A case for N rows left over, N < R (N >= R: no such case, the default stands).  Why a
 * copy for each: one loop bounded by nr kept its accumulators in memory, and beside it gcc
 * gave the full tile's loop two register moves a step more.  Zen 3, gpt2's four GEMMs, A/B
 * in one process (21 paired rounds): 1.08x faster at 128 rows (2 left over a 6-row tile),
 * 1.07x at 126 (none left: the full tile's loop alone), 1.35x at 7, 1.7x at 1. */
#define ROWS_LEFT(NPT, N, PREFETCH)                                                        \
    case (N < R ? N : -N): TILE_STEPS(NPT, (N < R ? N : R), PREFETCH) break;
/* The tile in two parts: its sums (bias included for float32 weights) written to out, then,
 * where there is one, the epilogue over those rows (int8 scale and bias, gelu).  Why the
 * sums are a function of their own (noinline): with the epilogue beside it, gcc's register
 * allocation of the 6-row AVX2 loop varied with whatever else the function held (two to
 * four register moves a step, changed by edits outside the loop); alone, it is the 24
 * instructions of the loop and no more.  Zen 3, gpt2 prefill in the engine, 48 paired
 * rounds: the four GEMMs 1.035x faster than with the epilogue inline (its stores then
 * went through memcpy: see STORE in fused_math.h). */
#define DEFINE_TILE(NAME, NPT, PF)                                                         \
    static __attribute__((noinline)) void NAME##_sums(const float *x, int nr,              \
                                                      const PanelAt *at, int64_t klen,     \
                                                      int64_t nseg, int64_t ldo) {         \
        vf acc[NPT][R][NV];                                                                \
        for (int j = 0; j < NPT; j++) { /* the bias first, or after the scale (int8) */    \
            vf b[NV] = {{0}};                                                              \
            for (int h = 0; h < NV && at[j].bias && !at[j].scale; h++)                     \
                b[h] = LOAD(at[j].bias + h * VW);                                          \
            for (int r = 0; r < R; r++)                                                    \
                for (int h = 0; h < NV; h++) acc[j][r][h] = b[h];                          \
        }                                                                                  \
        for (int64_t s = 0; s < nseg; s++) {                                               \
            const wt *ws[NPT], *wn[NPT]; /* this segment's weights, the next one's */      \
            const float *xs = x + s * klen * R;                                            \
            for (int j = 0; j < NPT; j++) {                                                \
                ws[j] = at[j].w[s] + at[j].woff;                                           \
                wn[j] = at[j].w[s + 1 < nseg ? s + 1 : 0] + at[j].woff;                    \
            }                                                                              \
            /* a constant row count keeps acc in registers, the rows left over too */      \
            switch (nr) {                                                                  \
            case R: TILE_STEPS(NPT, R, PF) break;                                          \
            ROWS_LEFT(NPT, 1, PF) ROWS_LEFT(NPT, 2, PF) ROWS_LEFT(NPT, 3, PF)              \
            ROWS_LEFT(NPT, 4, PF) ROWS_LEFT(NPT, 5, PF) ROWS_LEFT(NPT, 6, PF)              \
            ROWS_LEFT(NPT, 7, PF)                                                          \
            default: TILE_STEPS(NPT, nr, PF) /* R > 8 (a -D tile), its rows left over */   \
            }                                                                              \
        }                                                                                  \
        for (int j = 0; j < NPT; j++)                                                      \
            for (int r = 0; r < nr; r++)                                                   \
                for (int h = 0; h < NV; h++)                                               \
                    STORE(at[j].out + r * ldo + h * VW, acc[j][r][h]);                     \
    }                                                                                      \
    static inline void NAME(const float *x, int nr, const PanelAt *at, int64_t klen,       \
                            int64_t nseg, int64_t ldo, int gelu) {                         \
        NAME##_sums(x, nr, at, klen, nseg, ldo);                                           \
        for (int j = 0; j < NPT; j++)                                                      \
            for (int r = 0; r < nr && (at[j].scale || gelu); r++)                          \
                for (int h = 0; h < NV; h++) {                                             \
                    float *o = at[j].out + r * ldo + h * VW;                               \
                    vf v = LOAD(o);                                                        \
                    if (at[j].scale) {                                                     \
                        v *= LOAD(at[j].scale + h * VW);                                   \
                        if (at[j].bias) v += LOAD(at[j].bias + h * VW);                    \
                    }                                                                      \
                    if (gelu) v = vgelu_tanh(v);                                           \
                    STORE(o, v);                                                           \
                }                                                                          \
    }
DEFINE_TILE(tile_np, NP, 0)
DEFINE_TILE(tile_1, 1, 0)
/* the row blocks' tiles: PREFETCH (TILE_STEPS) with float32 weights; int8 weights (a line
 * every 4 steps) were slower with it (gpt2 prefill 0.948x, 50 paired rounds) */
DEFINE_TILE(rows_tile_np, NP, sizeof(wt) == 4)
DEFINE_TILE(rows_tile_1, 1, sizeof(wt) == 4)

/* A group of n panels: one NP-panel tile, or (the panels left over) one tile each;
 * by_rows: the row blocks' tiles. */
static inline void tiles(const float *x, int nr, const PanelAt *at, int n, int64_t klen,
                         int64_t nseg, int64_t ldo, int gelu, int by_rows) {
    if (n == NP) (by_rows ? rows_tile_np : tile_np)(x, nr, at, klen, nseg, ldo, gelu);
    else
        for (int j = 0; j < n; j++)
            (by_rows ? rows_tile_1 : tile_1)(x, nr, at + j, klen, nseg, ldo, gelu);
}

/* The input packed for the tiles: row block b's R rows interleaved k by k,
 * xp[(b * K + k) * R + r] = x[b * R + r][k], rows past T zero.  Why: a tile's broadcasts
 * then read one sequential stream instead of R rows K floats apart (at K = 3072, the MLP's
 * second projection, 12 KB apart: one L1 set for all R of them, the likely cause of what
 * was measured).  Zen 3, gpt2 prefill of 128 in the engine, against unpacked (both with
 * ROWS_LEFT): 1.07x and 1.01x (two runs of 58 paired rounds), its four GEMMs alone 1.03x
 * (38); in a harness that re-runs one GEMM on inputs already in cache, the MLP's second
 * projection 1.05x, the others 0.96-0.99x (the packing's cost). */
static void pack_block(const float *x, int64_t T, int64_t K, int64_t b, float *xp) {
    const int64_t nr = T - b * R < R ? T - b * R : R;
    float *dst = xp + b * K * R;
    for (int64_t r = 0; r < R; r++) {
        const float *src = x + (b * R + r) * K;
        if (r < nr)
            for (int64_t k = 0; k < K; k++) dst[k * R + r] = src[k];
        else
            for (int64_t k = 0; k < K; k++) dst[k * R + r] = 0.f;
    }
}

/* Every row block packed, shared out among the threads of the parallel region it is
 * called in (an orphaned `omp for`), which all wait at its end for the whole input. */
static void pack_input(const float *x, int64_t T, int64_t K, float *xp) {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < (T + R - 1) / R; b++) pack_block(x, T, K, b, xp);
}

/* The calling thread's buffer `slot` (PACKED: a packed input; KEYS: the attention's keys
 * and scores) of at least n floats, grown as needed and kept: a prefill packs four inputs
 * a layer, no allocation each.  It holds the largest the thread has needed (1.5 MB to pack
 * gpt2's at 128 rows).  NULL: out of memory. */
enum { PACKED, KEYS, SLOTS };
static float *thread_buffer(int slot, int64_t n) {
    static __thread float *buf[SLOTS];
    static __thread int64_t cap[SLOTS];
    if (n > cap[slot]) {
        free(buf[slot]);
        buf[slot] = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
        cap[slot] = buf[slot] ? n : 0;
    }
    return buf[slot];
}

/* How the GEMMs and the attention share their work items (groups of output panels;
 * sequence-heads) among threads: even shares, then stealing from the back of a slower
 * thread's (fused_steal.h), where an `omp for schedule(static)` had each thread do its
 * half.  Why: this host's two vCPUs run at different speeds at the same moment (a
 * dependent-add loop on both at once: 2.4 and 3.0 GHz, then 1.8 and 2.4), and the faster
 * one waited at the loop's end.  Each item writes its own outputs and sums in the same
 * order whichever thread takes it, so the bits do not change.  Zen 3, gpt2 prefill of 128
 * in the engine, paired rounds: 1.040x (80 rounds, the GEMMs alone), 1.059x (80, with the
 * attention), `fused-decode:int8` 1.057x (40).
 * `name`: a zeroed Span (an empty range) for each of n threads, on the caller's stack and
 * cache-line aligned, shared by the parallel region that follows. */
#define SPANS(name, n)                                                                     \
    char name##_mem[((n) + 1) * sizeof(Span)];                                             \
    Span *name = (Span *)(((uintptr_t)name##_mem + 63) & ~(uintptr_t)63);                  \
    memset(name, 0, (n) * sizeof(Span))

/* Prefetch into L2 the part `part` of `parts` of n floats at p: the next group's weights,
 * spread over the current one's row blocks (a panel's first tile would otherwise wait on
 * memory: the hardware prefetcher runs only a few lines ahead of so slow a stream). */
static inline void prefetch_part(const wt *p, int64_t n, int64_t part, int64_t parts) {
    int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
    for (int64_t i = lo - lo % NB; i < hi; i += NB) __builtin_prefetch(p + i, 0, 2);
}

/* Column panels: for each panel p (K rows of NB at w[p]),
 *   out[t][col[p] .. +NB) = act(bias[col[p] .. +NB) + x[t] @ panel p),   t < T,
 * x (T, K) contiguous, out (T, ldo); act: gelu where `gelu`, else none.  col maps the
 * copy's panel order (a head's q, k, v together) back to the model's column order.
 * Returns 0, -1 on a bad argument, -2 without memory to pack x. */
int gpteval_gemm_panels(const float *x, int64_t T, int64_t K, const wt *const *w,
                        const int64_t *col, int64_t n_panels, const float *scale,
                        const float *bias, float *out, int64_t ldo, int gelu, int nthreads) {
    if (T < 0 || K < 1 || n_panels < 0 || nthreads < 1) return -1;
    const int64_t row_blocks = (T + R - 1) / R, groups = (n_panels + NP - 1) / NP;
    float *xp = thread_buffer(PACKED, row_blocks * R * K);
    if (!xp && T) return -2;
    SPANS(spans, nthreads);
#pragma omp parallel num_threads(nthreads)
    {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    items_begin(spans, t, nt, groups);
    pack_input(x, T, K, xp); /* its barrier: every range set before any is stolen from */
    for (int64_t g; (g = next_item(spans, t, nt)) >= 0;)
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            const int nr = (int)(T - rb * R < R ? T - rb * R : R);
            for (int64_t q = (g + 1) * NP; q < (g + 2) * NP && q < n_panels; q++)
                prefetch_part(w[q], K * NB, rb, row_blocks); /* the next group's panels */
            const int n = (int)(n_panels - g * NP < NP ? n_panels - g * NP : NP);
            PanelAt at[NP];
            for (int j = 0; j < n; j++) {
                const int64_t p = g * NP + j;
                at[j] = (PanelAt){&w[p], 0, scale ? scale + col[p] : 0,
                                  bias ? bias + col[p] : 0, out + rb * R * ldo + col[p]};
            }
            tiles(xp + rb * R * K, nr, at, n, K, 1, ldo, gelu, 0);
        }
    }
    return 0;
}

/* Row blocks: item i's `rows` rows of a (n_items * rows, C) matrix, stored at items[i] as
 * C/NB panels of rows x NB;
 *   out[t][0..C) = bias + sum_i x[t][i*rows .. +rows) @ block i,   t < T,
 * x (T, n_items * rows) and out (T, C) contiguous.  Returns 0, -1 on a bad argument,
 * -2 without memory to pack x. */
int gpteval_gemm_row_blocks(const float *x, int64_t T, const wt *const *items,
                            int64_t n_items, int64_t rows, int64_t C, const float *scale,
                            const float *bias, float *out, int nthreads) {
    if (T < 0 || rows < 1 || n_items < 0 || C % NB || nthreads < 1) return -1;
    const int64_t row_blocks = (T + R - 1) / R, ldx = n_items * rows, np = C / NB;
    float *xp = thread_buffer(PACKED, row_blocks * R * ldx);
    if (!xp && T) return -2;
    SPANS(spans, nthreads);
#pragma omp parallel num_threads(nthreads)
    {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    items_begin(spans, t, nt, (np + NP - 1) / NP);
    pack_input(x, T, ldx, xp); /* its barrier: every range set before any is stolen from */
    for (int64_t g; (g = next_item(spans, t, nt)) >= 0;)
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            const int nr = (int)(T - rb * R < R ? T - rb * R : R);
            for (int64_t q = (g + 1) * NP; q < (g + 2) * NP && q < np; q++) /* the next group's */
                for (int64_t i = n_items * rb / row_blocks; i < n_items * (rb + 1) / row_blocks; i++)
                    prefetch_part(items[i] + q * rows * NB, rows * NB, 0, 1);
            const int n = (int)(np - g * NP < NP ? np - g * NP : NP);
            PanelAt at[NP];
            for (int j = 0; j < n; j++) {
                const int64_t cp = g * NP + j;
                at[j] = (PanelAt){items, cp * rows * NB, scale ? scale + cp * NB : 0,
                                  bias ? bias + cp * NB : 0, out + rb * R * C + cp * NB};
            }
            tiles(xp + rb * R * ldx, nr, at, n, rows, n_items, C, 0, 1);
        }
    }
    return 0;
}

/* Causal self-attention of a prefill from position 0: for each sequence b, head h and
 * query position t (only the last where last_only),
 *   y[b][t][h*hs .. +hs) = softmax_{p <= t}(q_t . k_p / sqrt(hs)) @ v_p,
 * q, k, v read from c_attn's output qkv (B, T, 3 * nh * hs), contiguous, in the model's
 * column order (every head's q, then k, then v); y (B, T or 1, nh * hs) contiguous, the
 * layout c_proj takes.  Each (b, h) is a work item: its keys copied into panels of NB
 * positions, then each query through the decode step's own math (fused_attend.h).
 * Why not torch's scaled_dot_product_attention: at gpt2's 128 positions its flash kernel
 * took 0.81-1.06 ms a layer on a Zen 3 (2 threads), this 0.54-0.57; the prefill 1.04x
 * faster (38 paired rounds).  It takes each query alone, so long prompts are slower here
 * (1024 positions: 31 ms against 23) and go to SDPA (PrefillAttention.MAX_POSITIONS).
 * hs: a multiple of NB.  With k_cache and v_cache (else NULL), the model's KV cache
 * ((B, nh, max_len, hs) each), every position's key and value are written there too, and
 * the values are read back from it (they are a head's rows side by side there already).
 * Returns 0, -1 on a bad argument, -2 without memory for the keys. */
int gpteval_prefill_attention(const float *qkv, int64_t B, int64_t T, int64_t nh, int64_t hs,
                              int last_only, float *y, float *k_cache, float *v_cache,
                              int64_t max_len, int nthreads) {
    if (B < 1 || T < 1 || nh < 1 || hs < NB || hs % NB || nthreads < 1) return -1;
    if ((k_cache || v_cache) && (!k_cache || !v_cache || T > max_len)) return -1;
    const int64_t W = nh * hs, ld = 3 * W, np = panels(T), t_out = last_only ? 1 : T;
    const float scale = 1.f / sqrtf((float)hs);
    int err = 0;
    SPANS(spans, nthreads);
#pragma omp parallel num_threads(nthreads)
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        items_begin(spans, th, nt, B * nh);
        float *kt = thread_buffer(KEYS, 2 * np * NB * hs + np * NB);
        float *vs = kt ? kt + np * NB * hs : 0, *scores = kt ? vs + np * NB * hs : 0;
#pragma omp barrier /* every range set before any is stolen from */
        for (int64_t item; (item = next_item(spans, th, nt)) >= 0;) {
            if (!kt) { /* the other threads take this thread's items */
#pragma omp atomic write
                err = -2;
                break;
            }
            const int64_t b = item / nh, h = item % nh;
            const float *seq = qkv + b * T * ld, *k = seq + W + h * hs, *v = seq + 2 * W + h * hs;
            /* the last panel's positions past T: zero keys, their scores unused */
            memset(kt + (np - 1) * hs * NB, 0, hs * NB * sizeof(float));
            for (int64_t p = 0; p < T; p++) put_key(kt, p, hs, k + p * ld);
            float *vh = vs; /* the values side by side: read once a query */
            if (k_cache) {
                const int64_t at = (b * nh + h) * max_len * hs;
                vh = v_cache + at;
                for (int64_t p = 0; p < T; p++)
                    memcpy(k_cache + at + p * hs, k + p * ld, hs * sizeof(float));
            }
            for (int64_t p = 0; p < T; p++)
                memcpy(vh + p * hs, v + p * ld, hs * sizeof(float));
            for (int64_t t = last_only ? T - 1 : 0; t < T; t++) {
                key_scores(seq + t * ld + h * hs, kt, t + 1, hs, scale, scores);
                softmax(scores, t + 1);
                weighted_rows(scores, vh, t + 1, hs, hs,
                              y + (b * t_out + (last_only ? 0 : t)) * W + h * hs);
            }
        }
    }
    return err;
}
