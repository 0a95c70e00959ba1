/* record.c -- building and reading finished span records (see record.h for the layout). */
#include "record.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- growable buffer */

int
bu_buf_reserve(bu_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    unsigned char *p;
    if (b->borrowed) {
        p = malloc(cap);
        if (p == NULL) {
            return -1;
        }
        if (b->len) {
            memcpy(p, b->data, b->len);
        }
        b->borrowed = 0;
    }
    else {
        p = realloc(b->data, cap);
        if (p == NULL) {
            return -1;
        }
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void
bu_buf_free_heap(bu_buf *b)
{
    free(b->data);
}

static inline void
put_bytes(bu_buf *b, const void *p, size_t n)
{
    if (n) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}

/* Truncate at a UTF-8 character boundary so that encoders always emit valid strings. */
static size_t
utf8_cut(const char *s, size_t n, size_t limit)
{
    if (n <= limit) {
        return n;
    }
    n = limit;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) {
        n--;
    }
    return n;
}

static int
tag_head(bu_buf *b, uint8_t type, const char *key, size_t klen, size_t value_bytes)
{
    klen = utf8_cut(key, klen, BU_MAX_KEY);
    if (bu_buf_reserve(b, 3 + klen + value_bytes) < 0) {
        return -1;
    }
    uint16_t k16 = (uint16_t)klen;
    put_bytes(b, &type, 1);
    put_bytes(b, &k16, 2);
    put_bytes(b, key, klen);
    return 0;
}

int
bu_tag_put_str(bu_buf *b, const char *key, size_t klen, const char *val, size_t vlen)
{
    vlen = utf8_cut(val, vlen, BU_MAX_VALUE);
    if (tag_head(b, BU_TAG_STRING, key, klen, 4 + vlen) < 0) {
        return -1;
    }
    uint32_t v32 = (uint32_t)vlen;
    put_bytes(b, &v32, 4);
    put_bytes(b, val, vlen);
    return 0;
}

int
bu_tag_put_bin(bu_buf *b, const char *key, size_t klen, const void *val, size_t vlen)
{
    if (vlen > BU_MAX_VALUE) {
        vlen = BU_MAX_VALUE;
    }
    if (tag_head(b, BU_TAG_BINARY, key, klen, 4 + vlen) < 0) {
        return -1;
    }
    uint32_t v32 = (uint32_t)vlen;
    put_bytes(b, &v32, 4);
    put_bytes(b, val, vlen);
    return 0;
}

int
bu_tag_put_bool(bu_buf *b, const char *key, size_t klen, int val)
{
    if (tag_head(b, BU_TAG_BOOL, key, klen, 1) < 0) {
        return -1;
    }
    uint8_t v = val ? 1 : 0;
    put_bytes(b, &v, 1);
    return 0;
}

int
bu_tag_put_long(bu_buf *b, const char *key, size_t klen, int64_t val)
{
    if (tag_head(b, BU_TAG_LONG, key, klen, 8) < 0) {
        return -1;
    }
    put_bytes(b, &val, 8);
    return 0;
}

int
bu_tag_put_double(bu_buf *b, const char *key, size_t klen, double val)
{
    if (tag_head(b, BU_TAG_DOUBLE, key, klen, 8) < 0) {
        return -1;
    }
    put_bytes(b, &val, 8);
    return 0;
}

int
bu_ref_put(bu_buf *b, int kind, uint64_t trace_hi, uint64_t trace_lo, uint64_t span_id)
{
    if (bu_buf_reserve(b, BU_REF_SIZE) < 0) {
        return -1;
    }
    uint8_t k = (uint8_t)kind;
    put_bytes(b, &k, 1);
    put_bytes(b, &trace_hi, 8);
    put_bytes(b, &trace_lo, 8);
    put_bytes(b, &span_id, 8);
    return 0;
}

/* ---------------------------------------------------------------- records */

/* ---------------------------------------------------------------- record pool */

size_t
bu_record_list_caps(const bu_record *list, size_t *count)
{
    size_t bytes = 0, n = 0;
    for (; list != NULL; list = list->next) {
        bytes += list->cap;
        n++;
    }
    if (count != NULL) {
        *count = n;
    }
    return bytes;
}

/* A record of `need` bytes from the pool, or NULL (then the caller mallocs). GIL held. */
static bu_record *
pool_take(bu_pool *p, size_t need)
{
    bu_record *r = p->local;
    if (r == NULL) {
        if (atomic_load_explicit(&p->returned, memory_order_relaxed) == NULL) {
            p->misses++;
            return NULL;
        }
        r = atomic_exchange_explicit(&p->returned, NULL, memory_order_acquire);
        atomic_fetch_sub_explicit(&p->returned_bytes, bu_record_list_caps(r, NULL),
                                  memory_order_relaxed);
        if (r == NULL) {
            p->misses++;
            return NULL;
        }
    }
    p->local = r->next;
    if (r->cap < need) {
        bu_record *g = realloc(r, need);
        if (g == NULL) {
            free(r);
            p->misses++;
            return NULL;
        }
        r = g;
        r->cap = (uint32_t)need;
    }
    p->hits++;
    return r;
}

void
bu_pool_put_list(bu_pool *p, bu_record *list)
{
    if (list == NULL) {
        return;
    }
    /* Keep what fits under the bound (one load of the byte count per list), free the rest. */
    size_t have = atomic_load_explicit(&p->returned_bytes, memory_order_relaxed);
    size_t room = have < BU_POOL_MAX_TOTAL ? BU_POOL_MAX_TOTAL - have : 0;
    bu_record *first = NULL, *last = NULL;
    size_t kept = 0;
    while (list != NULL) {
        bu_record *next = list->next;
        if (list->cap <= BU_POOL_MAX_BYTES && kept + list->cap <= room) {
            list->next = first;
            if (first == NULL) {
                last = list;
            }
            first = list;
            kept += list->cap;
        }
        else {
            free(list);
        }
        list = next;
    }
    if (first == NULL) {
        return;
    }
    atomic_fetch_add_explicit(&p->returned_bytes, kept, memory_order_relaxed);
    bu_record *head = atomic_load_explicit(&p->returned, memory_order_relaxed);
    do {
        last->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&p->returned, &head, first,
                                                    memory_order_release, memory_order_relaxed));
}

