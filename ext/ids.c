/* ids.c -- fast per-thread id generation. */
#include "ids.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Per-thread generator state: the only mutable statics in the module (DESIGN §8 allows these). */
static _Thread_local uint64_t rng_s[4];
static _Thread_local uint64_t rng_gen = UINT64_MAX;

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
seed(uint64_t gen)
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
        rng_s[i] = splitmix64(&s);
    }
    rng_gen = gen;
}

uint64_t
bu_rand64(uint64_t fork_gen)
{
    if (rng_gen != fork_gen) {
        seed(fork_gen);
    }
    for (;;) {
        uint64_t result = rotl(rng_s[1] * 5, 7) * 9;
        uint64_t t = rng_s[1] << 17;
        rng_s[2] ^= rng_s[0];
        rng_s[3] ^= rng_s[1];
        rng_s[1] ^= rng_s[2];
        rng_s[0] ^= rng_s[3];
        rng_s[2] ^= t;
        rng_s[3] = rotl(rng_s[3], 45);
        if (result != 0) {
            return result;
        }
    }
}
