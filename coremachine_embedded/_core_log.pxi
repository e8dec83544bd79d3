# The log: a cm_core behind a Python object (included by _core.pyx; the pure
# twin is _pure/opening.py's Log).

cdef class Log:
    """A signed log in a store (see coremachine_embedded._pure.store.Log)."""
    cdef cm_core *core
    cdef cm_io *posix
    cdef _PyIO pyio
    cdef readonly object durability
    cdef readonly dict recovery
    cdef object directory
    cdef object failed

    def __cinit__(self):
        self.core = NULL
        self.posix = NULL

    def __init__(self, storage, *, create=False, secret_key=None, key=None, manifest=None,
                 compat=False, durability=Durability.SYNC, checkpoint_bytes=0,
                 max_block_size=0, readonly=False):
        cdef cm_open_opts opts
        cdef cm_recovery rec
        cdef bytes sk = _need(secret_key, "secret_key", 64) if secret_key is not None else None
        cdef bytes k = _need(key, "key", 32) if key is not None else None
        cdef bytes man = _need(manifest, "manifest") if manifest is not None else None
        if not isinstance(durability, Durability):
            raise ArgumentTypeError("durability must be a Durability")
        if readonly and (create or sk is not None):
            raise InvalidArgumentError("a read-only snapshot creates nothing and takes no "
                                       "secret key")
        self.durability = durability
        self.failed = None
        if isinstance(storage, str):
            self.directory = storage
            path = os.fsencode(storage)
            if cm_io_posix_new(path, &self.posix) != 0:
                raise MemoryError()
            opts.io = self.posix
        else:
            self.directory = None
            self.pyio = _PyIO(storage)
            opts.io = &self.pyio.io
        opts.create = 1 if create else 0
        opts.secret_key = <const uint8_t *>PyBytes_AS_STRING(sk) if sk is not None else NULL
        opts.key = <const uint8_t *>PyBytes_AS_STRING(k) if k is not None else NULL
        opts.manifest = <const uint8_t *>PyBytes_AS_STRING(man) if man is not None else NULL
        opts.manifest_len = len(man) if man is not None else 0
        opts.compat = 1 if compat else 0
        opts.durability = <cm_durability>durability.code
        opts.checkpoint_bytes = checkpoint_bytes
        opts.max_block_size = max_block_size
        opts.readonly = 1 if readonly else 0
        with nogil:
            rc = cm_core_open(&opts, &self.core, &rec)
        self.recovery = {"records_replayed": rec.records_replayed,
                         "bytes_discarded": rec.bytes_discarded,
                         "header_slot": rec.header_slot, "header_fallback": rec.header_fallback,
                         "forked": rec.forked}
        if rc != 0:
            self.core = NULL
            self._raise(rc, "open", rec.err_file, rec.err_errno)

    def __dealloc__(self):
        if self.core != NULL:
            cm_core_close(self.core)
            self.core = NULL
        if self.posix != NULL:
            cm_io_posix_free(self.posix)
            self.posix = NULL

    cdef int _raise(self, int rc, str what, int file_id, int err) except -1:
        if self.pyio is not None and self.pyio.error is not None:
            exc = self.pyio.error
            self.pyio.error = None
            raise exc
        name = FILE_NAMES[file_id] if 0 < file_id < len(FILE_NAMES) else None
        if name is not None and self.directory is not None:
            name = os.path.join(self.directory, name)
            if rc == CM_ERR_INSECURE:  # say what is wrong with it, as the pure backend does
                raise InsecureFileError(insecure(name) or "%s: insecure" % what, name)
        raise _error(rc, what, name, err or None)

    cdef int _check(self, int rc, str what, bint writing=False) except -1:
        if rc != 0:
            if writing and (rc == CM_ERR_IO or (self.pyio is not None and self.pyio.error is not None)):
                self.failed = rc  # the files may be ahead of the state in memory
            self._raise(rc, what, cm_core_err_file(self.core), cm_core_errno(self.core))
        return 0

    cdef cm_core *_c(self) except NULL:
        if self.core == NULL:
            raise from_code(CM_ERR_CLOSED, "the core is closed")
        if self.failed is not None:
            raise StorageError("the core stopped after an I/O error; reopen it")
        return self.core

    @property
    def length(self):
        return cm_core_length(self._c())

    @property
    def contiguous(self):
        return cm_core_contiguous_length(self._c())

    @property
    def fork(self):
        return cm_core_fork(self._c())

    @property
    def byte_length(self):
        return cm_core_byte_length(self._c())

    @property
    def writable(self):
        return bool(cm_core_writable(self._c()))

    @property
    def readonly(self):
        return bool(cm_core_readonly(self._c()))

    @property
    def compat(self):
        return bool(cm_core_compat(self._c()))

    @property
    def key(self):
        return PyBytes_FromStringAndSize(<const char *>cm_core_key(self._c()), 32)

    @property
    def discovery_key(self):
        return PyBytes_FromStringAndSize(<const char *>cm_core_discovery_key(self._c()), 32)

    @property
    def public_key(self):
        cdef uint8_t out[32]
        self._check(cm_core_public_key(self._c(), out), "public key")
        return PyBytes_FromStringAndSize(<const char *>out, 32)

    @property
    def manifest(self):
        cdef size_t n = 0
        cdef const uint8_t *p = cm_core_manifest(self._c(), &n)
        return PyBytes_FromStringAndSize(<const char *>p, n) if p != NULL and n else None

    @property
    def roots(self):
        cdef cm_node out[CM_MAX_ROOTS]
        cdef size_t n = cm_core_roots(self._c(), out)
        return [_node(&out[i]) for i in range(n)]

    def tree_hash(self):
        cdef uint8_t out[32]
        cm_core_tree_hash(self._c(), out)
        return PyBytes_FromStringAndSize(<const char *>out, 32)

    def signature(self):
        cdef uint8_t out[CM_MAX_SIGNATURE]
        cdef size_t n = 0
        cdef cm_core *c = self._c()
        with nogil:
            rc = cm_core_signature(c, out, sizeof(out), &n)
        self._check(rc, "signature")
        return PyBytes_FromStringAndSize(<const char *>out, n) if n else None

    def append(self, blocks):
        cdef cm_core *c = self._c()
        cdef size_t n = len(blocks)
        cdef cm_buf one
        cdef cm_buf *bufs = &one
        cdef uint64_t length = 0
        cdef bytes b
        if n > 1:
            bufs = <cm_buf *>PyMem_Malloc(n * sizeof(cm_buf))
            if bufs == NULL:
                raise MemoryError()
        try:
            for i in range(n):
                b = blocks[i]
                bufs[i].data = <const uint8_t *>PyBytes_AS_STRING(b)
                bufs[i].len = len(b)
            with nogil:
                rc = cm_core_append(c, bufs, n, &length)
            self._check(rc, "append", True)
        finally:
            if bufs != &one:
                PyMem_Free(bufs)
        return length

    def truncate(self, length, fork):
        cdef cm_core *c = self._c()
        if length < 0:
            raise from_code(CM_ERR_RANGE, "cannot truncate to %d" % length)
        if fork < 0 or fork > _U64_MAX:
            raise InvalidArgumentError("fork out of range")
        cdef uint64_t l = length, f = fork
        with nogil:
            rc = cm_core_truncate(c, l, f)
        self._check(rc, "truncate", True)

    def flush(self):
        cdef cm_core *c = self._c()
        with nogil:
            rc = cm_core_flush(c)
        self._check(rc, "flush", True)

    def checkpoint(self):
        cdef cm_core *c = self._c()
        with nogil:
            rc = cm_core_checkpoint(c)
        self._check(rc, "checkpoint", True)

    def close(self):
        cdef cm_core *c = self.core
        if c == NULL:
            return
        self.core = NULL
        with nogil:
            rc = cm_core_close(c)
        if self.posix != NULL:
            cm_io_posix_free(self.posix)
            self.posix = NULL
        if rc != 0 and self.failed is None:
            self._raise(rc, "close", 0, 0)

    cdef uint64_t _index(self, index) except? 0:
        if not isinstance(index, int):
            raise ArgumentTypeError("index must be an int")
        if index < 0 or index > _U64_MAX:
            raise from_code(CM_ERR_RANGE, "block %d is outside the log" % index)
        return index

    def block_size(self, index):
        cdef cm_core *c = self._c()
        cdef uint64_t i = self._index(index), size = 0
        with nogil:
            rc = cm_core_block_size(c, i, &size)
        self._check(rc, "block %d" % index)
        return size

    def get(self, index):
        cdef cm_core *c = self._c()
        cdef uint64_t i = self._index(index), size = 0
        cdef size_t got = 0
        with nogil:
            rc = cm_core_block_size(c, i, &size)
        self._check(rc, "block %d" % index)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
        with nogil:
            rc = cm_core_get(c, i, p, size, &got)
        self._check(rc, "block %d" % index)
        return out

    def get_range(self, start, end):
        cdef cm_core *c = self._c()
        cdef uint64_t s = self._index(start), e = self._index(end), total = 0, k
        cdef uint64_t *sizes = NULL
        cdef uint8_t *buf = NULL
        cdef size_t cap = 65536      # most runs fit: one call; else a second, at the size needed
        cdef Py_ssize_t at = 0
        if e < s:
            raise from_code(CM_ERR_RANGE, "blocks %d to %d: the end is before the start"
                            % (start, end))
        sizes = <uint64_t *>PyMem_Malloc((e - s + 1) * sizeof(uint64_t))
        buf = <uint8_t *>PyMem_Malloc(cap)
        try:
            if sizes == NULL or buf == NULL:
                raise MemoryError()
            with nogil:
                rc = cm_core_get_range(c, s, e, buf, cap, sizes, &total)
            if rc == CM_ERR_TOO_LARGE and total > cap:
                PyMem_Free(buf)
                cap = <size_t>total
                buf = <uint8_t *>PyMem_Malloc(cap)
                if buf == NULL:
                    raise MemoryError()
                with nogil:
                    rc = cm_core_get_range(c, s, e, buf, cap, sizes, &total)
            self._check(rc, "blocks %d to %d" % (start, end))
            out = []
            for k in range(e - s):
                out.append(PyBytes_FromStringAndSize(<char *>buf + at, <Py_ssize_t>sizes[k]))
                at += <Py_ssize_t>sizes[k]
            return out
        finally:
            PyMem_Free(sizes)
            PyMem_Free(buf)

    def get_node(self, index):
        cdef cm_core *c = self._c()
        cdef uint64_t i = self._index(index)
        cdef cm_node n
        with nogil:
            rc = cm_core_get_node(c, i, &n)
        self._check(rc, "node %d" % index)
        return _node(&n)

    def has_node(self, index):
        cdef cm_core *c = self._c()
        cdef uint64_t i = self._index(index)
        with nogil:
            rc = cm_core_has_node(c, i)
        if rc < 0:
            self._check(rc, "node %d" % index)
        return rc == 1

    def proof(self, request=0, block=None, nodes=0, upgrade=None, manifest=False):
        cdef cm_core *c = self._c()
        cdef cm_proof_request req
        cdef size_t need = 0
        cdef size_t cap = 4096
        req.request = request
        req.has_block = block is not None
        req.block_index = self._index(block) if block is not None else 0
        req.block_nodes = nodes
        req.has_upgrade = upgrade is not None
        if upgrade is not None:
            if upgrade[0] < 0 or upgrade[1] < 0:
                raise InvalidArgumentError("invalid upgrade")
            req.upgrade_start = upgrade[0]
            req.upgrade_length = upgrade[1]
        else:
            req.upgrade_start = 0
            req.upgrade_length = 0
        req.manifest = 1 if manifest else 0
        cdef uint8_t *buf
        while True:
            out = PyBytes_FromStringAndSize(NULL, cap)
            buf = <uint8_t *>PyBytes_AS_STRING(out)
            with nogil:
                rc = cm_core_proof(c, &req, buf, cap, &need)
            if rc == CM_ERR_TOO_LARGE and need > cap:
                cap = need
                continue
            self._check(rc, "proof")
            return out[:need]

    def missing_nodes(self, index):
        cdef cm_core *c = self._c()
        cdef uint64_t i = self._index(index), n = 0
        with nogil:
            rc = cm_core_missing_nodes(c, i, &n)
        self._check(rc, "missing nodes")
        return n

    def apply_proof(self, message):
        cdef cm_core *c = self._c()
        cdef bytes msg = _need(message, "proof")
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(msg)
        cdef size_t n = len(msg)
        cdef cm_apply_result r
        with nogil:
            rc = cm_core_apply_proof(c, p, n, &r)
        self._check(rc, "proof", True)
        out = ApplyResult()
        out.fork = r.fork
        out.upgraded = bool(r.upgraded)
        out.reorg = bool(r.reorg)
        out.reorg_length = r.reorg_length
        out.block_index = r.block_index if r.has_block else None
        out.block_stored = bool(r.block_stored)
        out.manifest_learned = bool(r.manifest_learned)
        out.length = cm_core_length(c)
        return out


    def apply_run(self, start, values):
        """Store a run of blocks proven by the node over them; returns blocks added."""
        cdef cm_core *c = self._c()
        cdef size_t n = len(values)
        cdef uint64_t s = self._index(start), stored = 0
        cdef cm_buf *bufs
        cdef bytes b
        if n < 2 or n > CM_MAX_RUN:
            raise InvalidArgumentError("a run is 2..%d blocks" % CM_MAX_RUN)
        bufs = <cm_buf *>PyMem_Malloc(n * sizeof(cm_buf))
        if bufs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                b = values[i]
                bufs[i].data = <const uint8_t *>PyBytes_AS_STRING(b)
                bufs[i].len = len(b)
            with nogil:
                rc = cm_core_apply_run(c, s, bufs, n, &stored)
            self._check(rc, "run", True)
        finally:
            PyMem_Free(bufs)
        return stored
