/* freelist.h -- a few object-sized blocks kept for reuse on the hot paths (the `with` of
 * profiler.Trace allocates a trace point and two bound methods per use).
 *
 * Each freelist lives in the module state, so an interpreter only ever reuses memory from its
 * own allocator. The GIL serialises push and pop; a free-threaded build and the sanitizer build
 * (where reuse would hide a use after free from ASan) keep none. A block in a list holds no
 * reference and no type: PyObject_Init gives it both again when it is reused. The lists are
 * drained while their types are still alive (core_clear): freeing a GC block reads its type
 * on CPython 3.12+. */
#ifndef BU_FREELIST_H
#define BU_FREELIST_H

#if defined(Py_GIL_DISABLED) || defined(BU_NO_FREELIST)
#define BU_FREELIST_MAX 0
#else
#define BU_FREELIST_MAX 32
#endif

typedef struct {
    int n;
    void *items[BU_FREELIST_MAX > 0 ? BU_FREELIST_MAX : 1];
} bu_freelist;

/* A block, or NULL when the list is empty. */
static inline void *
bu_freelist_pop(bu_freelist *fl)
{
    return fl->n > 0 ? fl->items[--fl->n] : NULL;
}

/* A block from the list made an object of type `tp` again (refcount 1, a GC object untracked),
 * or NULL when the list is empty (the caller allocates). */
static inline void *
bu_freelist_reuse(bu_freelist *fl, PyTypeObject *tp)
{
    void *p = bu_freelist_pop(fl);
    if (p != NULL) {
        PyObject_Init((PyObject *)p, tp);
    }
    return p;
}

/* 1 when the list took the block, 0 when it is full (the caller frees the block). */
static inline int
bu_freelist_push(bu_freelist *fl, void *p)
{
    if (fl->n >= BU_FREELIST_MAX) {
        return 0;
    }
    fl->items[fl->n++] = p;
    return 1;
}

/* Free every block with `release` (PyObject_Free or PyObject_GC_Del, as the blocks were made). */
static inline void
bu_freelist_drain(bu_freelist *fl, void (*release)(void *))
{
    while (fl->n > 0) {
        release(fl->items[--fl->n]);
    }
}

#endif
