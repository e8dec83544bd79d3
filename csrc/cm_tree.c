/*
 * cm_tree.c - flat-tree index math (hypercore-format §1).
 *
 * Node i has depth = number of trailing one bits, offset = its position
 * among the nodes of that depth.  Everything is u64; indexes past 2^63 are
 * outside any log this library handles (CM_MAX_LENGTH).
 */
#include "cm.h"
#include "cm_internal.h"

static uint64_t ft_pow2(uint64_t d) {
    return d >= 64 ? 0 : (UINT64_C(1) << d);
}

uint64_t cm_ft_index(uint64_t depth, uint64_t offset) {
    if (depth >= 64) return UINT64_MAX;
    return (((offset << 1) | 1) << depth) - 1;
}

uint64_t cm_ft_depth(uint64_t i) {
    uint64_t inv = ~i;
    if (inv == 0) return 64;
#if defined(__GNUC__)
    return (uint64_t)__builtin_ctzll(inv);
#else
    {
        uint64_t d = 0;
        while (i & 1) {
            i >>= 1;
            d++;
        }
        return d;
    }
#endif
}

uint64_t cm_ft_offset(uint64_t i) {
    uint64_t d;
    if ((i & 1) == 0) return i >> 1;
    d = cm_ft_depth(i);
    if (d >= 63) return 0;
    return i >> (d + 1);
}

uint64_t cm_ft_parent(uint64_t i) {
    uint64_t d = cm_ft_depth(i);
    return cm_ft_index(d + 1, cm_ft_offset(i) >> 1);
}

uint64_t cm_ft_sibling(uint64_t i) {
    uint64_t d = cm_ft_depth(i);
    return cm_ft_index(d, cm_ft_offset(i) ^ 1);
}

uint64_t cm_ft_left_child(uint64_t i) {
    uint64_t d = cm_ft_depth(i);
    if (d == 0 || d >= 64) return i;
    return i - ft_pow2(d - 1);
}

uint64_t cm_ft_right_child(uint64_t i) {
    uint64_t d = cm_ft_depth(i);
    if (d == 0 || d >= 64) return i;
    return i + ft_pow2(d - 1);
}

uint64_t cm_ft_left_span(uint64_t i) {
    uint64_t d = cm_ft_depth(i);
    if (d >= 64) return 0;
    return i - (ft_pow2(d) - 1);
}

uint64_t cm_ft_right_span(uint64_t i) {
    uint64_t d = cm_ft_depth(i);
    if (d >= 64) return UINT64_MAX;
    return i + (ft_pow2(d) - 1);
}

uint64_t cm_ft_count_leaves(uint64_t i) {
    return ft_pow2(cm_ft_depth(i));
}

int cm_ft_contains(uint64_t i, uint64_t j) {
    return cm_ft_left_span(i) <= j && j <= cm_ft_right_span(i);
}

size_t cm_ft_full_roots(uint64_t length, uint64_t out[CM_MAX_ROOTS]) {
    size_t n = 0;
    uint64_t offset = 0, rest = length;
    while (rest > 0 && n < CM_MAX_ROOTS) {
        uint64_t f = UINT64_C(1) << (63 - (uint64_t)__builtin_clzll(rest));
        out[n++] = offset + f - 1;
        offset += 2 * f;
        rest -= f;
    }
    return n;
}
