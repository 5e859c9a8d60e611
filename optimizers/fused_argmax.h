/* The greedy next token inside the decode step (fused_decode.c): the first largest logit,
 * a NaN counting as the largest, the first one winning, as numpy's and torch's argmax.
 *
 * Why in the kernel: after a step the logits (200 KB on GPT-2) sit half in each core's
 * cache and the Python around the step is cold, so an argmax over them afterwards took
 * 60-80 us of a 6.6 ms step (numpy's, 6 us warm).  Here each lm_head item (HB panels)
 * scans the logits it just wrote, still in its core's L1, and the step combines the items'
 * winners in item order: the same answer whichever thread took which item. */
#ifndef GPTEVAL_FUSED_ARGMAX_H
#define GPTEVAL_FUSED_ARGMAX_H
#include <stdint.h>

#include "fused_math.h"

typedef struct {
    float v;
    int64_t i;
} Best;

static inline int is_nan(float v) { return v != v; }

/* the first largest of x[0..n), n >= 1, its index counted from `base` */
static Best first_max(const float *x, int64_t n, int64_t base) {
    Best r = {x[0], 0};
    int64_t j = 0, nan = 0;
    if (n >= VW) { /* VW lanes, each the first largest of its own positions */
        vif lane;
        for (int k = 0; k < VW; k++) lane[k] = k;
        vf bv = LOAD(x);
        vif bi = lane, seen = (vif)(bv != bv);
        for (j = VW; j + VW <= n; j += VW) {
            vf v = LOAD(x + j);
            vif gt = (vif)(v > bv); /* strict: a lane keeps its first maximum */
            bv = vselect(gt, v, bv);
            bi = (bi & ~gt) | ((lane + (int32_t)j) & gt);
            seen |= (vif)(v != v);
        }
        for (int k = 0; k < VW; k++) {
            nan |= seen[k];
            if (bv[k] > r.v || (bv[k] == r.v && bi[k] < r.i)) r = (Best){bv[k], bi[k]};
        }
    }
    for (; j < n; j++) {
        nan |= is_nan(x[j]);
        if (x[j] > r.v) r = (Best){x[j], j};
    }
    if (nan || is_nan(x[0])) /* rare: the first NaN, found the slow way */
        for (j = 0; j < n; j++)
            if (is_nan(x[j])) {
                r = (Best){x[j], j};
                break;
            }
    r.i += base;
    return r;
}

/* the winner of items' winners taken in item order: a NaN stops the search */
static inline Best first_max_of(const Best *items, int64_t n) {
    Best r = items[0];
    for (int64_t k = 1; k < n && !is_nan(r.v); k++)
        if (is_nan(items[k].v) || items[k].v > r.v) r = items[k];
    return r;
}
#endif
