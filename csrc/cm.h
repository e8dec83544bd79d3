/*
 * cm.h - the C API of coremachine_embedded's core.
 *
 * A Hypercore 10/11 compatible signed append-only log on flat files:
 * flat-tree index math, BLAKE2b tree hashing, Ed25519 signing (libsodium),
 * Merkle proofs (hypercore `data` message encoding) and a crash-safe store
 * (write-ahead file + two header slots).  No Python in here.
 *
 * Conventions
 *   - Every function that can fail returns an int: CM_OK (0) or a negative
 *     cm_err.  Results come back through out-parameters.
 *   - All integers in files, hashes and messages are little-endian.
 *   - uint64_t everywhere for lengths, indexes and offsets (32-bit ARM safe);
 *     build with -D_FILE_OFFSET_BITS=64.
 *   - The on-disk format is specified in docs/format.md; the proof/message
 *     encoding in docs/proofs.md (and the hypercore spec it follows).
 */
#ifndef CM_H
#define CM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CM_VERSION_MAJOR 0
#define CM_VERSION_MINOR 1
#define CM_VERSION_PATCH 0
#define CM_VERSION "0.1.0"

/* On-disk format version, separate from the code version (docs/format.md). */
#define CM_FORMAT_VERSION 2
#define CM_FORMAT_OLDEST 1   /* the oldest version opened (and migrated) */

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum cm_err {
    CM_OK = 0,
    CM_ERR_INVALID = -1,       /* bad argument (wrong size, bad option)          */
    CM_ERR_IO = -2,            /* a file operation failed (see cm_core_errno)    */
    CM_ERR_CORRUPT = -3,       /* store content failed a check (see err_file)    */
    CM_ERR_VERSION = -4,       /* store in a format version this one cannot read  */
    CM_ERR_NOMEM = -5,         /* allocation failed                              */
    CM_ERR_RANGE = -6,         /* index or length out of range                   */
    CM_ERR_READONLY = -7,      /* write on a core without the secret key         */
    CM_ERR_LOCKED = -8,        /* another process holds the store                */
    CM_ERR_BAD_PROOF = -9,     /* proof does not verify (nodes, shape, checksum) */
    CM_ERR_BAD_SIGNATURE = -10,/* signature does not verify                      */
    CM_ERR_DECODE = -11,       /* malformed encoding (message, manifest)         */
    CM_ERR_TOO_LARGE = -12,    /* block/batch/buffer over its limit              */
    CM_ERR_NOT_FOUND = -13,    /* store does not exist and create was not asked  */
    CM_ERR_KEY = -14,          /* key / key pair / manifest do not match          */
    CM_ERR_UNAVAILABLE = -15,  /* block or node inside the log but not held      */
    CM_ERR_FORK = -16,         /* proof is for an older fork                      */
    CM_ERR_CLOSED = -17,       /* core was closed                                 */
    CM_ERR_AUTH = -18,         /* an encrypted message failed authentication      */
    CM_ERR_INSECURE = -19      /* a private file is a symlink, not a regular file,
                                  or open to group or others                      */
} cm_err;

/* Which store file an error is about (cm_core_err_file). */
typedef enum cm_file_id {
    CM_FILE_NONE = 0,
    CM_FILE_HEADER = 1,
    CM_FILE_WAL = 2,
    CM_FILE_TREE = 3,
    CM_FILE_DATA = 4,
    CM_FILE_SECRET_KEY = 5
} cm_file_id;

/* File names inside a store directory, indexed by cm_file_id. */
extern const char *const cm_file_names[6];

/* Static description of an error code ("CORRUPT", ...). */
const char *cm_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Flat tree (docs: hypercore-format §1).  Node i, block b is node 2b.      */
/* ------------------------------------------------------------------------ */

#define CM_MAX_ROOTS 64

