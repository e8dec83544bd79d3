/*
 * cm_store.c - the core's shared parts: error names, the file I/O wrappers
 * that record which file failed, the record scratch buffer, the state
 * accessors and the (lazily signed) signature of the current state.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cm_store.h"

const char *const cm_file_names[6] = {"", "header", "wal", "tree", "data", "secret_key"};

const char *cm_strerror(int err) {
    switch (err) {
    case CM_OK: return "ok";
    case CM_ERR_INVALID: return "invalid argument";
    case CM_ERR_IO: return "a file operation failed";
    case CM_ERR_CORRUPT: return "the store is damaged";
    case CM_ERR_VERSION: return "the store is in a format version this library does not read";
    case CM_ERR_NOMEM: return "out of memory";
    case CM_ERR_RANGE: return "out of range";
    case CM_ERR_READONLY: return "the core was opened without its secret key";
    case CM_ERR_LOCKED: return "the store is open in another core or process";
    case CM_ERR_BAD_PROOF: return "the proof does not verify";
    case CM_ERR_BAD_SIGNATURE: return "the signature does not verify";
    case CM_ERR_DECODE: return "malformed encoding";
    case CM_ERR_TOO_LARGE: return "over its size limit";
    case CM_ERR_NOT_FOUND: return "no such store";
    case CM_ERR_KEY: return "the key does not belong to this core";
    case CM_ERR_UNAVAILABLE: return "not held locally (yet)";
    case CM_ERR_FORK: return "the proof is for another fork";
    case CM_ERR_CLOSED: return "the core is closed";
    case CM_ERR_AUTH: return "an encrypted message failed authentication";
    case CM_ERR_INSECURE:
        return "the secret key file is a symlink, not a regular file, or open to group or others";
    default: return "unknown error";
    }
}

int cm__fail(cm_core *c, int rc, cm_file_id f) {
    c->err_file = f;
    c->err_errno = rc == CM_ERR_IO ? errno : 0;
    return rc;
}

/* ---- opening a store file, recording the failure ---- */

int cm__io_open(cm_core *c, cm_file_id fid, int flags) {
    int rc;
    errno = 0;
    rc = c->io.open(c->io.ctx, cm_file_names[fid], flags, &c->f[fid]);
    if (rc < 0) {
        c->f[fid] = NULL;
        return cm__fail(c, rc, fid);
    }
    return CM_OK;
}

int cm__poisoned(cm_core *c) {
    return c->poisoned ? CM_ERR_IO : CM_OK;
}

/* ---- the buffer records are laid out in ---- */

int cm__scratch_reserve(cm_core *c, uint64_t n) {
    size_t want;
    uint8_t *p;
    if (n > (uint64_t)SIZE_MAX - 4096) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    if ((size_t)n <= c->scratch_cap) return CM_OK;
    want = ((size_t)n + 4095) & ~(size_t)4095;
    p = (uint8_t *)malloc(want);
    if (!p) return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    free(c->scratch);
    c->scratch = p;
    c->scratch_cap = want;
    return CM_OK;
}

void cm__scratch_trim(cm_core *c) {
    if (c->scratch_cap > SCRATCH_KEEP) {
        free(c->scratch);
        c->scratch = NULL;
        c->scratch_cap = 0;
    }
}

/* ---- identity and state ---- */

int cm__set_manifest(cm_core *c, const uint8_t *m, size_t len) {
    cm_verifier v;
    int rc = cm_verifier_init(&v, c->key, m, len);
    if (rc != CM_OK) return rc;
    memcpy(c->manifest, m, len);
    c->manifest_len = len;
    c->flags = (c->flags & ~HF_COMPAT) | HF_MANIFEST;
    c->ver = v;
    return CM_OK;
}

/* The public key that signs this core (signer 0). */
const uint8_t *cm__signer_pk(const cm_core *c) {
    if (c->flags & HF_MANIFEST) return c->ver.manifest.signers[0].public_key;
    return c->key;
}

int cm__ensure_signature(cm_core *c) {
    int rc;
    if (!c->has_secret || c->sig_cached) return CM_OK;
    if (c->length == 0 && c->fork == 0) {
        c->sig_len = 0;
        c->sig_cached = 1;
        return CM_OK;
    }
    rc = cm_verifier_sign(&c->ver, c->secret, c->tree_hash, c->length, c->fork, c->sig,
                          sizeof(c->sig), &c->sig_len);
    if (rc != CM_OK) return cm__fail(c, rc, CM_FILE_NONE);
    c->sig_cached = 1;
    return CM_OK;
}

cm_file_id cm_core_err_file(const cm_core *c) {
    return c ? c->err_file : CM_FILE_NONE;
}

int cm_core_errno(const cm_core *c) {
    return c ? c->err_errno : 0;
}

uint64_t cm_core_length(const cm_core *c) {
    return c->length;
}

uint64_t cm_core_contiguous_length(const cm_core *c) {
    return c->contiguous;
}

uint64_t cm_core_fork(const cm_core *c) {
    return c->fork;
}

uint64_t cm_core_byte_length(const cm_core *c) {
    return c->byte_length;
}

int cm_core_writable(const cm_core *c) {
    return c->writable;
}

int cm_core_readonly(const cm_core *c) {
    return c->readonly;
}

int cm_core_compat(const cm_core *c) {
    return (c->flags & HF_MANIFEST) == 0;
}

const uint8_t *cm_core_key(const cm_core *c) {
    return c->key;
}

const uint8_t *cm_core_discovery_key(const cm_core *c) {
    return c->dkey;
}

const uint8_t *cm_core_manifest(const cm_core *c, size_t *len) {
    if (!(c->flags & HF_MANIFEST)) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = c->manifest_len;
    return c->manifest;
}

void cm_core_tree_hash(const cm_core *c, uint8_t out[32]) {
    memcpy(out, c->tree_hash, 32);
}

size_t cm_core_roots(const cm_core *c, cm_node out[CM_MAX_ROOTS]) {
    memcpy(out, c->roots, c->n_roots * sizeof(cm_node));
    return c->n_roots;
}

int cm_core_public_key(const cm_core *c, uint8_t out[32]) {
    if (c->has_secret)
        memcpy(out, c->secret + 32, 32);
    else
        memcpy(out, cm__signer_pk(c), 32);
    return CM_OK;
}

