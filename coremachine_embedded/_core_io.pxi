# A Python storage (storage.Storage) behind the C core's cm_io callbacks, which
# hold the GIL (included by _core.pyx).

cdef class _PyIO:
    """Adapts a Python storage object (storage.Storage) to cm_io callbacks."""
    cdef object storage
    cdef object error     # the first Python exception a callback swallowed
    cdef cm_io io

    def __cinit__(self, storage):
        self.storage = storage
        self.error = None
        self.io.ctx = <void *>self
        self.io.open = _io_open
        self.io.read = _io_read
        self.io.write = _io_write
        self.io.sync = _io_sync
        self.io.truncate = _io_truncate
        self.io.size = _io_size
        self.io.lock = _io_lock
        self.io.close = _io_close
        self.io.flush = _io_flush

    cdef int fail(self, exc) noexcept:
        if self.error is None:
            self.error = exc
        if isinstance(exc, StoreNotFoundError):
            return CM_ERR_NOT_FOUND
        if isinstance(exc, StoreLockedError):
            return CM_ERR_LOCKED
        if isinstance(exc, InsecureFileError):
            return CM_ERR_INSECURE
        return CM_ERR_IO


cdef int _io_open(void *ctx, const char *name, int flags, void **file) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        f = self.storage.open(name.decode(), (CREATE if flags & CM_IO_CREATE else 0)
                              | (PRIVATE if flags & CM_IO_PRIVATE else 0)
                              | (READONLY if flags & CM_IO_READONLY else 0))
    except BaseException as e:
        if isinstance(e, StoreNotFoundError):
            return CM_ERR_NOT_FOUND  # an expected answer, not an error to re-raise
        if flags & CM_IO_READONLY and isinstance(e, StorageError) and e.errno == EACCES:
            c_errno.errno = EACCES  # a snapshot may not read the secret key: an answer
            return CM_ERR_IO
        return self.fail(e)
    Py_INCREF(f)
    file[0] = <void *>f
    return 0


cdef int64_t _io_read(void *ctx, void *file, uint8_t *buf, size_t size, uint64_t off) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    cdef bytes data
    try:
        data = bytes((<object>file).read(size, off))
        n = min(<size_t>len(data), size)
        memcpy(buf, PyBytes_AS_STRING(data), n)
        return n
    except BaseException as e:
        return self.fail(e)


cdef int _io_write(void *ctx, void *file, const uint8_t *buf, size_t size, uint64_t off) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        (<object>file).write(PyBytes_FromStringAndSize(<const char *>buf, size), off)
        return 0
    except BaseException as e:
        return self.fail(e)


cdef int _io_sync(void *ctx, void *file) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        (<object>file).sync()
        return 0
    except BaseException as e:
        return self.fail(e)


cdef int _io_flush(void *ctx, void *file) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        flush = getattr(<object>file, "flush", None)   # optional: write-behind only
        if flush is not None:
            flush()
        return 0
    except BaseException as e:
        return self.fail(e)


cdef int _io_truncate(void *ctx, void *file, uint64_t size) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        (<object>file).truncate(size)
        return 0
    except BaseException as e:
        return self.fail(e)


cdef int _io_size(void *ctx, void *file, uint64_t *size) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        size[0] = (<object>file).size()
        return 0
    except BaseException as e:
        return self.fail(e)


cdef int _io_lock(void *ctx, void *file) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        (<object>file).lock()
        return 0
    except BaseException as e:
        return self.fail(e)


cdef void _io_close(void *ctx, void *file) noexcept with gil:
    f = <object>file
    try:
        f.close()
    except BaseException:
        pass
    Py_DECREF(f)
