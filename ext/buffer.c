/* buffer.c -- lock-free bounded queue of finished records (a Treiber stack reversed on take). */
#include "buffer.h"

#include <stdlib.h>

size_t
bu_record_bytes(const bu_record *r)
{
    return sizeof(bu_record) + r->size;
}

void
bu_buffer_init(bu_buffer *b, bu_stats *stats, size_t max_spans, size_t max_bytes)
{
    atomic_init(&b->head, NULL);
    atomic_init(&b->count, 0);
    atomic_init(&b->bytes, 0);
    b->max_spans = max_spans;
    b->max_bytes = max_bytes;
    b->stats = stats;
    atomic_init(&b->pool.returned, NULL);
    atomic_init(&b->pool.returned_bytes, 0);
    b->pool.local = NULL;
    b->pool.hits = b->pool.misses = 0;
}

int
bu_buffer_push(bu_buffer *b, bu_record *r)
{
    size_t sz = bu_record_bytes(r);
    /* Reserve room first so that concurrent pushers never overshoot the limits. */
    size_t n = atomic_fetch_add_explicit(&b->count, 1, memory_order_relaxed);
    size_t bytes = atomic_fetch_add_explicit(&b->bytes, sz, memory_order_relaxed);
    if (n >= b->max_spans || bytes + sz > b->max_bytes) {
        atomic_fetch_sub_explicit(&b->count, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&b->bytes, sz, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->stats->dropped_queue_full, 1, memory_order_relaxed);
        bu_record_free(r);
        return -1;
    }
    bu_record *head = atomic_load_explicit(&b->head, memory_order_relaxed);
    do {
        r->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&b->head, &head, r, memory_order_release,
                                                    memory_order_relaxed));
    return 0;
}

bu_record *
bu_buffer_take_all(bu_buffer *b)
{
    bu_record *list = atomic_exchange_explicit(&b->head, NULL, memory_order_acquire);
    bu_record *rev = NULL;
    size_t n = 0, bytes = 0;
    while (list) {
        bu_record *next = list->next;
        list->next = rev;
        rev = list;
        n++;
        bytes += bu_record_bytes(list);
        list = next;
    }
    atomic_fetch_sub_explicit(&b->count, n, memory_order_relaxed);
    atomic_fetch_sub_explicit(&b->bytes, bytes, memory_order_relaxed);
    return rev;
}

void
bu_buffer_clear(bu_buffer *b)
{
    bu_record_free_list(bu_buffer_take_all(b));
    bu_pool_clear(&b->pool);
}
