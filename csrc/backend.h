/* The two-level store: a size-limited LMDB cache (L1) in front of an authoritative store (L2,
 * any store interface: storeif.h), with what it learns kept beside L1 (learned.h). No Lua here:
 * what is the caller's to decide (the eviction policy, what to do with an accepted event, where
 * messages go) arrives through hooks. docs/DESIGN.md §3 says how the levels work together.
 *
 * Remembered answers are kept in L1 itself (store.h, answers.h), so every process on it shares
 * them. */
#ifndef L2_BACKEND_H
#define L2_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "filter.h"
#include "learned.h"
#include "store.h"
#include "storeif.h"

typedef struct l2_backend l2_backend;

/* What an eviction step did (l2_backend_gc). */
enum { L2_ADMIT_SECOND, L2_ADMIT_ALWAYS, L2_ADMIT_NEVER };

typedef struct {
    uint64_t evicted, dropped, freed, sent, pruned, repacked, used;
    double seconds; /* the step took */
} l2_gc_report;

typedef struct {
    /* An eviction pass the backend started itself (a write would pass the high water mark:
     * L2_GC_FORCE; one found L1 full below it: L2_GC_FULL) has ended: an observer, for tests and
     * benchmarks; may be NULL. */
    void (*evicted)(void *ud, int force, const l2_gc_report *r);
    /* The eviction policy: of the n candidates (coldest first), the ids to let go of to free about
     * `need` bytes, in *ids (malloc'd, the backend frees it). 0, or -1 with err. */
    int (*choose)(void *ud, const l2_candidate *c, size_t n, uint64_t need, uint8_t (**ids)[32], size_t *nids,
                  char *err);
    /* An event that is news here: saved or ephemeral (origin "local"), or brought in from L2 by a
     * poll (`from_l2`). For the on_event handlers; never a cache fill. */
    void (*accepted)(void *ud, const l2_event *ev, int from_l2);
    /* An event that went: an older version a save here replaced (op L2_CHANGE_REPLACED), a target
     * of a NIP-09 deletion saved here or an event deleted here (L2_CHANGE_DELETED), or an event of
     * L1's that L2's feed says another writer removed (`from_l2`). Called once the save is in both
     * levels, and only while l2_backend_hear_removals is on. */
    void (*removed)(void *ud, const uint8_t id[32], int op, int from_l2);
    void (*log)(void *ud, const char *msg);
    void *ud;
} l2_backend_hooks;

typedef struct {
    uint64_t size_limit;        /* L1's size in bytes (a multiple of its page); 0: unlimited */
    unsigned high_water;        /* percent of size_limit where eviction starts */
    unsigned low_water;         /* ...and where it stops */
    int evict_delete;           /* evicted events go at once (else they leave stubs) */
    double stub_share;          /* at most this share of L1's entries are stubs */
    uint64_t changes_kept;      /* L1's change feed keeps this many */
    int by_created;             /* candidates oldest created_at first (else least recently read) */
    uint64_t history;           /* reads between halvings of the read counts */
    int64_t poll_frequency;     /* seconds between polls (an L2 without a feed is asked that far back) */
    unsigned poll_overlap;      /* polls re-read (2 to 16; 4 by default) */
    int admit;                  /* L2_ADMIT_*: what L2 returns enters L1 from an event's second read,
                                   its first, or never (nor are L2's answers kept: L1 holds what was
                                   saved through it) */
    int64_t missing_ttl;        /* seconds an L2 "no such id" stands; 0: not kept */
    int64_t answers_ttl;        /* seconds a remembered answer stands; 0: none are kept */
    uint64_t answers_max_ids;   /* 32-byte units all remembered answers take (at most 1/16 of L1's size) */
    int64_t future_limit;       /* seconds ahead of the clock a saved event may be dated; 0: any */
} l2_backend_opts;

/* The options' defaults: the one place they are written (the Lua side reads them from here). */
extern const l2_backend_opts l2_backend_default_opts;

/* A two-level store over an open L1 (a cache store) and L2 (NULL for none); both stay the
 * caller's to close, after l2_backend_close. The learned state is mapped from l1_dir. A new L1
 * in front of an L2 that has events gets its horizon past L2's newest, and polls from L2's
 * present. */
int l2_backend_open(l2_backend **out, l2_store *l1, const l2_store_if *l2vt, void *l2, const char *l1_dir,
                    const l2_backend_opts *o, const l2_backend_hooks *hooks, char *err);
void l2_backend_close(l2_backend *b);
l2_learned *l2_backend_learned(l2_backend *b);

