/*
 * test_primitives.c - the flat tree, AEAD, the block table, the hashing and
 * encoding primitives and manifests against the hypercore 11 vectors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"
#include "vectors.h"

void test_aead(void) {
    uint8_t key[CM_AEAD_KEY], nonce[CM_AEAD_NONCE], msg[100], ct[100 + CM_AEAD_TAG], back[100];
    const uint8_t ad[5] = {1, 2, 3, 4, 5};
    size_t i;
    g_ctx = "aead";
    for (i = 0; i < sizeof(key); i++) key[i] = (uint8_t)i;
    for (i = 0; i < sizeof(nonce); i++) nonce[i] = (uint8_t)(200 - i);
    for (i = 0; i < sizeof(msg); i++) msg[i] = (uint8_t)(i * 7);
    CHECK_RC(cm_aead_seal(key, nonce, ad, sizeof(ad), msg, sizeof(msg), ct), CM_OK);
    CHECK(memcmp(ct, msg, sizeof(msg)) != 0, "ciphertext differs from the message");
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, sizeof(ct), back), CM_OK);
    CHECK(memcmp(back, msg, sizeof(msg)) == 0, "round trip");
    ct[10] ^= 1;
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, sizeof(ct), back), CM_ERR_BAD_SIGNATURE);
    ct[10] ^= 1;
    CHECK_RC(cm_aead_open(key, nonce, ad, 4, ct, sizeof(ct), back), CM_ERR_BAD_SIGNATURE);
    key[0] ^= 1;
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, sizeof(ct), back), CM_ERR_BAD_SIGNATURE);
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, CM_AEAD_TAG - 1, back),
             CM_ERR_BAD_SIGNATURE);
}

void test_table(void) {
    cm_table t;
    uint32_t first = 99, count = 99, s, e;
    g_ctx = "table";
    CHECK_RC(cm_table_init(&t, 0, 3), CM_ERR_INVALID);
    CHECK_RC(cm_table_init(&t, 1u << 13, 1u << 12), CM_ERR_TOO_LARGE);
    CHECK_RC(cm_table_init(&t, 5, 7), CM_OK);
    for (s = 0; s < 5; s++)
        for (e = 0; e < 7; e++) CHECK(cm_table_lookup(&t, s, e, &first, &count) == 0, "empty cell");
    CHECK(first == 99 && count == 99, "a miss leaves the outputs alone");
    CHECK_RC(cm_table_set(&t, 4, 6, 10, 3), CM_OK);
    CHECK_RC(cm_table_set(&t, 0, 0, 0, 1), CM_OK);
    CHECK_RC(cm_table_set(&t, 5, 0, 0, 1), CM_ERR_RANGE);
    CHECK_RC(cm_table_set(&t, 0, 7, 0, 1), CM_ERR_RANGE);
    CHECK(cm_table_lookup(&t, 4, 6, &first, &count) == 1 && first == 10 && count == 3, "set cell");
    CHECK(cm_table_lookup(&t, 0, 0, &first, &count) == 1 && first == 0 && count == 1, "cell 0");
    CHECK(cm_table_lookup(&t, 3, 6, &first, &count) == 0, "neighbour untouched");
    CHECK_RC(cm_table_lookup(&t, 5, 0, &first, &count), CM_ERR_RANGE);
    cm_table_free(&t);
    cm_table_free(&t); /* idempotent */
    CHECK(t.first == NULL && t.n_states == 0, "freed");
}

