/*
 * test_stream.c - cm_stream.c against replication sessions recorded between
 * real JavaScript peers (tests/interop/vectors/wire/, via wire_vectors.h).
 *
 * Part of the test_cm program (its harness is test_cm.h), so it runs natively
 * and under qemu (armhf, aarch64) with the rest of the C tests.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"

#include "wire_vectors.h"

/* hypercore-crypto's namespace(name, count)[i] */
static void ns_entry(const char *name, uint8_t i, uint8_t out[32]) {
    uint8_t base[33];
    crypto_generichash(base, 32, (const uint8_t *)name, strlen(name), NULL, 0);
    base[32] = i;
    crypto_generichash(out, 32, base, 33, NULL, 0);
}

static void test_stream_dh(void) {
    size_t i;
    uint8_t pk[32], sk[64], pk2[32], sk2[64], out[32], back[32], zero[32];
    g_ctx = "noise dh";
    for (i = 0; i < VT_N(VW_DH); i++) {
        uint8_t seed[32], remote[32];
        unhex_to(VW_DH[i].seed, seed, 32);
        unhex_to(VW_DH[i].remote_public_key, remote, 32);
        REQUIRE_OK(cm_keypair_from_seed(seed, pk, sk));
        CHECK_RC(cm_noise_dh(sk, remote, out), CM_OK);
        CHECK(eq_hex(out, 32, VW_DH[i].shared), "dh %zu: %s", i, tohex(out, 32));
    }
    /* both sides reach the same secret */
    memset(zero, 0x42, 32);
    REQUIRE_OK(cm_keypair_from_seed(zero, pk2, sk2));
    CHECK_RC(cm_noise_dh(sk, pk2, out), CM_OK);
    CHECK_RC(cm_noise_dh(sk2, pk, back), CM_OK);
    CHECK(memcmp(out, back, 32) == 0, "dh is not symmetric");
    /* a small-order point (the identity) is refused */
    memset(zero, 0, 32);
    zero[0] = 1;
    CHECK_RC(cm_noise_dh(sk, zero, out), CM_ERR_KEY);
}

static void test_stream_noise_cipher(void) {
    uint8_t key[32], ct[64 + CM_NOISE_TAG], pt[64];
    const uint8_t ad[5] = {1, 2, 3, 4, 5};
    g_ctx = "noise cipher";
    memset(key, 7, sizeof(key));
    memset(pt, 9, sizeof(pt));
    CHECK_RC(cm_noise_encrypt(key, 3, ad, sizeof(ad), pt, 64, ct), CM_OK);
    memset(pt, 0, sizeof(pt));
    CHECK_RC(cm_noise_decrypt(key, 3, ad, sizeof(ad), ct, sizeof(ct), pt), CM_OK);
    CHECK(pt[0] == 9 && pt[63] == 9, "plaintext back");
    CHECK_RC(cm_noise_decrypt(key, 4, ad, sizeof(ad), ct, sizeof(ct), pt), CM_ERR_AUTH);
    CHECK_RC(cm_noise_decrypt(key, 3, ad, 4, ct, sizeof(ct), pt), CM_ERR_AUTH);
    ct[10] ^= 1;
    CHECK_RC(cm_noise_decrypt(key, 3, ad, sizeof(ad), ct, sizeof(ct), pt), CM_ERR_AUTH);
    CHECK_RC(cm_noise_decrypt(key, 3, ad, sizeof(ad), ct, CM_NOISE_TAG - 1, pt), CM_ERR_AUTH);
}

/* One direction of a session: its bytes, where the encrypted frames start. */
typedef struct dir_bytes {
    uint8_t *buf;
    size_t len, start;
    uint8_t key[32], header[24];
} dir_bytes;

static size_t frame_len(const uint8_t *p) {
    return (size_t)p[0] | ((size_t)p[1] << 8) | ((size_t)p[2] << 16);
}