void
bu_pool_trim(bu_pool *p)
{
    if (atomic_load_explicit(&p->returned, memory_order_relaxed) == NULL) {
        return;
    }
    bu_record *list = atomic_exchange_explicit(&p->returned, NULL, memory_order_acquire);
    atomic_fetch_sub_explicit(&p->returned_bytes, bu_record_list_caps(list, NULL),
                              memory_order_relaxed);
    bu_record_free_list(list);
}

void
bu_pool_clear(bu_pool *p)
{
    bu_record_free_list(p->local);
    p->local = NULL;
    bu_record_free_list(atomic_exchange_explicit(&p->returned, NULL, memory_order_acquire));
    atomic_store_explicit(&p->returned_bytes, 0, memory_order_relaxed);
}

/* ---------------------------------------------------------------- records */

bu_record *
bu_record_build(bu_pool *pool, uint64_t trace_hi, uint64_t trace_lo, uint64_t span_id,
                uint64_t parent_id, uint32_t flags, int64_t start_ns, int64_t duration_ns,
                uint16_t service, const char *name, size_t name_len, const bu_buf *refs,
                uint16_t nrefs, const bu_buf *tags, uint16_t ntags, const bu_buf *logs,
                uint16_t nlogs)
{
    name_len = utf8_cut(name, name_len, 0xFFFF);
    size_t rlen = refs ? refs->len : 0, tlen = tags ? tags->len : 0, llen = logs ? logs->len : 0;
    size_t size = name_len + rlen + tlen + llen;
    if (size > UINT32_MAX - sizeof(bu_record)) {
        return NULL;
    }
    size_t need = sizeof(bu_record) + size;
    bu_record *r = NULL;
    if (pool != NULL && need <= BU_POOL_MAX_BYTES) {
        r = pool_take(pool, need);
    }
    if (r == NULL) {
        r = malloc(need);
        if (r == NULL) {
            return NULL;
        }
        r->cap = (uint32_t)need;
    }
    r->next = NULL;
    r->trace_hi = trace_hi;
    r->trace_lo = trace_lo;
    r->span_id = span_id;
    r->parent_id = parent_id;
    r->flags = flags;
    r->start_ns = start_ns;
    r->duration_ns = duration_ns < 0 ? 0 : duration_ns;
    r->service = service;
    r->w3c_flags = 0;
    r->size = (uint32_t)size;
    r->name_len = (uint16_t)name_len;
    r->nrefs = nrefs;
    r->ntags = ntags;
    r->nlogs = nlogs;
    unsigned char *p = r->data;
    if (name_len) {
        memcpy(p, name, name_len);
    }
    p += name_len;
    if (rlen) {
        memcpy(p, refs->data, rlen);
    }
    p += rlen;
    r->tags_off = (uint32_t)(p - r->data);
    if (tlen) {
        memcpy(p, tags->data, tlen);
    }
    p += tlen;
    r->logs_off = (uint32_t)(p - r->data);
    if (llen) {
        memcpy(p, logs->data, llen);
    }
    return r;
}

