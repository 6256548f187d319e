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
/* A gc pass rewrites the L1 trees whose pages are less full than this (percent): l2_store_repack */
#define REPACK_FILL 70

struct l2_backend {
    l2_store *l1;
    const l2_store_if *l2vt;
    void *l2;
    l2_learned *learned;
    l2_backend_opts o;
    l2_backend_hooks hooks;
    uint64_t used;   /* L1's used bytes as last measured, plus what was written since */
    size_t l1_chunk; /* events per L1 transaction (smaller after a chunk found L1 full) */
    l2_buf scratch;
    l2_buf answer_key; /* the key of the query under way's remembered answer */
    l2_hits hits;
    uint64_t answered[5]; /* by level: see level_names */
    /* polling by L2's feed: the high-water marks of the last polls (the window re-read) and the
     * sequence numbers applied since the window's start */
    uint64_t marks[16], high;
    size_t nmarks;
    uint64_t *seen;
    size_t nseen, seen_cap;
    /* a replay of L2's feed under way (none starts inside it), and an eviction a write asked for
     * (make_room's gc: no replay inside a save, a fill or a replay) */
    int replaying, making_room;
};

static const char *level_names[5] = {"l1", "stubs", "l2", "missing", "answers"};

static int first_open(l2_backend *b, char *err);
static int learn_horizon(l2_backend *b, char *err);
static void recover_writes(l2_backend *b);
static int exact_feed(const l2_backend *b);
static int has_feed(const l2_backend *b);
static int catch_up(l2_backend *b, int64_t now, int skim, l2_poll_report *r);
static void logf_(l2_backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int l2_last_seq(l2_backend *b, uint64_t *last, char *err);
typedef struct answer answer;
enum { APPLY_COPY, APPLY_SKIM, APPLY_FILL };
static int64_t apply_saves(l2_backend *b, answer *rows, size_t from, size_t to, int mode, int64_t now,
                           l2_poll_report *r);

int l2_backend_open(l2_backend **out, l2_store *l1, const l2_store_if *l2vt, void *l2, const char *l1_dir,
                    const l2_backend_opts *o, const l2_backend_hooks *hooks, char *err)
{
    *out = NULL;
    l2_backend *b = calloc(1, sizeof *b);
    if (!b) return l2_oom(err);
    if (l2_learned_open(&b->learned, l1_dir, o->size_limit, err)) {
        free(b);
        return -1;
    }
    b->l1 = l1;
    l2_store_share_horizon(l1, l2_learned_horizon_floor(b->learned));
    l2_store_set_backed(l1, l2 != NULL);
    b->l2vt = l2 ? l2vt : NULL;
    b->l2 = l2;
    b->o = *o;
    b->hooks = *hooks;
    b->l1_chunk = L1_CHUNK_MAX;
    /* answers take at most a sixteenth of a size-limited L1 */
    if (b->o.size_limit && b->o.answers_max_ids > b->o.size_limit / 16 / 32)
        b->o.answers_max_ids = b->o.size_limit / 16 / 32;
    if (!l2 || !b->o.answers_max_ids) b->o.answers_ttl = 0;
    l2_buf_init(&b->scratch);
    l2_buf_init(&b->answer_key);
    *out = b;
    if (first_open(b, err)) {
        l2_backend_close(b);
        *out = NULL;
        return -1;
    }
    if (l2) recover_writes(b);
    if (has_feed(b)) {
        /* a process that died between the two commits, an L1 write that failed, a power loss
         * that took L1's last commits: L1 replays what L2's feed has past its position */
        l2_poll_report r = {0};
        if (catch_up(b, (int64_t)time(NULL), 0, &r)) logf_(b, "L1 cannot catch up with L2: %s", r.error);
    }
    return 0;
}

void l2_backend_close(l2_backend *b)
{
    if (!b) return;
    l2_store_share_horizon(b->l1, NULL);
    l2_store_set_backed(b->l1, 0);
    l2_learned_close(b->learned);
    l2_buf_free(&b->scratch);
    l2_buf_free(&b->answer_key);
    l2_hits_free(&b->hits);
    free(b->seen);
    free(b);
}

l2_learned *l2_backend_learned(l2_backend *b)
{
    return b->learned;
}

static void logf_(l2_backend *b, const char *fmt, ...)
{
    char msg[2 * L2_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (b->hooks.log) b->hooks.log(b->hooks.ud, msg);
}

/* ---- the horizon ---- */

int l2_backend_set_horizon(l2_backend *b, int64_t h, char *err)
{
    l2_learned_set_horizon_floor(b->learned, h);
    return l2_store_meta_set_int(b->l1, "horizon", h, err);
}

int64_t l2_backend_horizon(l2_backend *b)
{
    int found;
    int64_t h, floor = *l2_learned_horizon_floor(b->learned);
    char err[L2_ERRLEN];
    if (l2_store_meta_get_int(b->l1, "horizon", &h, &found, err) || !found) h = L2_MAX_CREATED_AT + 1;
    return h > floor ? h : floor;
}

int l2_backend_raise_horizon(l2_backend *b, int64_t h, char *err)
{
    /* first where it cannot fail: a full L1 may refuse the write below */
    l2_learned_raise_horizon_floor(b->learned, h);
    int64_t now_value;
    return l2_store_meta_raise(b->l1, "horizon", h, &now_value, err);
}

/* ---- room in L1 ---- */

/* What a write of `bytes` in `n` events may take in L1: the bodies, their index keys and the
 * pages copied on write (each event of a transaction touches pages of several indexes). */
static uint64_t room_needed(uint64_t bytes, size_t n)
{
    return bytes * 3 + 16384 + (uint64_t)(n ? n - 1 : 0) * 6 * PAGE;
}

static int room_fits(const l2_backend *b, uint64_t bytes, size_t n)
{
    return !b->o.size_limit || room_needed(bytes, n) <= b->o.size_limit * (100 - b->o.high_water) / 100;
}

static int used_bytes(l2_backend *b, uint64_t *used, char *err)
{
    l2_store_stats s;
    if (l2_store_stats_get(b->l1, &s, err)) return -1;
    *used = s.used_bytes;
    return 0;
}

/* Room for a write of about `bytes` in `n` events: evicts before the map could fill (LMDB needs
 * free pages even to delete, so L1 works below its high water mark). 0, 1 when the write cannot
 * fit in L1 at all, -1 with err. */
static int make_room(l2_backend *b, uint64_t bytes, size_t n, char *err)
{
    if (!b->o.size_limit) return 0;
    if (!room_fits(b, bytes, n)) return 1;
    uint64_t need = room_needed(bytes, n), high = b->o.size_limit * b->o.high_water / 100;
    if (b->used + need > high) {
        if (used_bytes(b, &b->used, err)) return -1;
        if (b->used + need > high) {
            b->making_room = 1;
            if (b->hooks.gc(b->hooks.ud, 0, err)) logf_(b, "eviction failed: %s", err);
            b->making_room = 0;
            if (used_bytes(b, &b->used, err)) return -1;
        }
    }
    b->used += need;
    return 0;
}

/* An event's size in L1, about (its JSON's). */
static uint64_t size_of(const l2_event *ev)
{
    return 300 + l2_event_canonical_len(ev);
}

/* L2's changes an L1 write mirrors (first > last: none; mirror 0: not placed in L2's feed). */
typedef struct {
    int mirror;
    uint64_t first, last;
} l2_range;

/* Saves evs into L1 in as few transactions as L1's size limit allows: res[i] for each, and
 * fail[i] not ok with the message when L1 could not take it. A transaction copies every page it
 * touches, and in a small L1 that can fill the map however few bytes the events have: a chunk
 * that finds L1 full is split after an eviction. With a range to mirror, the last transaction
 * records it in L1's feed position when every one before it committed; the mirror result
 * (l2_store_mirror_result) is returned, L2_MIRROR_NONE when it was not recorded. */
static int save_l1(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                   l2_verdict *fail, const l2_range *range)
{
    size_t from = 0;
    int retried = 0, all_ok = 1, placed = L2_MIRROR_NONE;
    while (from < n) {
        size_t k = 0;
        uint64_t bytes = 0;
        while (from + k < n && k < b->l1_chunk) {
            uint64_t s = size_of(evs[from + k]);
            if (k && !room_fits(b, bytes + s, k + 1)) break;
            bytes += s;
            k++;
        }
        char err[L2_ERRLEN];
        int room = make_room(b, bytes, k, err);
        if (room == 1) snprintf(err, sizeof err, "error: the event is too large for L1");
        /* a save's changes commute (l2_store_mirror_next) */
        int mirror_here = !room && range && range->mirror && from + k == n && all_ok;
        if (mirror_here) l2_store_mirror_next(b->l1, range->first, range->last, 1);
        int rc = room ? -1 : l2_store_save_batch(b->l1, evs + from, k, now, flags, res + from, err);
        if (mirror_here) placed = l2_store_mirror_result(b->l1);
        if (rc && b->o.size_limit && strstr(err, "full") && (k > 1 || !retried)) {
            /* the pages a transaction copies filled L1 below its high water mark: evict, then
             * try again, in smaller transactions, a single event once more */
            b->l1_chunk = k / 2 ? k / 2 : 1;
            retried = k == 1;
            if (b->hooks.gc(b->hooks.ud, 1, err)) logf_(b, "eviction failed: %s", err);
            continue;
        }
        retried = 0;
        if (!rc && b->l1_chunk < L1_CHUNK_MAX) b->l1_chunk++;
        if (rc) all_ok = 0;
        for (size_t i = from; i < from + k; i++) {
            fail[i].ok = !rc;
            if (rc) snprintf(fail[i].msg, sizeof fail[i].msg, "%s", err);
        }
        from += k;
        if (from < n && !rc) l2_killpoint("save:l1-chunk");
    }
    return placed;
}

static void refuse(l2_verdict *v, const char *msg)
{
    v->ok = 0;
    snprintf(v->msg, sizeof v->msg, "%s", msg ? msg : "error: refused");
}

/* Events a process that died between L2's commit and L1's may have left in L2 alone (see
 * l2_learned_begin_write): L1 stops proving answers up to them, and remembered answers end. */
static void recover_writes(l2_backend *b)
{
    int64_t newest = l2_learned_abandoned_writes(b->learned);
    if (newest == INT64_MIN) return;
    char err[L2_ERRLEN];
    if (has_feed(b)) {
        l2_poll_report r = {0};
        logf_(b, "a process died while writing: L1 replays L2's feed");
        if (catch_up(b, (int64_t)time(NULL), 0, &r) == 0 && !r.failed) return;
        logf_(b, "L1 cannot catch up with L2: %s", r.error);
    }
    logf_(b, "a process died while saving: L1 proves no answer up to created_at %lld", (long long)newest);
    if (l2_backend_raise_horizon(b, newest + 1, err)) logf_(b, "cannot raise the horizon: %s", err);
    if (l2_backend_forget_answers(b, err)) logf_(b, "cannot forget the remembered answers: %s", err);
}

/* Takes a write slot for a save of evs to both levels; when none is free, L1 gives up proving
 * answers up to them at once instead. */
static int begin_write(l2_backend *b, l2_event *const *evs, size_t n)
{
    int64_t newest = INT64_MIN;
    for (size_t i = 0; i < n; i++)
        if (evs[i]->created_at > newest) newest = evs[i]->created_at;
    int slot = l2_learned_begin_write(b->learned, newest);
    char err[L2_ERRLEN];
    if (slot < 0 && l2_backend_raise_horizon(b, newest + 1, err)) logf_(b, "cannot raise the horizon: %s", err);
    return slot;
}

void l2_backend_save(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out)
{
    size_t cap = n ? n : 1, np = 0, na = 0, nq = 0;
    int slot = -1;
    l2_range range = {0, 1, 0};
    l2_event **pending = malloc(cap * sizeof *pending), **group = malloc(cap * sizeof *group);
    size_t *at = malloc(cap * sizeof *at), *accepted = malloc(cap * sizeof *accepted),
           *queued = malloc(cap * sizeof *queued);
    l2_save_result *res = calloc(cap, sizeof *res);
    l2_verdict *l1v = calloc(cap, sizeof *l1v);
    if (!pending || !group || !at || !accepted || !queued || !res || !l1v) {
        for (size_t i = 0; i < n; i++) refuse(&out[i], "error: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        out[i].ok = 0;
        out[i].msg[0] = 0;
        if (b->o.future_limit > 0 && evs[i]->created_at > now + b->o.future_limit) {
            snprintf(out[i].msg, sizeof out[i].msg, "invalid: created_at is more than %lld seconds ahead of the clock",
                     (long long)b->o.future_limit);
            continue;
        }
        l2_learned_missing_forget(b->learned, evs[i]->id); /* it exists now */
        if (l2_kind_ephemeral(evs[i]->kind)) {
            out[i].ok = 1;
            b->hooks.accepted(b->hooks.ud, evs[i], 0);
            continue;
        }
        at[np] = i;
        pending[np++] = evs[i];
    }
    /* L2 first: its verdicts stand; what it could not take L1 decides, with the outbox */
    if (b->l2 && np) {
        char err[L2_ERRLEN];
        recover_writes(b);
        slot = begin_write(b, pending, np);
        if (b->l2vt->save_batch(b->l2, pending, np, now, 0, res, err)) {
            logf_(b, "L2 save failed, queued in the outbox: %s", err);
            for (size_t k = 0; k < np; k++) queued[nq++] = k;
        } else {
            if (exact_feed(b)) {
                range.mirror = 1;
                b->l2vt->last_changes(b->l2, &range.first, &range.last);
            }
            l2_killpoint("save:l2-committed");
            const char *why = NULL;
            for (size_t k = 0; k < np; k++) {
                if (res[k].status == L2_SAVE_STORED) {
                    accepted[na++] = k;
                } else if (res[k].status == L2_SAVE_FAILED) {
                    if (!why) why = res[k].msg;
                    queued[nq++] = k;
                } else {
                    refuse(&out[at[k]], l2_save_result_message(&res[k]));
                }
            }
            if (nq) logf_(b, "L2 save failed, queued in the outbox: %s", why ? why : "error: L2 failed");
        }
    } else {
        for (size_t k = 0; k < np; k++) queued[nq++] = k; /* L1 is the only level: it decides */
    }
    /* L1 trusts what L2 accepted (L2 has it whatever L1 says) */
    for (size_t j = 0; j < na; j++) group[j] = pending[accepted[j]];
    memset(res, 0, cap * sizeof *res);
    int placed = save_l1(b, group, na, now, 0, res, l1v, &range);
    size_t lost = 0;
    int64_t newest_lost = -1;
    const char *lost_msg = NULL;
    for (size_t j = 0; j < na; j++) {
        size_t k = accepted[j];
        out[at[k]].ok = 1;
        if (!l1v[j].ok) {
            lost++;
            lost_msg = l1v[j].msg;
            if (pending[k]->created_at > newest_lost) newest_lost = pending[k]->created_at;
        } else if (res[j].status == L2_SAVE_STORED) {
            b->hooks.accepted(b->hooks.ud, pending[k], 0);
        }
    }
    if (range.mirror && range.first <= range.last && (placed == L2_MIRROR_NONE || placed == L2_MIRROR_REPLAY)) {
        /* L1 missed L2's changes (it could not take them), or took later ones first: it replays
         * L2's feed, which holds what it cannot take past the horizon */
        l2_poll_report r = {0};
        int ran = !b->replaying;
        if (catch_up(b, now, 0, &r) || r.failed) logf_(b, "L1 cannot catch up with L2: %s", r.error);
        else if (ran) lost = 0; /* else the horizon goes past them below */
    }
    if (lost) {
        /* L2 has them, L1 cannot hold them: L1 stops claiming completeness up to them */
        char err[L2_ERRLEN];
        logf_(b, "L1 could not take %zu event(s): %s", lost, lost_msg);
        if (l2_backend_raise_horizon(b, newest_lost + 1, err)) logf_(b, "cannot raise the horizon: %s", err);
        /* nor can a remembered answer hear of them */
        if (l2_backend_forget_answers(b, err)) logf_(b, "cannot forget the remembered answers: %s", err);
    }
    /* ...and decides, with the outbox, what L2 could not take */
    for (size_t j = 0; j < nq; j++) group[j] = pending[queued[j]];
    memset(res, 0, cap * sizeof *res);
    save_l1(b, group, nq, now, b->l2 ? L2_SAVE_OUTBOX : 0, res, l1v, NULL);
    for (size_t j = 0; j < nq; j++) {
        l2_verdict *v = &out[at[queued[j]]];
        if (!l1v[j].ok) {
            refuse(v, l1v[j].msg);
        } else if (res[j].status == L2_SAVE_STORED) {
            v->ok = 1;
            b->hooks.accepted(b->hooks.ud, group[j], 0);
        } else {
            refuse(v, l2_save_result_message(&res[j]));
        }
    }
done:
    l2_learned_end_write(b->learned, slot);
    free(pending);
    free(group);
    free(at);
    free(accepted);
    free(queued);
    free(res);
    free(l1v);
}

int l2_backend_delete(l2_backend *b, const uint8_t id[32], int tombstone, int *found, char *err)
{
    if (b->l2) {
        int exact = exact_feed(b), slot = -1;
        if (exact) {
            recover_writes(b);
            slot = l2_learned_begin_write(b->learned, 0);
        }
        if (b->l2vt->delete_event(b->l2, id, tombstone, 0, found, err) == 0) {
            int l1_found, placed = L2_MIRROR_AT;
            uint64_t first = 1, last = 0;
            char l1_err[L2_ERRLEN];
            if (exact) b->l2vt->last_changes(b->l2, &first, &last);
            l2_killpoint("delete:l2-committed");
            if (first <= last) l2_store_mirror_next(b->l1, first, last, tombstone);
            if (l2_store_delete(b->l1, id, tombstone, 0, &l1_found, l1_err))
                logf_(b, "L1 could not delete an event L2 deleted: %s", l1_err);
            if (first <= last) placed = l2_store_mirror_result(b->l1);
            if (placed == L2_MIRROR_NONE || placed == L2_MIRROR_REPLAY) {
                l2_poll_report r = {0};
                if (catch_up(b, (int64_t)time(NULL), 0, &r) || r.failed)
                    logf_(b, "L1 cannot catch up with L2: %s", r.error);
            }
            l2_learned_end_write(b->learned, slot);
            return 0;
        }
        l2_learned_end_write(b->learned, slot);
        logf_(b, "L2 delete failed, queued in the outbox: %s", err);
        return l2_store_delete(b->l1, id, tombstone, 1, found, err);
    }
    return l2_store_delete(b->l1, id, tombstone, 0, found, err);
}

/* ---- reads L1 answers alone ---- */

/* Does L1's answer (b->hits, with the filters' completeness) stand alone: every filter complete
 * under the horizon, no stub, and `expect` events when that is not 0? */
static int l1_proves(const l2_backend *b, size_t nf, const uint8_t *incomplete, uint64_t expect)
{
    for (size_t i = 0; i < nf; i++)
        if (incomplete[i]) return 0;
    for (size_t i = 0; i < b->hits.n; i++)
        if (b->hits.v[i].stub) return 0;
    return !expect || b->hits.n == expect;
}

/* Gives the bodies of L1's hits to `row` from inside the read l2_store_query left open (stubs
 * left out), and ends it: the number given. */
static uint64_t emit_hits(l2_backend *b, l2_row_fn row, void *ud)
{
    uint64_t n = 0;
    for (size_t i = 0; i < b->hits.n; i++) {
        const l2_hit *h = &b->hits.v[i];
        l2_row r = {0};
        memcpy(r.id, h->id, 32);
        if (h->stub || l2_store_body(b->l1, h->serial, &r.bin, &r.bin_len)) continue;
        n++;
        if (row(ud, &r)) break;
    }
    l2_store_read_end(b->l1);
    return n;
}

/* Id lookups L1 answered with a body count as reads (for admission and eviction). */
static void count_lookup_reads(l2_backend *b, const l2_filter *fs, size_t nf, const l2_hits *stubs)
{
    if (nf != 1 || !(fs[0].have & L2_F_IDS)) return;
    for (uint32_t k = 0; k < fs[0].nids; k++) {
        int stub = 0;
        for (size_t i = 0; stubs && i < stubs->n && !stub; i++)
            stub = stubs->v[i].stub && memcmp(stubs->v[i].id, fs[0].ids[k], 32) == 0;
        if (!stub) l2_backend_count_read(b, fs[0].ids[k]);
    }
}

/* l2_backend_query_l1, answering only when L1 gives `expect` events (0: any number). */
static int query_l1_rows(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                         uint64_t expect, l2_row_fn row, void *ud, int *answered, uint64_t *rows, char *err)
{
    *answered = 0;
    *rows = 0;
    uint8_t small[16], *incomplete = nf <= sizeof small ? small : calloc(nf, 1);
    if (!incomplete) return l2_oom(err);
    memset(incomplete, 0, nf);
    int rc = l2_store_query(b->l1, fs, nf, max_limit, now, b->l2 ? L2_HORIZON_IN_META : 0, incomplete, &b->hits, err);
    if (rc == 0) {
        *answered = !b->l2 || l1_proves(b, nf, incomplete, expect);
        if (*answered) *rows = emit_hits(b, row, ud);
        else l2_store_read_end(b->l1);
        if (*answered && b->l2) count_lookup_reads(b, fs, nf, NULL);
    }
    if (incomplete != small) free(incomplete);
    return rc;
}

int l2_backend_query_l1(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                        l2_row_fn row, void *ud, int *answered, uint64_t *rows, char *err)
{
    if (b->l2) recover_writes(b);
    return query_l1_rows(b, fs, nf, max_limit, now, 0, row, ud, answered, rows, err);
}

uint32_t l2_backend_count_read(l2_backend *b, const uint8_t id[32])
{
    return l2_learned_count_read(b->learned, id, b->o.history);
}

static uint64_t *level(l2_backend *b, const char *name)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(name, level_names[i]) == 0) return &b->answered[i];
    return NULL;
}

void l2_backend_hit(l2_backend *b, const char *name, uint64_t n)
{
    uint64_t *c = level(b, name);
    if (c) *c += n;
}

uint64_t l2_backend_hits(l2_backend *b, const char *name)
{
    uint64_t *c = level(b, name);
    return c ? *c : 0;
}

/* ---- reads that reach L2 ---- */

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

static void answer_init(answer *a)
{
    memset(a, 0, sizeof *a);
    l2_buf_init(&a->arena);
    l2_event_init(&a->ev);
}

static void answer_free(answer *a)
{
    free(a->v);
    l2_buf_free(&a->arena);
    l2_event_free(&a->ev);
}

/* Decodes row r of a into a->ev. 0, or -1 with a->err. */
static int answer_decode(answer *a, const kept_row *r)
{
    const char *p = a->arena.data + r->off;
    return r->json ? l2_event_parse_json(&a->ev, p, r->len, L2_HAVE_ALL, &l2_default_limits, a->err)
                   : l2_event_decode_bin(&a->ev, p, r->len, a->err);
}

/* Keeps a row whose id and created_at are known (L1's hits): nothing to decode. */
static int keep_known_row(answer *a, const l2_row *row, const uint8_t id[32], int64_t created_at);

/* Keeps a row (a callback of the store interface's query): decoded for its id and created_at. */
static int keep_row(void *ud, const l2_row *row)
{
    return keep_known_row(ud, row, NULL, 0);
}

static int keep_known_row(answer *a, const l2_row *row, const uint8_t id[32], int64_t created_at)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        kept_row *v = realloc(a->v, cap * sizeof *v);
        if (!v) {
            a->failed = l2_oom(a->err);
            return 1;
        }
        a->v = v;
        a->cap = cap;
    }
    kept_row *r = &a->v[a->n];
    memset(r, 0, sizeof *r);
    memcpy(r->id, row->id, 32);
    r->stub = row->stub;
    r->json = row->json != NULL && !row->stub;
    r->off = a->arena.len;
    if (!row->stub) {
        const void *p = r->json ? (const void *)row->json : row->bin;
        r->len = r->json ? row->json_len : row->bin_len;
        if (l2_buf_put(&a->arena, p, r->len)) {
            a->failed = l2_oom(a->err);
            return 1;
        }
        if (id) {
            memcpy(r->id, id, 32);
            r->created_at = created_at;
        } else {
            /* the id and time of an L2 row, for merging and for the missing ids */
            if (answer_decode(a, r)) {
                a->failed = -1;
                return 1;
            }
            memcpy(r->id, a->ev.id, 32);
            r->created_at = a->ev.created_at;
        }
    }
    a->n++;
    return 0;
}