void test_flat_tree(void) {
    size_t i, j;
    g_ctx = "flat-tree";
    for (i = 0; i < VT_N(VT_FT_INDEXES); i++) {
        const vt_ft *e = &VT_FT_INDEXES[i];
        uint64_t x = e->index;
        CHECK(cm_ft_depth(x) == e->depth, "depth(%llu)", (unsigned long long)x);
        CHECK(cm_ft_offset(x) == e->offset, "offset(%llu)", (unsigned long long)x);
        CHECK(cm_ft_parent(x) == e->parent, "parent(%llu)", (unsigned long long)x);
        CHECK(cm_ft_sibling(x) == e->sibling, "sibling(%llu)", (unsigned long long)x);
        CHECK(cm_ft_left_span(x) == e->left_span, "left_span(%llu)", (unsigned long long)x);
        CHECK(cm_ft_right_span(x) == e->right_span, "right_span(%llu)", (unsigned long long)x);
        CHECK(cm_ft_count_leaves(x) == e->count_leaves, "count_leaves(%llu)",
              (unsigned long long)x);
        CHECK(cm_ft_index(e->depth, e->offset) == x, "index(%llu,%llu)",
              (unsigned long long)e->depth, (unsigned long long)e->offset);
        if (e->has_children) {
            CHECK(cm_ft_left_child(x) == e->left_child, "left_child(%llu)", (unsigned long long)x);
            CHECK(cm_ft_right_child(x) == e->right_child, "right_child(%llu)",
                  (unsigned long long)x);
        }
        CHECK(cm_ft_contains(x, e->left_span) && cm_ft_contains(x, e->right_span) &&
                  !cm_ft_contains(x, e->right_span + 1),
              "contains(%llu)", (unsigned long long)x);
    }
    for (i = 0; i < VT_N(VT_FULL_ROOTS); i++) {
        const vt_full_roots *e = &VT_FULL_ROOTS[i];
        uint64_t out[CM_MAX_ROOTS];
        size_t n = cm_ft_full_roots(e->length, out);
        int ok = n == e->n;
        for (j = 0; ok && j < n; j++) ok = out[j] == e->roots[j];
        CHECK(ok, "full_roots(%llu): got %zu roots", (unsigned long long)e->length, n);
    }
}