bu_record *
bu_record_new(uint64_t trace_hi, uint64_t trace_lo, uint64_t span_id, uint64_t parent_id,
              uint32_t flags, int64_t start_ns, int64_t duration_ns, uint16_t service,
              const char *name, size_t name_len, const bu_buf *refs, uint16_t nrefs,
              const bu_buf *tags, uint16_t ntags, const bu_buf *logs, uint16_t nlogs)
{
    return bu_record_build(NULL, trace_hi, trace_lo, span_id, parent_id, flags, start_ns,
                           duration_ns, service, name, name_len, refs, nrefs, tags, ntags, logs,
                           nlogs);
}

void
bu_record_free(bu_record *r)
{
    free(r);
}

void
bu_record_free_list(bu_record *r)
{
    while (r) {
        bu_record *n = r->next;
        free(r);
        r = n;
    }
}

void
bu_record_ref(const bu_record *r, uint16_t i, bu_ref *out)
{
    const unsigned char *p = r->data + r->name_len + (size_t)i * BU_REF_SIZE;
    out->kind = p[0];
    memcpy(&out->trace_hi, p + 1, 8);
    memcpy(&out->trace_lo, p + 9, 8);
    memcpy(&out->span_id, p + 17, 8);
}

void
bu_tag_read(const unsigned char **pp, bu_tag *t)
{
    const unsigned char *p = *pp;
    t->type = p[0];
    memcpy(&t->key_len, p + 1, 2);
    t->key = (const char *)p + 3;
    p += 3 + t->key_len;
    t->val = NULL;
    t->val_len = 0;
    t->l = 0;
    t->d = 0.0;
    switch (t->type) {
    case BU_TAG_STRING:
    case BU_TAG_BINARY:
        memcpy(&t->val_len, p, 4);
        t->val = (const char *)p + 4;
        p += 4 + t->val_len;
        break;
    case BU_TAG_BOOL:
        t->l = p[0];
        p += 1;
        break;
    case BU_TAG_LONG:
        memcpy(&t->l, p, 8);
        p += 8;
        break;
    case BU_TAG_DOUBLE:
        memcpy(&t->d, p, 8);
        p += 8;
        break;
    default:
        break;
    }
    *pp = p;
}

void
bu_log_read(const unsigned char **pp, int64_t *ts_ns, uint16_t *nfields)
{
    memcpy(ts_ns, *pp, 8);
    memcpy(nfields, *pp + 8, 2);
    *pp += 10;
}