/* L1's hits (b->hits, in the read l2_store_query left open) kept: stubs by id, the others with
 * their bodies; L1's read ends. */
static int keep_hits(l2_backend *b, answer *a, char *err)
{
    for (size_t i = 0; i < b->hits.n && !a->failed; i++) {
        const l2_hit *h = &b->hits.v[i];
        l2_row r = {0};
        r.stub = h->stub;
        memcpy(r.id, h->id, 32);
        if (!h->stub && l2_store_body(b->l1, h->serial, &r.bin, &r.bin_len)) continue;
        keep_known_row(a, &r, h->id, h->created_at);
    }
    l2_store_read_end(b->l1);
    if (a->failed) snprintf(err, L2_ERRLEN, "%s", a->err);
    return a->failed ? -1 : 0;
}

/* L1's answer (no horizon) kept with its bodies. */
static int query_l1_kept(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, answer *a,
                         char *err)
{
    if (l2_store_query(b->l1, fs, nf, max_limit, now, 0, NULL, &b->hits, err)) return -1;
    return keep_hits(b, a, err);
}

int l2_backend_admit(l2_backend *b, const uint8_t id[32])
{
    uint32_t n = l2_backend_count_read(b, id);
    return b->o.admit_always || n >= l2_learned_admit_bar(b->learned);
}

