# Stateless functions: hashes, keys, manifests, signatures, proofs, AEAD
# (included by _core.pyx; the pure twins are in _pure/crypto.py, _pure/flat.py
# and _pure/__init__.py).

def full_roots(uint64_t length):
    cdef uint64_t out[CM_MAX_ROOTS]
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
    cdef cm_node nodes[CM_MAX_ROOTS]
    if n > CM_MAX_ROOTS:
        raise InvalidArgumentError("at most %d roots" % CM_MAX_ROOTS)
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
    cdef uint8_t out[CM_MAX_MANIFEST]
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
    cdef cm_node trusted[CM_MAX_ROOTS]
    if len(roots) > CM_MAX_ROOTS:
        raise InvalidArgumentError("at most %d roots" % CM_MAX_ROOTS)
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
