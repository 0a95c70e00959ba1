/* logids.h -- log correlation: a C LogRecord factory that stamps records with the active span's
 * ids and turns records at or above a level into span logs (bu_osprofiler/logging.py). */
#ifndef BU_LOGIDS_H
#define BU_LOGIDS_H

#include "state.h"

/* _core.log_factory(prev, span_level, max_logs, max_bytes) -> a new LogRecordFactory. */
PyObject *bu_log_factory(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

#endif