/* Saves n parsed and verified events: L2 first (its verdict stands), then L1 without checking
 * again, in as few L1 transactions as L1's size allows; when L2 fails, L1 decides and keeps the
 * events in its outbox in the same transaction. Ephemeral events are accepted and stored nowhere.
 * Each event's verdict goes to out[i]; `accepted` is called for each event accepted here. */
/* Whether the removed hook is called (off at first: hearing them costs a PostgreSQL L2 a read in
 * each save's transaction that removes something). */
void l2_backend_hear_removals(l2_backend *b, int on);

void l2_backend_save(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out);

/* Deletes by id on both levels (L2 first; when L2 fails, L1 queues the deletion in its outbox).
 * *found says if L2 (or L1 without an L2) had it. 0, or -1 with err. */
int l2_backend_delete(l2_backend *b, const uint8_t id[32], int tombstone, int *found, char *err);

/* Answers a REQ from L1 alone when L1 proves it complete (under the horizon) and holds every
 * body: each event goes to `row` and *answered is set. Otherwise nothing goes to `row` and the
 * caller asks L2. Without an L2, L1 always answers (stubs left out). An id lookup L1 answers
 * counts as a read of each id. *rows gets the number of events given. 0, or -1 with err. */
int l2_backend_query_l1(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                        l2_row_fn row, void *ud, int *answered, uint64_t *rows, char *err);

/* What answered a query, in events: L1's bodies, stubs filled from L2, known-missing ids, L2. */
typedef struct {
    uint64_t l1, stubs, missing, l2;
    int remembered;            /* a remembered answer was served */
    int asked_l2;              /* L2 was asked the filters: the answer is L2's */
    int l2_failed;             /* L2 failed: L1 answered what it could */
    char l2_error[L2_ERRLEN];  /* why */
} l2_levels;

/* Flags of l2_backend_query: ask L1 alone; `now` is the caller's, not the clock's (a remembered
 * answer is kept for that `now` only). */
enum { L2_QUERY_L1_ONLY = 1, L2_QUERY_NOW_GIVEN = 2 };

/* Answers a REQ on both levels: from L1 when it proves the answer (stubs' bodies fetched from L2
 * by id; lookups of ids L2 lately did not have count as answered); else from a remembered answer
 * of L2's to the same single filter (its events by id: L1's bodies, the rest from L2; the levels
 * count those as stubs); otherwise L2 answers, merged with what only L1 has while the outbox
 * waits, its events offered to L1 (admission), the ids it did not have and its answer to a
 * single filter remembered. When L2 fails, L1 answers what it can (lv->l2_failed). 0, or -1
 * with err (a refusal of L2's included). */
int l2_backend_query(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, unsigned flags,
                     l2_row_fn row, void *ud, l2_levels *lv, char *err);

/* The options the backend runs with (answers_max_ids as bounded by L1's size). */
const l2_backend_opts *l2_backend_options(const l2_backend *b);

/* Counts on L2 (the authority); on L1 when L2 fails (logged). 0, or -1 with err. */
int l2_backend_count(l2_backend *b, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err);
/* Removes the events whose NIP-40 expiration is at or before now from both levels (L2 first);
 * *removed counts L2's (L1's, without an L2). */
int l2_backend_sweep(l2_backend *b, int64_t now, uint64_t *removed, char *err);
/* Empties both levels; the horizon goes to 0 and what the backend learnt is forgotten. */
int l2_backend_nuke(l2_backend *b, char *err);
/* Drains the outbox, then makes both levels durable. */
int l2_backend_sync(l2_backend *b, char *err);
/* Checks L1, then L2 (its problems prefixed "L2: "); *nproblems counts both. */
int l2_backend_check(l2_backend *b, l2_problem_fn problem, void *ud, uint64_t *nproblems, char *err);

/* A read that reaches L2 writes L1: the events admission takes, its remembered answer, and with
 * them the reads L1 served (counted in memory until the handle's next write). A host whose
 * thread must never wait for L1's write lock (an nginx worker's event loop, while the thread
 * pool's batches hold it) has the handle keep those writes instead (on != 0): the read answers at
 * once, and l2_backend_take_deferred hands what was kept to a handle on the same L1 that may
 * wait, which writes it (l2_backend_apply_deferred). Kept writes past 16 MiB are dropped (they
 * are fills: the next read asks L2 again). Applied later, a fill is what a fill written at once
 * is: written only as far as L2 still holds its events (asked inside L1's write transaction), and
 * a remembered answer is not kept when L1's feed shows a save since the read that may touch it. */
/* Returns whether this handle may ever keep anything (not with l1.admit "never" and no size
 * limit: then the host need not look). */
