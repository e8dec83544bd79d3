# The declarations of csrc/cm.h the extension uses (included by _core.pyx).
# Sizes and limits are cm.h's own constants, never repeated numbers.

cdef extern from "cm.h":
    ctypedef struct cm_node:
        uint64_t index
        uint64_t size
        uint8_t hash[32]

    enum:
        CM_OK
        CM_ERR_IO
        CM_ERR_NOT_FOUND
        CM_ERR_LOCKED
        CM_ERR_TOO_LARGE
        CM_ERR_RANGE
        CM_ERR_CLOSED
        CM_ERR_INSECURE
        CM_MAX_ROOTS
        CM_MAX_MANIFEST
        CM_MAX_SIGNATURE
        CM_MAX_PROOF_NODES
        CM_MAX_RUN
        CM_IO_CREATE
        CM_IO_PRIVATE
        CM_IO_READONLY

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
        cm_node roots[CM_MAX_ROOTS]
        uint8_t tree_hash[32]
        size_t n_nodes
        cm_node nodes[4 * CM_MAX_PROOF_NODES + 2 * CM_MAX_ROOTS]
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
        int (*flush)(void *ctx, void *file) noexcept

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
        int readonly

    ctypedef struct cm_core:
        pass

    ctypedef struct cm_recovery:
        uint64_t records_replayed
        uint64_t bytes_discarded
        int header_slot
        int header_fallback
        int forked
        int err_file
        int err_errno

    int cm_core_open(const cm_open_opts *opts, cm_core **out, cm_recovery *recovery) nogil
    int cm_core_close(cm_core *core) nogil
    int cm_core_err_file(const cm_core *core)
    int cm_core_errno(const cm_core *core)

    uint64_t cm_core_length(const cm_core *core)
    uint64_t cm_core_contiguous_length(const cm_core *core)
    uint64_t cm_core_fork(const cm_core *core)
    uint64_t cm_core_byte_length(const cm_core *core)
    int cm_core_writable(const cm_core *core)
    int cm_core_readonly(const cm_core *core)
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