/* A filter of ids only (with a limit no smaller than its ids): the lookups whose absent ids say
 * the events do not exist. */
static int ids_only(const l2_filter *f)
{
    return (f->have & ~(unsigned)L2_F_LIMIT) == L2_F_IDS && (!(f->have & L2_F_LIMIT) || f->limit >= (int64_t)f->nids);
}

static int in_answer(const answer *a, const uint8_t id[32])
{
    for (size_t i = 0; i < a->n; i++)
        if (memcmp(a->v[i].id, id, 32) == 0) return 1;
    return 0;
}

static int in_hits(const l2_hits *h, const uint8_t id[32])
{
    for (size_t i = 0; i < h->n; i++)
        if (memcmp(h->v[i].id, id, 32) == 0) return 1;
    return 0;
}

/* Are the incomplete filters all lookups of ids L1 holds or L2 lately did not have? The number
 * of known-missing ids then, else -1. */
static int64_t answered_missing(l2_backend *b, const l2_filter *fs, size_t nf, const uint8_t *incomplete,
                                const l2_hits *l1, int64_t now)
{
    int64_t n = 0;
    for (size_t i = 0; i < nf; i++) {
        if (!incomplete[i]) continue;
        if (!ids_only(&fs[i])) return -1;
        for (uint32_t k = 0; k < fs[i].nids; k++) {
            if (in_hits(l1, fs[i].ids[k])) continue;
            if (!l2_learned_missing(b->learned, fs[i].ids[k], now)) return -1;
            n++;
        }
    }
    return n;
}

/* Remembers the ids L2 did not return for the incomplete ids-only filters. */
static void remember_missing(l2_backend *b, const l2_filter *fs, size_t nf, const uint8_t *incomplete,
                             const answer *l2, int64_t now)
{
    if (b->o.missing_ttl <= 0) return;
    for (size_t i = 0; i < nf; i++) {
        if (!incomplete[i] || !ids_only(&fs[i])) continue;
        for (uint32_t k = 0; k < fs[i].nids; k++)
            if (!in_answer(l2, fs[i].ids[k])) l2_learned_missing_add(b->learned, fs[i].ids[k], now + b->o.missing_ttl);
    }
}

/* A filter of these ids. */
static int ids_filter(l2_filter *f, const uint8_t (*ids)[32], size_t n, char *err)
{
    static const l2_filter_limits unlimited = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, SIZE_MAX, SIZE_MAX,
                                               SIZE_MAX};
    int rc = l2_filter_begin(f, L2_F_IDS, 0, err);
    for (size_t i = 0; rc == 0 && i < n; i++) rc = l2_filter_add_key(f, L2_F_IDS, ids[i], i, &unlimited, err);
    return rc ? rc : l2_filter_finish(f, err);
}

/* Asks L2 for these ids. */
static int l2_by_ids(l2_backend *b, const uint8_t (*ids)[32], size_t n, int64_t now, answer *out, char *err)
{
    l2_filter f;
    l2_filter_init(&f);
    int rc = ids_filter(&f, ids, n, err);
    if (rc == 0) rc = b->l2vt->query(b->l2, &f, 1, (int64_t)n, now, 0, NULL, keep_row, out, err);
    if (rc == 0 && out->failed) rc = -1, snprintf(err, L2_ERRLEN, "%s", out->err);
    l2_filter_free(&f);
    return rc;
}

/* Saves the admitted events of `a` (rows from..a->n) into L1: a cache fill (no change record),
 * or bodies put back in place of stubs (`revive`). With a key k, the rows' ids are remembered as
 * the answer under k in the same transaction (unless a save since `seq` may have touched it). */
