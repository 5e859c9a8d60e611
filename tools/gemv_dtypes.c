/* How fast does fused-decode's panel GEMV stream weights stored narrower than float32?  The
 * measurement that led to `fused-decode:int8` (optimizers/fused_weights.h), in isolation.
 *
 * One pass = GPT-2 124M's weights (124 M of them) as column panels of 16 (the kernel's
 * layout, optimizers/fused_layout.py) times one float32 vector, on OpenMP threads, with the
 * weights stored as float32, bfloat16 (widened exactly by a 16-bit shift) or int8 (widened
 * to float, a per-column scale applied to each panel's sums); beside it a plain float32
 * reduction over the same bytes (the harness's bandwidth probe does the same).  Prints each
 * pass's best and median time and GB/s of the bytes it read.
 *
 *   gcc -O3 -march=native -fopenmp -Ioptimizers tools/gemv_dtypes.c -o /tmp/gemv_dtypes
 *   OMP_NUM_THREADS=2 /tmp/gemv_dtypes [repeats]
 *
 * The int8 widening is the kernel's own (WLOAD, optimizers/fused_weights.h: intrinsics;
 * gcc 12 turns a generic int8 -> float vector conversion into scalar code, 8 GB/s here),
 * read twice: plainly, and with the kernel's software prefetch (WPREFETCH, "int8 +pf"),
 * without which int8 streams well under the reduction in the host's fast mode.
 * The bf16 one is generic vector code.  Vectors are VW floats wide (fused_math.h: 8 without
 * AVX-512); built with 16-float vectors on a Zen 3 (AVX2) every pass here took the same
 * ~18.5 ms, float32 and int8 alike (6.7 GB/s of int8), gcc keeping each vector on the
 * stack; at VW = 8 int8 read 20.0 GB/s (median; best 21.1) and 22.8 with the prefetch
 * (best 28.4) (twentieth session). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define GPTEVAL_W_INT8 /* the int8 build's WLOAD */
#include "fused_weights.h" /* NB (columns of a panel), VW, NV, vf, LOAD, WLOAD */

typedef uint16_t vfh __attribute__((vector_size(VW * 2)));
typedef uint32_t vfu __attribute__((vector_size(VW * 4)));
#define K 768 /* GPT-2's width: rows of a panel */

static float x[K], out[1024 * NB];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *huge_alloc(size_t n) { /* 2 MiB aligned and advised, as the kernel's copy */
    const size_t hp = (size_t)1 << 21;
    n = (n + hp - 1) & ~(hp - 1);
    void *p = aligned_alloc(hp, n);
    if (!p) { perror("aligned_alloc"); exit(1); }
    madvise(p, n, MADV_HUGEPAGE);
    memset(p, 1, n);
    return p;
}

