/* One GPT-2 decode step in a single OpenMP parallel region (the `fused-decode` pass).
 *
 * Why: batch-1 decode is a stream of weight reads.  Run as one kernel per op, every op
 * boundary makes the threads join and start new streams; on a 2-core host that cost
 * 8-23 % of the bandwidth a single stream gets (tools/roofline_gap.py).  Here a layer is
 * two phases with one barrier each and no op boundary inside them:
 *   attention: a work item is a whole head: its q, k, v (LN1 recomputed by every thread,
 *     768 floats), its attention over the cache (keys from a copy in panels of NB
 *     positions, kt_cache), and its rows of c_proj, into the head's own partial output
 *     (split-K);
 *   MLP: an item is a block of RB hidden units: c_fc columns, gelu, and the same rows of
 *     the second projection, into the block's partial output.
 * Each thread starts on an even share of the items and takes the rest of a slower
 * thread's (work stealing, below).  After the barrier every thread adds the partials in
 * item order into its own copy of the residual stream (identical on every thread, and
 * the same bits at any thread count), so no other barrier is needed.
 * Partial buffers alternate between phases: a thread can only be one phase ahead.
 *
 * Weights come laid out by optimizers/fused_layout.py, in the order a step reads them:
 * matrices a thread reads column-wise (c_attn, c_fc, the lm_head) as panels of NB columns
 * ([n/NB][K][NB], zero-padded), the ones it reads row-wise (the two c_proj) as blocks of
 * rows (a head's, or RB hidden units') stored [C/NB][rows][NB], and each work item's
 * pieces side by side (a head's q, k, v panels, then its c_proj rows; a unit block's c_fc
 * panels, then its c_proj rows), so a thread's share of a phase is one contiguous stream
 * read front to back.  (Two streams, a matrix's items then the other's, read 1-1.6 % slower
 * in the host's fast-bandwidth mode: 2 x 40 A/B rounds, same logits to the bit.)
 * Sums are float32 like the reference; only their order differs (~1e-6 in logits).  The
 * sequences of a batch share each weight load (fused_gemv.h), each summed as if alone.
 * Built with -DGPTEVAL_W_INT8 (`fused-decode:int8`) the copy holds int8 weights and a float
 * scale per output column (fused_weights.h); each scale multiplies its column's sum where
 * the bias is added (q, k, v; c_fc before gelu; each c_proj partial; the logits; the tied
 * embedding), so the kernel computes with exactly int8 x scale.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "fused_argmax.h" /* Best, first_max, first_max_of */
#include "fused_attend.h" /* put_key, key_scores, softmax, weighted_rows, sum */
#include "fused_math.h"   /* NB, VW, NV, vf, LOAD, vexp, vgelu_tanh, hsum_nb */
#include "fused_gemv.h"   /* gemv_panel_rows, gemv_rows_block_rows, panel_f; wt, WLOAD */
#include "fused_norm.h"   /* layer_norm: the prefill's too */
#include "fused_steal.h"  /* Span, items_begin, next_item: work stealing */

#define RB 64 /* hidden units (rows of mlp.c_proj) a thread takes at a time */
#define HB 8  /* lm_head panels a thread takes at a time */

typedef struct {
    const float *ln1_w, *ln1_b;
    const wt *w_qkv;
    const float *b_qkv;
    const wt *w_o;
    const float *b_o, *ln2_w, *ln2_b;
    const wt *w_fc;
    const float *b_fc;
    const wt *w_fc2;
    const float *b_fc2;
    float *k_cache, *v_cache; /* the model's cache: (batch, n_head, max_len, hs) */
    float *kt_cache;          /* the keys again, as panels of NB positions:
                                 (batch, n_head, max_len / NB, hs, NB) (below) */
    int64_t n_head, H;        /* this layer's heads and MLP width (H padded to RB): pruning
                                 may leave layers of different widths */
    int64_t head_stride, unit_stride; /* weights from one work item's weights to the next's
                                 (w_o sits inside a head's item, w_fc2 inside a unit block's) */
    const float *s_qkv, *s_o, *s_fc, *s_fc2; /* int8 weights: a scale per output column, in
                                 the order of the biases; NULL for float32 weights */
} Layer;