uint64_t cm_ft_index(uint64_t depth, uint64_t offset);
uint64_t cm_ft_depth(uint64_t i);
uint64_t cm_ft_offset(uint64_t i);
uint64_t cm_ft_parent(uint64_t i);
uint64_t cm_ft_sibling(uint64_t i);
uint64_t cm_ft_left_child(uint64_t i);   /* i must be odd */
uint64_t cm_ft_right_child(uint64_t i);  /* i must be odd */
uint64_t cm_ft_left_span(uint64_t i);
uint64_t cm_ft_right_span(uint64_t i);
uint64_t cm_ft_count_leaves(uint64_t i);
/* 1 if node i's span contains node j */
int cm_ft_contains(uint64_t i, uint64_t j);
/* Root node indexes of a log of `length` blocks, left to right. Returns the
 * count (at most CM_MAX_ROOTS). */
size_t cm_ft_full_roots(uint64_t length, uint64_t out[CM_MAX_ROOTS]);

/* ------------------------------------------------------------------------ */
/* Hashing, keys and signatures (hypercore-crypto 3.x)                      */
/* ------------------------------------------------------------------------ */

typedef struct cm_node {
    uint64_t index;    /* flat-tree index */
    uint64_t size;     /* byte length of the blocks under it */
    uint8_t hash[32];  /* BLAKE2b-256 */
} cm_node;

/* Namespaces: namespace('hypercore', 6) */
extern const uint8_t CM_NS_TREE[32];
extern const uint8_t CM_NS_REPLICATE_INITIATOR[32];
extern const uint8_t CM_NS_REPLICATE_RESPONDER[32];
extern const uint8_t CM_NS_MANIFEST[32];
extern const uint8_t CM_NS_DEFAULT[32];
extern const uint8_t CM_NS_ENCRYPTION[32];

/* Must be called once before anything else (sodium_init). Thread-safe. */
int cm_init(void);

/* node 2*block_index over `data` */
void cm_hash_leaf(uint64_t block_index, const uint8_t *data, size_t len, cm_node *out);
/* parent of two siblings; a->index < b->index */
void cm_hash_parent(const cm_node *a, const cm_node *b, cm_node *out);
/* tree hash ("root hash") of the ordered roots; n == 0 gives H(0x02) */
void cm_hash_tree(const cm_node *roots, size_t n, uint8_t out[32]);
/* BLAKE2b-256 keyed with the core key over "hypercore" */
void cm_discovery_key(const uint8_t key[32], uint8_t out[32]);
/* BLAKE2b-256 of a message, optionally keyed (key may be NULL) */
void cm_blake2b(const uint8_t *msg, size_t len, const uint8_t *key, size_t key_len,
                uint8_t out[32]);

#define CM_SIGNABLE_MAX 112
/* 80-byte (compat) or 112-byte (manifest) signable; returns its length. */
size_t cm_signable(uint8_t out[CM_SIGNABLE_MAX], int compat, const uint8_t manifest_hash[32],
                   const uint8_t tree_hash[32], uint64_t length, uint64_t fork);

int cm_keypair_from_seed(const uint8_t seed[32], uint8_t public_key[32],
                         uint8_t secret_key[64]);
int cm_keypair_generate(uint8_t public_key[32], uint8_t secret_key[64]);
int cm_sign(const uint8_t *msg, size_t len, const uint8_t secret_key[64], uint8_t sig[64]);
/* CM_OK or CM_ERR_BAD_SIGNATURE */
int cm_verify(const uint8_t *msg, size_t len, const uint8_t sig[64],
              const uint8_t public_key[32]);

/* Authenticated encryption of sync envelopes: XChaCha20-Poly1305 (IETF).
 * seal writes len + CM_AEAD_TAG bytes; open writes ct_len - CM_AEAD_TAG bytes
 * and returns CM_ERR_BAD_SIGNATURE if the ciphertext or `ad` was altered. */
