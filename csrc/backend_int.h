/* backend_int.h: what the parts of the two-level store (backend*.c) share; private to them. The
 * public API is backend.h. */
#ifndef L2_BACKEND_INT_H
#define L2_BACKEND_INT_H

#include "backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "killpoint.h"
#include "rules.h"

#define PAGE 4096
/* at most this many events in one L1 transaction of a save */
#define L1_CHUNK_MAX 500
/* a save of at most this many events is light: a larger one gives way to it (L2_SAVE_GIVE_WAY) */
#define L2_LIGHT_SAVE 64
/* A gc pass rewrites the L1 trees whose pages are less full than this (percent): l2_store_repack */
#define REPACK_FILL 70

struct l2_backend {
    l2_store *l1;
    const l2_store_if *l2vt;
    void *l2;
    l2_learned *learned;
    l2_backend_opts o;
    l2_backend_hooks hooks;
    int hear_removals; /* hooks.removed is called */
    uint64_t used;   /* L1's used bytes as last measured, plus what was written since */
    size_t l1_chunk; /* events per L1 transaction (smaller after a chunk found L1 full) */
    l2_buf scratch;
    l2_buf answer_key; /* the key of the query under way's remembered answer */
    l2_hits hits;
    uint64_t answered[L2_LEVELS]; /* by level (L2_LEVEL_*) */
    /* polling by L2's feed: the high-water marks of the last polls (the window re-read) and the
     * sequence numbers applied since the window's start */
    uint64_t marks[16], high;
    size_t nmarks;
    uint64_t *seen;
    size_t nseen, seen_cap;
    /* a replay of L2's feed under way (none starts inside it), and an eviction a write asked for
     * (backend_make_room's gc: no replay inside a save, a fill or a replay) */
    int replaying, making_room;
    /* a read's L1 writes kept instead of written (backend_defer.c), and how many the bound dropped */
    int defer;
    l2_buf deferred;
    uint64_t deferred_dropped;
};

typedef struct answer answer;
enum { APPLY_COPY, APPLY_SKIM, APPLY_FILL };

/* L2's changes an L1 write mirrors (first > last: none; mirror 0: not placed in L2's feed). */
typedef struct {
    int mirror;
    uint64_t first, last;
} l2_range;

/* An event of an answer, kept while L1's read ends and L2 is asked: its stored form is at
 * [off, off + len) of the answer's arena, binary (from L1 or an LMDB L2) or JSON. */
typedef struct {
    uint8_t id[32];
    int64_t created_at;
    int stub, json, found;
    size_t off, len;
} kept_row;

struct answer {
    kept_row *v;
    size_t n, cap;
    l2_buf arena;
    l2_event ev; /* scratch for decoding */
    char err[L2_ERRLEN];
    int failed;
};

/* One change of L2's feed, kept while L1 is written. */
typedef struct {
    uint64_t seq;
    int op, have_id, have_row;
    uint8_t id[32];
} kept_change;

typedef struct {
    kept_change *v;
    size_t n, cap;
    answer rows; /* the saved events, in order */
} change_list;

/* ---- backend.c ---- */


