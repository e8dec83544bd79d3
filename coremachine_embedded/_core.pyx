# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
"""The C backend: a thin Cython layer over csrc/ (cm.h).

Exports exactly the names of ``coremachine_embedded._pure`` (the contract is
``_backend.Backend``; ``_core.pyi`` types this module for mypy).  Errors from
the C core are negative codes mapped to exceptions by ``errors.C_ERRORS``.  A
store is either a directory (the C core's POSIX io) or a Python storage object
(the injectable file interface), reached through C callbacks that hold the GIL.

The code is in the included files: ``_core_cm.pxi`` (cm.h's declarations),
``_core_crypto.pxi`` (stateless functions), ``_core_io.pxi`` (Python storage),
``_core_log.pxi`` (the log), ``_core_table.pxi`` (the transition table).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc cimport errno as c_errno
from libc.errno cimport EACCES
from libc.string cimport memcpy

import os

from .caps import Durability
from .errors import (ArgumentTypeError, CoreMachineError, InsecureFileError,
                     InvalidArgumentError, StorageError, StoreLockedError, StoreNotFoundError,
                     TooLargeError, FILE_NAMES, from_code)
from .proofs import ApplyResult, Check
from .storage import CREATE, PRIVATE, READONLY, insecure

NAME = "c"

include "_core_cm.pxi"

if cm_init() != 0:
    raise ImportError("libsodium failed to initialise")

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
    if err:
        message += " (%s)" % os.strerror(err)
    return from_code(code, message, filename, err)


include "_core_crypto.pxi"
include "_core_io.pxi"
include "_core_log.pxi"
include "_core_table.pxi"
include "_core_stream.pxi"