static void fill_l1(l2_backend *b, answer *a, size_t from, int revive, int64_t now, const l2_answer_key *k,
                    uint64_t seq)
{
    size_t n = 0, rows = a->n - from;
    uint64_t bytes = 0;
    l2_event *evs = calloc(rows + 1, sizeof *evs);
    l2_event **ptrs = calloc(rows + 1, sizeof *ptrs);
    l2_save_result *res = calloc(rows + 1, sizeof *res);
    uint8_t(*ids)[32] = k ? malloc((rows + 1) * 32) : NULL;
    char err[L2_ERRLEN] = "error: out of memory";
    int rc = !evs || !ptrs || !res || (k && !ids);
    for (size_t i = from; !rc && i < a->n; i++) {
        kept_row *r = &a->v[i];
        if (ids) memcpy(ids[i - from], r->id, 32);
        if (r->stub) continue;
        l2_learned_missing_forget(b->learned, r->id);
        if (!l2_backend_admit(b, r->id)) continue;
        l2_event_init(&evs[n]);
        const char *p = a->arena.data + r->off;
        if (r->json ? l2_event_parse_json(&evs[n], p, r->len, L2_HAVE_ALL, &l2_default_limits, err)
                    : l2_event_decode_bin(&evs[n], p, r->len, err)) {
            l2_event_free(&evs[n]);
            continue;
        }
        bytes += r->len;
        ptrs[n] = &evs[n];
        n++;
    }
    if (!rc && (n || k)) {
        uint64_t revived;
        int kept;
        size_t room = n && make_room(b, bytes, n, err) ? 0 : n; /* without room the answer may still be kept */
        for (int tries = 0; tries < 2; tries++) {
            if (revive) rc = room ? l2_store_revive(b->l1, ptrs, room, &revived, err) : 0;
            else if (room || k)
                rc = l2_store_fill(b->l1, ptrs, room, now, res, k, (const uint8_t(*)[32])ids, rows,
                                   (int64_t)time(NULL) + b->o.answers_ttl, b->o.answers_max_ids, seq, &kept, err);
            /* the pages the transaction copies filled L1 below its high water mark (as in
             * save_l1): evict, then try once more */
            if (!rc || tries || !b->o.size_limit || !strstr(err, "full")) break;
            if (b->hooks.gc(b->hooks.ud, 1, err)) logf_(b, "eviction failed: %s", err);
        }
        if (rc) logf_(b, "L1 could not keep what L2 returned: %s", err);
    }
    for (size_t i = 0; evs && i < n; i++) l2_event_free(&evs[i]);
    free(evs);
    free(ptrs);
    free(res);
    free(ids);
}

/* Puts L2's bodies of L1's stubs in place; stubs L2 has no body for are left out (the event went
 * since). The bodies are offered back to L1 (admission decides). */
static void fill_stubs(l2_backend *b, answer *l1, int64_t now, uint64_t *filled)
{
    *filled = 0;
    size_t nstubs = 0;
    for (size_t i = 0; i < l1->n; i++) nstubs += l1->v[i].stub;
    if (!nstubs) return;
    uint8_t(*ids)[32] = malloc(nstubs * 32);
    if (!ids) return;
    size_t k = 0;
    for (size_t i = 0; i < l1->n; i++)
        if (l1->v[i].stub) memcpy(ids[k++], l1->v[i].id, 32);
    size_t from = l1->n;
    char err[L2_ERRLEN];
    /* L2's rows go after L1's in the same answer; a stub then points at its body's row */
    if (l2_by_ids(b, (const uint8_t(*)[32])ids, nstubs, now, l1, err)) logf_(b, "L2 could not fill stubs: %s", err);
    for (size_t i = 0; i < from; i++) {
        kept_row *r = &l1->v[i];
        if (!r->stub) continue;
        for (size_t j = from; j < l1->n; j++) {
            if (memcmp(l1->v[j].id, r->id, 32) != 0) continue;
            r->off = l1->v[j].off, r->len = l1->v[j].len, r->json = l1->v[j].json;
            r->found = 1;
            ++*filled;
            break;
        }
    }
    fill_l1(b, l1, from, 1, now, NULL, 0);
    l1->n = from;
    free(ids);
}

/* Gives the rows of `a` (stubs only when filled) to `row`. */
static uint64_t emit(const answer *a, l2_row_fn row, void *ud)
{
    uint64_t n = 0;
    for (size_t i = 0; i < a->n; i++) {
        const kept_row *r = &a->v[i];
        if (r->stub && !r->found) continue;
        l2_row out = {0};
        memcpy(out.id, r->id, 32);
        if (r->json) out.json = a->arena.data + r->off, out.json_len = r->len;
        else out.bin = a->arena.data + r->off, out.bin_len = r->len;
        n++;
        if (row(ud, &out)) break;
    }
    return n;
}

static int newest_first(const void *x, const void *y)
{
    const kept_row *a = x, *b = y;
    if (a->created_at != b->created_at) return a->created_at > b->created_at ? -1 : 1;
    return memcmp(a->id, b->id, 32);
}

/* While L2 lags (the outbox holds events only L1 has), L1's bodies join L2's answer. */
static void merge_outbox(l2_backend *b, answer *l2, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now)
{
    l2_outbox_item item;
    size_t waiting = 0;
    char err[L2_ERRLEN];
    int rc = l2_store_outbox_list(b->l1, 1, &item, &waiting, err);
    l2_store_read_end(b->l1);
    if (rc || !waiting) return;
    answer l1;
    answer_init(&l1);
    if (query_l1_kept(b, fs, nf, max_limit, now, &l1, err)) logf_(b, "L1's part of an answer: %s", err);
    for (size_t i = 0; i < l1.n; i++) {
        const kept_row *r = &l1.v[i];
        if (r->stub || in_answer(l2, r->id)) continue;
        l2_row row = {0};
        row.bin = l1.arena.data + r->off;
        row.bin_len = r->len;
        if (keep_row(l2, &row)) break;
    }
    answer_free(&l1);
    qsort(l2->v, l2->n, sizeof *l2->v, newest_first);
}

/* ---- remembered answers ---- */

/* The key a query's answer is remembered under, or 0 when it is not one to remember: a single
 * filter without ids (id lookups have the known-missing ids) or search. */
static int answer_key(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, unsigned flags,
                      l2_answer_key *k)
{
    if (!b->o.answers_ttl || nf != 1 || (flags & L2_QUERY_L1_ONLY) || (fs[0].have & (L2_F_IDS | L2_F_SEARCH)))
        return 0;
    int64_t limit = (fs[0].have & L2_F_LIMIT) && fs[0].limit < max_limit ? fs[0].limit : max_limit;
    b->answer_key.len = 0;
    if (l2_filter_encode_json(&fs[0], limit, &b->answer_key)) return 0;
    k->filter = b->answer_key.data;
    k->len = b->answer_key.len;
    k->now = (flags & L2_QUERY_NOW_GIVEN) ? now : L2_ANSWER_ANY_NOW;
    k->epoch = l2_learned_answers_epoch(b->learned);
    return 1;
}

/* Keeps a row as it is (the answer's order is the query's): nothing decoded. */
static int keep_raw_row(void *ud, const l2_row *row)
{
    return keep_known_row(ud, row, row->id, 0);
}

/* Serves a remembered answer (its n ids, newest first) by id: 1 when every event of it is still
 * there (then the rows are given), 0 when it no longer stands (an event of it was deleted,
 * replaced or expired since) or L2 failed. */
static int serve_answer(l2_backend *b, const uint8_t (*ids)[32], size_t n, int64_t now, l2_row_fn row, void *ud,
                        l2_levels *lv)
{
    l2_filter f;
    answer a;
    l2_levels by_id;
    char err[L2_ERRLEN];
    l2_filter_init(&f);
    answer_init(&a);
    memset(&by_id, 0, sizeof by_id);
    int in_l1 = 0, served = n == 0;
    uint64_t rows = 0;
    if (!served && ids_filter(&f, ids, n, err) == 0) {
        /* L1 holds all of it (the answer served before): given as L1 reads them */
        if (query_l1_rows(b, &f, 1, (int64_t)n, now, n, row, ud, &in_l1, &rows, err) == 0 && in_l1) {
            served = 1;
            by_id.l1 = rows;
        } else {
            served = l2_backend_query(b, &f, 1, (int64_t)n, now, 0, keep_raw_row, &a, &by_id, err) == 0 &&
                     !a.failed && !by_id.l2_failed && a.n == n;
            if (served) emit(&a, row, ud);
        }
    }
    if (served) {
        lv->l1 = by_id.l1;
        lv->stubs = by_id.stubs + by_id.l2;
        lv->remembered = 1;
        b->answered[0] += in_l1 ? rows : 0;
        b->answered[4]++;
    }
    l2_filter_free(&f);
    answer_free(&a);
    return served;
}

int l2_backend_forget_answers(l2_backend *b, char *err)
{
    l2_learned_end_answers(b->learned); /* at once, and whatever the write below does */
    return l2_store_answers_clear(b->l1, err);
}

/* The rest of l2_backend_query, when L1 could not answer alone from its read (b->hits, with the
 * filters' completeness in `incomplete`; the read still open). */
