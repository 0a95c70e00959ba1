/* ids.c -- fast per-thread id generation. */
#include "ids.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Per-thread generator state: the only mutable statics in the module (per thread: no lock).
 * One struct, so that a call resolves the thread-local address once (in a shared object every
 * separate thread-local variable costs a __tls_get_addr call). */
typedef struct {
    uint64_t s[4];
    uint64_t gen; /* fork generation the state was seeded for (UINT64_MAX: never seeded) */
} bu_rng;

static _Thread_local bu_rng rng = {{0, 0, 0, 0}, UINT64_MAX};

static inline uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t
splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void
seed(bu_rng *r, uint64_t gen)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s)) {
        /* No entropy yet (early boot): mix clocks, pid and a stack address instead. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid() ^
            (uint64_t)(uintptr_t)&ts;
    }
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix64(&s);
    }
    r->gen = gen;
}

/* One xoshiro256** step. */
static inline uint64_t
next(uint64_t *s)
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static inline uint64_t
next_nonzero(uint64_t *s)
{
    uint64_t v;
    do {
        v = next(s);
    } while (v == 0);
    return v;
}

static inline bu_rng *
thread_rng(uint64_t fork_gen)
{
    bu_rng *r = &rng;
    if (r->gen != fork_gen) {
        seed(r, fork_gen);
    }
    return r;
}

uint64_t
bu_rand64(uint64_t fork_gen)
{
    return next_nonzero(thread_rng(fork_gen)->s);
}

void
bu_rand_ids(uint64_t fork_gen, uint64_t *span, uint64_t *hi, uint64_t *lo)
{
    bu_rng *r = thread_rng(fork_gen);
    if (span != NULL) {
        *span = next_nonzero(r->s);
    }
    if (hi != NULL) {
        *hi = next(r->s);
    }
    if (lo != NULL) {
        *lo = next_nonzero(r->s);
    }
}