typedef struct {
    int64_t n_layer, C, hs, V, max_len, batch, max_threads;
    int64_t wte_panels; /* 1: wte points at w_head (tied weights), token t's embedding is
                           column t of the head's panels; 0: wte is a (V, C) table */
    float eps;
    const float *wte, *wpe, *lnf_w, *lnf_b; /* wte: a (V, C) table where not tied */
    const wt *w_head;                       /* panels of the (C, V) head */
    Layer *layers;
    float *scratch;  /* max_threads * scratch_floats(): per-thread work buffers */
    float *partials; /* gpteval_partials_floats(): a partial output per head / unit block */
    void *spans;     /* max_threads * 64 bytes: the work-stealing ranges (below) */
    int64_t k_mirrored; /* positions [0, k_mirrored) of every kt_cache hold k_cache's keys;
                           the caller sets 0 when a prefill rewrote the cache */
    Best *best;         /* gpteval_head_items() per sequence: each lm_head item's argmax */
    const float *s_head; /* int8 weights: the head's scale per vocabulary column, else NULL */
} Model;

/* GPT-2's gelu (tanh form, fused_math.h) over h[0..n) after the scale (int8 weights,
 * else NULL) and the bias; n: a multiple of VW. */
static void gelu_tanh_block(float *h, const float *scale, const float *bias, int64_t n) {
    for (int64_t j = 0; j < n; j += VW) {
        vf y = scale ? LOAD(h + j) * LOAD(scale + j) : LOAD(h + j);
        vf g = vgelu_tanh(y + LOAD(bias + j));
        STORE(h + j, g);
    }
}

/* floats of per-thread scratch: residual x, normed xn (batch x C each), q/k/v of a head
 * (batch x 3 x hs), a head's output (batch x hs), attention scores (max_len rounded up to
 * NB), a block of hidden units (batch x RB; the lm_head's 4 rows x NB fit in it too) */
int64_t gpteval_scratch_floats(const Model *m) {
    const int64_t B = m->batch;
    return 2 * B * m->C + B * (3 * panels(m->hs) * NB + m->hs) + panels(m->max_len) * NB
           + B * RB;
}

/* floats of the partial outputs: two phases' worth (a thread can be one phase ahead of
 * another still adding up the previous one), an output per work item */
int64_t gpteval_partials_floats(const Model *m) {
    int64_t items = 1;
    for (int64_t l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        if (L->n_head > items) items = L->n_head;
        if (L->H / RB > items) items = L->H / RB;
    }
    return 2 * items * m->batch * m->C;
}

/* Adds the phase's partials (one per item, in item order) and the bias into this
 * thread's copy of the residual stream.  Item by item, each partial read front to back:
 * half of them sit in the other core's cache, and one sequential stream at a time is
 * what its prefetcher follows (a 16-float column across all 48 MLP partials at a time
 * took 5.3 us a reduce; this 3.3, on gpt2 at 2 threads).  Every element still gets
 * x + part 0 + part 1 + ... + bias, in that order: the same bits. */
static void reduce_partials(const Model *m, const float *part, int64_t items,
                            const float *scale, const float *bias, float *x) {
    const int64_t BC = m->batch * m->C;
    for (int64_t b = 0; b < m->batch; b++) {
        float *xb = x + b * m->C;
        for (int64_t u = 0; u < items; u++) {
            const float *p = part + u * BC + b * m->C;
            for (int64_t c = 0; c < m->C; c += VW) { /* int8: each partial scaled */
                vf acc = LOAD(xb + c) + (scale ? LOAD(p + c) * LOAD(scale + c) : LOAD(p + c));
                STORE(xb + c, acc);
            }
        }
        for (int64_t c = 0; c < m->C; c += VW) {
            vf acc = LOAD(xb + c) + LOAD(bias + c);
            STORE(xb + c, acc);
        }
    }
}