#define CM_AEAD_KEY 32
#define CM_AEAD_NONCE 24
#define CM_AEAD_TAG 16
int cm_aead_seal(const uint8_t key[CM_AEAD_KEY], const uint8_t nonce[CM_AEAD_NONCE],
                 const uint8_t *ad, size_t ad_len, const uint8_t *msg, size_t len, uint8_t *out);
int cm_aead_open(const uint8_t key[CM_AEAD_KEY], const uint8_t nonce[CM_AEAD_NONCE],
                 const uint8_t *ad, size_t ad_len, const uint8_t *ct, size_t ct_len,
                 uint8_t *out);

/* CRC-32 (IEEE 802.3, as zlib.crc32), continuing from `crc` (start with 0). */
uint32_t cm_crc32(uint32_t crc, const uint8_t *buf, size_t len);

/* ------------------------------------------------------------------------ */
/* Manifests (hypercore-format §3.2).  Versions 1 and 2, ed25519 signers.   */
/* ------------------------------------------------------------------------ */

#define CM_MAX_SIGNERS 16
#define CM_MAX_MANIFEST 1024  /* encoded bytes */
#define CM_MAX_SIGNATURE 1024 /* encoded signature bytes (multisig container) */

typedef struct cm_manifest {
    uint32_t version;       /* 1 or 2 */
    uint32_t quorum;
    int allow_patch;        /* decoded; patches are rejected when verifying */
    uint32_t n_signers;
    struct {
        uint8_t namespace_[32];
        uint8_t public_key[32];
    } signers[CM_MAX_SIGNERS];
    int has_prologue;
    uint8_t prologue_hash[32];
    uint64_t prologue_length;
    uint32_t n_linked;      /* linked core keys are kept only as a count + bytes */
    const uint8_t *linked;  /* points into the decoded buffer: n_linked * 32 */
    const uint8_t *user_data; /* points into the decoded buffer, or NULL */
    size_t user_data_len;
} cm_manifest;

/* The default single-signer manifest (version 1, quorum 1) for a public key. */
void cm_manifest_default(const uint8_t public_key[32], cm_manifest *out);
int cm_manifest_encode(const cm_manifest *m, uint8_t *out, size_t cap, size_t *len);
int cm_manifest_decode(const uint8_t *buf, size_t len, cm_manifest *out);
/* H(MANIFEST || encoded) == the core key in manifest mode */
void cm_manifest_hash(const uint8_t *encoded, size_t len, uint8_t out[32]);

/* A verifier: what a reader needs to check a signature. */
typedef struct cm_verifier {
    int compat;             /* 1: key is the ed25519 public key, raw 64-byte sig */
    uint8_t key[32];        /* core key (manifest hash, or public key if compat) */
    cm_manifest manifest;   /* valid when !compat */
} cm_verifier;

/* Build a verifier from a core key and an optional encoded manifest.  With a
 * manifest, its hash must equal the key (CM_ERR_KEY otherwise).  Without one,
 * the key is treated as a compat public key. */
int cm_verifier_init(cm_verifier *v, const uint8_t key[32], const uint8_t *manifest,
                     size_t manifest_len);
/* Check a stored/transmitted signature over (tree_hash, length, fork). */
int cm_verifier_check(const cm_verifier *v, const uint8_t tree_hash[32], uint64_t length,
                      uint64_t fork, const uint8_t *sig, size_t sig_len);
/* Produce the stored/transmitted signature (64 raw bytes in compat mode, the
 * 68-byte multisig container otherwise) with signer 0's secret key. */
int cm_verifier_sign(const cm_verifier *v, const uint8_t secret_key[64],
                     const uint8_t tree_hash[32], uint64_t length, uint64_t fork,
                     uint8_t *sig, size_t cap, size_t *sig_len);

/* ------------------------------------------------------------------------ */
/* Compact encoding and hypercore messages (hypercore-format §0, §5.3)      */
/* ------------------------------------------------------------------------ */

