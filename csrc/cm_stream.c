/*
 * cm_stream.c - the byte-level hot path of Hypercore's replication stream:
 * the Noise DH of noise-curve-ed, Noise's ChaCha20-Poly1305, and
 * secret-stream frames (uint24 LE length || secretstream XChaCha20-Poly1305
 * message), sealed and opened many per call.
 *
 * The handshake state machine (Noise XX), protomux and hypercore messages are
 * Python (coremachine_embedded/sync/hyper/); they call these for every frame.
 */
#include <sodium.h>
#include <string.h>

#include "cm.h"
#include "cm_internal.h"

typedef crypto_secretstream_xchacha20poly1305_state ss_state;

/* cm_secretstream keeps libsodium's state in opaque bytes: it must fit. */
typedef char cm__ss_state_fits[sizeof(ss_state) <= sizeof(((cm_secretstream *)0)->opaque)
                               ? 1 : -1];

int cm_noise_dh(const uint8_t secret_key[64], const uint8_t remote_public_key[32],
                uint8_t out[CM_NOISE_DHLEN]) {
    uint8_t h[64];
    int rc;
    /* libsodium keeps the seed in the secret key, not the scalar */
    crypto_hash_sha512(h, secret_key, 32);
    h[0] &= 248;
    h[31] &= 127;
    h[31] |= 64;
    rc = crypto_scalarmult_ed25519_noclamp(out, h, remote_public_key);
    sodium_memzero(h, sizeof(h));
    return rc == 0 ? CM_OK : CM_ERR_KEY;
}

static void noise_nonce(uint64_t counter, uint8_t nonce[12]) {
    memset(nonce, 0, 4);
    cm__put_u64(nonce + 4, counter);
}

int cm_noise_encrypt(const uint8_t key[32], uint64_t counter, const uint8_t *ad, size_t ad_len,
                     const uint8_t *msg, size_t len, uint8_t *out) {
    uint8_t nonce[12];
    unsigned long long out_len;
    noise_nonce(counter, nonce);
    crypto_aead_chacha20poly1305_ietf_encrypt(out, &out_len, msg, len, ad, ad_len, NULL, nonce,
                                              key);
    return CM_OK;
}

int cm_noise_decrypt(const uint8_t key[32], uint64_t counter, const uint8_t *ad, size_t ad_len,
                     const uint8_t *ct, size_t ct_len, uint8_t *out) {
    uint8_t nonce[12];
    unsigned long long out_len;
    if (ct_len < CM_NOISE_TAG) return CM_ERR_AUTH;
    noise_nonce(counter, nonce);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &out_len, NULL, ct, ct_len, ad, ad_len,
                                                  nonce, key) != 0)
        return CM_ERR_AUTH;
    return CM_OK;
}

int cm_ss_init_push(cm_secretstream *s, const uint8_t key[CM_SS_KEY],
                    uint8_t header[CM_SS_HEADER]) {
    crypto_secretstream_xchacha20poly1305_init_push((ss_state *)s->opaque, header, key);
    return CM_OK;
}

int cm_ss_init_pull(cm_secretstream *s, const uint8_t key[CM_SS_KEY],
                    const uint8_t header[CM_SS_HEADER]) {
    /* libsodium derives the same state from (key, header) on both sides */
    if (crypto_secretstream_xchacha20poly1305_init_pull((ss_state *)s->opaque, header, key) != 0)
        return CM_ERR_INVALID;
    return CM_OK;
}

int cm_ss_push(cm_secretstream *s, const cm_buf *msgs, size_t n, uint8_t *out, size_t cap,
               size_t *len) {
    size_t i, need = 0, off = 0;
    for (i = 0; i < n; i++) {
        if (msgs[i].len > CM_SS_MAX_BODY - CM_SS_ABYTES) {
            *len = 0;
            return CM_ERR_TOO_LARGE;
        }
        need += CM_SS_FRAME_PREFIX + msgs[i].len + CM_SS_ABYTES;
    }
    *len = need;
    if (cap < need) return CM_ERR_TOO_LARGE;
    for (i = 0; i < n; i++) {
        size_t body = msgs[i].len + CM_SS_ABYTES;
        out[off] = (uint8_t)body;
        out[off + 1] = (uint8_t)(body >> 8);
        out[off + 2] = (uint8_t)(body >> 16);
        crypto_secretstream_xchacha20poly1305_push(
            (ss_state *)s->opaque, out + off + CM_SS_FRAME_PREFIX, NULL, msgs[i].data,
            msgs[i].len, NULL, 0, crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
        off += CM_SS_FRAME_PREFIX + body;
    }
    return CM_OK;
}

int cm_ss_pull(cm_secretstream *s, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
               size_t *sizes, size_t max_frames, size_t *frames, size_t *consumed) {
    size_t off = 0, out_off = 0, count = 0;
    int rc = CM_OK;
    while (count < max_frames && len - off >= CM_SS_FRAME_PREFIX) {
        size_t body = (size_t)in[off] | ((size_t)in[off + 1] << 8) | ((size_t)in[off + 2] << 16);
        unsigned long long plain_len;
        unsigned char tag;
        if (len - off - CM_SS_FRAME_PREFIX < body) break; /* partial frame: wait for more */
        if (body < CM_SS_ABYTES) {
            rc = CM_ERR_DECODE;
            break;
        }
        if (cap - out_off < body - CM_SS_ABYTES) {
            rc = CM_ERR_TOO_LARGE;
            break;
        }
        if (crypto_secretstream_xchacha20poly1305_pull((ss_state *)s->opaque, out + out_off,
                                                       &plain_len, &tag,
                                                       in + off + CM_SS_FRAME_PREFIX, body, NULL,
                                                       0) != 0) {
            rc = CM_ERR_AUTH;
            break;
        }
        sizes[count++] = (size_t)plain_len;
        out_off += (size_t)plain_len;
        off += CM_SS_FRAME_PREFIX + body;
    }
    *frames = count;
    *consumed = off;
    return rc;
}