static inline vf widen_bf16(const uint16_t *w) {
    vfh h;
    memcpy(&h, w, sizeof h);
    vfu u = __builtin_convertvector(h, vfu) << 16;
    vf f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#define NO_PF(p) ((void)0)

/* one pass over P panels; WIDEN(w + i * NB + h * VW) gives row i's h-th VW weights as floats
 * (the kernel's own loop, optimizers/fused_gemv.h, at R = 1) */
#define GEMV_PASS(T, WIDEN, SCALED, PF)                                                   \
    _Pragma("omp parallel for schedule(static)")                                          \
    for (int64_t p = 0; p < P; p++) {                                                     \
        const T *wp = (const T *)w + p * K * NB;                                          \
        vf a[4][NV] = {{{0}}};                                                            \
        for (int i = 0; i < K; i += 4) {                                                  \
            PF(wp + i * NB);                                                              \
            for (int h = 0; h < NV; h++) {                                                \
                const T *wh = wp + i * NB + h * VW;                                       \
                a[0][h] += x[i] * WIDEN(wh);                                              \
                a[1][h] += x[i + 1] * WIDEN(wh + NB);                                     \
                a[2][h] += x[i + 2] * WIDEN(wh + 2 * NB);                                 \
                a[3][h] += x[i + 3] * WIDEN(wh + 3 * NB);                                 \
            }                                                                             \
        }                                                                                 \
        for (int h = 0; h < NV; h++) {                                                    \
            vf s = (a[0][h] + a[1][h]) + (a[2][h] + a[3][h]);                             \
            if (SCALED) s *= LOAD(scale + p * NB + h * VW);                               \
            memcpy(out + (p % 1024) * NB + h * VW, &s, sizeof s);                         \
        }                                                                                 \
    }

static double pass_f32(const void *w, const float *scale, int64_t P) {
    double t = now();
    GEMV_PASS(float, LOAD, 0, NO_PF)
    (void)scale;
    return now() - t;
}
static double pass_bf16(const void *w, const float *scale, int64_t P) {
    double t = now();
    GEMV_PASS(uint16_t, widen_bf16, 0, NO_PF)
    (void)scale;
    return now() - t;
}
static double pass_i8(const void *w, const float *scale, int64_t P) {
    double t = now();
    GEMV_PASS(int8_t, WLOAD, 1, NO_PF)
    return now() - t;
}
static double pass_i8_pf(const void *w, const float *scale, int64_t P) {
    double t = now();
    GEMV_PASS(int8_t, WLOAD, 1, WPREFETCH)
    return now() - t;
}
static double pass_sum(const void *w, const float *scale, int64_t P) {
    const float *f = w;
    double t = now();
    float tot = 0;
#pragma omp parallel for schedule(static) reduction(+ : tot)
    for (int64_t p = 0; p < P; p++) {
        vf a[4][NV] = {{{0}}};
        const float *q = f + p * K * NB;
        for (int i = 0; i < K * NB; i += 4 * NB)
            for (int h = 0; h < NV; h++)
                for (int j = 0; j < 4; j++) a[j][h] += LOAD(q + i + j * NB + h * VW);
        for (int h = 0; h < NV; h++) {
            vf s = (a[0][h] + a[1][h]) + (a[2][h] + a[3][h]);
            for (int j = 0; j < VW; j++) tot += s[j];
        }
    }
    out[0] = tot;
    (void)scale;
    return now() - t;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int64_t P = 124000000 / (K * NB), n = P * K * NB;
    int R = argc > 1 ? atoi(argv[1]) : 15;
    if (R < 1 || R > 1000) R = 15;
    for (int i = 0; i < K; i++) x[i] = (float)(i % 7) * 0.1f;
    float *wf = huge_alloc(n * 4), *scale = huge_alloc(P * NB * 4);
    uint16_t *wh = huge_alloc(n * 2);
    int8_t *wb = huge_alloc(n);
    for (int64_t i = 0; i < n; i++) {
        wf[i] = (float)((i * 2654435761u) % 1000) / 1000.f - 0.5f;
        uint32_t u;
        memcpy(&u, &wf[i], 4);
        wh[i] = (uint16_t)(u >> 16);
        wb[i] = (int8_t)((i * 40503u) % 255 - 127);
    }
    for (int64_t i = 0; i < P * NB; i++) scale[i] = 0.01f;
    struct { const char *name; double (*run)(const void *, const float *, int64_t);
             const void *w; double bytes; } kinds[] = {
        {"sum f32", pass_sum, wf, n * 4.0}, {"gemv f32", pass_f32, wf, n * 4.0},
        {"gemv bf16", pass_bf16, wh, n * 2.0}, {"gemv int8", pass_i8, wb, n * 1.0},
        {"int8 +pf", pass_i8_pf, wb, n * 1.0}};
    enum { KINDS = sizeof kinds / sizeof kinds[0] };
    double *t = malloc(sizeof(double) * KINDS * R);
    for (int r = 0; r < R; r++) /* interleaved, so every kind sees the same host moments */
        for (int k = 0; k < KINDS; k++) t[k * R + r] = kinds[k].run(kinds[k].w, scale, P);
    for (int k = 0; k < KINDS; k++) {
        double *tk = t + k * R;
        qsort(tk, R, sizeof *tk, by_value);
        printf("%-9s best %6.2f ms (%5.1f GB/s)  median %6.2f ms (%5.1f GB/s)  %4.0f passes/s\n",
               kinds[k].name, tk[0] * 1e3, kinds[k].bytes / tk[0] / 1e9, tk[R / 2] * 1e3,
               kinds[k].bytes / tk[R / 2] / 1e9, 1 / tk[R / 2]);
    }
    free(t);
    return 0;
}