/* A reader over untrusted bytes: every read checks bounds. */
typedef struct cm_reader {
    const uint8_t *p;
    const uint8_t *end;
    int err;               /* sticky: CM_ERR_DECODE after any overrun */
} cm_reader;

uint64_t cm_read_uint(cm_reader *r);
const uint8_t *cm_read_fixed(cm_reader *r, size_t n);
/* buffer: uint length + bytes; *len is set */
const uint8_t *cm_read_buffer(cm_reader *r, size_t *len);

/* Writer into a caller buffer; `need` counts bytes even past cap so the
 * caller can retry with a bigger buffer. */
typedef struct cm_writer {
    uint8_t *p;
    size_t cap;
    size_t need;
} cm_writer;

void cm_write_uint(cm_writer *w, uint64_t n);
void cm_write_fixed(cm_writer *w, const uint8_t *buf, size_t n);
void cm_write_buffer(cm_writer *w, const uint8_t *buf, size_t n);

#define CM_MAX_PROOF_NODES 64  /* per node array in a message */
/* What a proof may carry: node indexes and sizes, block indexes (and the end
 * of an upgrade) below these. */
#define CM_MAX_NODE_INDEX (UINT64_C(1) << 62)
#define CM_MAX_NODE_SIZE (UINT64_C(1) << 63)
#define CM_MAX_BLOCK_INDEX (UINT64_C(1) << 61)

/* A decoded hypercore `data` message (message type 3). Pointers point into
 * the message buffer it was decoded from. */
typedef struct cm_data_msg {
    uint64_t request;
    uint64_t fork;
    int has_block;
    uint64_t block_index;
    const uint8_t *block_value;
    size_t block_len;
    size_t n_block_nodes;
    cm_node block_nodes[CM_MAX_PROOF_NODES];
    int has_hash;
    uint64_t hash_index;
    size_t n_hash_nodes;
    cm_node hash_nodes[CM_MAX_PROOF_NODES];
    int has_seek;
    uint64_t seek_bytes;
    size_t n_seek_nodes;
    cm_node seek_nodes[CM_MAX_PROOF_NODES];
    int has_upgrade;
    uint64_t upgrade_start;
    uint64_t upgrade_length;
    size_t n_upgrade_nodes;
    cm_node upgrade_nodes[CM_MAX_PROOF_NODES];
    size_t n_additional_nodes;
    cm_node additional_nodes[CM_MAX_PROOF_NODES];
    const uint8_t *signature;
    size_t signature_len;
    int has_manifest;
    const uint8_t *manifest;   /* encoded manifest bytes */
    size_t manifest_len;
} cm_data_msg;

int cm_data_decode(const uint8_t *buf, size_t len, cm_data_msg *out);
/* Encodes; returns CM_ERR_TOO_LARGE with *len = needed if cap is short. */
int cm_data_encode(const cm_data_msg *m, uint8_t *out, size_t cap, size_t *len);

/* ------------------------------------------------------------------------ */
/* Stateless proof verification (hypercore-format §4.2)                     */
/* ------------------------------------------------------------------------ */

typedef struct cm_proof_check {
    /* Block/hash part. */
    int has_unverified;       /* 1: `unverified` must equal a trusted stored node */
    cm_node unverified;       /* the node the block path reached, not consumed */
    /* Upgrade part (valid when the message has an upgrade). */
    int upgraded;
    uint64_t length;          /* signed length reached */
    uint64_t byte_length;
    size_t n_roots;
    cm_node roots[CM_MAX_ROOTS];
    uint8_t tree_hash[32];
    /* Every node computed or received, to store once trusted. */
    size_t n_nodes;
    cm_node nodes[4 * CM_MAX_PROOF_NODES + 2 * CM_MAX_ROOTS];
} cm_proof_check;

/* Verify message `m` against a verifier and trusted roots (those of length
 * `trusted_length`; fork of the upgrade = m->fork).  On success with an
 * upgrade the signature has been checked.  If the block/hash path was not
 * consumed by the upgrade, out->has_unverified is set and the caller must
 * compare it with its own trusted node. */
