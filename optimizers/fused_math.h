/* Vector math shared by fused_decode.c and fused_prefill.c (one definition, so the decode
 * step and the prefill compute GPT-2's gelu with the same bits). */
#ifndef GPTEVAL_FUSED_MATH_H
#define GPTEVAL_FUSED_MATH_H
#include <stdint.h>

#define NB 16 /* panel width: one 64-byte line per row; must match fused_layout.py */
typedef float v16 __attribute__((vector_size(NB * sizeof(float)), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(NB * sizeof(int32_t)), aligned(4)));
#define LOAD(p) (*(const v16 *)(p))

static inline v16 vselect(vi16 mask, v16 a, v16 b) { /* mask lanes are -1 or 0 */
    return (v16)(((vi16)a & mask) | ((vi16)b & ~mask));
}

/* exp(z) for z in [-87, 88] (clamped), written so the compiler vectorizes it: 2^k times a
 * degree-7 polynomial on |r| <= ln2/2, relative error ~1e-7 like libm's.  glibc's
 * scalar expf / tanhf cost ~4 % of a decode step between them. */
static inline v16 vexp(v16 z) {
    const v16 zero = {0}, lo = zero - 87.f, hi = zero + 88.f;
    z = vselect(z > hi, hi, vselect(z < lo, lo, z));
    v16 y = z * 1.4426950408889634f + 0.5f;
    vi16 k = __builtin_convertvector(y, vi16); /* truncates: floor for y < 0 is one less */
    k += (vi16)(__builtin_convertvector(k, v16) > y);
    v16 kf = __builtin_convertvector(k, v16);
    v16 r = (z - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
    v16 p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120
            + r * (1.f / 720 + r * (1.f / 5040)))))));
    return p * (v16)((k + 127) << 23);
}

/* GPT-2's gelu (tanh form): tanh(u) = 1 - 2/(exp(2u)+1), |u| clamped at 9, where tanh is
 * 1 in float32. */
static inline v16 vgelu_tanh(v16 x) {
    const v16 zero = {0}, lim = zero + 9.f;
    v16 u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    u = vselect(u > lim, lim, vselect(u < -lim, -lim, u));
    return 0.5f * x * (1.f + (1.f - 2.f / (vexp(2.f * u) + 1.f)));
}
#endif