int l2_backend_defer_writes(l2_backend *b, int on);
/* Appends what the handle kept to *out as records, and forgets it, with_reads: the reads its L1
 * counted first (taken out of it; those of an L1 without a size limit, which evicts nothing, are
 * dropped); *dropped gets how many the bound dropped since the last take. 0, or -1 when out of
 * memory (the fills stay kept). */
int l2_backend_take_deferred(l2_backend *b, l2_buf *out, int with_reads, uint64_t *dropped);
/* Writes records of l2_backend_take_deferred (any handle's on the same L1): the fills and answers
 * in one write transaction (a dropped answer between them splits it), the reads in one. 0, or -1 with err (malformed records, of
 * which nothing is written; a write L1 refused is logged, as a read's own fill is). */
int l2_backend_apply_deferred(l2_backend *b, const void *data, size_t len, char *err);

/* Forgets every remembered answer (L2 took events L1's feed never saw: an import). */
int l2_backend_forget_answers(l2_backend *b, char *err);

/* After an import into L2 (whole or stopped part way), whose newest event was created at `newest`
 * (negative: none): no remembered answer stands, and L1 catches up by L2's feed (a long import
 * skims: the horizon goes past it) or, without an exact feed, proves no answer up to `newest`. */
int l2_backend_imported(l2_backend *b, int64_t newest, char *err);

/* Counts a read of id (l2_learned_count_read with the backend's history): its recent reads. */
uint32_t l2_backend_count_read(l2_backend *b, const uint8_t id[32]);

/* Admission: an event fetched from L2 enters L1 (or a stub gets its body back) only when it has
 * been read about as often as what eviction lets go (the admission bar, at least twice), so
 * one-off reads do not push out what is read again and again. An L1 without a size limit (which
 * evicts nothing) and L2_ADMIT_ALWAYS admit at once. Counts this read. */
int l2_backend_admit(l2_backend *b, const uint8_t id[32]);

/* What answered queries, by level: L1 alone, stubs filled from L2, L2, ids known to be missing,
 * remembered answers; l2_backend_level_names names each ("l1", "stubs", "l2", "missing",
 * "answers"). */
enum { L2_LEVEL_L1, L2_LEVEL_STUBS, L2_LEVEL_L2, L2_LEVEL_MISSING, L2_LEVEL_ANSWERS, L2_LEVELS };
extern const char *const l2_backend_level_names[L2_LEVELS];
/* Counts n answers of `level` (an L2_LEVEL_*); the count since open. */
void l2_backend_hit(l2_backend *b, int level, uint64_t n);
uint64_t l2_backend_hits(const l2_backend *b, int level);

/* Sends what the outbox holds to L2, in order, each record acknowledged once L2 has it (a
 * refusal counts: L2 has it or never will); stops at the first L2 failure. */
int l2_backend_drain(l2_backend *b, uint64_t *sent, char *err);

enum { L2_GC_TIMER, L2_GC_FORCE, L2_GC_FULL };
/* One eviction step. L2_GC_TIMER: drains the outbox, then evicts when L1 is past its high water
 * mark; L2_GC_FORCE evicts whatever; L2_GC_FULL after a write found L1 full below its marks.
 * The policy picks (the choose hook) until L1 is under the low water mark (or has let go of the
 * share (high - low) / high of its events and is under the middle of the marks); with an L2
 * events become stubs, then stubs go, oldest first, and the horizon moves past them. */
int l2_backend_gc(l2_backend *b, int force, l2_gc_report *r, char *err);

typedef struct {
    uint64_t sent, received, deleted;
    int failed;              /* L2 could not be asked */
    char error[L2_ERRLEN];
} l2_poll_report;
/* One poll step: drains the outbox, then takes what other writers added to L2 into L1 (each new
 * event through the accepted hook, from L2). With an L2 that has a feed (storeif.h's feed) it is
 * the replay from L1's place in that feed (docs/DESIGN.md §3), which also follows anything that
 * may have left L1 behind (an open, a dead writer, a failed L1 write, an import, the gc timer).
 * An L2 in Lua with changes_since is read from a cursor, re-reading the last `poll_overlap`
 * polls' window since its order need not be commit order; one without a feed is asked for what
 * was created in the last poll_frequency * poll_overlap seconds. */
int l2_backend_poll(l2_backend *b, int64_t now, l2_poll_report *r, char *err);

/* The horizon (see docs/DESIGN.md §3), kept in L1 (queries read it in their own snapshot):
 * raised (never lowered by a raise), and set after L1 was emptied. */
int l2_backend_raise_horizon(l2_backend *b, int64_t h, char *err);
/* The horizon queries go by now (L1's, or the floor beside it when that is higher); past every
 * possible event while L1 has none. */
int64_t l2_backend_horizon(l2_backend *b);
int l2_backend_set_horizon(l2_backend *b, int64_t h, char *err);

#endif