int cm_proof_check_msg(const cm_verifier *v, const cm_node *roots, size_t n_roots,
                       const cm_data_msg *m, cm_proof_check *out);

/* ------------------------------------------------------------------------ */
/* Storage I/O (injectable).  NULL io in cm_open_opts = POSIX files.        */
/* ------------------------------------------------------------------------ */

#define CM_IO_CREATE 1   /* create if missing */
#define CM_IO_PRIVATE 2  /* the secret key: never opened through a symlink, created
                            exclusively with mode 0600; an existing one must be a
                            regular file group and others cannot access
                            (CM_ERR_INSECURE otherwise) */
#define CM_IO_READONLY 4 /* open for reading only (a read-only snapshot) */

typedef struct cm_io {
    void *ctx;
    /* Open store file `name`; on success *file is an opaque handle.
     * CM_ERR_NOT_FOUND if missing and CM_IO_CREATE not set. */
    int (*open)(void *ctx, const char *name, int flags, void **file);
    /* Read up to len bytes at off; returns bytes read (short only at EOF)
     * or a negative cm_err. */
    int64_t (*read)(void *ctx, void *file, uint8_t *buf, size_t len, uint64_t off);
    /* Write all len bytes at off (the file grows as needed). */
    int (*write)(void *ctx, void *file, const uint8_t *buf, size_t len, uint64_t off);
    /* Make everything written so far durable (fdatasync). */
    int (*sync)(void *ctx, void *file);
    int (*truncate)(void *ctx, void *file, uint64_t size);
    int (*size)(void *ctx, void *file, uint64_t *size);
    /* Exclusive, non-blocking lock held until close; CM_ERR_LOCKED if taken. */
    int (*lock)(void *ctx, void *file);
    void (*close)(void *ctx, void *file);
    /* Optional (NULL if nothing is ever held back): write out what the file
     * holds in memory (write-behind), without making it durable. */
    int (*flush)(void *ctx, void *file);
} cm_io;

/* POSIX implementation over a directory (created if CM_IO_CREATE is used and
 * it is missing).  The returned io must be freed with cm_io_posix_free. */
int cm_io_posix_new(const char *directory, cm_io **out);
void cm_io_posix_free(cm_io *io);

/* ------------------------------------------------------------------------ */
/* The core: a signed log in a store (docs/format.md)                       */
/* ------------------------------------------------------------------------ */

typedef enum cm_durability {
    CM_DURABLE_SYNC = 0,   /* append returns once the record is fdatasync'ed */
    CM_DURABLE_BATCH = 1,  /* durable after cm_core_flush (group commit)     */
    CM_DURABLE_NONE = 2    /* synced only at checkpoints and close           */
} cm_durability;

#define CM_DEFAULT_CHECKPOINT_BYTES (1u << 20)
#define CM_DEFAULT_MAX_BLOCK (15u << 20)
#define CM_MAX_APPEND_BYTES (64u << 20)
#define CM_MAX_APPEND_BLOCKS (1u << 20)              /* blocks in one cm_core_append */
#define CM_MAX_LENGTH (UINT64_C(1) << 62)            /* a log's length, at most */

