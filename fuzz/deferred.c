/* libFuzzer: a worker's kept L1 writes (l2_backend_apply_deferred) read from any bytes, on a real
 * two-level store (LMDB both) whose L2 holds one event. Malformed records are refused whole; the
 * rest may keep answers and reads, but L1 takes no event L2 does not hold (the fill's check), and
 * its own check stays clean. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

static void problem(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "check: %s\n", msg);
    abort();
}

static int choose(void *ud, const l2_candidate *c, size_t n, uint64_t need, uint8_t (**ids)[32], size_t *nids,
                  char *err)
{
    (void)ud, (void)c, (void)n, (void)need, (void)err;
    *ids = NULL;
    *nids = 0;
    return 0;
}

static void quiet(void *ud, const char *msg)
{
    (void)ud, (void)msg;
}

/* the one event L2 holds: what a fill may bring into L1, and nothing else */
static const char HELD[] = "{\"id\":\"00000000000000000000000000000000000000000000000000000000000000aa\","
                           "\"pubkey\":\"00000000000000000000000000000000000000000000000000000000000000bb\","
                           "\"created_at\":1700000000,\"kind\":1,\"tags\":[],\"content\":\"held\",\"sig\":"
                           "\"0000000000000000000000000000000000000000000000000000000000000000"
                           "0000000000000000000000000000000000000000000000000000000000000000\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_store *l1, *l2;
    static l2_backend *b;
    static l2_event held;
    static unsigned runs;
    char err[L2_ERRLEN];
    if (!b) {
        char dir1[] = "/tmp/layer2-fuzz-l1-XXXXXX", dir2[] = "/tmp/layer2-fuzz-l2-XXXXXX";
        l2_store_opts o1 = {.map_size = 1 << 24, .nosync = 1, .cache = 1}, o2 = {.map_size = 1 << 24, .nosync = 1};
        l2_backend_opts bo = l2_backend_default_opts;
        l2_backend_hooks hooks = {.choose = choose, .log = quiet};
        bo.size_limit = 1 << 24;
        l2_event_init(&held);
        l2_save_result r;
        l2_event *evp = &held;
        if (!mkdtemp(dir1) || !mkdtemp(dir2) || l2_store_open(&l1, dir1, &o1, err) || l2_store_open(&l2, dir2, &o2, err) ||
            l2_event_parse_json(&held, HELD, sizeof HELD - 1, L2_HAVE_ALL, &l2_default_limits, err) ||
            l2_store_save_batch(l2, &evp, 1, 1700000000, 0, &r, err) ||
            l2_backend_open(&b, l1, &l2_lmdb_store_if, l2, dir1, &bo, &hooks, err)) {
            fprintf(stderr, "setup: %s\n", err);
            abort();
        }
    }
    l2_store_stats before, after;
    if (l2_store_stats_get(l1, &before, err)) abort();
    int rc = l2_backend_apply_deferred(b, data, size, err);
    if (l2_store_stats_get(l1, &after, err)) abort();
    /* refused: nothing written; taken: at most the one event L2 holds */
    if (rc && after.events != before.events) abort();
    if (after.events > 1) abort();
    if (++runs % 500 == 0) {
        uint64_t nproblems;
        if (l2_store_check(l1, problem, NULL, &nproblems, err)) abort();
    }
    return 0;
}
