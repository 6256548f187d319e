#include "batch.h"

#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* items taken at a time: few enough to end together, enough to keep the counter cold */
#define CHUNK 32

static void *check_items(void *arg)
{
    l2_batch_job *job = arg;
    l2_buf scratch;
    l2_buf_init(&scratch);
    unsigned required = L2_HAVE_ALL | (job->verify ? L2_LENIENT_IDSIG : 0);
    size_t from;
    while ((from = atomic_fetch_add(&job->next, CHUNK)) < job->n) {
        size_t to = from + CHUNK < job->n ? from + CHUNK : job->n;
        for (size_t i = from; i < to; i++) {
            l2_batch_item *it = &job->items[i];
            int parsed = it->from == L2_BATCH_PARSED ||
                         (it->from == L2_BATCH_JSON &&
                          l2_event_parse_json(&it->ev, it->json, it->len, required, job->lim, it->err) == 0);
            it->ok = parsed && (!job->verify || l2_event_verify(&it->ev, &scratch, it->err) == 0);
        }
    }
    l2_buf_free(&scratch);
    return NULL;
}

/* A bulk batch's thread: at the lowest priority, so that on a busy machine its signatures take
 * the CPU nothing else wants (a lone EVENT's thread, an event loop, the writer holding LMDB's
 * lock run first) and the flood still gets every idle cycle. Its own thread: no way back needed
 * (a process without CAP_SYS_NICE cannot raise a priority it lowered). */
static void *check_items_low(void *arg)
{
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    return check_items(arg);
}

/* Starts `threads` threads on the items (fewer for a short batch; none that cannot start), at the
 * lowest priority when `low`. */
static void launch(l2_batch_job *job, l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim,
                   int low)
{
    size_t useful = (n + CHUNK - 1) / CHUNK;
    if (threads < 0) threads = 0;
    if (threads > L2_BATCH_MAX_THREADS) threads = L2_BATCH_MAX_THREADS;
    if ((size_t)threads > useful) threads = (int)useful;
    job->items = items;
    job->n = n;
    atomic_store(&job->next, 0);
    job->verify = verify;
    job->lim = lim;
    job->threads = threads;
    job->running = 1;
    for (int t = 0; t < threads; t++) job->started[t] = pthread_create(&job->tid[t], NULL, low ? check_items_low : check_items, job) == 0;
}

void l2_batch_start(l2_batch_job *job, l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim)
{
    launch(job, items, n, threads < 1 ? 1 : threads, verify, lim, n > L2_BATCH_SHORT);
}

void l2_batch_wait(l2_batch_job *job)
{
    if (!job->running) return;
    check_items(job);
    for (int t = 0; t < job->threads; t++)
        if (job->started[t]) pthread_join(job->tid[t], NULL);
    job->running = 0;
}

void l2_batch_check(l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim)
{
    l2_batch_job job;
    if (n <= L2_BATCH_SHORT) {
        /* the calling thread is one of the `threads`, at its own priority */
        launch(&job, items, n, threads - 1, verify, lim, 0);
        l2_batch_wait(&job);
        return;
    }
    /* a bulk batch: every check on threads of the lowest priority while the caller waits; what
     * a thread that could not start left is the caller's */
    launch(&job, items, n, threads, verify, lim, 1);
    for (int t = 0; t < job.threads; t++)
        if (job.started[t]) pthread_join(job.tid[t], NULL);
    job.threads = 0;
    l2_batch_wait(&job);
}