typedef struct cm_open_opts {
    const cm_io *io;                 /* required */
    int create;                      /* create the store if it does not exist */
    /* Writer: 64-byte secret key (seed || public key).  Stored in the
     * secret_key file (0600) on create; must match an existing store. */
    const uint8_t *secret_key;
    /* Replica: the core key.  Must match an existing store. */
    const uint8_t *key;
    /* Optional encoded manifest (writer in manifest mode; default when NULL). */
    const uint8_t *manifest;
    size_t manifest_len;
    int compat;                      /* writer: Hypercore 10 compat mode */
    cm_durability durability;
    uint64_t checkpoint_bytes;       /* 0 = CM_DEFAULT_CHECKPOINT_BYTES */
    uint64_t max_block_size;         /* 0 = CM_DEFAULT_MAX_BLOCK */
    /* A read-only snapshot of a store that another core (in this or another
     * process) may hold open and write: no lock is taken and nothing is ever
     * written; the state is the newest committed one (the header slot plus
     * the write-ahead records since, kept in memory), and reads are verified
     * against it.  `create` and `secret_key` must not be set; `key` and
     * `manifest` are checked if given (docs/format.md, "Read-only snapshots"). */
    int readonly;
} cm_open_opts;

typedef struct cm_core cm_core;

/* What opening found (also filled when open fails). */
typedef struct cm_recovery {
    uint64_t records_replayed;   /* WAL records applied on open */
    uint64_t bytes_discarded;    /* torn bytes after the last valid record */
    int header_slot;             /* 0 or 1: the slot in use */
    int header_fallback;         /* 1: newest slot was torn, the other was used */
    int forked;                  /* 1: a writer's files held more than header and wal
                                    explain (records were lost): it moved to a new fork */
    /* When cm_core_open fails: the file at fault (CM_FILE_NONE if none) and,
     * for CM_ERR_IO, errno.  Per call, so concurrent opens cannot mix them. */
    cm_file_id err_file;
    int err_errno;
} cm_recovery;

int cm_core_open(const cm_open_opts *opts, cm_core **out, cm_recovery *recovery);
/* Flush, checkpoint, unlock and free.  Always frees; returns the first error. */
int cm_core_close(cm_core *core);

/* Last error details: which file, and errno for CM_ERR_IO. */
cm_file_id cm_core_err_file(const cm_core *core);
int cm_core_errno(const cm_core *core);

/* State */
uint64_t cm_core_length(const cm_core *core);
uint64_t cm_core_contiguous_length(const cm_core *core);
uint64_t cm_core_fork(const cm_core *core);
uint64_t cm_core_byte_length(const cm_core *core);
int cm_core_writable(const cm_core *core);
int cm_core_readonly(const cm_core *core);
int cm_core_compat(const cm_core *core);
const uint8_t *cm_core_key(const cm_core *core);
const uint8_t *cm_core_discovery_key(const cm_core *core);
/* Encoded manifest (NULL + 0 if compat or not yet known). */
const uint8_t *cm_core_manifest(const cm_core *core, size_t *len);
void cm_core_tree_hash(const cm_core *core, uint8_t out[32]);
size_t cm_core_roots(const cm_core *core, cm_node out[CM_MAX_ROOTS]);
/* Signature of the current state (signs lazily on a writer).
 * *len = 0 when there is none (length 0 and never truncated). */
int cm_core_signature(cm_core *core, uint8_t *out, size_t cap, size_t *len);
int cm_core_public_key(const cm_core *core, uint8_t out[32]);

/* Writing (writer only) */
typedef struct cm_buf {
    const uint8_t *data;
    size_t len;
} cm_buf;

/* Append n blocks as one signed state; *new_length receives the length. */
int cm_core_append(cm_core *core, const cm_buf *blocks, size_t n, uint64_t *new_length);
/* Truncate to `length` and set `fork` (> current fork). */
int cm_core_truncate(cm_core *core, uint64_t length, uint64_t fork);
/* Make everything appended so far durable. */
int cm_core_flush(cm_core *core);
/* Fold the write-ahead file into the data/tree files and reset it. */
int cm_core_checkpoint(cm_core *core);

/* Reading: verified against the tree and the signed roots. */
int cm_core_block_size(cm_core *core, uint64_t index, uint64_t *size);
int cm_core_get(cm_core *core, uint64_t index, uint8_t *buf, size_t cap, size_t *len);
/* Blocks [start, end) back to back into buf, sizes[i] = size of block start+i;
 * *total = their bytes.  Aligned runs inside the range are read with one
 * tree read and one data read each and verified as a subtree.  If cap <
 * *total: CM_ERR_TOO_LARGE and nothing else is written (call again). */