static int query_beyond_l1(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                           unsigned flags, const uint8_t *incomplete, l2_row_fn row, void *ud, l2_levels *lv,
                           char *err)
{
    int rc = 0;
    answer l1, l2;
    answer_init(&l1);
    answer_init(&l2);
    int complete = 1;
    for (size_t i = 0; i < nf; i++) complete &= !incomplete[i];
    /* known-missing ids are kept by the clock, whatever `now` the caller gives the rules */
    int64_t missing = complete ? 0 : answered_missing(b, fs, nf, incomplete, &b->hits, (int64_t)time(NULL));
    /* a stub's read is counted when its body comes */
    if (complete) count_lookup_reads(b, fs, nf, &b->hits);
    /* L1's bodies are needed only when L1 answers; else nobody gets them, and reading them would
     * count them as accesses */
    if (missing < 0) l2_store_read_end(b->l1);
    else if ((rc = keep_hits(b, &l1, err))) goto done;
    uint64_t bodies = 0;
    for (size_t i = 0; i < l1.n; i++) bodies += !l1.v[i].stub;
    if (missing >= 0) {
        fill_stubs(b, &l1, now, &lv->stubs);
        lv->l1 = bodies;
        lv->missing = (uint64_t)missing;
        emit(&l1, row, ud);
        b->answered[0] += bodies, b->answered[1] += lv->stubs, b->answered[3] += lv->missing;
        goto done;
    }
    /* L1 cannot prove the answer: a remembered answer of L2's, else L2, the authority */
    l2_answer_key key;
    uint64_t seq = 0;
    int remember = answer_key(b, fs, nf, max_limit, now, flags, &key);
    if (remember) {
        int found;
        l2_buf kept;
        l2_buf_init(&kept);
        if (l2_store_answer_get(b->l1, &key, (int64_t)time(NULL), &kept, &found, &seq, err)) {
            logf_(b, "cannot read a remembered answer: %s", err);
            remember = 0;
        } else if (found) {
            int served = serve_answer(b, (const uint8_t(*)[32])kept.data, kept.len / 32, now, row, ud, lv);
            l2_buf_free(&kept);
            if (served) goto done;
            if (l2_store_answer_drop(b->l1, &key, err)) logf_(b, "cannot drop a remembered answer: %s", err);
        }
        l2_buf_free(&kept);
    }
    lv->asked_l2 = 1;
    if (b->l2vt->query(b->l2, fs, nf, max_limit, now, 0, NULL, keep_row, &l2, lv->l2_error) || l2.failed) {
        if (l2.failed) snprintf(lv->l2_error, sizeof lv->l2_error, "%s", l2.err);
        if (strncmp(lv->l2_error, "error:", 6) != 0) {
            /* a refusal (a filter L2 will not run) is the answer */
            snprintf(err, L2_ERRLEN, "%s", lv->l2_error);
            rc = -1;
            goto done;
        }
        logf_(b, "L2 query failed, answering from L1: %s", lv->l2_error);
        lv->l2_failed = 1;
        answer_free(&l1);
        answer_init(&l1);
        if ((rc = query_l1_kept(b, fs, nf, max_limit, now, &l1, err))) goto done;
        fill_stubs(b, &l1, now, &lv->stubs);
        lv->l1 = emit(&l1, row, ud) - lv->stubs;
        goto done;
    }
    merge_outbox(b, &l2, fs, nf, max_limit, now);
    remember_missing(b, fs, nf, incomplete, &l2, (int64_t)time(NULL));
    fill_l1(b, &l2, 0, 0, now, remember ? &key : NULL, seq);
    lv->l2 = emit(&l2, row, ud);
    b->answered[2] += lv->l2;
done:
    answer_free(&l1);
    answer_free(&l2);
    return rc;
}

int l2_backend_query(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, unsigned flags,
                     l2_row_fn row, void *ud, l2_levels *lv, char *err)
{
    memset(lv, 0, sizeof *lv);
    if (b->l2) recover_writes(b);
    uint8_t small[16], *incomplete = nf <= sizeof small ? small : malloc(nf);
    if (!incomplete) return l2_oom(err);
    memset(incomplete, 0, nf);
    int64_t horizon = b->l2 && !(flags & L2_QUERY_L1_ONLY) ? L2_HORIZON_IN_META : 0;
    int rc = l2_store_query(b->l1, fs, nf, max_limit, now, horizon, incomplete, &b->hits, err);
    if (rc == 0 && (!b->l2 || (flags & L2_QUERY_L1_ONLY) || l1_proves(b, nf, incomplete, 0))) {
        /* L1 answers alone: straight from its read */
        lv->l1 = emit_hits(b, row, ud);
        if (b->l2 && !(flags & L2_QUERY_L1_ONLY)) count_lookup_reads(b, fs, nf, NULL);
        b->answered[0] += lv->l1;
    } else if (rc == 0) {
        rc = query_beyond_l1(b, fs, nf, max_limit, now, flags, incomplete, row, ud, lv, err);
    }
    if (incomplete != small) free(incomplete);
    return rc;
}

/* ---- the outbox and eviction ---- */

/* Deletes an event L2 refused from L1 (horizon moved past it: no answer L1 proves can miss it). */
static void forget(l2_backend *b, const uint8_t id[32])
{
    uint64_t evicted, freed;
    char err[L2_ERRLEN];
    if (l2_store_evict(b->l1, (const uint8_t(*)[32])id, 1, 1, &evicted, &freed, err))
        logf_(b, "L1 could not let go of a version L2 refused: %s", err);
}

int l2_backend_drain(l2_backend *b, uint64_t *sent, char *err)
{
    *sent = 0;
    if (!b->l2) return 0;
    l2_outbox_item items[256];
    l2_buf copy;
    l2_event ev;
    l2_buf_init(&copy);
    l2_event_init(&ev);
    int rc = 0;
    for (;;) {
        size_t n;
        if ((rc = l2_store_outbox_list(b->l1, 256, items, &n, err))) break;
        /* copied: the read ends before L2 is called and each record is acknowledged */
        copy.len = 0;
        size_t *offs = calloc(n ? n : 1, sizeof *offs);
        for (size_t i = 0; offs && i < n; i++) {
            offs[i] = copy.len;
            if (l2_buf_put(&copy, items[i].data, items[i].len)) {
                free(offs);
                offs = NULL;
            }
        }
        l2_store_read_end(b->l1);
        if (!offs) {
            rc = l2_oom(err);
            break;
        }
        int stop = 0;
        for (size_t i = 0; i < n && !stop; i++) {
            const uint8_t *p = (const uint8_t *)copy.data + offs[i];
            size_t len = items[i].len;
            int failed = 0;
            char why[L2_ERRLEN];
            if (len > 1 && p[0] == 'S' && l2_event_decode_bin(&ev, p + 1, len - 1, why) == 0) {
                l2_event *evp = &ev;
                l2_save_result res = {0};
                /* a refusal (a duplicate) means L2 has it or will never take it: delivered */
                failed = b->l2vt->save_batch(b->l2, &evp, 1, (int64_t)time(NULL), 0, &res, why) ||
                         res.status == L2_SAVE_FAILED;
                if (res.status == L2_SAVE_FAILED && res.msg) snprintf(why, sizeof why, "%s", res.msg);
                /* L1 took it alone, without the head a newer version left in L2 (or past a
                 * deletion): L1's copy goes */
                if (!failed && (res.status == L2_SAVE_OLDER || res.status == L2_SAVE_DELETED)) forget(b, ev.id);
            } else if (len == 34 && p[0] == 'D') {
                int found;
                failed = b->l2vt->delete_event(b->l2, p + 1, p[33], 0, &found, why);
            } else {
                logf_(b, "dropping an unreadable outbox record %llu", (unsigned long long)items[i].seq);
            }
            if (!failed) l2_killpoint("drain:l2-took");
            if (failed) {
                logf_(b, "the outbox waits for L2: %s", why);
                stop = 1;
            } else if ((rc = l2_store_outbox_ack(b->l1, items[i].seq, err))) {
                stop = 1;
            } else {
                ++*sent;
            }
        }
        free(offs);
        if (stop || n < 256) break;
    }
    l2_buf_free(&copy);
    l2_event_free(&ev);
    if (*sent && has_feed(b)) {
        /* L1 took these alone; L2's feed now has them, and what L2 made of them */
        l2_poll_report r = {0};
        if (catch_up(b, (int64_t)time(NULL), 0, &r) || r.failed) logf_(b, "L1 cannot catch up with L2: %s", r.error);
    }
    return rc;
}

/* Runs step(b, size, ud) in small transactions until it reports done: copy-on-write needs free
 * pages, and a full cache has few. A step that fails is retried smaller. A step returns how many
 * it handled (0: nothing left), or -1 with err. */
static void in_small_steps(l2_backend *b, const char *what, int64_t (*step)(l2_backend *, size_t, void *, char *),
                           void *ud)
{
    size_t size = 32;
    char err[L2_ERRLEN];
    for (;;) {
        int64_t n = step(b, size, ud, err);
        if (n == 0) return;
        if (n < 0) {
            if (size == 1) {
                logf_(b, "%s failed: %s", what, err);
                return;
            }
            size = size / 4 ? size / 4 : 1;
        }
    }
}

typedef struct {
    const uint8_t (*ids)[32];
    size_t n, at;
    int delete_mode;
    uint64_t evicted, freed;
} evict_state;

static int64_t evict_step(l2_backend *b, size_t size, void *ud, char *err)
{
    evict_state *e = ud;
    if (e->at >= e->n) return 0;
    size_t k = e->n - e->at < size ? e->n - e->at : size;
    uint64_t evicted, freed;
    if (l2_store_evict(b->l1, e->ids + e->at, k, e->delete_mode, &evicted, &freed, err)) return -1;
    l2_killpoint("gc:evicted");
    e->evicted += evicted, e->freed += freed, e->at += k;
    return (int64_t)k;
}

typedef struct {
    uint64_t max, dropped;
} drop_state;

static int64_t drop_step(l2_backend *b, size_t size, void *ud, char *err)
{
    drop_state *d = ud;
    if (d->dropped >= d->max) return 0;
    uint64_t dropped;
    int64_t horizon;
    size_t k = d->max - d->dropped < size ? (size_t)(d->max - d->dropped) : size;
    if (l2_store_drop_stubs(b->l1, k, &dropped, &horizon, err)) return -1;
    d->dropped += dropped;
    return (int64_t)dropped;
}

/* Removes up to max stubs, oldest first; the horizon moves past them. */
static uint64_t drop_stubs(l2_backend *b, uint64_t max)
{
    drop_state d = {max, 0};
    in_small_steps(b, "dropping stubs", drop_step, &d);
    return d.dropped;
}

/* A filter of one number: {limit = v} or {since = v}. */
static int number_filter(l2_filter *f, unsigned field, int64_t v, char *err)
{
    return l2_filter_begin(f, field, 0, err) || l2_filter_set_number(f, field, v, err) || l2_filter_finish(f, err);
}

/* The latest created_at that is not far in the future: now + future_limit (no limit: any). */
static int64_t future_edge(const l2_backend *b)
{
    return b->o.future_limit > 0 ? (int64_t)time(NULL) + b->o.future_limit : L2_MAX_CREATED_AT;
}

