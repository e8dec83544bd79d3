# cython: language_level=3, boundscheck=False, wraparound=False
"""C twins of the two pure-Python functions every action runs over its
context: ``snapshot.copy_json`` (a deep copy) and ``_json._scan`` (may the
fast JSON library write this value as JavaScript would?).  The Python
versions are the reference; tests/property/test_speedups.py checks that
these agree with them.  Used with the C backend only (``_backend.speedups``).
"""
from libc.math cimport floor
from cpython.dict cimport PyDict_Next
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR

cdef long long MAX_SAFE_INTEGER = 9007199254740991
cdef long long ARRAY_INDEX_END = 4294967295
cdef int SCAN_DEPTH = 200     # _json._scan's limit: deeper goes the slow way
cdef int COPY_DEPTH = 1000    # copies this deep raise RecursionError, as Python's would
cdef unsigned int ZERO = 48, NINE = 57   # '0', '9'


def copy_json(value):
    """A deep copy of a JSON value (dicts, lists, immutables); a tuple is
    stored as an array, so it is copied as a list."""
    return _copy(value, 0)


cdef object _copy(object value, int depth):
    cdef dict out
    cdef list items
    cdef Py_ssize_t pos = 0, i, n
    cdef PyObject *key
    cdef PyObject *item
    if depth > COPY_DEPTH:
        raise RecursionError("maximum recursion depth exceeded while copying a JSON value")
    t = type(value)
    if t is dict:   # the common case, walked without an iterator or a pair per item
        out = {}
        while PyDict_Next(value, &pos, &key, &item):
            out[<object>key] = _copy_item(<object>item, depth)
        return out
    if t is list:
        n = len(<list>value)
        items = []
        for i in range(n):
            items.append(_copy_item((<list>value)[i], depth))
        return items
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[k] = _copy_item(v, depth)
        return out
    if isinstance(value, (list, tuple)):
        return [_copy_item(v, depth) for v in value]
    return value


cdef inline object _copy_item(object v, int depth):
    t = type(v)
    if t is str or t is int or t is float or t is bool or v is None:
        return v
    return _copy(v, depth + 1) if isinstance(v, (dict, list, tuple)) else v


def json_safe(value):
    """True if ``_json._scan`` lets ``value`` by: exact JSON types only, ints
    within 2**53-1, floats non-integral with 1e-4 <= |x| < 1e15, no
    array-index key, at most 200 containers deep."""
    return _safe(value, 0)


cdef bint _safe(object o, int depth):
    cdef object t = type(o)
    cdef Py_ssize_t pos = 0
    cdef PyObject *key
    cdef PyObject *item
    if t is dict:
        if depth >= SCAN_DEPTH:
            return False
        while PyDict_Next(o, &pos, &key, &item):
            if type(<object>key) is not str or _is_index(<str>key):
                return False
            if not _scalar_or_container(<object>item, depth):
                return False
        return True
    if t is list or t is tuple:
        if depth >= SCAN_DEPTH:
            return False
        for v in o:
            if not _scalar_or_container(v, depth):
                return False
        return True
    return _scalar(o, t)


cdef inline bint _scalar_or_container(object v, int depth):
    cdef object t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int or t is float:
        return _scalar(v, t)
    return _safe(v, depth + 1)


cdef bint _scalar(object o, object t):
    cdef int overflow = 0
    cdef long long n
    cdef double d
    if t is str or t is bool or o is None:
        return True
    if t is int:
        n = PyLong_AsLongLongAndOverflow(o, &overflow)
        return overflow == 0 and -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER
    if t is float:
        d = <double>o
        return ((1e-4 <= d < 1e15) or (-1e15 < d <= -1e-4)) and d != floor(d)
    return False


cdef bint _is_index(str k):
    """JS treats ``k`` as an array index ("0", "7", "4294967294"; not "01",
    "-1", "1.0", "4294967295")."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(k), i
    cdef unsigned int c
    cdef long long value = 0
    if n == 0 or n > 10:
        return False
    c = <unsigned int>PyUnicode_READ_CHAR(k, 0)
    if c < ZERO or c > NINE:
        return False
    if c == ZERO:
        return n == 1
    for i in range(n):
        c = <unsigned int>PyUnicode_READ_CHAR(k, i)
        if c < ZERO or c > NINE:
            return False
        value = value * 10 + <long long>(c - ZERO)
    return value < ARRAY_INDEX_END