static void load_direction(const vw_direction *d, const uint8_t *hh, int from_initiator,
                           dir_bytes *out) {
    size_t i, off = 0, n;
    uint8_t id[32], ns[32];
    out->len = 0;
    for (i = 0; i < d->n_chunks; i++) out->len += strlen(d->chunks[i]) / 2;
    out->buf = (uint8_t *)xmalloc(out->len + 1);
    for (i = 0; i < d->n_chunks; i++) {
        n = strlen(d->chunks[i]) / 2;
        unhex_to(d->chunks[i], out->buf + off, n);
        off += n;
    }
    off = 0;
    for (i = 0; i < d->handshake_frames; i++) off += 3 + frame_len(out->buf + off);
    REQUIRE(frame_len(out->buf + off) == 56, "header frame of %zu bytes",
            frame_len(out->buf + off));
    ns_entry("hyperswarm/secret-stream", from_initiator ? 0 : 1, ns);
    crypto_generichash(id, 32, ns, 32, hh, 64);
    CHECK(memcmp(id, out->buf + off + 3, 32) == 0, "stream id of the %s",
          from_initiator ? "initiator" : "responder");
    memcpy(out->header, out->buf + off + 3 + 32, 24);
    out->start = off + 3 + 56;
    unhex_to(d->key, out->key, 32);
}

static void test_stream_direction(const vw_direction *d, const uint8_t *hh, int from_initiator) {
    dir_bytes db;
    cm_secretstream pull, push;
    size_t cap, frames = 0, consumed = 0, i, total = 0, resealed_len = 0, got = 0, pos, step, have;
    size_t *sizes;
    uint8_t *plain, *plain2, *resealed, *bad;
    cm_buf *msgs;
    load_direction(d, hh, from_initiator, &db);
    cap = db.len - db.start;
    sizes = (size_t *)xmalloc(sizeof(size_t) * (cap / 20 + 1));
    plain = (uint8_t *)xmalloc(cap + 1);
    plain2 = (uint8_t *)xmalloc(cap + 1);
    /* every recorded frame opens, and nothing is left over */
    REQUIRE_OK(cm_ss_init_pull(&pull, db.key, db.header));
    CHECK_RC(cm_ss_pull(&pull, db.buf + db.start, cap, plain, cap, sizes, cap / 20 + 1, &frames,
                        &consumed), CM_OK);
    CHECK(consumed == cap, "consumed %zu of %zu", consumed, cap);
    CHECK(frames > 0, "no frames");
    for (i = 0; i < frames; i++) total += sizes[i];
    /* the same bytes arriving a few at a time give the same plaintexts */
    REQUIRE_OK(cm_ss_init_pull(&pull, db.key, db.header));
    for (pos = 0, have = 0, step = 1; have < cap; step = step % 97 + 13) {
        size_t nf = 0, used = 0, k;
        have = have + step < cap ? have + step : cap;
        CHECK_RC(cm_ss_pull(&pull, db.buf + db.start + pos, have - pos, plain2 + got, cap - got,
                            sizes, cap / 20 + 1, &nf, &used), CM_OK);
        for (k = 0; k < nf; k++) got += sizes[k];
        pos += used;
    }
    CHECK(pos == cap && got == total && memcmp(plain, plain2, total) == 0,
          "piecewise: %zu of %zu bytes, %zu of %zu plaintext", pos, cap, got, total);
    /* sealing the plaintexts again from the recorded header gives the same bytes */
    msgs = (cm_buf *)xmalloc(sizeof(cm_buf) * (frames + 1));
    REQUIRE_OK(cm_ss_init_pull(&pull, db.key, db.header));
    CHECK_RC(cm_ss_pull(&pull, db.buf + db.start, cap, plain, cap, sizes, cap / 20 + 1, &frames,
                        &consumed), CM_OK);
    for (i = 0, pos = 0; i < frames; i++) {
        msgs[i].data = plain + pos;
        msgs[i].len = sizes[i];
        pos += sizes[i];
    }
    resealed = (uint8_t *)xmalloc(cap + 1);
    REQUIRE_OK(cm_ss_init_pull(&push, db.key, db.header));
    CHECK_RC(cm_ss_push(&push, msgs, frames, resealed, cap - 1, &resealed_len), CM_ERR_TOO_LARGE);
    CHECK(resealed_len == cap, "push needs %zu, recorded %zu", resealed_len, cap);
    CHECK_RC(cm_ss_push(&push, msgs, frames, resealed, cap, &resealed_len), CM_OK);
    CHECK(resealed_len == cap && memcmp(resealed, db.buf + db.start, cap) == 0,
          "resealed frames differ from the recording");
    /* a flipped bit in the last frame: the frames before it open, then AUTH */
    bad = (uint8_t *)xmalloc(cap + 1);
    memcpy(bad, db.buf + db.start, cap);
    bad[cap - 1] ^= 0x80;
    REQUIRE_OK(cm_ss_init_pull(&pull, db.key, db.header));
    CHECK_RC(cm_ss_pull(&pull, bad, cap, plain, cap, sizes, cap / 20 + 1, &i, &consumed),
             CM_ERR_AUTH);
    CHECK(i == frames - 1, "%zu frames before the bad one, expected %zu", i, frames - 1);
    /* a frame too short for its tag is malformed, before any decryption */
    bad[0] = 5;
    bad[1] = bad[2] = 0;
    REQUIRE_OK(cm_ss_init_pull(&pull, db.key, db.header));
    CHECK_RC(cm_ss_pull(&pull, bad, cap, plain, cap, sizes, cap / 20 + 1, &i, &consumed),
             CM_ERR_DECODE);
    CHECK(i == 0 && consumed == 0, "nothing opened before the short frame");
    free(bad);
    free(resealed);
    free(msgs);
    free(plain2);
    free(plain);
    free(sizes);
    free(db.buf);
}