/* L2's events created in [since, until] newest first, at most `limit`, into *a. 0, or -1. */
static int l2_window(l2_backend *b, int64_t since, int64_t until, int64_t limit, answer *a)
{
    l2_filter f;
    l2_filter_init(&f);
    char err[L2_ERRLEN];
    int rc = l2_filter_begin(&f, L2_F_SINCE, 0, err) || l2_filter_set_number(&f, L2_F_SINCE, since, err) ||
             l2_filter_begin(&f, L2_F_UNTIL, 0, err) || l2_filter_set_number(&f, L2_F_UNTIL, until, err) ||
             l2_filter_begin(&f, L2_F_LIMIT, 0, err) || l2_filter_set_number(&f, L2_F_LIMIT, limit, err) ||
             l2_filter_finish(&f, err) ||
             b->l2vt->query(b->l2, &f, 1, limit, (int64_t)time(NULL), 0, NULL, keep_row, a, err) || a->failed;
    l2_filter_free(&f);
    return rc ? -1 : 0;
}

/* The created_at past the newest event L2 holds that is not far in the future (0 when there is
 * none), or `unknown` when L2 cannot say. */
static int64_t past_newest(l2_backend *b, int64_t unknown)
{
    answer newest;
    answer_init(&newest);
    int64_t h = unknown;
    if (l2_window(b, 0, future_edge(b), 1, &newest) == 0) h = newest.n ? newest.v[0].created_at + 1 : 0;
    answer_free(&newest);
    return h;
}

/* At most this many events dated past the future limit are held in L1 so that the horizon can
 * stay at the present. */
#define FAR_FUTURE_MAX 256

/* A horizon at *h (past_newest's) promises every event from there on: those L2 holds dated far
 * ahead (imported, or stored before the limit) are copied into L1 (a cache fill), so that one
 * such event cannot put the horizon where L1 proves nothing; when they are too many or L1 cannot
 * take them, *h goes past them. */
static void hold_far_future(l2_backend *b, int64_t *h)
{
    if (b->o.future_limit <= 0) return;
    answer far;
    answer_init(&far);
    int64_t edge = future_edge(b);
    if (l2_window(b, edge + 1, L2_MAX_CREATED_AT, FAR_FUTURE_MAX + 1, &far)) {
        *h = L2_MAX_CREATED_AT + 1;
    } else if (far.n > FAR_FUTURE_MAX) {
        *h = far.v[0].created_at + 1;
    } else if (far.n) {
        l2_poll_report r = {0};
        int64_t untaken = apply_saves(b, &far, 0, far.n, APPLY_FILL, (int64_t)time(NULL), &r);
        if (untaken != INT64_MIN && untaken >= *h) *h = untaken + 1;
    }
    answer_free(&far);
}

/* L1 could not be brought under its high water mark: L1 is a cache and L2 has everything, so it
 * starts again past the newest event L2 holds (past every possible one when L2 cannot say). */
static void reset_l1(l2_backend *b)
{
    l2_outbox_item item;
    size_t waiting = 0;
    char err[L2_ERRLEN];
    int rc = l2_store_outbox_list(b->l1, 1, &item, &waiting, err);
    l2_store_read_end(b->l1);
    if (rc || waiting) {
        logf_(b, "L1 keeps its outbox: it cannot be emptied now");
        return;
    }
    uint64_t last = 0;
    int exact = has_feed(b);
    if (exact && l2_last_seq(b, &last, err)) {
        logf_(b, "L1 is not emptied: %s", err);
        return;
    }
    int64_t h = past_newest(b, L2_MAX_CREATED_AT);
    if (l2_store_nuke(b->l1, err) || (hold_far_future(b, &h), l2_backend_set_horizon(b, h, err)) ||
        (exact && l2_store_feed_reset(b->l1, last, err)))
        logf_(b, "emptying L1 failed: %s", err);
}

/* Rewrites L1's half-empty trees (l2_store_repack): first the room they hold, then what each
 * eviction round left in them. 1 when every tree could be (used bytes then show what evictions
 * freed), 0 when one was left as it is (too large, or no room for its copy). */
static int repack(l2_backend *b, l2_gc_report *r)
{
    char err[L2_ERRLEN];
    uint64_t freed = 0;
    int whole = 0;
    if (l2_store_repack(b->l1, REPACK_FILL, &freed, &whole, err)) logf_(b, "repacking: %s", err);
    r->repacked += freed;
    return whole;
}

#define MIN_CANDIDATES 512
#define MAX_CANDIDATES 4096

int l2_backend_gc(l2_backend *b, int force, l2_gc_report *r, char *err)
{
    memset(r, 0, sizeof *r);
    if (b->l2) recover_writes(b);
    int dead = l2_store_reader_check(b->l1);
    if (dead) logf_(b, "freed %d reader slot(s) of L1 that killed processes held", dead);
    if (has_feed(b)) {
        /* also what brings back an L1 emptied behind the backend */
        l2_poll_report caught = {0};
        if (force == L2_GC_TIMER && !b->making_room && catch_up(b, (int64_t)time(NULL), 0, &caught))
            logf_(b, "L1 cannot catch up with L2: %s", caught.error);
    } else if (learn_horizon(b, err)) {
        return -1;
    }
    if (force == L2_GC_TIMER && l2_backend_drain(b, &r->sent, err)) logf_(b, "draining the outbox failed: %s", err);
    if (!b->o.size_limit) return 0;
    uint64_t limit = b->o.size_limit, high = b->o.high_water, low = b->o.low_water;
    l2_store_stats st;
    if (l2_store_stats_get(b->l1, &st, err)) return -1;
    if (st.used_bytes <= limit * high / 100 && force == L2_GC_TIMER) {
        b->used = r->used = st.used_bytes;
        return 0;
    }
    int delete_mode = !b->l2 || b->o.evict_delete;
    /* L1's change feed serves live tailing, not history */
    if (l2_store_prune_changes(b->l1, b->o.changes_kept, &r->pruned, err)) return -1;
    int repacks = repack(b, r);
    if (l2_store_stats_get(b->l1, &st, err)) return -1;
    double used = (double)st.used_bytes, target = (double)limit * low / 100;
    /* LMDB frees a B-tree page only when it falls under a quarter full: the room evicted entries
     * leave inside pages shows in used bytes once repacking has rewritten the trees, after each
     * round. Where it cannot (a tree too large, or no room for its copy), chasing low water in
     * pages alone would throw out half of L1 at once, so a pass also ends when it has evicted the
     * share (high - low) / high of L1's events and used bytes are under the middle of the two
     * marks. */
    double enough = (double)(st.events - st.stubs) * (double)(high - low) / (double)high;
    double middle = (double)limit * (double)(high + low) / 200;
    if (force == L2_GC_FULL && used <= middle) {
        /* a write found L1 full below its marks (in a small L1 the pages a transaction copies are
         * much of the map): the marks scale down to where L1 is now */
        target = used * (double)low / (double)high;
        middle = used * (double)(high + low) / (double)(2 * high);
    }
#define SETTLED() (used <= target || (!repacks && (double)r->evicted >= enough && used <= middle))
    l2_candidate *cands = malloc(MAX_CANDIDATES * sizeof *cands);
    if (!cands) return l2_oom(err);
    for (int round = 0; round < 64 && !SETTLED(); round++) {
        /* twice the events still short of `enough`: what the policy chooses from, not more (each
         * candidate is read, decoded and handed to Lua) */
        double short_of = (double)r->evicted < enough ? enough - (double)r->evicted : 0;
        size_t n, want = short_of * 2 > MAX_CANDIDATES ? MAX_CANDIDATES : (size_t)(short_of * 2);
        if (l2_store_candidates(b->l1, b->o.by_created, want < MIN_CANDIDATES ? MIN_CANDIDATES : want, cands, &n, err))
            break;
        if (!n) break;
        /* what this round asks of the policy: half of what stands above low water (a round's
         * evictions also leave stubs to drop, and the next round sees the repacked bytes); without
         * repacking, the events still short of `enough` (at their mean size), then what still
         * stands above the middle mark */
        double sizes = 0;
        for (size_t i = 0; i < n; i++) sizes += cands[i].size;
        double need = repacks ? (used - target) / 2
                      : (double)r->evicted < enough ? (enough - (double)r->evicted) * sizes / (double)n : used - middle;
        if (need > used - target) need = used - target;
        if (need < 1) need = 1;
        uint8_t(*chosen)[32] = NULL;
        size_t nchosen = 0;
        if (b->hooks.choose(b->hooks.ud, cands, n, (uint64_t)need, &chosen, &nchosen, err)) {
            logf_(b, "choosing what to evict failed: %s", err);
            break;
        }
        evict_state e = {(const uint8_t(*)[32])chosen, nchosen, 0, delete_mode, 0, 0};
        in_small_steps(b, "eviction", evict_step, &e);
        r->evicted += e.evicted, r->freed += e.freed;
        free(chosen);
        /* stubs beyond their share of L1's entries go, oldest first */
        if (l2_store_stats_get(b->l1, &st, err)) break;
        double excess = (double)st.stubs - b->o.stub_share * (double)st.events;
        if (excess >= 1 && b->l2) {
            r->dropped += drop_stubs(b, (uint64_t)excess);
            if (l2_store_stats_get(b->l1, &st, err)) break;
        }
        repacks = repack(b, r);
        if (l2_store_stats_get(b->l1, &st, err)) break;
        used = (double)st.used_bytes;
        if (!e.evicted) break;
    }
    free(cands);
    for (int round = 0; round < 64 && !SETTLED() && b->l2; round++) {
        uint64_t dropped = drop_stubs(b, 256);
        if (!dropped) break;
        r->dropped += dropped;
        if (repacks) repacks = repack(b, r);
        if (l2_store_stats_get(b->l1, &st, err)) return -1;
        used = (double)st.used_bytes;
    }
#undef SETTLED
    if (used > (double)limit * (double)high / 100 && b->l2) {
        logf_(b, "L1 could not be brought under its high water mark; emptying it");
        reset_l1(b);
        if (l2_store_stats_get(b->l1, &st, err)) return -1;
        used = (double)st.used_bytes;
    }
    b->used = r->used = (uint64_t)used;
    return 0;
}

/* ---- polling a shared L2 ---- */

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

