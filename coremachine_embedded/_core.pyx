# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
"""The C backend: a thin Cython layer over csrc/ (cm.h).

Exports exactly the names of ``coremachine_embedded._pure``.  Errors from the C
core are negative codes mapped to exceptions by ``errors.C_ERRORS``.  A store
is either a directory (the C core's POSIX io) or a Python storage object (the
injectable file interface), reached through C callbacks that hold the GIL.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import os

from .errors import (ArgumentTypeError, CoreMachineError, InvalidArgumentError,
                     StorageError, StoreLockedError, StoreNotFoundError, TooLargeError,
                     FILE_NAMES, from_code)
from .proofs import ApplyResult, Check
from .storage import CREATE, PRIVATE

NAME = "c"


cdef extern from "cm.h":
    ctypedef struct cm_node:
        uint64_t index
        uint64_t size
        uint8_t hash[32]

    int CM_OK
    int CM_ERR_IO
    int CM_ERR_NOT_FOUND
    int CM_ERR_LOCKED
    int CM_ERR_TOO_LARGE
    int CM_ERR_RANGE
    int CM_MAX_ROOTS
    int CM_MAX_MANIFEST
    int CM_MAX_SIGNATURE

    const char *cm_strerror(int err)
    int cm_init()

    size_t cm_ft_full_roots(uint64_t length, uint64_t *out)
    void cm_hash_leaf(uint64_t block_index, const uint8_t *data, size_t len, cm_node *out)
    void cm_hash_parent(const cm_node *a, const cm_node *b, cm_node *out)
    void cm_hash_tree(const cm_node *roots, size_t n, uint8_t *out)
    void cm_discovery_key(const uint8_t *key, uint8_t *out)
    int cm_keypair_from_seed(const uint8_t *seed, uint8_t *pk, uint8_t *sk)
    int cm_keypair_generate(uint8_t *pk, uint8_t *sk)
    int cm_sign(const uint8_t *msg, size_t len, const uint8_t *sk, uint8_t *sig)
    int cm_verify(const uint8_t *msg, size_t len, const uint8_t *sig, const uint8_t *pk)

    ctypedef struct cm_manifest:
        pass
    void cm_manifest_default(const uint8_t *public_key, cm_manifest *out)
    int cm_manifest_encode(const cm_manifest *m, uint8_t *out, size_t cap, size_t *len)
    void cm_manifest_hash(const uint8_t *encoded, size_t len, uint8_t *out)

    ctypedef struct cm_verifier:
        pass
    int cm_verifier_init(cm_verifier *v, const uint8_t *key, const uint8_t *manifest,
                         size_t manifest_len)
    int cm_verifier_check(const cm_verifier *v, const uint8_t *tree_hash, uint64_t length,
                          uint64_t fork, const uint8_t *sig, size_t sig_len)

    ctypedef struct cm_data_msg:
        pass
    int cm_data_decode(const uint8_t *buf, size_t len, cm_data_msg *out)

    ctypedef struct cm_proof_check:
        int has_unverified
        cm_node unverified
        int upgraded
        uint64_t length
        uint64_t byte_length
        size_t n_roots
        cm_node roots[64]
        uint8_t tree_hash[32]
        size_t n_nodes
        cm_node nodes[384]
    int cm_proof_check_msg(const cm_verifier *v, const cm_node *roots, size_t n_roots,
                           const cm_data_msg *m, cm_proof_check *out)

    ctypedef struct cm_io:
        void *ctx
        int (*open)(void *ctx, const char *name, int flags, void **file) noexcept
        int64_t (*read)(void *ctx, void *file, uint8_t *buf, size_t len, uint64_t off) noexcept
        int (*write)(void *ctx, void *file, const uint8_t *buf, size_t len, uint64_t off) noexcept
        int (*sync)(void *ctx, void *file) noexcept
        int (*truncate)(void *ctx, void *file, uint64_t size) noexcept
        int (*size)(void *ctx, void *file, uint64_t *size) noexcept
        int (*lock)(void *ctx, void *file) noexcept
        void (*close)(void *ctx, void *file) noexcept

    int cm_io_posix_new(const char *directory, cm_io **out)
    void cm_io_posix_free(cm_io *io)

    ctypedef enum cm_durability:
        CM_DURABLE_SYNC
        CM_DURABLE_BATCH
        CM_DURABLE_NONE

    ctypedef struct cm_open_opts:
        const cm_io *io
        int create
        const uint8_t *secret_key
        const uint8_t *key
        const uint8_t *manifest
        size_t manifest_len
        int compat
        cm_durability durability
        uint64_t checkpoint_bytes
        uint64_t max_block_size

    ctypedef struct cm_core:
        pass

    ctypedef struct cm_recovery:
        uint64_t records_replayed
        uint64_t bytes_discarded
        int header_slot
        int header_fallback

    int cm_core_open(const cm_open_opts *opts, cm_core **out, cm_recovery *recovery) nogil
    int cm_core_close(cm_core *core) nogil
    int cm_core_err_file(const cm_core *core)
    int cm_core_errno(const cm_core *core)
    int cm_open_err_file()

    uint64_t cm_core_length(const cm_core *core)
    uint64_t cm_core_contiguous_length(const cm_core *core)
    uint64_t cm_core_fork(const cm_core *core)
    uint64_t cm_core_byte_length(const cm_core *core)
    int cm_core_writable(const cm_core *core)
    int cm_core_compat(const cm_core *core)
    const uint8_t *cm_core_key(const cm_core *core)
    const uint8_t *cm_core_discovery_key(const cm_core *core)
    const uint8_t *cm_core_manifest(const cm_core *core, size_t *len)
    void cm_core_tree_hash(const cm_core *core, uint8_t *out)
    size_t cm_core_roots(const cm_core *core, cm_node *out)
    int cm_core_signature(cm_core *core, uint8_t *out, size_t cap, size_t *len) nogil
    int cm_core_public_key(const cm_core *core, uint8_t *out)

    ctypedef struct cm_buf:
        const uint8_t *data
        size_t len

    int cm_core_append(cm_core *core, const cm_buf *blocks, size_t n, uint64_t *new_length) nogil
    int cm_core_truncate(cm_core *core, uint64_t length, uint64_t fork) nogil
    int cm_core_flush(cm_core *core) nogil
    int cm_core_checkpoint(cm_core *core) nogil
    int cm_core_block_size(cm_core *core, uint64_t index, uint64_t *size) nogil
    int cm_core_get(cm_core *core, uint64_t index, uint8_t *buf, size_t cap, size_t *len) nogil
    int cm_core_get_range(cm_core *core, uint64_t start, uint64_t end, uint8_t *buf, size_t cap,
                          uint64_t *sizes, uint64_t *total) nogil
    int cm_core_get_node(cm_core *core, uint64_t index, cm_node *out) nogil
    int cm_core_has_node(cm_core *core, uint64_t index) nogil

    ctypedef struct cm_proof_request:
        uint64_t request
        int has_block
        uint64_t block_index
        uint64_t block_nodes
        int has_upgrade
        uint64_t upgrade_start
        uint64_t upgrade_length
        int manifest

    int cm_core_proof(cm_core *core, const cm_proof_request *req, uint8_t *out, size_t cap,
                      size_t *len) nogil
    int cm_core_missing_nodes(cm_core *core, uint64_t index, uint64_t *nodes) nogil

    ctypedef struct cm_apply_result:
        uint64_t fork
        int upgraded
        int reorg
        uint64_t reorg_length
        int has_block
        uint64_t block_index
        int block_stored
        int manifest_learned

    int cm_core_apply_proof(cm_core *core, const uint8_t *msg, size_t len,
                            cm_apply_result *out) nogil
    int cm_core_apply_run(cm_core *core, uint64_t start, const cm_buf *values, size_t n,
                          uint64_t *stored) nogil


cdef extern from "cm.h":
    ctypedef struct cm_table:
        uint32_t n_states
        uint32_t n_events
    int cm_aead_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, size_t ad_len,
                     const uint8_t *msg, size_t len, uint8_t *out)
    int cm_aead_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, size_t ad_len,
                     const uint8_t *ct, size_t ct_len, uint8_t *out)
    int cm_table_init(cm_table *t, uint32_t n_states, uint32_t n_events)
    void cm_table_free(cm_table *t)
    int cm_table_set(cm_table *t, uint32_t state, uint32_t event, uint32_t first, uint32_t count)
    int cm_table_lookup(const cm_table *t, uint32_t state, uint32_t event, uint32_t *first,
                        uint32_t *count) nogil


if cm_init() != 0:
    raise ImportError("libsodium failed to initialise")

_DURABILITY = {"sync": CM_DURABLE_SYNC, "batch": CM_DURABLE_BATCH, "none": CM_DURABLE_NONE}
_U64_MAX = 0xFFFFFFFFFFFFFFFF


cdef inline tuple _node(const cm_node *n):
    return (n.index, n.size, PyBytes_FromStringAndSize(<const char *>n.hash, 32))


cdef int _to_node(object t, cm_node *out) except -1:
    index, size, digest = t
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise InvalidArgumentError("a node hash must be 32 bytes")
    out.index = index
    out.size = size
    memcpy(out.hash, PyBytes_AS_STRING(digest), 32)
    return 0


cdef bytes _need(object value, str name, Py_ssize_t size=-1):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ArgumentTypeError("%s must be bytes, not %s" % (name, type(value).__name__))
    value = bytes(value)
    if size >= 0 and len(value) != size:
        raise InvalidArgumentError("%s must be %d bytes, not %d" % (name, size, len(value)))
    return value


cdef object _error(int code, str what, object filename=None, object err=None):
    message = "%s: %s" % (what, cm_strerror(code).decode()) if what else cm_strerror(code).decode()
    return from_code(code, message, filename, err)


# --- stateless functions --------------------------------------------------------

def full_roots(uint64_t length):
    cdef uint64_t out[64]
    cdef size_t n = cm_ft_full_roots(length, out)
    return [out[i] for i in range(n)]


def hash_leaf(uint64_t block_index, data):
    cdef bytes b = _need(data, "data")
    cdef cm_node n
    cm_hash_leaf(block_index, <const uint8_t *>PyBytes_AS_STRING(b), len(b), &n)
    return _node(&n)


def hash_parent(a, b, uint64_t index):
    cdef cm_node x, y, out
    _to_node(a, &x)
    _to_node(b, &y)
    cm_hash_parent(&x, &y, &out)
    out.index = index
    return _node(&out)


def tree_hash(roots):
    cdef size_t n = len(roots)
    cdef cm_node nodes[64]
    if n > 64:
        raise InvalidArgumentError("at most 64 roots")
    for i in range(n):
        _to_node(roots[i], &nodes[i])
    cdef uint8_t out[32]
    cm_hash_tree(nodes, n, out)
    return PyBytes_FromStringAndSize(<const char *>out, 32)


def discovery_key(key):
    cdef bytes k = _need(key, "key", 32)
    cdef uint8_t out[32]
    cm_discovery_key(<const uint8_t *>PyBytes_AS_STRING(k), out)
    return PyBytes_FromStringAndSize(<const char *>out, 32)


def keypair_from_seed(seed):
    cdef bytes s = _need(seed, "seed", 32)
    cdef uint8_t pk[32]
    cdef uint8_t sk[64]
    if cm_keypair_from_seed(<const uint8_t *>PyBytes_AS_STRING(s), pk, sk) != 0:
        raise InvalidArgumentError("invalid seed")
    return PyBytes_FromStringAndSize(<const char *>pk, 32), PyBytes_FromStringAndSize(<const char *>sk, 64)


def keypair_generate():
    cdef uint8_t pk[32]
    cdef uint8_t sk[64]
    cm_keypair_generate(pk, sk)
    return PyBytes_FromStringAndSize(<const char *>pk, 32), PyBytes_FromStringAndSize(<const char *>sk, 64)


def sign(message, secret_key):
    cdef bytes m = _need(message, "message")
    cdef bytes k = _need(secret_key, "secret_key", 64)
    cdef uint8_t sig[64]
    cm_sign(<const uint8_t *>PyBytes_AS_STRING(m), len(m), <const uint8_t *>PyBytes_AS_STRING(k), sig)
    return PyBytes_FromStringAndSize(<const char *>sig, 64)


def verify(message, signature, public_key):
    cdef bytes m = _need(message, "message")
    cdef bytes s = _need(signature, "signature", 64)
    cdef bytes k = _need(public_key, "public_key", 32)
    return cm_verify(<const uint8_t *>PyBytes_AS_STRING(m), len(m),
                     <const uint8_t *>PyBytes_AS_STRING(s), <const uint8_t *>PyBytes_AS_STRING(k)) == 0


def default_manifest(public_key):
    cdef bytes k = _need(public_key, "public_key", 32)
    cdef cm_manifest m
    cdef uint8_t out[1024]
    cdef size_t n = 0
    cm_manifest_default(<const uint8_t *>PyBytes_AS_STRING(k), &m)
    rc = cm_manifest_encode(&m, out, sizeof(out), &n)
    if rc != 0:
        raise _error(rc, "manifest")
    return PyBytes_FromStringAndSize(<const char *>out, n)


def manifest_hash(encoded):
    cdef bytes m = _need(encoded, "manifest")
    cdef uint8_t out[32]
    cm_manifest_hash(<const uint8_t *>PyBytes_AS_STRING(m), len(m), out)
    return PyBytes_FromStringAndSize(<const char *>out, 32)


def check_signature(key, manifest, tree_hash, uint64_t length, uint64_t fork, signature):
    """Raise InvalidSignatureError unless ``signature`` signs the state."""
    cdef bytes k = _need(key, "key", 32)
    cdef bytes man = _need(manifest, "manifest") if manifest is not None else None
    cdef bytes th = _need(tree_hash, "tree_hash", 32)
    cdef bytes sig = _need(signature, "signature")
    cdef cm_verifier v
    rc = cm_verifier_init(&v, <const uint8_t *>PyBytes_AS_STRING(k),
                          <const uint8_t *>PyBytes_AS_STRING(man) if man is not None else NULL,
                          len(man) if man is not None else 0)
    if rc != 0:
        raise _error(rc, "verifier")
    rc = cm_verifier_check(&v, <const uint8_t *>PyBytes_AS_STRING(th), length, fork,
                           <const uint8_t *>PyBytes_AS_STRING(sig), len(sig))
    if rc != 0:
        raise _error(rc, "signature")


def check_proof(key, manifest, roots, message):
    """Verify a data message against trusted ``roots`` (stateless)."""
    cdef bytes k = _need(key, "key", 32)
    cdef bytes man = _need(manifest, "manifest") if manifest is not None else None
    cdef bytes msg = _need(message, "message")
    cdef cm_verifier v
    cdef cm_data_msg *m = NULL
    cdef cm_proof_check *chk = NULL
    cdef cm_node trusted[64]
    if len(roots) > 64:
        raise InvalidArgumentError("at most 64 roots")
    for i in range(len(roots)):
        _to_node(roots[i], &trusted[i])
    rc = cm_verifier_init(&v, <const uint8_t *>PyBytes_AS_STRING(k),
                          <const uint8_t *>PyBytes_AS_STRING(man) if man is not None else NULL,
                          len(man) if man is not None else 0)
    if rc != 0:
        raise _error(rc, "verifier")
    m = <cm_data_msg *>PyMem_Malloc(sizeof(cm_data_msg))
    chk = <cm_proof_check *>PyMem_Malloc(sizeof(cm_proof_check))
    try:
        if m == NULL or chk == NULL:
            raise MemoryError()
        rc = cm_data_decode(<const uint8_t *>PyBytes_AS_STRING(msg), len(msg), m)
        if rc != 0:
            raise _error(rc, "data message")
        rc = cm_proof_check_msg(&v, trusted, len(roots), m, chk)
        if rc != 0:
            raise _error(rc, "proof")
        out = Check()
        out.unverified = _node(&chk.unverified) if chk.has_unverified else None
        out.upgraded = bool(chk.upgraded)
        out.length = chk.length
        out.byte_length = chk.byte_length
        out.roots = [_node(&chk.roots[i]) for i in range(chk.n_roots)]
        out.tree_hash = PyBytes_FromStringAndSize(<const char *>chk.tree_hash, 32)
        out.nodes = [_node(&chk.nodes[i]) for i in range(chk.n_nodes)]
        return out
    finally:
        PyMem_Free(m)
        PyMem_Free(chk)


def aead_seal(key, nonce, ad, message):
    """XChaCha20-Poly1305: the ciphertext with its 16-byte tag."""
    cdef bytes k = _need(key, "key", 32)
    cdef bytes n = _need(nonce, "nonce", 24)
    cdef bytes a = _need(ad, "ad")
    cdef bytes m = _need(message, "message")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, len(m) + 16)
    cm_aead_seal(<const uint8_t *>PyBytes_AS_STRING(k), <const uint8_t *>PyBytes_AS_STRING(n),
                 <const uint8_t *>PyBytes_AS_STRING(a), len(a),
                 <const uint8_t *>PyBytes_AS_STRING(m), len(m), <uint8_t *>PyBytes_AS_STRING(out))
    return out


def aead_open(key, nonce, ad, ciphertext):
    """The message, or None if the ciphertext, ad, key or nonce do not match."""
    cdef bytes k = _need(key, "key", 32)
    cdef bytes n = _need(nonce, "nonce", 24)
    cdef bytes a = _need(ad, "ad")
    cdef bytes c = _need(ciphertext, "ciphertext")
    if len(c) < 16:
        return None
    cdef bytes out = PyBytes_FromStringAndSize(NULL, len(c) - 16)
    if cm_aead_open(<const uint8_t *>PyBytes_AS_STRING(k), <const uint8_t *>PyBytes_AS_STRING(n),
                    <const uint8_t *>PyBytes_AS_STRING(a), len(a),
                    <const uint8_t *>PyBytes_AS_STRING(c), len(c),
                    <uint8_t *>PyBytes_AS_STRING(out)) != 0:
        return None
    return out


# --- Python storage behind the C io ----------------------------------------------

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

    cdef int fail(self, exc) noexcept:
        if self.error is None:
            self.error = exc
        if isinstance(exc, StoreNotFoundError):
            return CM_ERR_NOT_FOUND
        if isinstance(exc, StoreLockedError):
            return CM_ERR_LOCKED
        return CM_ERR_IO


cdef int _io_open(void *ctx, const char *name, int flags, void **file) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    try:
        f = self.storage.open(name.decode(), (CREATE if flags & 1 else 0) | (PRIVATE if flags & 2 else 0))
    except BaseException as e:
        if isinstance(e, StoreNotFoundError):
            return CM_ERR_NOT_FOUND  # an expected answer, not an error to re-raise
        return self.fail(e)
    Py_INCREF(f)
    file[0] = <void *>f
    return 0


cdef int64_t _io_read(void *ctx, void *file, uint8_t *buf, size_t size, uint64_t off) noexcept with gil:
    cdef _PyIO self = <_PyIO>ctx
    cdef bytes data
    try:
        data = bytes((<object>file).read(size, off))
        n = min(len(data), size)
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


# --- the log ----------------------------------------------------------------------

cdef class Log:
    """A signed log in a store (see coremachine_embedded._pure.store.Log)."""
    cdef cm_core *core
    cdef cm_io *posix
    cdef _PyIO pyio
    cdef readonly str durability
    cdef readonly dict recovery
    cdef object directory
    cdef object failed

    def __cinit__(self):
        self.core = NULL
        self.posix = NULL

    def __init__(self, storage, *, create=False, secret_key=None, key=None, manifest=None,
                 compat=False, durability="sync", checkpoint_bytes=0, max_block_size=0):
        cdef cm_open_opts opts
        cdef cm_recovery rec
        cdef bytes sk = _need(secret_key, "secret_key", 64) if secret_key is not None else None
        cdef bytes k = _need(key, "key", 32) if key is not None else None
        cdef bytes man = _need(manifest, "manifest") if manifest is not None else None
        if durability not in _DURABILITY:
            raise InvalidArgumentError("durability must be one of sync, batch, none")
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
        opts.durability = _DURABILITY[durability]
        opts.checkpoint_bytes = checkpoint_bytes
        opts.max_block_size = max_block_size
        with nogil:
            rc = cm_core_open(&opts, &self.core, &rec)
        self.recovery = {"records_replayed": rec.records_replayed,
                         "bytes_discarded": rec.bytes_discarded,
                         "header_slot": rec.header_slot, "header_fallback": rec.header_fallback}
        if rc != 0:
            self.core = NULL
            self._raise(rc, "open", cm_open_err_file(), 0)

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
        raise _error(rc, what, name, err or None)

    cdef int _check(self, int rc, str what, bint writing=False) except -1:
        if rc != 0:
            if writing and (rc == CM_ERR_IO or (self.pyio is not None and self.pyio.error is not None)):
                self.failed = rc  # the files may be ahead of the state in memory
            self._raise(rc, what, cm_core_err_file(self.core), cm_core_errno(self.core))
        return 0

    cdef cm_core *_c(self) except NULL:
        if self.core == NULL:
            raise from_code(-17, "the core is closed")
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
        cdef cm_node out[64]
        cdef size_t n = cm_core_roots(self._c(), out)
        return [_node(&out[i]) for i in range(n)]

    def tree_hash(self):
        cdef uint8_t out[32]
        cm_core_tree_hash(self._c(), out)
        return PyBytes_FromStringAndSize(<const char *>out, 32)

    def signature(self):
        cdef uint8_t out[1024]
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
            raise from_code(-6, "cannot truncate to %d" % length)
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
            raise from_code(-6, "block %d is outside the log" % index)
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
        if n < 2 or n > 256:
            raise InvalidArgumentError("a run is 2..256 blocks")
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


# --- transition table --------------------------------------------------------------

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


include "_stream.pxi"
