/* ids.h -- span / trace ids from a per-thread PRNG (xoshiro256**), seeded once per thread from the
 * OS and re-seeded when the module's fork generation changes (in a forked child). */
#ifndef BU_IDS_H
#define BU_IDS_H

#include <stdint.h>

/* A non-zero random 64-bit value. `fork_gen` is the module's fork generation. */
uint64_t bu_rand64(uint64_t fork_gen);
/* A span id and, for a new root, a trace id, in one visit of the thread's generator: *span and
 * *lo are non-zero, *hi is random; a NULL pointer is skipped (no value drawn for it). */
void bu_rand_ids(uint64_t fork_gen, uint64_t *span, uint64_t *hi, uint64_t *lo);

#endif
