/* libFuzzer: save and query on a real LMDB store (a cache, L1's layout). Each input line is an
 * event (saved without signature checks, so fuzzed events get in; a quarter of them evicted at
 * once, to a stub or gone) or a filter (queried and counted); the store's own check must stay
 * clean. Every thousand runs the cache switches between bodies in slots and bodies kept in their
 * records (l2_store_never_evicts), so both kinds live side by side. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static void problem(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "check: %s\n", msg);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_store *st;
    static l2_event ev;
    static l2_filter f;
    static l2_hits hits;
    static unsigned runs;
    char err[L2_ERRLEN];
    if (!st) {
        char dir[] = "/tmp/layer2-fuzz-XXXXXX";
        l2_store_opts o = {.map_size = 1 << 24, .nosync = 1, .cache = 1};
        if (!mkdtemp(dir) || l2_store_open(&st, dir, &o, err)) abort();
        l2_event_init(&ev);
        l2_filter_init(&f);
    }
    if (runs % 1000 == 0) l2_store_never_evicts(st, (int)(runs / 1000) & 1);
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (l2_event_parse_json(&ev, p, n, L2_HAVE_ALL, &l2_default_limits, err) == 0) {
            l2_event *evp = &ev;
            l2_save_result r;
            if (l2_store_save_batch(st, &evp, 1, 1700000000, 0, &r, err)) abort();
            uint64_t evicted, freed;
            if (r.status == L2_SAVE_STORED && (ev.id[0] & 3) == 0 &&
                l2_store_evict(st, (const uint8_t(*)[32])ev.id, 1, ev.id[1] & 1, &evicted, &freed, err))
                abort();
        } else if (l2_filter_parse_json(&f, p, n, &l2_default_filter_limits, err) == 0) {
            uint64_t count;
            if (l2_store_query(st, &f, 1, 500, 1700000000, 0, NULL, &hits, err)) abort();
            l2_store_read_end(st);
            if (l2_store_count(st, &f, 1, 1700000000, &count, err)) abort();
            if (hits.n > count) abort();
        }
        p += n + 1;
    }
    if (++runs % 2000 == 0) {
        uint64_t nproblems;
        if (l2_store_check(st, problem, NULL, &nproblems, err)) abort();
        if (l2_store_nuke(st, err)) abort(); /* keep it small */
    }
    return 0;
}