static void attention_phase(const Model *m, const Layer *L, int t, int nt, int64_t pos,
                            float *xn, float *qkv, float *yh, float *scores, float *parts) {
    const int64_t C = m->C, hs = m->hs, nh = L->n_head, width = nh * hs;
    const int64_t hp = panels(hs); /* panels per head and per q/k/v */
    const float scale = 1.f / sqrtf((float)hs);
    Span *spans = (Span *)m->spans;
    int64_t h;
    items_begin(spans, t, nt, nh);
    while ((h = next_item(spans, t, nt)) >= 0) {
        float *part = parts + h * m->batch * C;
        const int64_t QS = 3 * hp * NB; /* one sequence's q, k, v */
        for (int64_t s = 0; s < 3; s++) { /* q, k, v of head h, every sequence at once */
            const wt *w = L->w_qkv + h * L->head_stride + s * hp * C * NB;
            for (int64_t p = 0; p < hp; p++)
                gemv_panel_rows(xn, C, m->batch, w + p * C * NB, C, qkv + s * hp * NB + p * NB,
                                QS);
        }
        for (int64_t b = 0; b < m->batch; b++) {
            float *qb = qkv + b * QS;
            for (int64_t s = 0; s < 3; s++)
                for (int64_t j = 0; j < hs; j++) {
                    const int64_t col = s * width + h * hs + j;
                    if (L->s_qkv) qb[s * hp * NB + j] *= L->s_qkv[col];
                    qb[s * hp * NB + j] += L->b_qkv[col];
                }
            const float *q = qb;
            int64_t base = ((b * nh + h) * m->max_len) * hs;
            float *kc = L->k_cache + base, *vc = L->v_cache + base;
            memcpy(kc + pos * hs, qb + hp * NB, hs * sizeof(float));
            memcpy(vc + pos * hs, qb + 2 * hp * NB, hs * sizeof(float));
            float *kt = L->kt_cache + ((b * nh + h) * panels(m->max_len)) * hs * NB;
            /* the keys a prefill wrote, then this one (always: a caller may go back) */
            for (int64_t p = m->k_mirrored < pos ? m->k_mirrored : pos; p <= pos; p++)
                put_key(kt, p, hs, kc + p * hs);
            key_scores(q, kt, pos + 1, hs, scale, scores);
            softmax(scores, pos + 1);
            weighted_rows(scores, vc, pos + 1, hs, hs, yh + b * hs);
        }
        /* head h's rows of c_proj, every sequence at once */
        gemv_rows_block_rows(yh, hs, m->batch, L->w_o + h * L->head_stride, hs, C, part, C);
    }
}

static void mlp_phase(const Model *m, const Layer *L, int t, int nt, const float *xn,
                      float *hblock, float *parts) {
    const int64_t C = m->C, units = L->H / RB; /* H padded to a multiple of RB */
    Span *spans = (Span *)m->spans;
    int64_t u;
    items_begin(spans, t, nt, units);
    while ((u = next_item(spans, t, nt)) >= 0) {
        float *part = parts + u * m->batch * C;
        for (int64_t s = 0; s < RB / NB; s++) /* hblock: RB units a sequence */
            gemv_panel_rows(xn, C, m->batch, L->w_fc + u * L->unit_stride + s * NB * C, C,
                            hblock + s * NB, RB);
        /* padded hidden units have zero weights, bias and second-projection rows */
        for (int64_t b = 0; b < m->batch; b++)
            gelu_tanh_block(hblock + b * RB, L->s_fc ? L->s_fc + u * RB : NULL,
                            L->b_fc + u * RB, RB);
        gemv_rows_block_rows(hblock, RB, m->batch, L->w_fc2 + u * L->unit_stride, RB, C, part, C);
    }
}

/* lm_head items (HB panels each) */
int64_t gpteval_head_items(const Model *m) { return (panels(m->V) + HB - 1) / HB; }

/* logits (rows, V) of final-normed hidden states xn (rows, C): this thread's share of the
 * lm_head (HB panels an item).  No partials: each panel is a slice of the logits.  With
 * `best`, each item's argmax of each row too (best[row * items + item]). */
static void head_phase(const Model *m, int t, int nt, const float *xn, int64_t rows,
                       float *hpanel, float *logits, Best *best) {
    const int64_t C = m->C, np = panels(m->V), items = gpteval_head_items(m), V = m->V;
    Span *spans = (Span *)m->spans;
    int64_t blk;
    items_begin(spans, t, nt, items);
    while ((blk = next_item(spans, t, nt)) >= 0) {
        for (int64_t p = blk * HB; p < np && p < (blk + 1) * HB; p++)
            for (int64_t b0 = 0; b0 < rows; b0 += 4) { /* hpanel holds 4 rows' NB logits */
                const int64_t n = rows - b0 < 4 ? rows - b0 : 4;
                gemv_panel_rows(xn + b0 * C, C, n, m->w_head + p * C * NB, C, hpanel, NB);
                for (int64_t b = 0; b < n; b++)
                    for (int64_t j = 0; j < NB && p * NB + j < V; j++)
                        logits[(b0 + b) * V + p * NB + j] =
                            m->s_head ? hpanel[b * NB + j] * m->s_head[p * NB + j]
                                      : hpanel[b * NB + j];
            }
        const int64_t lo = blk * HB * NB, n = (V - lo < HB * NB ? V - lo : HB * NB);
        for (int64_t b = 0; best && b < rows; b++)
            best[b * items + blk] = first_max(logits + b * V + lo, n, lo);
    }
}