static int keep_change(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *row)
{
    change_list *c = ud;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        kept_change *v = realloc(c->v, cap * sizeof *v);
        if (!v) {
            c->rows.failed = l2_oom(c->rows.err);
            return 1;
        }
        c->v = v;
        c->cap = cap;
    }
    kept_change *k = &c->v[c->n];
    memset(k, 0, sizeof *k);
    k->seq = seq;
    k->op = op;
    if (id) k->have_id = 1, memcpy(k->id, id, 32);
    if (row && op == L2_CHANGE_SAVED) {
        l2_row r = *row;
        r.stub = 0;
        if (keep_row(&c->rows, &r)) return 1;
        k->have_row = 1;
    }
    c->n++;
    return 0;
}

static int seen_has(l2_backend *b, uint64_t seq)
{
    for (size_t i = 0; i < b->nseen; i++)
        if (b->seen[i] == seq) return 1;
    return 0;
}

static int seen_add(l2_backend *b, uint64_t seq)
{
    if (b->nseen == b->seen_cap) {
        size_t cap = b->seen_cap ? b->seen_cap * 2 : 256;
        uint64_t *v = realloc(b->seen, cap * sizeof *v);
        if (!v) return -1;
        b->seen = v;
        b->seen_cap = cap;
    }
    b->seen[b->nseen++] = seq;
    return 0;
}

/* Events L2 holds that L1 could not take (or, skimming, did not): L1 stops proving answers up to
 * the newest, and no remembered answer can hear of them. */
static void past_untaken(l2_backend *b, size_t n, int64_t newest, const char *why)
{
    char err[L2_ERRLEN];
    if (why) logf_(b, "L1 could not take %zu event(s) of L2's feed: %s", n, why);
    if (l2_backend_raise_horizon(b, newest + 1, err)) logf_(b, "cannot raise the horizon: %s", err);
    if (l2_backend_forget_answers(b, err)) logf_(b, "cannot forget the remembered answers: %s", err);
}

/* Saves the events of rows [from, to) into L1 in as few transactions as it takes (APPLY_COPY);
 * each one L1 stored is news: the accepted hook, origin L2. APPLY_FILL saves them as a cache fill
 * (not news); APPLY_SKIM (a long replay) saves none: the horizon goes past them. Returns the
 * newest created_at of those L1 did not take (INT64_MIN: none). */
static int64_t apply_saves(l2_backend *b, answer *rows, size_t from, size_t to, int mode, int64_t now,
                           l2_poll_report *r)
{
    if (mode == APPLY_SKIM && to > from) {
        int64_t newest = INT64_MIN;
        for (size_t i = from; i < to; i++) {
            l2_learned_missing_forget(b->learned, rows->v[i].id);
            if (rows->v[i].created_at > newest) newest = rows->v[i].created_at;
        }
        past_untaken(b, to - from, newest, NULL);
        return newest;
    }
    size_t n = to - from;
    if (!n) return INT64_MIN;
    l2_event *evs = calloc(n, sizeof *evs);
    l2_event **ptrs = calloc(n, sizeof *ptrs);
    l2_save_result *res = calloc(n, sizeof *res);
    l2_verdict *fail = calloc(n, sizeof *fail);
    size_t k = 0;
    char err[L2_ERRLEN];
    for (size_t i = from; evs && ptrs && res && fail && i < to; i++) {
        const kept_row *kr = &rows->v[i];
        const char *p = rows->arena.data + kr->off;
        l2_event_init(&evs[k]);
        if (kr->json ? l2_event_parse_json(&evs[k], p, kr->len, L2_HAVE_ALL, &l2_default_limits, err)
                     : l2_event_decode_bin(&evs[k], p, kr->len, err)) {
            l2_event_free(&evs[k]);
            logf_(b, "an event of L2's cannot be read: %s", err);
            continue;
        }
        ptrs[k] = &evs[k];
        k++;
    }
    if (k) save_l1(b, ptrs, k, now, mode == APPLY_FILL ? L2_SAVE_FILL : 0, res, fail, NULL);
    size_t untaken = 0;
    int64_t newest = INT64_MIN;
    const char *why = NULL;
    for (size_t i = 0; i < k; i++) {
        l2_learned_missing_forget(b->learned, ptrs[i]->id);
        if (fail[i].ok && res[i].status == L2_SAVE_STORED) {
            r->received++;
            if (mode == APPLY_COPY) b->hooks.accepted(b->hooks.ud, ptrs[i], 1);
        } else if (!fail[i].ok) {
            untaken++;
            why = fail[i].msg;
            if (ptrs[i]->created_at > newest) newest = ptrs[i]->created_at;
        }
    }
    if (untaken) past_untaken(b, untaken, newest, why);
    for (size_t i = 0; i < k; i++) l2_event_free(&evs[i]);
    free(evs);
    free(ptrs);
    free(res);
    free(fail);
    return untaken ? newest : INT64_MIN;
}

/* Applies a page of changes to L1, in order: saves go together until a removal comes (skimmed:
 * apply_saves). 0, or -1 when a removal could not be applied (r->error says why). */
static int apply_changes(l2_backend *b, change_list *c, int skip_seen, int skim, int64_t now, l2_poll_report *r)
{
    size_t row = 0, saves_from = 0;
    int rc = 0;
    char err[L2_ERRLEN];
    for (size_t i = 0; i < c->n; i++) {
        kept_change *ch = &c->v[i];
        int fresh = !skip_seen || !seen_has(b, ch->seq);
        if (fresh && skip_seen && seen_add(b, ch->seq)) logf_(b, "polling: out of memory");
        if (ch->have_row) {
            /* a save already applied is left out of the batch: rows [saves_from, row) are all new */
            if (!fresh) {
                apply_saves(b, &c->rows, saves_from, row, skim ? APPLY_SKIM : APPLY_COPY, now, r);
                saves_from = row + 1;
            }
            row++;
            continue;
        }
        if (!fresh || !ch->have_id || ch->op == L2_CHANGE_SAVED) continue;
        apply_saves(b, &c->rows, saves_from, row, skim ? APPLY_SKIM : APPLY_COPY, now, r);
        saves_from = row;
        int found;
        /* the event goes, and no tombstone with it: the feed does not say whether L2 keeps one
         * (a deletion without one lets the event come back), and L2, which writes go to first,
         * refuses what its tombstones refuse (what L1 takes alone while L2 is down and L2 then
         * refuses leaves L1 when the outbox drains) */
        if (l2_store_delete(b->l1, ch->id, 0, 0, &found, err)) {
            logf_(b, "L1 could not apply a removal of L2's feed: %s", err);
            snprintf(r->error, sizeof r->error, "%s", err);
            rc = -1;
        } else if (found && ch->op == L2_CHANGE_DELETED) {
            r->deleted++;
        }
    }
    apply_saves(b, &c->rows, saves_from, row, skim ? APPLY_SKIM : APPLY_COPY, now, r);
    return rc;
}

static void change_list_reset(change_list *c)
{
    c->n = 0;
    answer_free(&c->rows);
    answer_init(&c->rows);
}

/* By L2's change feed, from the high-water mark of `overlap` polls ago (sequence order is not
 * commit order: a transaction can take seq 10, commit after seq 11 did, and be invisible to a
 * poll that saw 11), skipping what was applied already. The window's start persists in L1
 * (meta poll_cursor): it describes what L1 holds. */
static int poll_by_cursor(l2_backend *b, int64_t now, l2_poll_report *r)
{
    char err[L2_ERRLEN];
    if (!b->nmarks) {
        int found;
        int64_t start;
        if (l2_store_meta_get_int(b->l1, "poll_cursor", &start, &found, err)) return -1;
        b->marks[0] = b->high = found && start > 0 ? (uint64_t)start : 0;
        b->nmarks = 1;
    }
    uint64_t cursor = b->marks[0], high = b->high;
    change_list c = {0};
    answer_init(&c.rows);
    for (;;) {
        change_list_reset(&c);
        if (b->l2vt->changes(b->l2, cursor, 1000, keep_change, &c, r->error) || c.rows.failed) {
            if (c.rows.failed) snprintf(r->error, sizeof r->error, "%s", c.rows.err);
            r->failed = 1;
            break;
        }
        apply_changes(b, &c, 1, 0, now, r);
        for (size_t i = 0; i < c.n; i++) {
            if (c.v[i].seq > high) high = c.v[i].seq;
            cursor = c.v[i].seq;
        }
        if (c.n < 1000) break;
    }
    free(c.v);
    answer_free(&c.rows);
    if (r->failed) return 0;
    b->high = high;
    unsigned overlap = b->o.poll_overlap >= 2 && b->o.poll_overlap <= 16 ? b->o.poll_overlap : 4;
    if (b->nmarks == overlap) {
        memmove(b->marks, b->marks + 1, (overlap - 1) * sizeof *b->marks);
        b->nmarks--;
    }
    b->marks[b->nmarks++] = high;
    uint64_t start = b->marks[0];
    size_t kept = 0;
    for (size_t i = 0; i < b->nseen; i++)
        if (b->seen[i] > start) b->seen[kept++] = b->seen[i]; /* never read again otherwise */
    b->nseen = kept;
    if (l2_store_meta_set_int(b->l1, "poll_cursor", (int64_t)start, err)) logf_(b, "polling: %s", err);
    return 0;
}

/* Without a feed (an L2 written in Lua without changes_since): whatever was created in the last
 * poll_frequency * overlap seconds; backdated events are missed. */
static void poll_by_time(l2_backend *b, int64_t now, l2_poll_report *r)
{
    unsigned overlap = b->o.poll_overlap >= 2 ? b->o.poll_overlap : 4;
    int64_t span = (b->o.poll_frequency > 1 ? b->o.poll_frequency : 1) * overlap;
    l2_filter f;
    l2_filter_init(&f);
    answer a;
    answer_init(&a);
    if (number_filter(&f, L2_F_SINCE, now - span > 0 ? now - span : 0, r->error) ||
        b->l2vt->query(b->l2, &f, 1, 100000, now, 0, NULL, keep_row, &a, r->error) || a.failed) {
        if (a.failed) snprintf(r->error, sizeof r->error, "%s", a.err);
        r->failed = 1;
    } else {
        apply_saves(b, &a, 0, a.n, APPLY_COPY, now, r);
    }
    l2_filter_free(&f);
    answer_free(&a);
}

/* ---- L1's place in L2's feed ---- */

