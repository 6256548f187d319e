/* Parsing and verifying a batch of wire events on several threads (import). No Lua here. */
#ifndef L2_BATCH_H
#define L2_BATCH_H

#include "event.h"

#include <pthread.h>

/* Where an item stands before the check: its JSON to parse, an event already parsed (only verified),
 * or refused already (err says why). */
enum { L2_BATCH_JSON, L2_BATCH_PARSED, L2_BATCH_REFUSED };

typedef struct {
    int from;         /* L2_BATCH_JSON (0) unless set */
    const char *json; /* with L2_BATCH_JSON */
    size_t len;
    uint64_t line; /* its line number in the source, for messages */
    l2_event ev;   /* reused from batch to batch */
    int ok;
    char err[L2_ERRLEN];
} l2_batch_item;

/* Parses (and verifies when `verify`) items[0..n) on up to `threads` threads; sets ok and err. A
 * batch of more than L2_BATCH_SHORT items is checked on threads of the lowest priority (nice 19),
 * the caller waiting: bulk work gives the CPU to a light save, an event loop, a commit. */
enum { L2_BATCH_SHORT = 64 };
void l2_batch_check(l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim);

/* The same check in the background, so that a writer can store one batch while the next is
 * checked (import). l2_batch_start returns at once; l2_batch_wait checks items beside the threads
 * until none is left, then returns when every item is checked. It must be called before the items
 * are read, moved or freed. Items are taken a few at a time, so a thread that the writer slowed
 * leaves no tail to wait for. */
enum { L2_BATCH_MAX_THREADS = 16 };
typedef struct {
    l2_batch_item *items;
    size_t n;
    _Atomic size_t next; /* the first item no thread has taken */
    int verify, threads, running;
    const l2_limits *lim;
    pthread_t tid[L2_BATCH_MAX_THREADS];
    int started[L2_BATCH_MAX_THREADS];
} l2_batch_job;
void l2_batch_start(l2_batch_job *job, l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim);
void l2_batch_wait(l2_batch_job *job);

#endif