void backend_logf_(l2_backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int backend_used_bytes(l2_backend *b, uint64_t *used, char *err);

/* Room for a write of about `bytes` in `n` events: evicts before the map could fill (LMDB needs
 * free pages even to delete, so L1 works below its high water mark). 0, 1 when the write cannot
 * fit in L1 at all, -1 with err. */
int backend_make_room(l2_backend *b, uint64_t bytes, size_t n, char *err);

/* Saves evs into L1 in as few transactions as L1's size limit allows: res[i] for each, and
 * fail[i] not ok with the message when L1 could not take it. A transaction copies every page it
 * touches, and in a small L1 that can fill the map however few bytes the events have: a chunk
 * that finds L1 full is split after an eviction. With a range to mirror, the last transaction
 * records it in L1's feed position when every one before it committed; the mirror result
 * (l2_store_mirror_result) is returned, L2_MIRROR_NONE when it was not recorded. */
int backend_save_l1(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                   l2_verdict *fail, const l2_range *range);

void backend_refuse(l2_verdict *v, const char *msg);

/* Events a process that died between L2's commit and L1's may have left in L2 alone (see
 * l2_learned_begin_write): L1 stops proving answers up to them, and remembered answers end. */
void backend_recover_writes(l2_backend *b);

/* A new L1 in front of an L2 that already has events knows none of them: its horizon goes past
 * the newest (0 without an L2). Until L2 can say which is the newest, L1 has no horizon and
 * proves nothing; eviction asks again. */
int backend_learn_horizon(l2_backend *b, char *err);

/* ---- backend_query.c ---- */

/* Decodes row r of answer a (binary, or an L2's JSON) into ev. 0, or -1 with err. */
int backend_row_decode(const answer *a, const kept_row *r, l2_event *ev, char *err);

/* Does L1's answer (b->hits, with the filters' completeness) stand alone: every filter complete
 * under the horizon, no stub, and `expect` events when that is not 0? */
int backend_l1_proves(const l2_backend *b, size_t nf, const uint8_t *incomplete, uint64_t expect);

/* Gives the bodies of L1's hits to `row` from inside the read l2_store_query left open (stubs
 * left out), and ends it: the number given. */
uint64_t backend_emit_hits(l2_backend *b, l2_row_fn row, void *ud);

/* Id lookups L1 answered with a body count as reads (for admission and eviction). */
void backend_count_lookup_reads(l2_backend *b, const l2_filter *fs, size_t nf, const l2_hits *stubs);

/* l2_backend_query_l1, answering only when L1 gives `expect` events (0: any number). */
int backend_query_l1_rows(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                         uint64_t expect, l2_row_fn row, void *ud, int *answered, uint64_t *rows, char *err);


void backend_answer_init(answer *a);

void backend_answer_free(answer *a);

/* Keeps a row (a callback of the store interface's query): decoded for its id and created_at. */
int backend_keep_row(void *ud, const l2_row *row);

int backend_keep_known_row(answer *a, const l2_row *row, const uint8_t id[32], int64_t created_at);

/* L1's hits (b->hits, in the read l2_store_query left open) kept: stubs by id, the others with
 * their bodies; L1's read ends. */
int backend_keep_hits(l2_backend *b, answer *a, char *err);

/* L1's answer (no horizon) kept with its bodies. */
int backend_query_l1_kept(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, answer *a,
                         char *err);

/* Are the incomplete filters all lookups of ids L1 holds or L2 lately did not have? The number
 * of known-missing ids then, else -1. */
int64_t backend_answered_missing(l2_backend *b, const l2_filter *fs, size_t nf, const uint8_t *incomplete,
                                const l2_hits *l1, int64_t now);

/* Remembers the ids L2 did not return for the incomplete ids-only filters. */
void backend_remember_missing(l2_backend *b, const l2_filter *fs, size_t nf, const uint8_t *incomplete,
                             const answer *l2, int64_t now);

/* A filter of these ids. */
int backend_ids_filter(l2_filter *f, const uint8_t (*ids)[32], size_t n, char *err);

/* Saves the admitted events of `a` (rows from..a->n) into L1: a cache fill (no change record),
 * or bodies put back in place of stubs (`revive`). With a key k, the rows' ids are remembered as
 * the answer under k in the same transaction (unless a save since `seq` may have touched it).
 * Nothing with L2_ADMIT_NEVER. */
void backend_fill_l1(l2_backend *b, answer *a, size_t from, int revive, int64_t now, const l2_answer_key *k,
                    uint64_t seq);

/* What backend_fill_l1 writes, admission decided: the rows of `a` from `from` whose take[i - from]
 * is set (the others by id, for the answer under k). */
typedef struct {
    const answer *a;
    size_t from;
    const uint8_t *take;
    int revive;
    int64_t now;
    const l2_answer_key *k;
    uint64_t seq;
} fill_job;

/* Writes fills into L1 in one write transaction (room made first for all of them), each event only
 * when L2, asked inside that transaction, still holds it. */
void backend_write_fills(l2_backend *b, const fill_job *jobs, size_t n);

/* Puts L2's bodies of L1's stubs in place; stubs L2 has no body for are left out (the event went
 * since). The bodies are offered back to L1 (admission decides). */
void backend_fill_stubs(l2_backend *b, answer *l1, int64_t now, uint64_t *filled);

/* Gives the rows of `a` (stubs only when filled) to `row`. */
uint64_t backend_emit(const answer *a, l2_row_fn row, void *ud);

/* While L2 lags (the outbox holds events only L1 has), L1's bodies join L2's answer. */
void backend_merge_outbox(l2_backend *b, answer *l2, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now);

/* ---- backend_answers.c ---- */

/* The key a query's answer is remembered under, or 0 when it is not one to remember: a single
 * filter without ids (id lookups have the known-missing ids) or search. */
int backend_answer_key(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, unsigned flags,
                      l2_answer_key *k);

/* ---- backend_defer.c: a read's L1 writes, written or (b->defer) kept as records ---- */

/* A fill kept as a record. */
void backend_defer_fill(l2_backend *b, const fill_job *job);

/* A remembered answer's ids kept again under k (by serial: L1 holds all of them), unless a change
 * since seq may have touched it. */
void backend_keep_answer_ids(l2_backend *b, const l2_answer_key *k, const uint8_t (*ids)[32], size_t n, int64_t now,
                             uint64_t seq);

/* The remembered answer under k dropped. */
void backend_drop_answer(l2_backend *b, const l2_answer_key *k);

/* ---- backend_gc.c ---- */

/* An eviction pass the backend starts itself (L1 fills): l2_backend_gc, then the observer hook. */
int backend_evict(l2_backend *b, int force, char *err);

/* Deletes an event L2 refused from L1 (horizon moved past it: no answer L1 proves can miss it). */
void backend_forget(l2_backend *b, const uint8_t id[32]);

/* A filter of one number: {limit = v} or {since = v}. */
int backend_number_filter(l2_filter *f, unsigned field, int64_t v, char *err);

/* The created_at past the newest event L2 holds that is not far in the future (0 when there is
 * none), or `unknown` when L2 cannot say. */
int64_t backend_past_newest(l2_backend *b, int64_t unknown);

/* A horizon at *h (backend_past_newest's) promises every event from there on: those L2 holds dated far
 * ahead (imported, or stored before the limit) are copied into L1 (a cache fill), so that one
 * such event cannot put the horizon where L1 proves nothing; when they are too many or L1 cannot
 * take them, *h goes past them. */
void backend_hold_far_future(l2_backend *b, int64_t *h);

/* ---- backend_poll.c ---- */

/* Saves the events of rows [from, to) into L1 in as few transactions as it takes (APPLY_COPY);
 * each one L1 stored is news: the accepted hook, origin L2. APPLY_FILL saves them as a cache fill
 * (not news); APPLY_SKIM (a long replay) saves none: the horizon goes past them. Returns the
 * newest created_at of those L1 did not take (INT64_MIN: none). */
int64_t backend_apply_saves(l2_backend *b, answer *rows, size_t from, size_t to, int mode, int64_t now,
                           l2_poll_report *r);

/* An L2 with a feed a cache can replay (storeif.h's feed): L1 keeps its place in it. */
int backend_has_feed(const l2_backend *b);

/* ...and whose writes say which changes they made: L1's own writes move its place too. */
int backend_exact_feed(const l2_backend *b);

/* L2's present position in its feed. */
int backend_l2_feed_last(l2_backend *b, uint64_t *last, char *err);

/* An L1 without a place in L2's feed (new, emptied, or from before positions were kept) starts
 * at L2's present: L2's last change is read before its newest event, so whatever lands between
 * is past the position (replayed) whatever its created_at. An L1 that holds events it cannot
 * place is emptied first (unless its outbox waits); else it proves nothing up to L2's newest. */
int backend_start_at_present(l2_backend *b, uint64_t *pos, char *err);

/* Brings L1 to L2's present by L2's feed: from L1's position, each change applied in order (a
 * save L1 cannot take moves the horizon past it; skimming, as after an import or in a long
 * replay, every save does: history is not news, and L1 fills on demand), then the
 * position moved past them. Concurrent writers' changes land in any order; a change applied past
 * the position out of order makes the replay go on (l2_store_mirror_result). */
int backend_catch_up(l2_backend *b, int64_t now, int skim, l2_poll_report *r);

#endif