/* logits (rows, V) of hidden states xn (rows, C) already through ln_f: the lm_head alone,
 * from the kernel's copy (a prefill's last position).  Returns 0; -1 as decode_step. */
int gpteval_head(const Model *m, const float *xn, int64_t rows, float *logits, int nthreads) {
    if (nthreads < 1 || nthreads > m->max_threads) return -1;
    const int64_t per_thread = gpteval_scratch_floats(m);
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num();
        head_phase(m, t, omp_get_num_threads(), xn, rows, m->scratch + t * per_thread, logits,
                   NULL);
    }
    return 0;
}

/* logits (batch, V) of tokens (batch,) at position *pos_p, advancing every layer's cache
 * and then *pos_p (the caller's position tensor: no Python-side op a step for it); with
 * `next` (else NULL), each sequence's greedy next token there (fused_argmax.h).
 * Returns 0; -1 when called with more threads than the scratch was sized for, -2 when the
 * position is outside the cache, -3 when a token is outside the vocabulary (nothing is
 * written then). */
int gpteval_decode_step(Model *m, const int64_t *tokens, int64_t *pos_p,
                        float *logits, int64_t *next, int nthreads) {
    if (nthreads < 1 || nthreads > m->max_threads) return -1;
    const int64_t C = m->C, B = m->batch, pos = *pos_p;
    if (pos < 0 || pos >= m->max_len) return -2;
    for (int64_t b = 0; b < B; b++)
        if (tokens[b] < 0 || tokens[b] >= m->V) return -3;
    const int64_t per_thread = gpteval_scratch_floats(m), partials = gpteval_partials_floats(m);
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *x = m->scratch + t * per_thread, *xn = x + B * C, *qkv = xn + B * C;
        float *yh = qkv + B * 3 * panels(m->hs) * NB, *scores = yh + B * m->hs;
        float *hpanel = scores + panels(m->max_len) * NB;
        for (int64_t b = 0; b < B; b++) {
            /* a column of the panels is C floats NB apart (one line each): ~1 us a token */
            const int64_t t = tokens[b];
            if (m->wte_panels) { /* the tied head's column t (times its scale, int8) */
                const wt *e = m->w_head + (t / NB) * C * NB + t % NB;
                const float sc = m->s_head ? m->s_head[t] : 1.f; /* x 1 is exact */
                for (int64_t c = 0; c < C; c++)
                    x[b * C + c] = (float)e[c * NB] * sc + m->wpe[pos * C + c];
            } else {
                const float *e = m->wte + t * C;
                for (int64_t c = 0; c < C; c++) x[b * C + c] = e[c] + m->wpe[pos * C + c];
            }
        }
        int phase = 0;
        for (int64_t l = 0; l < m->n_layer; l++) {
            const Layer *L = &m->layers[l];
            for (int pass = 0; pass < 2; pass++, phase++) {
                float *parts = m->partials + (phase & 1) * (partials / 2);
                for (int64_t b = 0; b < B; b++)
                    layer_norm(x + b * C, pass ? L->ln2_w : L->ln1_w,
                               pass ? L->ln2_b : L->ln1_b, C, m->eps, xn + b * C);
                if (pass == 0) attention_phase(m, L, t, nt, pos, xn, qkv, yh, scores, parts);
                else mlp_phase(m, L, t, nt, xn, hpanel, parts);
#pragma omp barrier
                reduce_partials(m, parts, pass ? L->H / RB : L->n_head,
                                pass ? L->s_fc2 : L->s_o, pass ? L->b_fc2 : L->b_o, x);
            }
        }
        for (int64_t b = 0; b < B; b++)
            layer_norm(x + b * C, m->lnf_w, m->lnf_b, C, m->eps, xn + b * C);
        head_phase(m, t, nt, xn, B, hpanel, logits, next ? m->best : NULL);
    }
    for (int64_t b = 0; next && b < B; b++) {
        const int64_t items = gpteval_head_items(m);
        next[b] = first_max_of(m->best + b * items, items).i;
    }
    m->k_mirrored = pos + 1;
    *pos_p = pos + 1;
    return 0;
}
