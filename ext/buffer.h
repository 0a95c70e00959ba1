/* buffer.h -- bounded multi-producer queue of finished span records, plus counters.
 *
 * Producers (application threads) push with one atomic compare-and-swap: no lock, no wait.
 * The consumer (flusher thread or memory:// reader) takes everything at once with one atomic exchange.
 * Limits are in spans and in bytes; a push over a limit drops the record and counts it.
 */
#ifndef BU_BUFFER_H
#define BU_BUFFER_H

#include <stdatomic.h>
#include <stdint.h>
#include "record.h"

typedef struct {
    atomic_uint_fast64_t started, finished, sampled, exported;
    atomic_uint_fast64_t dropped_queue_full, dropped_too_large, dropped_send_failed;
    atomic_uint_fast64_t batches_sent, bytes_sent, send_errors;
} bu_stats;

/* +1 on a counter whose writers all hold the GIL (spans started / finished / sampled): the GIL
 * serialises the read-modify-write, so a relaxed load and store do (plain moves on x86) instead
 * of a locked add; readers on other threads (the flusher's ClientStats) still read it
 * atomically. Counters written without the GIL (drops, exports) keep atomic_fetch_add. */
static inline void
bu_count_gil(atomic_uint_fast64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

typedef struct {
    _Atomic(bu_record *) head;
    atomic_size_t count, bytes;
    size_t max_spans, max_bytes;
    bu_stats *stats;
    bu_pool pool; /* records the consumers handed back (record.h) */
} bu_buffer;

void bu_buffer_init(bu_buffer *b, bu_stats *stats, size_t max_spans, size_t max_bytes);
/* Push a finished record; on overflow the record is freed and counted. Returns 0 queued, -1 dropped. */
int bu_buffer_push(bu_buffer *b, bu_record *r);
/* Take every queued record, oldest first (NULL when empty). Caller owns the list. */
bu_record *bu_buffer_take_all(bu_buffer *b);
/* The consumer is done with records it took: they go back to the producers' pool (or are freed). */
static inline void
bu_buffer_recycle(bu_buffer *b, bu_record *list)
{
    bu_pool_put_list(&b->pool, list);
}
/* Drop everything queued (after fork in the child: the parent owns those spans) and the pool. */
void bu_buffer_clear(bu_buffer *b);
size_t bu_record_bytes(const bu_record *r);

#endif
