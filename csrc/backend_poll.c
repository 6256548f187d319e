/* backend_poll.c: polling a shared L2 and L1's place in L2's change feed. Shared with the other
 * parts through backend_int.h. */
#include "backend_int.h"

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
        if (backend_keep_row(&c->rows, &r)) return 1;
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
    if (why) backend_logf_(b, "L1 could not take %zu event(s) of L2's feed: %s", n, why);
    if (l2_backend_raise_horizon(b, newest + 1, err)) backend_logf_(b, "cannot raise the horizon: %s", err);
    if (l2_backend_forget_answers(b, err)) backend_logf_(b, "cannot forget the remembered answers: %s", err);
}

static int removed_by_l2(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *row)
{
    l2_backend *b = ud;
    (void)seq;
    (void)row;
    b->hooks.removed(b->hooks.ud, id, op, 1);
    return 0;
}

/* What L1 removed taking L2's events (the rules applied again: a newer version, a deletion whose
 * targets L1 held) is heard as L2's: L2's own removal records find them gone. */
static void tell_l1_removed(l2_backend *b, const l2_save_result *res, size_t n)
{
    size_t i = 0;
    while (i < n && !res[i].replaced && !res[i].deleted) i++;
    char err[L2_ERRLEN];
    if (i < n && l2_lmdb_store_if.last_removed(b->l1, removed_by_l2, b, err))
        backend_logf_(b, "cannot tell what L1 removed: %s", err);
}

int64_t backend_apply_saves(l2_backend *b, answer *rows, size_t from, size_t to, int mode, int64_t now,
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
        l2_event_init(&evs[k]);
        if (backend_row_decode(rows, &rows->v[i], &evs[k], err)) {
            l2_event_free(&evs[k]);
            backend_logf_(b, "an event of L2's cannot be read: %s", err);
            continue;
        }
        ptrs[k] = &evs[k];
        k++;
    }
    if (k) backend_save_l1(b, ptrs, k, now, mode == APPLY_FILL ? L2_SAVE_FILL : 0, res, fail, NULL);
    if (k && mode == APPLY_COPY && b->hear_removals) tell_l1_removed(b, res, k);
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
 * backend_apply_saves). 0, or -1 when a removal could not be applied (r->error says why). */
static int apply_changes(l2_backend *b, change_list *c, int skip_seen, int skim, int64_t now, l2_poll_report *r)
{
    size_t row = 0, saves_from = 0;
    int rc = 0;
    char err[L2_ERRLEN];
    for (size_t i = 0; i < c->n; i++) {
        kept_change *ch = &c->v[i];
        int fresh = !skip_seen || !seen_has(b, ch->seq);
        if (fresh && skip_seen && seen_add(b, ch->seq)) backend_logf_(b, "polling: out of memory");
        if (ch->have_row) {
            /* a save already applied is left out of the batch: rows [saves_from, row) are all new */
            if (!fresh) {
                backend_apply_saves(b, &c->rows, saves_from, row, skim ? APPLY_SKIM : APPLY_COPY, now, r);
                saves_from = row + 1;
            }
            row++;
            continue;
        }
        if (!fresh || !ch->have_id || ch->op == L2_CHANGE_SAVED) continue;
        backend_apply_saves(b, &c->rows, saves_from, row, skim ? APPLY_SKIM : APPLY_COPY, now, r);
        saves_from = row;
        int found;
        /* the event goes, and no tombstone with it: the feed does not say whether L2 keeps one
         * (a deletion without one lets the event come back), and L2, which writes go to first,
         * refuses what its tombstones refuse (what L1 takes alone while L2 is down and L2 then
         * refuses leaves L1 when the outbox drains) */
        if (l2_store_delete(b->l1, ch->id, 0, 0, &found, err)) {
            backend_logf_(b, "L1 could not apply a removal of L2's feed: %s", err);
            snprintf(r->error, sizeof r->error, "%s", err);
            rc = -1;
        } else if (found) {
            if (ch->op == L2_CHANGE_DELETED) r->deleted++;
            if (b->hear_removals) b->hooks.removed(b->hooks.ud, ch->id, ch->op, 1);
        }
    }
    backend_apply_saves(b, &c->rows, saves_from, row, skim ? APPLY_SKIM : APPLY_COPY, now, r);
    return rc;
}

