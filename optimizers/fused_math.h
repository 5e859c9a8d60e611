/* Vector math shared by fused_decode.c and fused_prefill.c (one definition, so the decode
 * step and the prefill compute GPT-2's gelu with the same bits).
 *
 * Two widths.  NB, the panel width of the weight layout, is 16 floats on every CPU (one
 * 64-byte line a panel row; fused_layout.py).  VW, the width the code computes in, is what
 * the CPU holds in one register: 16 floats with AVX-512, 8 with AVX, 4 on SSE or NEON, so a
 * panel row is NV = NB / VW vectors.  Why not one 16-float vector type everywhere: without
 * AVX-512 gcc keeps a 64-byte vector in memory, not in a pair of registers, and every
 * operation on it becomes stores and reloads through the stack (a 32-byte one likewise
 * without AVX).  On a Zen 3 (AVX2) that capped every GEMV of the kernel at ~6.7 G weights/s
 * on two cores whatever their width: fused-decode 40 tok/s, its int8 build 44 (6 GB/s)
 * (docs/cpu-performance.md, twentieth session).  Each lane is computed alone, so the
 * results do not depend on VW except where lanes are summed (hsum_nb and the argmax,
 * written to give the same answer at any width).
 */
#ifndef GPTEVAL_FUSED_MATH_H
#define GPTEVAL_FUSED_MATH_H
#include <stdint.h>

#define NB 16 /* panel width: one 64-byte line per row; must match fused_layout.py */
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else /* SSE, NEON: 128-bit registers */
#define VW 4
#endif
#define NV (NB / VW) /* vectors a panel row */
typedef float vf __attribute__((vector_size(VW * sizeof(float)), aligned(4)));
typedef int32_t vif __attribute__((vector_size(VW * sizeof(int32_t)), aligned(4)));
#define LOAD(p) (*(const vf *)(p))
/* A vector to memory, as one unaligned store.  Not memcpy(p, &v, sizeof v): gcc spilled v
 * to the stack and copied it on in pieces (8-byte halves through general registers, a
 * 16-byte reload), loads that wait on the store before them; gelu over gpt2's 128 x 3072
 * c_fc output took 2.10 ms through memcpy and 0.51 ms through STORE on one Zen 3 core. */
#define STORE(p, v) (*(vf *)(p) = (v))

static inline vf vselect(vif mask, vf a, vf b) { /* mask lanes are -1 or 0 */
    return (vf)(((vif)a & mask) | ((vif)b & ~mask));
}

/* exp(z) for z in [-87, 88] (clamped), written so the compiler vectorizes it: 2^k times a
 * degree-7 polynomial on |r| <= ln2/2, relative error ~1e-7 like libm's.  glibc's
 * scalar expf / tanhf cost ~4 % of a decode step between them. */
static inline vf vexp(vf z) {
    const vf zero = {0}, lo = zero - 87.f, hi = zero + 88.f;
    z = vselect(z > hi, hi, vselect(z < lo, lo, z));
    vf y = z * 1.4426950408889634f + 0.5f;
    vif k = __builtin_convertvector(y, vif); /* truncates: floor for y < 0 is one less */
    k += (vif)(__builtin_convertvector(k, vf) > y);
    vf kf = __builtin_convertvector(k, vf);
    vf r = (z - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
    vf p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120
            + r * (1.f / 720 + r * (1.f / 5040)))))));
    return p * (vf)((k + 127) << 23);
}

/* GPT-2's gelu (tanh form): tanh(u) = 1 - 2/(exp(2u)+1), |u| clamped at 9, where tanh is
 * 1 in float32. */
static inline vf vgelu_tanh(vf x) {
    const vf zero = {0}, lim = zero + 9.f;
    vf u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    u = vselect(u > lim, lim, vselect(u < -lim, -lim, u));
    return 0.5f * x * (1.f + (1.f - 2.f / (vexp(2.f * u) + 1.f)));
}

/* a[0..NB) as a tree of adds: the two 8-float halves, then pairs, the same order at
 * any VW (a 16-long chain of dependent adds is slower and rounds differently) */
static inline float hsum_nb(const float *a) {
    float s[8];
    for (int j = 0; j < 8; j++) s[j] = a[j] + a[j + 8];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
#endif
