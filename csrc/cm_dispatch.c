/*
 * cm_dispatch.c - the transition table of a compiled state machine.
 *
 * One flat array per field, indexed state * n_events + event: a lookup is an
 * index computation and two loads.
 */
#include <stdlib.h>

#include "cm.h"

int cm_table_init(cm_table *t, uint32_t n_states, uint32_t n_events) {
    size_t cells;
    t->n_states = t->n_events = 0;
    t->first = t->count = NULL;
    if (n_states == 0 || n_events == 0) return CM_ERR_INVALID;
    if ((uint64_t)n_states * n_events > CM_MAX_TABLE_CELLS) return CM_ERR_TOO_LARGE;
    cells = (size_t)n_states * n_events;
    t->first = (uint32_t *)calloc(cells, sizeof(uint32_t));
    t->count = (uint32_t *)calloc(cells, sizeof(uint32_t));
    if (!t->first || !t->count) {
        cm_table_free(t);
        return CM_ERR_NOMEM;
    }
    t->n_states = n_states;
    t->n_events = n_events;
    return CM_OK;
}

void cm_table_free(cm_table *t) {
    free(t->first);
    free(t->count);
    t->first = t->count = NULL;
    t->n_states = t->n_events = 0;
}

int cm_table_set(cm_table *t, uint32_t state, uint32_t event, uint32_t first, uint32_t count) {
    size_t cell;
    if (state >= t->n_states || event >= t->n_events) return CM_ERR_RANGE;
    cell = (size_t)state * t->n_events + event;
    t->first[cell] = first;
    t->count[cell] = count;
    return CM_OK;
}

int cm_table_lookup(const cm_table *t, uint32_t state, uint32_t event, uint32_t *first,
                    uint32_t *count) {
    size_t cell;
    if (state >= t->n_states || event >= t->n_events) return CM_ERR_RANGE;
    cell = (size_t)state * t->n_events + event;
    if (t->count[cell] == 0) return 0;
    *first = t->first[cell];
    *count = t->count[cell];
    return 1;
}
