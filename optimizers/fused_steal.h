/* Work items shared between the decode step's threads (fused_decode.c): even shares,
 * then stealing from a slower thread's share, in a way that keeps the sums deterministic. */
#ifndef GPTEVAL_FUSED_STEAL_H
#define GPTEVAL_FUSED_STEAL_H
#include <stdatomic.h>
#include <stdint.h>

static inline void split(int64_t n, int t, int nt, int64_t *lo, int64_t *hi) {
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

/* Work stealing that keeps the sums deterministic.  A phase's work items (heads, blocks
 * of RB hidden units, blocks of HB lm_head panels) are split evenly; each thread takes
 * items from the front of its own range and, when that is empty, from the back of the
 * others' ranges.  A thread that runs slower (the host's cores do not stream equally:
 * 10-15 % apart for seconds at a time) then hands items to the faster one instead of
 * making it wait at the barrier.  Every item writes its own partial output and the
 * partials are added in item order, so the result does not depend on which thread took
 * what, nor on the thread count.
 * A range is (lo, hi) packed in one 64-bit word, claimed by compare-and-swap; each on
 * its own cache line.  A range is reset by its owner when a phase starts; a thief that
 * reads it earlier finds the previous phase's range, which is empty, so it steals
 * nothing. */
typedef struct {
    _Atomic uint64_t range;
    char pad[64 - sizeof(uint64_t)];
} Span;

static inline void span_reset(Span *s, int64_t lo, int64_t hi) {
    atomic_store_explicit(&s->range, (uint64_t)hi << 32 | (uint64_t)lo, memory_order_release);
}

static int64_t span_claim(Span *s, int back) {
    uint64_t cur = atomic_load_explicit(&s->range, memory_order_acquire);
    for (;;) {
        uint64_t lo = cur & 0xffffffffu, hi = cur >> 32;
        if (lo >= hi) return -1;
        uint64_t next = back ? (hi - 1) << 32 | lo : hi << 32 | (lo + 1);
        if (atomic_compare_exchange_weak_explicit(&s->range, &cur, next, memory_order_acq_rel,
                                                  memory_order_acquire))
            return (int64_t)(back ? hi - 1 : lo);
    }
}

/* starts a phase of n items: thread t's even share becomes its range */
static inline void items_begin(Span *spans, int t, int nt, int64_t n) {
    int64_t lo, hi;
    split(n, t, nt, &lo, &hi);
    span_reset(&spans[t], lo, hi);
}

/* the next item for thread t: its own range first, then the others', nearest first */
static int64_t next_item(Span *spans, int t, int nt) {
    int64_t i = span_claim(&spans[t], 0);
    for (int k = 1; i < 0 && k < nt; k++) i = span_claim(&spans[(t + k) % nt], 1);
    return i;
}
#endif
