/* backend_gc.c: the outbox and eviction: draining L1's outbox to L2, gc passes. Shared with the
 * other parts through backend_int.h. */
#include "backend_int.h"

void backend_forget(l2_backend *b, const uint8_t id[32])
{
    uint64_t evicted, freed;
    char err[L2_ERRLEN];
    if (l2_store_evict(b->l1, (const uint8_t(*)[32])id, 1, 1, &evicted, &freed, err))
        backend_logf_(b, "L1 could not let go of a version L2 refused: %s", err);
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
                if (!failed && (res.status == L2_SAVE_OLDER || res.status == L2_SAVE_DELETED)) backend_forget(b, ev.id);
            } else if (len == 34 && p[0] == 'D') {
                int found;
                failed = b->l2vt->delete_event(b->l2, p + 1, p[33], 0, &found, why);
            } else {
                backend_logf_(b, "dropping an unreadable outbox record %llu", (unsigned long long)items[i].seq);
            }
            if (!failed) l2_killpoint("drain:l2-took");
            if (failed) {
                backend_logf_(b, "the outbox waits for L2: %s", why);
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
    if (*sent && backend_has_feed(b)) {
        /* L1 took these alone; L2's feed now has them, and what L2 made of them */
        l2_poll_report r = {0};
        if (backend_catch_up(b, (int64_t)time(NULL), 0, &r) || r.failed) backend_logf_(b, "L1 cannot catch up with L2: %s", r.error);
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
                backend_logf_(b, "%s failed: %s", what, err);
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

int backend_number_filter(l2_filter *f, unsigned field, int64_t v, char *err)
{
    return l2_filter_begin(f, field, 0, err) || l2_filter_set_number(f, field, v, err) || l2_filter_finish(f, err);
}

/* The latest created_at that is not far in the future: now + future_limit (no limit: any). */
static int64_t future_edge(const l2_backend *b)
{
    return b->o.future_limit > 0 ? (int64_t)time(NULL) + b->o.future_limit : L2_MAX_CREATED_AT;
}

/* L2's events created in [since, until] newest first, at most `limit`, into *a. 0, or -1. */
static int read_l2_window(l2_backend *b, int64_t since, int64_t until, int64_t limit, answer *a)
{
    l2_filter f;
    l2_filter_init(&f);
    char err[L2_ERRLEN];
    int rc = l2_filter_begin(&f, L2_F_SINCE, 0, err) || l2_filter_set_number(&f, L2_F_SINCE, since, err) ||
             l2_filter_begin(&f, L2_F_UNTIL, 0, err) || l2_filter_set_number(&f, L2_F_UNTIL, until, err) ||
             l2_filter_begin(&f, L2_F_LIMIT, 0, err) || l2_filter_set_number(&f, L2_F_LIMIT, limit, err) ||
             l2_filter_finish(&f, err) ||
             b->l2vt->query(b->l2, &f, 1, limit, (int64_t)time(NULL), 0, NULL, backend_keep_row, a, err) || a->failed;
    l2_filter_free(&f);
    return rc ? -1 : 0;
}

int64_t backend_past_newest(l2_backend *b, int64_t unknown)
{
    answer newest;
    backend_answer_init(&newest);
    int64_t h = unknown;
    if (read_l2_window(b, 0, future_edge(b), 1, &newest) == 0) h = newest.n ? newest.v[0].created_at + 1 : 0;
    backend_answer_free(&newest);
    return h;
}

/* At most this many events dated past the future limit are held in L1 so that the horizon can
 * stay at the present. */
#define FAR_FUTURE_MAX 256

void backend_hold_far_future(l2_backend *b, int64_t *h)
{
    if (b->o.future_limit <= 0) return;
    answer far;
    backend_answer_init(&far);
    int64_t edge = future_edge(b);
    if (read_l2_window(b, edge + 1, L2_MAX_CREATED_AT, FAR_FUTURE_MAX + 1, &far)) {
        *h = L2_MAX_CREATED_AT + 1;
    } else if (far.n > FAR_FUTURE_MAX) {
        *h = far.v[0].created_at + 1;
    } else if (far.n) {
        l2_poll_report r = {0};
        int64_t untaken = backend_apply_saves(b, &far, 0, far.n, APPLY_FILL, (int64_t)time(NULL), &r);
        if (untaken != INT64_MIN && untaken >= *h) *h = untaken + 1;
    }
    backend_answer_free(&far);
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
        backend_logf_(b, "L1 keeps its outbox: it cannot be emptied now");
        return;
    }
    uint64_t last = 0;
    int exact = backend_has_feed(b);
    if (exact && backend_l2_feed_last(b, &last, err)) {
        backend_logf_(b, "L1 is not emptied: %s", err);
        return;
    }
    int64_t h = backend_past_newest(b, L2_MAX_CREATED_AT);
    if (l2_store_nuke(b->l1, err) || (backend_hold_far_future(b, &h), l2_backend_set_horizon(b, h, err)) ||
        (exact && l2_store_feed_reset(b->l1, last, err)))
        backend_logf_(b, "emptying L1 failed: %s", err);
}

/* Rewrites L1's half-empty trees (l2_store_repack): first the room they hold, then what each
 * eviction round left in them. 1 when every tree could be (used bytes then show what evictions
 * freed), 0 when one was left as it is (too large, or no room for its copy). */
static int repack(l2_backend *b, l2_gc_report *r)
{
    char err[L2_ERRLEN];
    uint64_t freed = 0;
    int whole = 0;
    if (l2_store_repack(b->l1, REPACK_FILL, &freed, &whole, err)) backend_logf_(b, "repacking: %s", err);
    r->repacked += freed;
    return whole;
}

#define MIN_CANDIDATES 512
#define MAX_CANDIDATES 4096

/* The housekeeping every gc step does first: writes a killed process left, stale readers, L1's
 * place in L2's feed (or its horizon), and on the timer the outbox. */
static int gc_housekeeping(l2_backend *b, int force, l2_gc_report *r, char *err)
{
    if (b->l2) backend_recover_writes(b);
    int dead = l2_store_reader_check(b->l1);
    if (dead) backend_logf_(b, "freed %d reader slot(s) of L1 that killed processes held", dead);
    if (backend_has_feed(b)) {
        /* also what brings back an L1 emptied behind the backend */
        l2_poll_report caught = {0};
        if (force == L2_GC_TIMER && !b->making_room && backend_catch_up(b, (int64_t)time(NULL), 0, &caught))
            backend_logf_(b, "L1 cannot catch up with L2: %s", caught.error);
    } else if (backend_learn_horizon(b, err)) {
        return -1;
    }
    if (force == L2_GC_TIMER && l2_backend_drain(b, &r->sent, err)) backend_logf_(b, "draining the outbox failed: %s", err);
    return 0;
}

/* An eviction pass under way: where L1 stands and where the pass ends. */
typedef struct {
    l2_backend *b;
    l2_gc_report *r;
    l2_store_stats st;
    double used, target, enough, middle;
    int repacks, delete_mode;
} gc_pass;

/* LMDB frees a B-tree page only when it falls under a quarter full: the room evicted entries leave
 * inside pages shows in used bytes once repacking has rewritten the trees, after each round.
 * Where it cannot (a tree too large, or no room for its copy), chasing low water in pages alone
 * would throw out half of L1 at once, so a pass also ends when it has evicted the share
 * (high - low) / high of L1's events and used bytes are under the middle of the two marks. */
static void gc_pass_marks(gc_pass *g, int force)
{
    const l2_backend_opts *o = &g->b->o;
    uint64_t limit = o->size_limit, high = o->high_water, low = o->low_water;
    g->used = (double)g->st.used_bytes;
    g->target = (double)limit * low / 100;
    g->enough = (double)(g->st.events - g->st.stubs) * (double)(high - low) / (double)high;
    g->middle = (double)limit * (double)(high + low) / 200;
    if (force == L2_GC_FULL && g->used <= g->middle) {
        /* a write found L1 full below its marks (in a small L1 the pages a transaction copies are
         * much of the map): the marks scale down to where L1 is now */
        g->target = g->used * (double)low / (double)high;
        g->middle = g->used * (double)(high + low) / (double)(2 * high);
    }
}

static int gc_settled(const gc_pass *g)
{
    return g->used <= g->target || (!g->repacks && (double)g->r->evicted >= g->enough && g->used <= g->middle);
}

/* One round: candidates to the policy, its choice evicted, stubs past their share dropped, the
 * trees repacked. 1 when the pass should go on. */
static int gc_round(gc_pass *g, l2_candidate *cands, char *err)
{
    l2_backend *b = g->b;
    l2_gc_report *r = g->r;
    /* twice the events still short of `enough`: what the policy chooses from, not more (each
     * candidate is read, decoded and handed to Lua) */
    double short_of = (double)r->evicted < g->enough ? g->enough - (double)r->evicted : 0;
    size_t n, want = short_of * 2 > MAX_CANDIDATES ? MAX_CANDIDATES : (size_t)(short_of * 2);
    if (l2_store_candidates(b->l1, b->o.by_created, want < MIN_CANDIDATES ? MIN_CANDIDATES : want, cands, &n, err))
        return 0;
    if (!n) return 0;
    /* what this round asks of the policy: half of what stands above low water (a round's
     * evictions also leave stubs to drop, and the next round sees the repacked bytes); without
     * repacking, the events still short of `enough` (at their mean size), then what still
     * stands above the middle mark */
    double sizes = 0;
    for (size_t i = 0; i < n; i++) sizes += cands[i].size;
    double need = g->repacks ? (g->used - g->target) / 2
                  : (double)r->evicted < g->enough ? (g->enough - (double)r->evicted) * sizes / (double)n
                                                  : g->used - g->middle;
    if (need > g->used - g->target) need = g->used - g->target;
    if (need < 1) need = 1;
    uint8_t(*chosen)[32] = NULL;
    size_t nchosen = 0;
    if (b->hooks.choose(b->hooks.ud, cands, n, (uint64_t)need, &chosen, &nchosen, err)) {
        backend_logf_(b, "choosing what to evict failed: %s", err);
        return 0;
    }
    evict_state e = {(const uint8_t(*)[32])chosen, nchosen, 0, g->delete_mode, 0, 0};
    in_small_steps(b, "eviction", evict_step, &e);
    r->evicted += e.evicted, r->freed += e.freed;
    free(chosen);
    /* stubs beyond their share of L1's entries go, oldest first */
    if (l2_store_stats_get(b->l1, &g->st, err)) return 0;
    double excess = (double)g->st.stubs - b->o.stub_share * (double)g->st.events;
    if (excess >= 1 && b->l2) {
        r->dropped += drop_stubs(b, (uint64_t)excess);
        if (l2_store_stats_get(b->l1, &g->st, err)) return 0;
    }
    g->repacks = repack(b, r);
    if (l2_store_stats_get(b->l1, &g->st, err)) return 0;
    g->used = (double)g->st.used_bytes;
    return e.evicted > 0;
}

static int gc_step(l2_backend *b, int force, l2_gc_report *r, char *err)
{
    memset(r, 0, sizeof *r);
    if (gc_housekeeping(b, force, r, err)) return -1;
    if (!b->o.size_limit) return 0;
    gc_pass g = {.b = b, .r = r, .delete_mode = !b->l2 || b->o.evict_delete};
    if (l2_store_stats_get(b->l1, &g.st, err)) return -1;
    if (g.st.used_bytes <= b->o.size_limit * b->o.high_water / 100 && force == L2_GC_TIMER) {
        b->used = r->used = g.st.used_bytes;
        return 0;
    }
    /* L1's change feed serves live tailing, not history */
    if (l2_store_prune_changes(b->l1, b->o.changes_kept, &r->pruned, err)) return -1;
    g.repacks = repack(b, r);
    if (l2_store_stats_get(b->l1, &g.st, err)) return -1;
    gc_pass_marks(&g, force);
    l2_candidate *cands = malloc(MAX_CANDIDATES * sizeof *cands);
    if (!cands) return l2_oom(err);
    for (int round = 0; round < 64 && !gc_settled(&g); round++)
        if (!gc_round(&g, cands, err)) break;
    free(cands);
    for (int round = 0; round < 64 && !gc_settled(&g) && b->l2; round++) {
        uint64_t dropped = drop_stubs(b, 256);
        if (!dropped) break;
        r->dropped += dropped;
        if (g.repacks) g.repacks = repack(b, r);
        if (l2_store_stats_get(b->l1, &g.st, err)) return -1;
        g.used = (double)g.st.used_bytes;
    }
    if (g.used > (double)b->o.size_limit * (double)b->o.high_water / 100 && b->l2) {
        backend_logf_(b, "L1 could not be brought under its high water mark; emptying it");
        reset_l1(b);
        if (l2_store_stats_get(b->l1, &g.st, err)) return -1;
        g.used = (double)g.st.used_bytes;
    }
    b->used = r->used = (uint64_t)g.used;
    return 0;
}

int l2_backend_gc(l2_backend *b, int force, l2_gc_report *r, char *err)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = gc_step(b, force, r, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return rc;
}

int backend_evict(l2_backend *b, int force, char *err)
{
    l2_gc_report r;
    int rc = l2_backend_gc(b, force, &r, err);
    if (rc == 0 && b->hooks.evicted) b->hooks.evicted(b->hooks.ud, force, &r);
    return rc;
}
