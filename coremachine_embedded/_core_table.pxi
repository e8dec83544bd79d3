# The transition table (included by _core.pyx; the pure twin is _pure/table.py).

cdef class Table:
    """The compiled dispatch of a machine: (state id, event id) -> the tuple of
    candidate transitions.  The cells live in C (csrc/cm_dispatch.c); a lookup
    allocates nothing and returns the stored tuple itself."""
    cdef cm_table t
    cdef list runs

    def __cinit__(self, uint32_t n_states, uint32_t n_events):
        rc = cm_table_init(&self.t, n_states, n_events)
        if rc != 0:
            raise _error(rc, "transition table")
        self.runs = []

    def __dealloc__(self):
        cm_table_free(&self.t)

    def set(self, uint32_t state, uint32_t event, tuple candidates):
        if not candidates:
            raise InvalidArgumentError("a cell needs at least one transition")
        rc = cm_table_set(&self.t, state, event, len(self.runs), len(candidates))
        if rc != 0:
            raise _error(rc, "transition table")
        self.runs.append(candidates)

    def lookup(self, uint32_t state, uint32_t event):
        cdef uint32_t first = 0, count = 0
        cdef int rc = cm_table_lookup(&self.t, state, event, &first, &count)
        if rc == 1:
            return self.runs[first]
        if rc == 0:
            return None
        raise _error(rc, "transition table")
