/* logids.h -- log correlation: a record factory storing the active span's ids on log records,
 * and records at or above a level into span logs (used by bu_osprofiler/logging.py). */
#ifndef BU_LOGIDS_H
#define BU_LOGIDS_H

#include "state.h"

/* _core.log_ids(span_level, max_logs, max_bytes, previous_factory[, traced_factory]) -> a new
 * LogIds (a record factory calling previous_factory first; inside a trace traced_factory when
 * given: a record class whose instance layout has room for the four fields). */
PyObject *bu_log_ids(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

#endif