static void change_list_reset(change_list *c)
{
    c->n = 0;
    backend_answer_free(&c->rows);
    backend_answer_init(&c->rows);
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
    backend_answer_init(&c.rows);
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
    backend_answer_free(&c.rows);
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
    if (l2_store_meta_set_int(b->l1, "poll_cursor", (int64_t)start, err)) backend_logf_(b, "polling: %s", err);
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
    backend_answer_init(&a);
    if (backend_number_filter(&f, L2_F_SINCE, now - span > 0 ? now - span : 0, r->error) ||
        b->l2vt->query(b->l2, &f, 1, 100000, now, 0, NULL, backend_keep_row, &a, r->error) || a.failed) {
        if (a.failed) snprintf(r->error, sizeof r->error, "%s", a.err);
        r->failed = 1;
    } else {
        backend_apply_saves(b, &a, 0, a.n, APPLY_COPY, now, r);
    }
    l2_filter_free(&f);
    backend_answer_free(&a);
}

/* ---- L1's place in L2's feed ---- */

/* A replay longer than this skims: saves are not copied into L1, the horizon goes past them. */
#define CATCH_UP_COPY_MAX 10000
#define CATCH_UP_PAGE 1000

int backend_has_feed(const l2_backend *b)
{
    return b->l2 && b->l2vt->feed;
}

int backend_exact_feed(const l2_backend *b)
{
    return backend_has_feed(b) && b->l2vt->last_changes;
}

int backend_l2_feed_last(l2_backend *b, uint64_t *last, char *err)
{
    *last = 0;
    return b->l2vt->feed(b->l2, 0, 0, NULL, NULL, last, err);
}

int backend_start_at_present(l2_backend *b, uint64_t *pos, char *err)
{
    l2_store_stats st;
    uint64_t last;
    if (backend_l2_feed_last(b, &last, err) || l2_store_stats_get(b->l1, &st, err)) return -1;
    int64_t h = backend_past_newest(b, -1);
    if (h < 0) {
        snprintf(err, L2_ERRLEN, "error: L2 cannot say what it holds: L1 proves no answer alone until it can");
        return -1;
    }
    if (st.events + st.stubs > 0 && st.outbox == 0) {
        backend_logf_(b, "L1 holds events with no place in L2's feed: emptied");
        if (l2_store_nuke(b->l1, err)) return -1;
    }
    backend_hold_far_future(b, &h);
    if (l2_backend_raise_horizon(b, h, err) || l2_store_feed_reset(b->l1, last, err)) return -1;
    *pos = last;
    return 0;
}

int backend_catch_up(l2_backend *b, int64_t now, int skim, l2_poll_report *r)
{
    if (!backend_has_feed(b) || b->replaying) return 0;
    b->replaying = 1;
    uint64_t pos, last;
    int known;
    size_t ahead;
    if (l2_store_feed_pos(b->l1, &pos, &known, &ahead, r->error) ||
        (!known && backend_start_at_present(b, &pos, r->error)) || backend_l2_feed_last(b, &last, r->error)) {
        r->failed = 1;
        b->replaying = 0;
        return -1;
    }
    if (pos > last) {
        /* L2 lost changes L1 has seen (restored, replaced, or its last commits lost): L1 cannot
         * tell what it holds that L2 no longer has */
        backend_logf_(b, "L1 stands at %llu in L2's feed, past L2's last change %llu: L1 starts again",
              (unsigned long long)pos, (unsigned long long)last);
        if (backend_start_at_present(b, &pos, r->error)) {
            r->failed = 1;
            b->replaying = 0;
            return -1;
        }
    }
    if (last > pos && last - pos > CATCH_UP_COPY_MAX) skim = 1;
    change_list c = {0};
    backend_answer_init(&c.rows);
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
    backend_answer_free(&c.rows);
    b->replaying = 0;
    return r->failed ? -1 : 0;
}

int l2_backend_imported(l2_backend *b, int64_t newest, char *err)
{
    if (l2_backend_forget_answers(b, err)) return -1;
    if (backend_has_feed(b)) {
        l2_poll_report r = {0};
        if (backend_catch_up(b, (int64_t)time(NULL), 1, &r) == 0) return 0;
        snprintf(err, L2_ERRLEN, "%s", r.error);
        return -1;
    }
    return newest >= 0 ? l2_backend_raise_horizon(b, newest + 1, err) : 0;
}

int l2_backend_poll(l2_backend *b, int64_t now, l2_poll_report *r, char *err)
{
    memset(r, 0, sizeof *r);
    if (l2_backend_drain(b, &r->sent, err)) backend_logf_(b, "draining the outbox failed: %s", err);
    if (!b->l2) return 0;
    if (backend_has_feed(b)) {
        uint64_t sent = r->sent;
        backend_recover_writes(b);
        backend_catch_up(b, now, 0, r);
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
