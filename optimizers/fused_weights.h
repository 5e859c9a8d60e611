/* The element type of fused-decode's weight copy, fixed when the kernel is built: float32
 * (the `fused-decode` pass), or int8 with a float scale per output column
 * (`fused-decode:int8`, built with -DGPTEVAL_W_INT8).  WLOAD widens VW weights (a panel
 * row is NV such vectors, fused_math.h) to floats; the scales are applied to the sums,
 * never to the weights.
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
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
typedef int8_t wt;
static inline vf WLOAD(const wt *p) { /* VW weights at p widened to floats */
#if VW == 16 && defined(__AVX512F__)
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif VW == 8 && defined(__AVX2__)
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#elif VW == 4 && defined(__SSE4_1__)
    int32_t four;
    memcpy(&four, p, sizeof four);
    __m128 f = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(four)));
#else /* gcc turns a generic int8 -> float vector conversion into scalar code: slow */
    float f[VW];
    for (int j = 0; j < VW; j++) f[j] = (float)p[j];
#endif
    vf v;
    memcpy(&v, &f, sizeof v);
    return v;
}
/* Software prefetch, GPTEVAL_WPF bytes ahead of each 64-byte line of int8 panel rows a
 * GEMV reads (panel_dots).  A float32 panel row is one FMA per 64 bytes, so the core's
 * out-of-order window alone reaches tens of KB ahead (an estimate from its size); an int8
 * one is three instructions per 16 bytes (widen, convert, FMA), twelve per line, so the
 * same window reaches a quarter as far: too few misses in flight for the host's fast mode.  Measured (Zen 5, gpt2, 2
 * threads, one process, paired rounds, medians): the step 1.32x faster in the fast mode
 * (probes 76-90 GB/s; 12-24 KB ahead 1.28-1.32, 8 KB 1.22, 6 KB 1.16), ~1.05x in the slow
 * one; the same prefetch in the float32 build, 8-32 KB ahead: medians 0.98-1.01,
 * so it has none.  Not compute: in L2 the int8 GEMV ran 65 G weights/s on one core, the
 * float32 one 53 (docs/cpu-performance.md has the runs). */
#ifndef GPTEVAL_WPF
#define GPTEVAL_WPF 16384
#endif
#if GPTEVAL_WPF > 0
#define WPREFETCH(p) __builtin_prefetch((const char *)(p) + GPTEVAL_WPF, 0, 3)
#else
#define WPREFETCH(p) ((void)0)
#endif
#else
typedef float wt;
#define WLOAD(p) LOAD(p)
#define WPREFETCH(p) ((void)0) /* the float32 build needs none (above) */
#endif
#endif
