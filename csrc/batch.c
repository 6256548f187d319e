#include "batch.h"

#include <pthread.h>

typedef struct {
    l2_batch_item *items;
    size_t from, to;
    int verify;
    const l2_limits *lim;
} slice;

static void *check_slice(void *arg)
{
    slice *s = arg;
    l2_buf scratch;
    l2_buf_init(&scratch);
    for (size_t i = s->from; i < s->to; i++) {
        l2_batch_item *it = &s->items[i];
        unsigned required = L2_HAVE_ALL | (s->verify ? L2_LENIENT_IDSIG : 0);
        int parsed = it->from == L2_BATCH_PARSED ||
                     (it->from == L2_BATCH_JSON &&
                      l2_event_parse_json(&it->ev, it->json, it->len, required, s->lim, it->err) == 0);
        it->ok = parsed && (!s->verify || l2_event_verify(&it->ev, &scratch, it->err) == 0);
    }
    l2_buf_free(&scratch);
    return NULL;
}

void l2_batch_check(l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim)
{
    enum { MAX_THREADS = 16 };
    pthread_t tid[MAX_THREADS];
    slice parts[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if ((size_t)threads > n) threads = n ? (int)n : 1;
    for (int t = 0; t < threads; t++) {
        parts[t] = (slice){items, n * (size_t)t / (size_t)threads, n * (size_t)(t + 1) / (size_t)threads, verify, lim};
        /* the calling thread takes the first slice; a thread that cannot start is done inline */
        if (t > 0) started[t] = pthread_create(&tid[t], NULL, check_slice, &parts[t]) == 0;
    }
    check_slice(&parts[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else check_slice(&parts[t]);
    }
}