/* A replay longer than this skims: saves are not copied into L1, the horizon goes past them. */
#define CATCH_UP_COPY_MAX 10000
#define CATCH_UP_PAGE 1000

/* An L2 with a feed a cache can replay (storeif.h's feed): L1 keeps its place in it. */
static int has_feed(const l2_backend *b)
{
    return b->l2 && b->l2vt->feed;
}

/* ...and whose writes say which changes they made: L1's own writes move its place too. */
static int exact_feed(const l2_backend *b)
{
    return has_feed(b) && b->l2vt->last_changes;
}

/* L2's present position in its feed. */
static int l2_last_seq(l2_backend *b, uint64_t *last, char *err)
{
    *last = 0;
    return b->l2vt->feed(b->l2, 0, 0, NULL, NULL, last, err);
}

/* An L1 without a place in L2's feed (new, emptied, or from before positions were kept) starts
 * at L2's present: L2's last change is read before its newest event, so whatever lands between
 * is past the position (replayed) whatever its created_at. An L1 that holds events it cannot
 * place is emptied first (unless its outbox waits); else it proves nothing up to L2's newest. */
static int start_at_present(l2_backend *b, uint64_t *pos, char *err)
{
    l2_store_stats st;
    uint64_t last;
    if (l2_last_seq(b, &last, err) || l2_store_stats_get(b->l1, &st, err)) return -1;
    int64_t h = past_newest(b, -1);
    if (h < 0) {
        snprintf(err, L2_ERRLEN, "error: L2 cannot say what it holds: L1 proves no answer alone until it can");
        return -1;
    }
    if (st.events + st.stubs > 0 && st.outbox == 0) {
        logf_(b, "L1 holds events with no place in L2's feed: emptied");
        if (l2_store_nuke(b->l1, err)) return -1;
    }
    hold_far_future(b, &h);
    if (l2_backend_raise_horizon(b, h, err) || l2_store_feed_reset(b->l1, last, err)) return -1;
    *pos = last;
    return 0;
}

/* Brings L1 to L2's present by L2's feed: from L1's position, each change applied in order (a
 * save L1 cannot take moves the horizon past it; skimming, as after an import or in a long
 * replay, every save does: history is not news, and L1 fills on demand), then the
 * position moved past them. Concurrent writers' changes land in any order; a change applied past
 * the position out of order makes the replay go on (l2_store_mirror_result). */
static int catch_up(l2_backend *b, int64_t now, int skim, l2_poll_report *r)
{
    if (!has_feed(b) || b->replaying) return 0;
    b->replaying = 1;
    uint64_t pos, last;
    int known;
    size_t ahead;
    if (l2_store_feed_pos(b->l1, &pos, &known, &ahead, r->error) ||
        (!known && start_at_present(b, &pos, r->error)) || l2_last_seq(b, &last, r->error)) {
        r->failed = 1;
        b->replaying = 0;
        return -1;
    }
    if (pos > last) {
        /* L2 lost changes L1 has seen (restored, replaced, or its last commits lost): L1 cannot
         * tell what it holds that L2 no longer has */
        logf_(b, "L1 stands at %llu in L2's feed, past L2's last change %llu: L1 starts again",
              (unsigned long long)pos, (unsigned long long)last);
        if (start_at_present(b, &pos, r->error)) {
            r->failed = 1;
            b->replaying = 0;
            return -1;
        }
    }
    if (last > pos && last - pos > CATCH_UP_COPY_MAX) skim = 1;
    change_list c = {0};
    answer_init(&c.rows);
    uint64_t replayed = 0;
    for (unsigned rounds = 0;; rounds++) {
        change_list_reset(&c);
        uint64_t next;
        if (b->l2vt->feed(b->l2, pos, CATCH_UP_PAGE, keep_change, &c, &next, r->error) || c.rows.failed) {
            if (c.rows.failed) snprintf(r->error, sizeof r->error, "%s", c.rows.err);
            r->failed = 1;
            break;
        }
        if (!c.n && next <= pos) break;
        if (apply_changes(b, &c, 0, skim, now, r)) {
            r->failed = 1;
            break;
        }
        l2_killpoint("catch-up:applied");
        /* changes past a transaction still running come, and are applied, while the position
         * cannot pass it (PostgreSQL) */
        if (next <= pos) break;
        int result;
        if (l2_store_feed_advance(b->l1, pos + 1, next, &result, r->error)) {
            r->failed = 1;
            break;
        }
        pos = next;
        replayed += c.n;
        if (replayed > CATCH_UP_COPY_MAX) skim = 1;
        /* writers that keep coming make changes ahead of it: past where L2 was, it stops */
        if ((c.n < CATCH_UP_PAGE && result != L2_MIRROR_REPLAY) || (pos >= last && rounds >= 16)) break;
    }
    free(c.v);
    answer_free(&c.rows);
    b->replaying = 0;
    return r->failed ? -1 : 0;
}

int l2_backend_imported(l2_backend *b, int64_t newest, char *err)
{
    if (l2_backend_forget_answers(b, err)) return -1;
    if (has_feed(b)) {
        l2_poll_report r = {0};
        if (catch_up(b, (int64_t)time(NULL), 1, &r) == 0) return 0;
        snprintf(err, L2_ERRLEN, "%s", r.error);
        return -1;
    }
    return newest >= 0 ? l2_backend_raise_horizon(b, newest + 1, err) : 0;
}

int l2_backend_poll(l2_backend *b, int64_t now, l2_poll_report *r, char *err)
{
    memset(r, 0, sizeof *r);
    if (l2_backend_drain(b, &r->sent, err)) logf_(b, "draining the outbox failed: %s", err);
    if (!b->l2) return 0;
    if (has_feed(b)) {
        uint64_t sent = r->sent;
        recover_writes(b);
        catch_up(b, now, 0, r);
        r->sent = sent;
    } else if (b->l2vt->changes) {
        if (poll_by_cursor(b, now, r)) return -1;
    } else {
        poll_by_time(b, now, r);
    }
    if (!r->failed) {
        /* kept in L1, which every process of this node shares: any worker's stats see the lag */
        if (l2_store_meta_set_int(b->l1, "poll_at", (int64_t)time(NULL), err)) return -1;
    }
    return 0;
}

/* ---- a new L1, and maintenance ---- */

static void last_seq_field(void *ud, const char *name, uint64_t value)
{
    if (strcmp(name, "last_seq") == 0) *(uint64_t *)ud = value;
}

/* A new L1 in front of an L2 that already has events knows none of them: its horizon goes past
 * the newest (0 without an L2). Until L2 can say which is the newest, L1 has no horizon and
 * proves nothing; eviction asks again. */
static int learn_horizon(l2_backend *b, char *err)
{
    int found;
    int64_t now_value;
    if (l2_store_meta_get_int(b->l1, "horizon", &now_value, &found, err)) return -1;
    if (found) return 0;
    int64_t h = b->l2 ? past_newest(b, -1) : 0;
    if (h < 0) {
        logf_(b, "L2 cannot say yet what it holds: L1 proves no answer alone until it can");
        return 0;
    }
    if (b->l2) hold_far_future(b, &h);
    return l2_store_meta_raise(b->l1, "horizon", h, &now_value, err);
}

/* The horizon, and polling from what L2 holds now (L1 does not replay L2's history). With an
 * exact feed the catch-up at open does both, in the order start_at_present says. */
static int first_open(l2_backend *b, char *err)
{
    int found;
    int64_t cursor;
    if (has_feed(b)) return 0;
    if (learn_horizon(b, err)) return -1;
    if (!b->l2 || !b->l2vt->changes || !b->l2vt->stats) return 0;
    if (l2_store_meta_get_int(b->l1, "poll_cursor", &cursor, &found, err)) return -1;
    uint64_t last = 0;
    char l2err[L2_ERRLEN];
    if (found || b->l2vt->stats(b->l2, last_seq_field, &last, l2err)) return 0;
    return l2_store_meta_set_int(b->l1, "poll_cursor", (int64_t)last, err);
}

const l2_backend_opts *l2_backend_options(const l2_backend *b)
{
    return &b->o;
}

int l2_backend_count(l2_backend *b, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err)
{
    if (b->l2) {
        if (b->l2vt->count(b->l2, fs, nf, now, n, err) == 0) return 0;
        if (strncmp(err, "error:", 6) != 0) return -1; /* a refusal is the answer */
        logf_(b, "L2 count failed, counting L1: %s", err);
    }
    return l2_store_count(b->l1, fs, nf, now, n, err);
}

int l2_backend_nuke(l2_backend *b, char *err)
{
    uint64_t last = 0;
    if ((b->l2 && b->l2vt->nuke(b->l2, err)) || l2_store_nuke(b->l1, err) || l2_backend_set_horizon(b, 0, err))
        return -1;
    if (has_feed(b) && (l2_last_seq(b, &last, err) || l2_store_feed_reset(b->l1, last, err))) return -1;
    l2_learned_clear(b->learned); /* read counts and known-missing ids were about events that are gone */
    return 0;
}

int l2_backend_sync(l2_backend *b, char *err)
{
    uint64_t sent;
    if (l2_backend_drain(b, &sent, err)) logf_(b, "draining the outbox failed: %s", err);
    if (b->l2 && b->l2vt->sync(b->l2, err)) return -1;
    return l2_store_sync(b->l1, err);
}

typedef struct {
    l2_problem_fn problem;
    void *ud;
} l2_problems;

static void l2_problem(void *ud, const char *msg)
{
    l2_problems *p = ud;
    char line[2 * L2_ERRLEN];
    snprintf(line, sizeof line, "L2: %s", msg);
    p->problem(p->ud, line);
}

int l2_backend_check(l2_backend *b, l2_problem_fn problem, void *ud, uint64_t *nproblems, char *err)
{
    if (l2_store_check(b->l1, problem, ud, nproblems, err)) return -1;
    if (!b->l2 || !b->l2vt->check) return 0;
    uint64_t n2 = 0;
    l2_problems p = {problem, ud};
    if (b->l2vt->check(b->l2, l2_problem, &p, &n2, err)) return -1;
    *nproblems += n2;
    return 0;
}