void test_primitives(void) {
    size_t i, j;
    uint8_t h[32], b[64];
    g_ctx = "primitives";
    for (i = 0; i < VT_N(VT_LEAVES); i++) {
        size_t n;
        uint8_t *d = unhex(VT_LEAVES[i].data, &n);
        cm_node leaf;
        cm_hash_leaf(7, d, n, &leaf);
        CHECK(eq_hex(leaf.hash, 32, VT_LEAVES[i].hash), "leaf %zu: %s", i, tohex(leaf.hash, 32));
        CHECK(leaf.index == 14 && leaf.size == n, "leaf %zu index/size", i);
        free(d);
    }
    for (i = 0; i < VT_N(VT_PARENTS); i++) {
        cm_node l, r, p;
        vt_to_node(&VT_PARENTS[i].left, &l);
        vt_to_node(&VT_PARENTS[i].right, &r);
        cm_hash_parent(&l, &r, &p);
        CHECK(p.index == VT_PARENTS[i].parent.index, "parent %zu index", i);
        CHECK(p.size == VT_PARENTS[i].parent.size, "parent %zu size %llu", i,
              (unsigned long long)p.size);
        CHECK(eq_hex(p.hash, 32, VT_PARENTS[i].parent.hash), "parent %zu hash", i);
    }
    for (i = 0; i < VT_N(VT_TREES); i++) {
        cm_node roots[CM_MAX_ROOTS];
        for (j = 0; j < VT_TREES[i].n; j++) vt_to_node(&VT_TREES[i].roots[j], &roots[j]);
        cm_hash_tree(roots, VT_TREES[i].n, h);
        CHECK(eq_hex(h, 32, VT_TREES[i].hash), "tree %zu: %s", i, tohex(h, 32));
    }
    for (i = 0; i < VT_N(VT_DKS); i++) {
        uint8_t key[32];
        unhex_to(VT_DKS[i].key, key, 32);
        cm_discovery_key(key, h);
        CHECK(eq_hex(h, 32, VT_DKS[i].discovery_key), "discovery key %zu", i);
    }
    CHECK(eq_hex(CM_NS_TREE, 32, VT_CONST_TREE), "NS tree");
    CHECK(eq_hex(CM_NS_REPLICATE_INITIATOR, 32, VT_CONST_REPLICATE_INITIATOR), "NS init");
    CHECK(eq_hex(CM_NS_REPLICATE_RESPONDER, 32, VT_CONST_REPLICATE_RESPONDER), "NS resp");
    CHECK(eq_hex(CM_NS_MANIFEST, 32, VT_CONST_MANIFEST), "NS manifest");
    CHECK(eq_hex(CM_NS_DEFAULT, 32, VT_CONST_DEFAULT_NAMESPACE), "NS default");
    CHECK(eq_hex(CM_NS_ENCRYPTION, 32, VT_CONST_DEFAULT_ENCRYPTION), "NS encryption");
    cm_blake2b((const uint8_t *)"hypercore", 9, NULL, 0, h);
    CHECK(eq_hex(h, 32, VT_CONST_HYPERCORE_NAMESPACE_BASE), "namespace base");
    for (i = 0; i < 6; i++) {
        static const uint8_t *const ns[6] = {CM_NS_TREE, CM_NS_REPLICATE_INITIATOR,
                                             CM_NS_REPLICATE_RESPONDER, CM_NS_MANIFEST,
                                             CM_NS_DEFAULT, CM_NS_ENCRYPTION};
        uint8_t in[33], o[32];
        cm_blake2b((const uint8_t *)"hypercore", 9, NULL, 0, in);
        in[32] = (uint8_t)i;
        cm_blake2b(in, 33, NULL, 0, o);
        CHECK(memcmp(o, ns[i], 32) == 0, "namespace %zu derivation", i);
    }
    cm_hash_tree(NULL, 0, h);
    CHECK(eq_hex(h, 32, VT_CONST_EMPTY_TREE_HASH), "empty tree hash");
    CHECK(cm_crc32(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u, "crc32 check value");
    CHECK(cm_crc32(cm_crc32(0, (const uint8_t *)"1234", 4), (const uint8_t *)"56789", 5) ==
              0xCBF43926u,
          "crc32 continuation");
    /* unaligned and long inputs agree with the byte-wise definition */
    {
        uint8_t buf[1000];
        uint32_t a, c2 = 0xffffffffu;
        size_t k;
        for (k = 0; k < sizeof(buf); k++) buf[k] = (uint8_t)(k * 7 + 3);
        a = cm_crc32(0, buf + 3, 997);
        for (k = 3; k < 1000; k++) {
            int bit;
            c2 ^= buf[k];
            for (bit = 0; bit < 8; bit++) c2 = (c2 >> 1) ^ (0xEDB88320u & (0u - (c2 & 1)));
        }
        CHECK(a == ~c2, "crc32 slicing vs bitwise");
    }
    /* sizes above 2^32 in hashes and the compact encoding */
    {
        cm_writer w;
        cm_reader r;
        uint8_t enc[32];
        uint64_t vals[6] = {0, 0xfc, 0xfd, 0xffff, 0x100000000ull, UINT64_MAX};
        w.p = enc;
        w.cap = sizeof(enc);
        w.need = 0;
        for (i = 0; i < 6; i++) cm_write_uint(&w, vals[i]);
        CHECK(w.need == 1 + 1 + 3 + 3 + 9 + 9, "uint encoding sizes %zu", w.need);
        r.p = enc;
        r.end = enc + w.need;
        r.err = 0;
        for (i = 0; i < 6; i++) CHECK(cm_read_uint(&r) == vals[i], "uint roundtrip %zu", i);
        CHECK(r.err == 0 && r.p == r.end, "reader at end");
        CHECK(cm_read_uint(&r) == 0 && r.err == CM_ERR_DECODE, "overrun is sticky");
        CHECK(cm_read_fixed(&r, 1) == NULL, "fixed after error");
    }
    {
        uint8_t seed[32], pk[32], sk[64], sig[64];
        memset(seed, 7, 32);
        REQUIRE_OK(cm_keypair_from_seed(seed, pk, sk));
        CHECK(memcmp(sk, seed, 32) == 0 && memcmp(sk + 32, pk, 32) == 0, "secret = seed||pk");
        REQUIRE_OK(cm_sign((const uint8_t *)"abc", 3, sk, sig));
        CHECK_RC(cm_verify((const uint8_t *)"abc", 3, sig, pk), CM_OK);
        sig[5] ^= 1;
        CHECK_RC(cm_verify((const uint8_t *)"abc", 3, sig, pk), CM_ERR_BAD_SIGNATURE);
        memset(b, 0, sizeof(b));
    }
}

static void vt_manifest_to(const vt_manifest *v, cm_manifest *m, uint8_t *linked_buf,
                           uint8_t *ud_buf, size_t *ud_len) {
    size_t i;
    memset(m, 0, sizeof(*m));
    m->version = v->version;
    m->quorum = v->quorum;
    m->allow_patch = v->allow_patch;
    m->n_signers = (uint32_t)v->n_signers;
    for (i = 0; i < v->n_signers; i++) {
        unhex_to(v->namespaces[i], m->signers[i].namespace_, 32);
        unhex_to(v->public_keys[i], m->signers[i].public_key, 32);
    }
    if (v->prologue_hash) {
        m->has_prologue = 1;
        unhex_to(v->prologue_hash, m->prologue_hash, 32);
        m->prologue_length = v->prologue_length;
    }
    if (v->has_linked) {
        for (i = 0; i < v->n_linked; i++) unhex_to(v->linked[i], linked_buf + 32 * i, 32);
        m->n_linked = (uint32_t)v->n_linked;
        m->linked = linked_buf;
    }
    if (v->user_data) {
        uint8_t *u = unhex(v->user_data, ud_len);
        memcpy(ud_buf, u, *ud_len);
        free(u);
        m->user_data = ud_buf;
        m->user_data_len = *ud_len;
    }
}

void test_manifests(void) {
    size_t i;
    for (i = 0; i < VT_N(VT_CORES); i++) {
        const vt_core *vc = &VT_CORES[i];
        cm_manifest m, d;
        uint8_t linked[32 * 8], ud[512], enc[CM_MAX_MANIFEST], enc2[CM_MAX_MANIFEST], h[32];
        uint8_t pk[32];
        size_t ud_len = 0, len, len2, want_len;
        uint8_t *want = unhex(vc->manifest_encoded, &want_len);
        cm_verifier v;
        g_ctx = vc->name;
        vt_manifest_to(&vc->manifest, &m, linked, ud, &ud_len);
        CHECK_RC(cm_manifest_encode(&m, enc, sizeof(enc), &len), CM_OK);
        CHECK(len == want_len && memcmp(enc, want, len) == 0, "manifest encoding %s",
              tohex(enc, len));
        cm_manifest_hash(want, want_len, h);
        CHECK(eq_hex(h, 32, vc->manifest_hash), "manifest hash");
        if (!vc->compat) CHECK(eq_hex(h, 32, vc->key), "key = manifest hash");
        CHECK_RC(cm_manifest_decode(want, want_len, &d), CM_OK);
        CHECK_RC(cm_manifest_encode(&d, enc2, sizeof(enc2), &len2), CM_OK);
        CHECK(len2 == want_len && memcmp(enc2, want, len2) == 0, "decode/encode roundtrip");
        CHECK(d.version == vc->manifest.version && d.quorum == vc->manifest.quorum,
              "decoded version/quorum");
        CHECK((d.user_data != NULL) == (vc->manifest.user_data != NULL), "user data presence");
        unhex_to(vc->public_key, pk, 32);
        if (vc->manifest.version == 1) {
            cm_manifest def;
            cm_manifest_default(pk, &def);
            CHECK_RC(cm_manifest_encode(&def, enc2, sizeof(enc2), &len2), CM_OK);
            CHECK(len2 == 70 && len2 == want_len && memcmp(enc2, want, len2) == 0,
                  "default manifest");
        }
        /* truncations and trailing bytes are rejected */
        {
            size_t k;
            for (k = 0; k < want_len; k++)
                CHECK(cm_manifest_decode(want, k, &d) != CM_OK, "prefix %zu decoded", k);
            memcpy(enc2, want, want_len);
            enc2[want_len] = 0;
            CHECK_RC(cm_manifest_decode(enc2, want_len + 1, &d), CM_ERR_DECODE);
        }
        /* verifier from key + manifest */
        {
            uint8_t key[32];
            unhex_to(vc->key, key, 32);
            if (vc->compat) {
                CHECK_RC(cm_verifier_init(&v, key, NULL, 0), CM_OK);
                CHECK(v.compat == 1, "compat verifier");
            } else {
                CHECK_RC(cm_verifier_init(&v, key, want, want_len), CM_OK);
                CHECK(v.compat == 0, "manifest verifier");
                key[0] ^= 1;
                CHECK_RC(cm_verifier_init(&v, key, want, want_len), CM_ERR_KEY);
            }
        }
        free(want);
    }
}
