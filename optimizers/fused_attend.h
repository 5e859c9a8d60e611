/* One query's attention over keys and values: the decode step's (fused_decode.c, a new
 * token against the cache) and the prefill's (fused_prefill.c, every prompt position
 * against the ones before it), one definition so that both compute a head the same way.
 * Keys are read from a copy in panels of NB positions ([n/NB][hs][NB]), so NB positions'
 * scores come from one panel with q's elements broadcast down it: no horizontal sum a
 * position.  (Dot products of the cache's rows: the attention math ~25 % longer on one
 * core, a gpt2 decode step 0.5 %: 2 x 40 paired A/B runs.) */
#ifndef GPTEVAL_FUSED_ATTEND_H
#define GPTEVAL_FUSED_ATTEND_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fused_gemv.h" /* panel_f */
#include "fused_math.h" /* NB, VW, NV, vf, LOAD, STORE, vexp, hsum_nb */

static inline int64_t panels(int64_t n) { return (n + NB - 1) / NB; }

static inline float sum(const float *a, int64_t n) {
    vf acc[NV] = {{0}};
    float lanes[NB];
    int64_t i = 0;
    for (; i + NB <= n; i += NB)
        for (int h = 0; h < NV; h++) acc[h] += LOAD(a + i + h * VW);
    memcpy(lanes, acc, sizeof lanes);
    float s = hsum_nb(lanes);
    for (; i < n; i++) s += a[i];
    return s;
}

/* key p (k[0..hs)) into its place in the panels kt */
static inline void put_key(float *kt, int64_t p, int64_t hs, const float *k) {
    for (int64_t d = 0; d < hs; d++) kt[(p / NB) * hs * NB + d * NB + p % NB] = k[d];
}

/* scores[0..n) = q[0..hs) . key p * scale, keys p < n in the panels kt; scores has room
 * for n rounded up to NB (the last panel's positions past n are computed, not used) */
static inline void key_scores(const float *q, const float *kt, int64_t n, int64_t hs,
                              float scale, float *scores) {
    for (int64_t p = 0; p < n; p += NB) {
        panel_f(q, kt + (p / NB) * hs * NB, hs, scores + p);
        for (int v = 0; v < NV; v++)
            STORE(scores + p + v * VW, LOAD(scores + p + v * VW) * scale);
    }
}

/* scores[0..n) = softmax(scores[0..n)); scores has room for n rounded up to NB */
static inline void softmax(float *scores, int64_t n) {
    float mx = -INFINITY;
    for (int64_t p = 0; p < n; p++) mx = scores[p] > mx ? scores[p] : mx;
    for (int64_t p = 0; p < n; p += VW) {
        vf e = vexp(LOAD(scores + p) - mx);
        STORE(scores + p, e);
    }
    float denom = sum(scores, n), inv = 1.f / denom;
    for (int64_t p = 0; p < n; p++) scores[p] *= inv;
}

/* yh[0..hs) = scores[0..n) @ value rows (n rows of hs, ldv floats apart): four chunks of a
 * row at a time, so four independent accumulators are in flight instead of one chain per
 * chunk */
static inline void weighted_rows(const float *scores, const float *v, int64_t n, int64_t hs,
                                 int64_t ldv, float *yh) {
    int64_t c = 0;
    for (; c + 4 * NB <= hs; c += 4 * NB) {
        vf a[4 * NV] = {{0}}; /* 4 NB-wide chunks */
        for (int64_t p = 0; p < n; p++) {
            const float *vp = v + p * ldv + c;
            for (int j = 0; j < 4 * NV; j++) a[j] += scores[p] * LOAD(vp + j * VW);
        }
        for (int j = 0; j < 4 * NV; j++) STORE(yh + c + j * VW, a[j]);
    }
    for (; c < hs; c += VW) { /* hs is a multiple of NB (fused_layout.py) */
        vf acc = {0};
        for (int64_t p = 0; p < n; p++) acc += scores[p] * LOAD(v + p * ldv + c);
        STORE(yh + c, acc);
    }
}
#endif