int cm_core_get_range(cm_core *core, uint64_t start, uint64_t end, uint8_t *buf, size_t cap,
                      uint64_t *sizes, uint64_t *total);
int cm_core_get_node(cm_core *core, uint64_t index, cm_node *out);
int cm_core_has_node(cm_core *core, uint64_t index);

/* Proofs */
typedef struct cm_proof_request {
    uint64_t request;       /* copied into the data message */
    int has_block;
    uint64_t block_index;
    uint64_t block_nodes;   /* levels the requester is missing */
    int has_upgrade;
    uint64_t upgrade_start;
    uint64_t upgrade_length;
    int manifest;           /* include the manifest */
} cm_proof_request;

/* Build a `data` message answering `req`.  CM_ERR_TOO_LARGE with *len set to
 * the size needed if cap is short. */
int cm_core_proof(cm_core *core, const cm_proof_request *req, uint8_t *out, size_t cap,
                  size_t *len);
/* Levels above block `index` the local tree is missing (hypercore's
 * missingNodes) - the `block_nodes` a request should ask for. */
int cm_core_missing_nodes(cm_core *core, uint64_t index, uint64_t *nodes);

typedef struct cm_apply_result {
    uint64_t fork;
    int upgraded;            /* the signed length/fork changed */
    int reorg;               /* a new fork replaced local history */
    uint64_t reorg_length;   /* length of the kept common prefix */
    int has_block;
    uint64_t block_index;
    int block_stored;        /* 0: verified but not contiguous - not stored */
    int manifest_learned;
} cm_apply_result;

/* Verify a `data` message and store what it proves.  Nothing is written
 * unless the whole message verifies. */
int cm_core_apply_proof(cm_core *core, const uint8_t *msg, size_t len, cm_apply_result *out);

/* ------------------------------------------------------------------------ */
/* Transition table: the compiled dispatch of a state machine               */
/* ------------------------------------------------------------------------ */

/* States and events are interned to integers by the machine compiler; a cell
 * (state, event) names a run of candidate transitions [first, first+count)
 * that the caller keeps (guards are tried in that order).  The `all` table is
 * compiled into every state's row.  Lookups allocate nothing. */
typedef struct cm_table {
    uint32_t n_states;
    uint32_t n_events;
    uint32_t *first;   /* n_states * n_events */
    uint32_t *count;   /* 0: no transition */
} cm_table;

#define CM_MAX_TABLE_CELLS (1u << 24)

/* Allocate an empty table (CM_ERR_TOO_LARGE over CM_MAX_TABLE_CELLS cells). */
int cm_table_init(cm_table *t, uint32_t n_states, uint32_t n_events);
void cm_table_free(cm_table *t);
int cm_table_set(cm_table *t, uint32_t state, uint32_t event, uint32_t first, uint32_t count);
/* 1 and the run when (state, event) has transitions, 0 when it has none,
 * CM_ERR_RANGE for an id outside the table. */
int cm_table_lookup(const cm_table *t, uint32_t state, uint32_t event, uint32_t *first,
                    uint32_t *count);

/* Store a run of blocks proven by one trusted node (batched transfer).
 * `values` are the n blocks [start, start+n) (n a power of two <= CM_MAX_RUN, start a
 * multiple of n); the replica must hold block `start` already and the node
 * covering the run (index 2*start + n - 1).  The run's tree is rebuilt from the
 * values; if its root equals that node, the blocks the replica lacks are stored
 * in one record (with all 2n-1 nodes of the run), else CM_ERR_BAD_PROOF and
 * nothing is written.  *stored = blocks added. */
#define CM_MAX_RUN 256  /* blocks in one cm_core_apply_run */
int cm_core_apply_run(cm_core *core, uint64_t start, const cm_buf *values, size_t n,
                      uint64_t *stored);

