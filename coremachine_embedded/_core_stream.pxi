# Included by _core.pyx: Hypercore's replication stream (csrc/cm_stream.c) -
# the Noise DH and cipher, and secret-stream frames sealed/opened many per call.

cdef extern from "cm.h":
    ctypedef struct cm_secretstream:
        pass
    int CM_SS_ABYTES
    int CM_SS_FRAME_PREFIX
    int cm_noise_dh(const uint8_t *secret_key, const uint8_t *remote_public_key, uint8_t *out)
    int cm_noise_encrypt(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t ad_len,
                         const uint8_t *msg, size_t len, uint8_t *out)
    int cm_noise_decrypt(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t ad_len,
                         const uint8_t *ct, size_t ct_len, uint8_t *out)
    int cm_ss_init_push(cm_secretstream *s, const uint8_t *key, uint8_t *header)
    int cm_ss_init_pull(cm_secretstream *s, const uint8_t *key, const uint8_t *header)
    int cm_ss_push(cm_secretstream *s, const cm_buf *msgs, size_t n, uint8_t *out, size_t cap,
                   size_t *len) nogil
    int cm_ss_pull(cm_secretstream *s, const uint8_t *inp, size_t len, uint8_t *out, size_t cap,
                   size_t *sizes, size_t max_frames, size_t *frames, size_t *consumed) nogil


def noise_dh(secret_key, public_key):
    """noise-curve-ed's DH: the clamped SHA-512(seed) scalar times the remote
    Edwards point (KeyMismatchError if that point is unusable)."""
    cdef bytes sk = _need(secret_key, "secret_key", 64)
    cdef bytes pk = _need(public_key, "public_key", 32)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 32)
    cdef int rc = cm_noise_dh(<const uint8_t *>PyBytes_AS_STRING(sk),
                              <const uint8_t *>PyBytes_AS_STRING(pk),
                              <uint8_t *>PyBytes_AS_STRING(out))
    if rc != 0:
        raise _error(rc, "noise DH")
    return out


def noise_encrypt(key, uint64_t counter, ad, plaintext):
    """ChaCha20-Poly1305 with Noise's nonce (4 zero bytes, u64 LE counter)."""
    cdef bytes k = _need(key, "key", 32)
    cdef bytes a = _need(ad, "ad")
    cdef bytes m = _need(plaintext, "plaintext")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, len(m) + 16)
    cm_noise_encrypt(<const uint8_t *>PyBytes_AS_STRING(k), counter,
                     <const uint8_t *>PyBytes_AS_STRING(a), len(a),
                     <const uint8_t *>PyBytes_AS_STRING(m), len(m),
                     <uint8_t *>PyBytes_AS_STRING(out))
    return out


def noise_decrypt(key, uint64_t counter, ad, ciphertext):
    """The plaintext, or None if the ciphertext does not authenticate."""
    cdef bytes k = _need(key, "key", 32)
    cdef bytes a = _need(ad, "ad")
    cdef bytes c = _need(ciphertext, "ciphertext")
    if len(c) < 16:
        return None
    cdef bytes out = PyBytes_FromStringAndSize(NULL, len(c) - 16)
    if cm_noise_decrypt(<const uint8_t *>PyBytes_AS_STRING(k), counter,
                        <const uint8_t *>PyBytes_AS_STRING(a), len(a),
                        <const uint8_t *>PyBytes_AS_STRING(c), len(c),
                        <uint8_t *>PyBytes_AS_STRING(out)) != 0:
        return None
    return out


cdef class StreamPush:
    """The sending half of a secret-stream: ``header`` goes to the peer once,
    then :meth:`seal` turns messages into frames.  With ``header`` given, the
    state is the one that header implies (to reproduce a recorded stream)."""
    cdef cm_secretstream state
    cdef readonly bytes header

    def __init__(self, key, header=None):
        cdef bytes k = _need(key, "key", 32)
        if header is None:
            self.header = PyBytes_FromStringAndSize(NULL, 24)
            cm_ss_init_push(&self.state, <const uint8_t *>PyBytes_AS_STRING(k),
                            <uint8_t *>PyBytes_AS_STRING(self.header))
        else:
            self.header = _need(header, "header", 24)
            cm_ss_init_pull(&self.state, <const uint8_t *>PyBytes_AS_STRING(k),
                            <const uint8_t *>PyBytes_AS_STRING(self.header))

    def seal(self, messages):
        """The frames of ``messages`` (a list of bytes), back to back."""
        cdef list held = [m if type(m) is bytes else _need(m, "message") for m in messages]
        cdef Py_ssize_t n = len(held), i
        cdef size_t need = 0, written = 0
        cdef cm_buf *bufs = <cm_buf *>PyMem_Malloc(max(n, 1) * sizeof(cm_buf))
        cdef bytes out, m
        cdef uint8_t *outp
        cdef int rc
        if bufs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                m = held[i]
                bufs[i].data = <const uint8_t *>PyBytes_AS_STRING(m)
                bufs[i].len = len(m)
                need += bufs[i].len + 20
            out = PyBytes_FromStringAndSize(NULL, need)
            outp = <uint8_t *>PyBytes_AS_STRING(out)
            with nogil:
                rc = cm_ss_push(&self.state, bufs, n, outp, need, &written)
            if rc != 0:
                raise _error(rc, "secret-stream frame")
            return out
        finally:
            PyMem_Free(bufs)


cdef class StreamPull:
    """The receiving half of a secret-stream, from the peer's header."""
    cdef cm_secretstream state

    def __init__(self, key, header):
        cdef bytes k = _need(key, "key", 32)
        cdef bytes h = _need(header, "header", 24)
        cm_ss_init_pull(&self.state, <const uint8_t *>PyBytes_AS_STRING(k),
                        <const uint8_t *>PyBytes_AS_STRING(h))

    def open(self, data, Py_ssize_t start=0):
        """``(messages, end)``: the plaintexts of the complete frames in
        ``data[start:]`` and where the first incomplete one begins.

        :raises DecodeError: a frame too short to hold a message.
        :raises DecryptError: a frame that does not authenticate.
        """
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t avail = view.shape[0] - start
        cdef size_t frames = 0, consumed = 0, max_frames, i, off = 0
        cdef size_t *sizes
        cdef uint8_t *outp
        cdef int rc
        if avail < CM_SS_FRAME_PREFIX:
            return [], start
        max_frames = <size_t>(avail // (CM_SS_FRAME_PREFIX + CM_SS_ABYTES)) + 1
        sizes = <size_t *>PyMem_Malloc(max_frames * sizeof(size_t))
        outp = <uint8_t *>PyMem_Malloc(<size_t>avail)
        if sizes == NULL or outp == NULL:
            PyMem_Free(sizes)
            PyMem_Free(outp)
            raise MemoryError()
        try:
            with nogil:
                rc = cm_ss_pull(&self.state, &view[start], <size_t>avail, outp, <size_t>avail,
                                sizes, max_frames, &frames, &consumed)
            if rc != 0:
                raise _error(rc, "secret-stream frame")
            result = []
            for i in range(frames):
                result.append(PyBytes_FromStringAndSize(<const char *>outp + off, sizes[i]))
                off += sizes[i]
            return result, start + <Py_ssize_t>consumed
        finally:
            PyMem_Free(sizes)
            PyMem_Free(outp)
