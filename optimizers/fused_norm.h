/* GPT-2's layer norm over one row, shared by the decode step (fused_decode.c) and the
 * prefill's blocks (fused_blocks.c): one definition, so both normalize a row to the same bits. */
#ifndef GPTEVAL_FUSED_NORM_H
#define GPTEVAL_FUSED_NORM_H
#include <math.h>
#include <stdint.h>

#include "fused_attend.h" /* sum */

/* out[0..n) = (x - mean) / sqrt(var + eps) * w + b; x and out do not overlap.  Not
 * `inline`: so it stays the call it was in the decode step (inlined there, gcc laid out
 * the step's registers anew; decode A/B against the old build 0.990 then 0.996 with
 * this, 20-30 paired rounds: noise either way, but the step's code is the one measured) */
static void layer_norm(const float *x, const float *w, const float *b, int64_t n, float eps,
                       float *out) {
    float mean = sum(x, n) / (float)n;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mean) * (x[i] - mean);
    float var = sum(out, n);
    float rstd = 1.f / sqrtf(var / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}
#endif
