/* pyrecord.h -- conversions between Python values and record data (tags, ids, whole records). */
#ifndef BU_PYRECORD_H
#define BU_PYRECORD_H

#include "state.h"

/* Append key/value as a typed tag: bool, int (int64; larger -> string), float, str, bytes;
 * anything else as str(value). -1 only on MemoryError (exception set). */
int bu_tag_put_py(bu_buf *b, PyObject *key, PyObject *value);
/* The same with a UTF-8 key. */
int bu_tag_put_value(bu_buf *b, const char *key, size_t klen, PyObject *value);
/* osprofiler trace-point info (a dict) flattened into tags the way upstream's Jaeger driver
 * named them: function.{name,args,kwargs,result} -> name/args/kwargs/result,
 * request.{path,...} -> http.path..., other nested dicts joined with '.'.
 * Returns the number of tags added or -1. */
Py_ssize_t bu_tags_put_info(bu_buf *b, PyObject *info);
/* Append every item of a mapping or an iterable of pairs; returns the number added or -1. */
Py_ssize_t bu_tags_put_items(bu_buf *b, PyObject *items);
/* n tags from *p (advancing it) into a new dict. */
PyObject *bu_tags_to_dict(const unsigned char **p, uint16_t n);

/* After a failed call whose error the tracer may swallow (a __str__ that raised): clear it and
 * return 0 when it is an Exception; leave it set and return -1 for any other BaseException
 * (KeyboardInterrupt, SystemExit, GeneratorExit...), which must reach the application. */
int bu_clear_exception(void);

/* 128-bit <-> Python int. from: new reference. to: 0 ok, -1 with an exception
 * (TypeError for a non-int, ValueError for a negative or > 128-bit value). */
PyObject *bu_pylong_from_u128(uint64_t hi, uint64_t lo);
int bu_u128_from_pylong(PyObject *o, uint64_t *hi, uint64_t *lo);
int bu_u64_from_pylong(PyObject *o, uint64_t *v); /* ValueError if it does not fit in 64 bits */

/* A record as the tuple finished_spans() wraps:
 * (trace_id, span_id, parent_id, flags, name, start_ns, end_ns, tags, logs, refs, service_name)
 * refs: list of (kind "child_of"|"follows_from", trace_id, span_id); logs: list of (ts_ns, dict). */
PyObject *bu_record_to_py(bu_state *st, const bu_record *r);

#endif
