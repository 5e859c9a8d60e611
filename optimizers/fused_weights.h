/* The element type of fused-decode's weight copy, fixed when the kernel is built: float32
 * (the `fused-decode` pass), or int8 with a float scale per output column
 * (`fused-decode:int8`, built with -DGPTEVAL_W_INT8).  WLOAD widens NB weights of a panel
 * row to floats; the scales are applied to the sums, never to the weights.
 *
 * Why int8 is worth a copy of its own: batch-1 decode streams every weight once, and the
 * panel GEMV streams int8 weights at its float32 rate in GB/s (tools/gemv_dtypes.c:
 * 40.1 against 41.4 GB/s on two Zen 5 threads), so a step reads ~4x fewer bytes. */
#ifndef GPTEVAL_FUSED_WEIGHTS_H
#define GPTEVAL_FUSED_WEIGHTS_H
#include <stdint.h>
#include <string.h>

#include "fused_math.h"

#ifdef GPTEVAL_W_INT8
#include <immintrin.h>
typedef int8_t wt;
static inline v16 WLOAD(const wt *p) {
#if defined(__AVX512F__)
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    struct { __m256 lo, hi; } f = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
                                   _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
#else /* gcc turns a generic int8 -> float vector conversion into scalar code: slow */
    float f[NB];
    for (int j = 0; j < NB; j++) f[j] = (float)p[j];
#endif
    v16 v;
    memcpy(&v, &f, sizeof v);
    return v;
}
#else
typedef float wt;
#define WLOAD(p) LOAD(p)
#endif
#endif