/* ------------------------------------------------------------------------ */
/* Hypercore's replication stream: Noise DH and secret-stream frames         */
/* (docs/protocol.md "Hypercore protocol"; the handshake logic is Python)     */
/* ------------------------------------------------------------------------ */

#define CM_NOISE_DHLEN 32
#define CM_NOISE_TAG 16

/* Noise DH as noise-curve-ed does it (not X25519): the scalar is the clamped
 * first half of SHA-512(secret_key[0..32]) and the shared secret is the
 * compressed Edwards point scalar * remote_public_key, without clamping again.
 * CM_ERR_KEY if the remote key is not a usable point (small order, not on the
 * curve) or the product is the identity. */
int cm_noise_dh(const uint8_t secret_key[64], const uint8_t remote_public_key[32],
                uint8_t out[CM_NOISE_DHLEN]);
/* ChaCha20-Poly1305 (IETF) with Noise's nonce: 4 zero bytes || u64 LE counter.
 * encrypt writes len + CM_NOISE_TAG bytes; decrypt writes ct_len - CM_NOISE_TAG
 * bytes or returns CM_ERR_AUTH. */
int cm_noise_encrypt(const uint8_t key[32], uint64_t counter, const uint8_t *ad, size_t ad_len,
                     const uint8_t *msg, size_t len, uint8_t *out);
int cm_noise_decrypt(const uint8_t key[32], uint64_t counter, const uint8_t *ad, size_t ad_len,
                     const uint8_t *ct, size_t ct_len, uint8_t *out);

#define CM_SS_KEY 32
#define CM_SS_HEADER 24          /* crypto_secretstream_xchacha20poly1305 header */
#define CM_SS_ABYTES 17          /* tag byte + Poly1305 tag per message          */
#define CM_SS_FRAME_PREFIX 3     /* uint24 LE body length                        */
#define CM_SS_MAX_BODY ((1u << 24) - 1) /* the largest body a uint24 can announce */

/* One direction of a secret-stream (crypto_secretstream_xchacha20poly1305
 * state, kept opaque so that cm.h needs no libsodium header). */
typedef struct cm_secretstream {
    uint8_t opaque[64];
} cm_secretstream;

/* Sending side with a fresh random header (to send to the peer). */
int cm_ss_init_push(cm_secretstream *s, const uint8_t key[CM_SS_KEY],
                    uint8_t header[CM_SS_HEADER]);
/* Receiving side from the peer's header.  A state made this way also pushes
 * exactly what the peer's sending side pushed (used to replay recordings). */
int cm_ss_init_pull(cm_secretstream *s, const uint8_t key[CM_SS_KEY],
                    const uint8_t header[CM_SS_HEADER]);
/* Seal n messages as frames, back to back: uint24 LE (len + 17) ||
 * push(message, tag MESSAGE, no AD).  Needs sum(len + 20) bytes of out;
 * CM_ERR_TOO_LARGE (nothing sealed, *len = bytes needed) if cap is short or a
 * message does not fit a frame. */
int cm_ss_push(cm_secretstream *s, const cm_buf *msgs, size_t n, uint8_t *out, size_t cap,
               size_t *len);
/* Open the complete frames at the start of in[0..len): their plaintexts go
 * back to back into out (len bytes always suffice) and sizes[i] is the length
 * of the i-th, for at most max_frames frames.  Stops before a partial frame.
 * *frames and *consumed say how many frames and input bytes were used, also on
 * error.  CM_ERR_DECODE: a frame shorter than CM_SS_ABYTES; CM_ERR_AUTH: a
 * frame failed authentication (the stream is then unusable). */
int cm_ss_pull(cm_secretstream *s, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
               size_t *sizes, size_t max_frames, size_t *frames, size_t *consumed);

#ifdef __cplusplus
}
#endif
#endif /* CM_H */
