/*
 * test_cm.c - the C core's tests: the runner.  The tests themselves live in
 * the files declared in test_cm.h (primitives and manifests, the hypercore 11
 * vector cores, replicas, files on disk, limits, snapshots, the replication
 * stream, power cuts); the harness and its check macros in harness.c/test_cm.h.
 *
 * Usage: test_cm <scratch-dir>   (created and emptied; stores live under it)
 * Every failed check prints file:line and what differed; exit status 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "test_cm.h"
#include "vectors.h"

int main(int argc, char **argv) {
    size_t i;
    int runs = 300;
    if (argc != 2) {
        fprintf(stderr, "usage: %s <scratch-dir>\n", argv[0]);
        return 2;
    }
    if (getenv("CM_TEST_RUNS")) runs = atoi(getenv("CM_TEST_RUNS"));
    g_scratch = argv[1];
    rm_rf(g_scratch);
    if (mkdir(g_scratch, 0755) != 0) {
        perror(g_scratch);
        return 2;
    }
    REQUIRE_OK(cm_init());
    test_table();
    test_aead();
    test_flat_tree();
    test_primitives();
    test_manifests();
    for (i = 0; i < VT_N(VT_CORES); i++) test_vector_core(&VT_CORES[i]);
    printf("vectors: %zu cores replayed, %d proof checks, %ld checks so far\n", VT_N(VT_CORES),
           g_proofs, g_checks);
    test_replica(0);
    test_replica(1);
    test_reorg();
    test_files();
    test_get_range();
    test_hostile();
    test_limits();
    test_snapshot();
    test_stream();
    printf("store tests done, %ld checks so far\n", g_checks);
    test_power_cuts_writer(runs);
    test_power_cuts_replica(runs / 2);
    printf("power cuts: %d writer runs, %d replica runs\n", runs, runs / 2);
    printf("%s: %ld checks, %d failures\n", g_fail ? "FAILED" : "OK", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