static void test_stream_sessions(void) {
    size_t i;
    uint8_t hh[64];
    for (i = 0; i < VT_N(VW_SESSIONS); i++) {
        g_ctx = VW_SESSIONS[i].name;
        unhex_to(VW_SESSIONS[i].handshake_hash, hh, 64);
        test_stream_direction(&VW_SESSIONS[i].to_responder, hh, 1);
        test_stream_direction(&VW_SESSIONS[i].to_initiator, hh, 0);
    }
}

static void test_stream_limits(void) {
    cm_secretstream s;
    uint8_t key[32], header[24], out[64];
    size_t len = 0, frames = 0, consumed = 0, sizes[4];
    cm_buf big;
    g_ctx = "stream limits";
    memset(key, 1, sizeof(key));
    REQUIRE_OK(cm_ss_init_push(&s, key, header));
    big.data = out;
    big.len = CM_SS_MAX_BODY - CM_SS_ABYTES + 1;  /* one byte too many for a frame */
    CHECK_RC(cm_ss_push(&s, &big, 1, out, sizeof(out), &len), CM_ERR_TOO_LARGE);
    /* a partial frame header and a partial body consume nothing */
    out[0] = 30;
    out[1] = out[2] = 0;
    REQUIRE_OK(cm_ss_init_pull(&s, key, header));
    CHECK_RC(cm_ss_pull(&s, out, 2, out + 32, 32, sizes, 4, &frames, &consumed), CM_OK);
    CHECK(frames == 0 && consumed == 0, "partial length");
    CHECK_RC(cm_ss_pull(&s, out, 20, out + 32, 32, sizes, 4, &frames, &consumed), CM_OK);
    CHECK(frames == 0 && consumed == 0, "partial body");
    /* an empty message is a keepalive frame of 17 bytes and opens to nothing */
    big.len = 0;
    REQUIRE_OK(cm_ss_init_push(&s, key, header));
    CHECK_RC(cm_ss_push(&s, &big, 1, out, sizeof(out), &len), CM_OK);
    CHECK(len == 20 && frame_len(out) == 17, "keepalive frame of %zu bytes", len);
    REQUIRE_OK(cm_ss_init_pull(&s, key, header));
    CHECK_RC(cm_ss_pull(&s, out, len, out + 32, 32, sizes, 4, &frames, &consumed), CM_OK);
    CHECK(frames == 1 && sizes[0] == 0 && consumed == 20, "keepalive opened");
}

void test_stream(void) {
    test_stream_dh();
    test_stream_noise_cipher();
    test_stream_sessions();
    test_stream_limits();
    printf("stream: %zu recorded sessions replayed, %ld checks so far\n", VT_N(VW_SESSIONS),
           g_checks);
}
