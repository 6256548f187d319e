/* backend.c: the two-level store: opening, the horizon, room in L1, saves and deletions, a new L1
 * and maintenance. Shared with the other parts through backend_int.h. */
#include "backend_int.h"

const char *const l2_backend_level_names[L2_LEVELS] = {"l1", "stubs", "l2", "missing", "answers"};

const l2_backend_opts l2_backend_default_opts = {
    .high_water = 66,
    .low_water = 58,
    .stub_share = 0.05,
    .changes_kept = 1000,
    .history = 100000,
    .poll_overlap = 4,
    .missing_ttl = 10,
    .answers_ttl = 60,
    .answers_max_ids = 100000,
    .future_limit = 900,
};
static int first_open(l2_backend *b, char *err);

/* a large save gives way to a light one waiting for the write lock of its level */
static int l1_light_waiting(void *learned)
{
    return l2_learned_light_waiting(learned, 1);
}

static int l2_light_waiting(void *learned)
{
    return l2_learned_light_waiting(learned, 2);
}

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
    l2_store_never_evicts(l1, o->size_limit == 0);
    l2_store_give_way(l1, l1_light_waiting, b->learned);
    /* PostgreSQL has no one write lock: its saves never wait behind another's */
    if (l2 && l2vt == &l2_lmdb_store_if) l2_store_give_way(l2, l2_light_waiting, b->learned);
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
    l2_buf_init(&b->deferred);
    *out = b;
    if (first_open(b, err)) {
        l2_backend_close(b);
        *out = NULL;
        return -1;
    }
    if (l2) backend_recover_writes(b);
    if (backend_has_feed(b)) {
        /* a process that died between the two commits, an L1 write that failed, a power loss
         * that took L1's last commits: L1 replays what L2's feed has past its position */
        l2_poll_report r = {0};
        if (backend_catch_up(b, (int64_t)time(NULL), 0, &r)) backend_logf_(b, "L1 cannot catch up with L2: %s", r.error);
    }
    return 0;
}

void l2_backend_close(l2_backend *b)
{
    if (!b) return;
    l2_store_share_horizon(b->l1, NULL);
    l2_store_set_backed(b->l1, 0);
    l2_store_never_evicts(b->l1, 0);
    l2_store_give_way(b->l1, NULL, NULL);
    if (b->l2 && b->l2vt == &l2_lmdb_store_if) l2_store_give_way(b->l2, NULL, NULL);
    l2_learned_close(b->learned);
    l2_buf_free(&b->scratch);
    l2_buf_free(&b->answer_key);
    l2_buf_free(&b->deferred);
    l2_hits_free(&b->hits);
    free(b->seen);
    free(b);
}

l2_learned *l2_backend_learned(l2_backend *b)
{
    return b->learned;
}

void backend_logf_(l2_backend *b, const char *fmt, ...)
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

int backend_used_bytes(l2_backend *b, uint64_t *used, char *err)
{
    l2_store_stats s;
    if (l2_store_stats_get(b->l1, &s, err)) return -1;
    *used = s.used_bytes;
    return 0;
}

int backend_make_room(l2_backend *b, uint64_t bytes, size_t n, char *err)
{
    if (!b->o.size_limit) return 0;
    if (!room_fits(b, bytes, n)) return 1;
    uint64_t need = room_needed(bytes, n), high = b->o.size_limit * b->o.high_water / 100;
    if (b->used + need > high) {
        if (backend_used_bytes(b, &b->used, err)) return -1;
        if (b->used + need > high) {
            b->making_room = 1;
            if (backend_evict(b, L2_GC_FORCE, err)) backend_logf_(b, "eviction failed: %s", err);
            b->making_room = 0;
            if (backend_used_bytes(b, &b->used, err)) return -1;
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

int backend_save_l1(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
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
        int room = backend_make_room(b, bytes, k, err);
        if (room == 1) snprintf(err, sizeof err, "error: the event is too large for L1");
        /* a save's changes commute (l2_store_mirror_next) */
        int mirror_here = !room && range && range->mirror && from + k == n && all_ok;
        if (mirror_here) l2_store_mirror_next(b->l1, range->first, range->last, 1);
        int rc = room ? -1 : l2_store_save_batch(b->l1, evs + from, k, now, flags, res + from, err);
        if (mirror_here) placed = l2_store_mirror_result(b->l1);
        if (rc == L2_FULL && b->o.size_limit && (k > 1 || !retried)) {
            /* the pages a transaction copies filled L1 below its high water mark: evict, then
             * try again, in smaller transactions, a single event once more */
            b->l1_chunk = k / 2 ? k / 2 : 1;
            retried = k == 1;
            if (backend_evict(b, L2_GC_FULL, err)) backend_logf_(b, "eviction failed: %s", err);
            continue;
        }
        retried = 0;
        if (!rc && b->l1_chunk < L1_CHUNK_MAX) b->l1_chunk++;
        if (rc) all_ok = 0;
        /* a chunk that gave way to a light save committed its first events only (the position
         * was not moved: the next chunk mirrors the changes again) */
        size_t done = 0;
        while (done < k && (rc || res[from + done].status != L2_SAVE_UNTRIED)) done++;
        for (size_t i = from; i < from + done; i++) {
            fail[i].ok = !rc;
            if (rc) snprintf(fail[i].msg, sizeof fail[i].msg, "%s", err);
        }
        from += done;
        if (from < n && !rc) l2_killpoint("save:l1-chunk");
    }
    return placed;
}

void backend_refuse(l2_verdict *v, const char *msg)
{
    v->ok = 0;
    snprintf(v->msg, sizeof v->msg, "%s", msg ? msg : "error: refused");
}

void backend_recover_writes(l2_backend *b)
{
    int64_t newest = l2_learned_abandoned_writes(b->learned);
    if (newest == INT64_MIN) return;
    char err[L2_ERRLEN];
    if (backend_has_feed(b)) {
        l2_poll_report r = {0};
        backend_logf_(b, "a process died while writing: L1 replays L2's feed");
        if (backend_catch_up(b, (int64_t)time(NULL), 0, &r) == 0 && !r.failed) return;
        backend_logf_(b, "L1 cannot catch up with L2: %s", r.error);
    }
    backend_logf_(b, "a process died while saving: L1 proves no answer up to created_at %lld", (long long)newest);
    if (l2_backend_raise_horizon(b, newest + 1, err)) backend_logf_(b, "cannot raise the horizon: %s", err);
    if (l2_backend_forget_answers(b, err)) backend_logf_(b, "cannot forget the remembered answers: %s", err);
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
    if (slot < 0 && l2_backend_raise_horizon(b, newest + 1, err)) backend_logf_(b, "cannot raise the horizon: %s", err);
    return slot;
}

/* A save's work lists, indexes into the caller's arrays: the events stored anywhere (pending; `at`
 * their place in the caller's), those L2 accepted and those L1 decides with the outbox. A large
 * save goes to both levels in parts when it gives way to a light one (L2_SAVE_GIVE_WAY):
 * pending[from..] are those L2 has not decided yet, `accepted` the part's. */
typedef struct {
    size_t np, na, nq, from;
    int flags; /* L2_SAVE_GIVE_WAY for a large save */
    l2_event **pending, **group;
    size_t *at, *accepted, *queued;
    l2_save_result *res;
    l2_verdict *l1v;
    l2_range range;
    l2_buf removed; /* what the save removed, for the removed hook: an op byte and an id each */
} save_plan;

static void plan_free(save_plan *p)
{
    free(p->pending);
    free(p->group);
    free(p->at);
    free(p->accepted);
    free(p->queued);
    free(p->res);
    free(p->l1v);
    l2_buf_free(&p->removed);
}

static int plan_alloc(save_plan *p, size_t n)
{
    size_t cap = n ? n : 1;
    memset(p, 0, sizeof *p);
    p->range = (l2_range){0, 1, 0};
    l2_buf_init(&p->removed);
    p->pending = malloc(cap * sizeof *p->pending);
    p->group = malloc(cap * sizeof *p->group);
    p->at = malloc(cap * sizeof *p->at);
    p->accepted = malloc(cap * sizeof *p->accepted);
    p->queued = malloc(cap * sizeof *p->queued);
    p->res = calloc(cap, sizeof *p->res);
    p->l1v = calloc(cap, sizeof *p->l1v);
    if (p->pending && p->group && p->at && p->accepted && p->queued && p->res && p->l1v) return 0;
    plan_free(p);
    return -1;
}

/* Decides what needs no store (too far in the future, ephemeral) and lists the rest as pending. */
static void plan_saves(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out, save_plan *p)
{
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
        p->at[p->np] = i;
        p->pending[p->np++] = evs[i];
    }
}

void l2_backend_hear_removals(l2_backend *b, int on)
{
    b->hear_removals = on;
}

static int keep_removed(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *row)
{
    uint8_t code = (uint8_t)op;
    (void)seq;
    (void)row;
    l2_buf *out = ud;
    return l2_buf_put(out, &code, 1) || l2_buf_put(out, id, 32);
}

/* What the level's last save removed, into p->removed, when it removed anything and someone hears. */
static void note_removed(l2_backend *b, const l2_store_if *vt, void *st, const l2_save_result *res, size_t n,
                         save_plan *p)
{
    if (!b->hear_removals || !vt->last_removed) return;
    size_t i = 0;
    while (i < n && !res[i].replaced && !res[i].deleted) i++;
    if (i == n) return;
    char err[L2_ERRLEN];
    if (vt->last_removed(st, keep_removed, &p->removed, err))
        backend_logf_(b, "cannot tell what the save removed: %s", err);
}

/* The removed hook for what the save removed, once both levels have it. */
static void tell_removed(l2_backend *b, save_plan *p)
{
    for (size_t at = 0; at + 33 <= p->removed.len; at += 33)
        b->hooks.removed(b->hooks.ud, (const uint8_t *)p->removed.data + at + 1, (uint8_t)p->removed.data[at], 0);
}

/* L2 first: its verdicts stand (refusals go to out); what it accepted is listed for L1, what it
 * could not take is queued for L1 and the outbox. The events from p->from on, or their first
 * part when L2 gave way: p->from is past those decided. */
static void save_to_l2(l2_backend *b, int64_t now, l2_verdict *out, save_plan *p)
{
    char err[L2_ERRLEN];
    size_t from = p->from, n = p->np - from;
    p->na = 0;
    p->range = (l2_range){0, 1, 0};
    int flags = (b->hear_removals ? L2_SAVE_REMOVALS : 0) | p->flags;
    if (b->l2vt->save_batch(b->l2, p->pending + from, n, now, flags, p->res + from, err)) {
        backend_logf_(b, "L2 save failed, queued in the outbox: %s", err);
        for (size_t k = from; k < p->np; k++) p->queued[p->nq++] = k;
        p->from = p->np;
        return;
    }
    size_t to = from;
    while (to < p->np && p->res[to].status != L2_SAVE_UNTRIED) to++;
    p->from = to;
    if (backend_exact_feed(b)) {
        p->range.mirror = 1;
        b->l2vt->last_changes(b->l2, &p->range.first, &p->range.last);
    }
    l2_killpoint("save:l2-committed");
    note_removed(b, b->l2vt, b->l2, p->res + from, to - from, p);
    const char *why = NULL;
    for (size_t k = from; k < to; k++) {
        if (p->res[k].status == L2_SAVE_STORED) {
            p->accepted[p->na++] = k;
        } else if (p->res[k].status == L2_SAVE_FAILED) {
            if (!why) why = p->res[k].msg;
            p->queued[p->nq++] = k;
        } else {
            backend_refuse(&out[p->at[k]], l2_save_result_message(&p->res[k]));
        }
    }
    if (p->nq) backend_logf_(b, "L2 save failed, queued in the outbox: %s", why ? why : "error: L2 failed");
}

/* L1 trusts what L2 accepted (L2 has it whatever L1 says); what L1 cannot hold, it stops claiming
 * to know: it replays L2's feed, or its horizon goes past those events. */
static void save_accepted_to_l1(l2_backend *b, int64_t now, l2_verdict *out, save_plan *p)
{
    for (size_t j = 0; j < p->na; j++) p->group[j] = p->pending[p->accepted[j]];
    memset(p->res, 0, (p->na ? p->na : 1) * sizeof *p->res);
    int placed = backend_save_l1(b, p->group, p->na, now, p->flags, p->res, p->l1v, &p->range);
    size_t lost = 0;
    int64_t newest_lost = -1;
    const char *lost_msg = NULL;
    for (size_t j = 0; j < p->na; j++) {
        size_t k = p->accepted[j];
        out[p->at[k]].ok = 1;
        if (!p->l1v[j].ok) {
            lost++;
            lost_msg = p->l1v[j].msg;
            if (p->pending[k]->created_at > newest_lost) newest_lost = p->pending[k]->created_at;
        } else if (p->res[j].status == L2_SAVE_STORED) {
            b->hooks.accepted(b->hooks.ud, p->pending[k], 0);
        }
    }
    l2_range *range = &p->range;
    if (range->mirror && range->first <= range->last && (placed == L2_MIRROR_NONE || placed == L2_MIRROR_REPLAY)) {
        /* L1 missed L2's changes (it could not take them), or took later ones first: it replays
         * L2's feed, which holds what it cannot take past the horizon */
        l2_poll_report r = {0};
        int ran = !b->replaying;
        if (backend_catch_up(b, now, 0, &r) || r.failed) backend_logf_(b, "L1 cannot catch up with L2: %s", r.error);
        else if (ran) lost = 0; /* else the horizon goes past them below */
    }
    if (lost) {
        /* L2 has them, L1 cannot hold them: L1 stops claiming completeness up to them */
        char err[L2_ERRLEN];
        backend_logf_(b, "L1 could not take %zu event(s): %s", lost, lost_msg);
        if (l2_backend_raise_horizon(b, newest_lost + 1, err)) backend_logf_(b, "cannot raise the horizon: %s", err);
        /* nor can a remembered answer hear of them */
        if (l2_backend_forget_answers(b, err)) backend_logf_(b, "cannot forget the remembered answers: %s", err);
    }
}

/* L1 decides, with the outbox, what L2 could not take (everything, without an L2). */
static void save_queued_to_l1(l2_backend *b, int64_t now, l2_verdict *out, save_plan *p)
{
    for (size_t j = 0; j < p->nq; j++) p->group[j] = p->pending[p->queued[j]];
    memset(p->res, 0, (p->nq ? p->nq : 1) * sizeof *p->res);
    backend_save_l1(b, p->group, p->nq, now, b->l2 ? L2_SAVE_OUTBOX : 0, p->res, p->l1v, NULL);
    /* L1 decided: its removals are the save's (of its last transaction, when L1 was full and took
     * the batch in smaller ones) */
    if (p->nq) note_removed(b, &l2_lmdb_store_if, b->l1, p->res, p->nq, p);
    for (size_t j = 0; j < p->nq; j++) {
        l2_verdict *v = &out[p->at[p->queued[j]]];
        if (!p->l1v[j].ok) {
            backend_refuse(v, p->l1v[j].msg);
        } else if (p->res[j].status == L2_SAVE_STORED) {
            v->ok = 1;
            b->hooks.accepted(b->hooks.ud, p->group[j], 0);
        } else {
            backend_refuse(v, l2_save_result_message(&p->res[j]));
        }
    }
}

/* A large save between its two levels lets a light one in flight (waiting for L2's lock or saving
 * to L2: it needs L1's next) take L1 first, for up to LET_PASS_NS: the light save then waits for
 * one of the large one's commits, not for two. Bounded: a stream of light saves, or one killed
 * with its mark set, delays a large save's L1 part by that much at most. */
#define LET_PASS_NS 4000000L
#define LET_PASS_POLL_NS 100000L
static void let_light_saves_pass(l2_backend *b)
{
    struct timespec nap = {0, LET_PASS_POLL_NS};
    for (long waited = 0; waited < LET_PASS_NS; waited += LET_PASS_POLL_NS) {
        if (!l2_learned_light_waiting(b->learned, 2) && !l2_learned_light_waiting(b->learned, 1)) return;
        nanosleep(&nap, NULL);
    }
}

void l2_backend_save(l2_backend *b, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out)
{
    save_plan p;
    if (plan_alloc(&p, n)) {
        for (size_t i = 0; i < n; i++) backend_refuse(&out[i], "error: out of memory");
        return;
    }
    plan_saves(b, evs, n, now, out, &p);
    int slot = -1;
    if (b->l2 && p.np) {
        backend_recover_writes(b);
        slot = begin_write(b, p.pending, p.np);
        /* a light save says whose lock it waits for, and large ones give way to it */
        int light = p.np <= L2_LIGHT_SAVE;
        p.flags = light ? 0 : L2_SAVE_GIVE_WAY;
        while (p.from < p.np) {
            if (light) l2_learned_light_wait(b->learned, slot, 2);
            save_to_l2(b, now, out, &p);
            if (light) l2_learned_light_wait(b->learned, slot, 1);
            else let_light_saves_pass(b);
            save_accepted_to_l1(b, now, out, &p);
            if (light) l2_learned_light_wait(b->learned, slot, 0);
            if (p.from < p.np) l2_killpoint("save:gave-way");
        }
    } else {
        for (size_t k = 0; k < p.np; k++) p.queued[p.nq++] = k; /* L1 is the only level: it decides */
        save_accepted_to_l1(b, now, out, &p);
    }
    save_queued_to_l1(b, now, out, &p);
    l2_learned_end_write(b->learned, slot);
    tell_removed(b, &p);
    plan_free(&p);
}

/* A deletion done: the removed hook hears of an event that was there. 0. */
static int deleted_here(l2_backend *b, const uint8_t id[32], int found)
{
    if (found && b->hear_removals) b->hooks.removed(b->hooks.ud, id, L2_CHANGE_DELETED, 0);
    return 0;
}

int l2_backend_delete(l2_backend *b, const uint8_t id[32], int tombstone, int *found, char *err)
{
    if (b->l2) {
        int exact = backend_exact_feed(b), slot = -1;
        if (exact) {
            backend_recover_writes(b);
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
                backend_logf_(b, "L1 could not delete an event L2 deleted: %s", l1_err);
            if (first <= last) placed = l2_store_mirror_result(b->l1);
            if (placed == L2_MIRROR_NONE || placed == L2_MIRROR_REPLAY) {
                l2_poll_report r = {0};
                if (backend_catch_up(b, (int64_t)time(NULL), 0, &r) || r.failed)
                    backend_logf_(b, "L1 cannot catch up with L2: %s", r.error);
            }
            l2_learned_end_write(b->learned, slot);
            return deleted_here(b, id, *found);
        }
        l2_learned_end_write(b->learned, slot);
        backend_logf_(b, "L2 delete failed, queued in the outbox: %s", err);
        if (l2_store_delete(b->l1, id, tombstone, 1, found, err)) return -1;
        return deleted_here(b, id, *found);
    }
    if (l2_store_delete(b->l1, id, tombstone, 0, found, err)) return -1;
    return deleted_here(b, id, *found);
}

/* ---- a new L1, and maintenance ---- */

static void last_seq_field(void *ud, const char *name, uint64_t value)
{
    if (strcmp(name, "last_seq") == 0) *(uint64_t *)ud = value;
}

int backend_learn_horizon(l2_backend *b, char *err)
{
    int found;
    int64_t now_value;
    if (l2_store_meta_get_int(b->l1, "horizon", &now_value, &found, err)) return -1;
    if (found) return 0;
    int64_t h = b->l2 ? backend_past_newest(b, -1) : 0;
    if (h < 0) {
        backend_logf_(b, "L2 cannot say yet what it holds: L1 proves no answer alone until it can");
        return 0;
    }
    if (b->l2) backend_hold_far_future(b, &h);
    return l2_store_meta_raise(b->l1, "horizon", h, &now_value, err);
}

/* The horizon, and polling from what L2 holds now (L1 does not replay L2's history). With an
 * exact feed the catch-up at open does both, in the order backend_start_at_present says. */
static int first_open(l2_backend *b, char *err)
{
    int found;
    int64_t cursor;
    if (backend_has_feed(b)) return 0;
    if (backend_learn_horizon(b, err)) return -1;
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
        int rc = b->l2vt->count(b->l2, fs, nf, now, n, err);
        if (rc == 0 || rc == L2_REFUSED) return rc; /* a refusal is the answer */
        backend_logf_(b, "L2 count failed, counting L1: %s", err);
    }
    return l2_store_count(b->l1, fs, nf, now, n, err);
}

int l2_backend_sweep(l2_backend *b, int64_t now, uint64_t *removed, char *err)
{
    uint64_t in_l1 = 0;
    *removed = 0;
    if (b->l2 && b->l2vt->sweep && b->l2vt->sweep(b->l2, now, removed, err)) return -1;
    if (l2_store_sweep(b->l1, now, &in_l1, err)) return -1;
    if (!b->l2) *removed = in_l1;
    return 0;
}

int l2_backend_nuke(l2_backend *b, char *err)
{
    uint64_t last = 0;
    if ((b->l2 && b->l2vt->nuke(b->l2, err)) || l2_store_nuke(b->l1, err) || l2_backend_set_horizon(b, 0, err))
        return -1;
    if (backend_has_feed(b) && (backend_l2_feed_last(b, &last, err) || l2_store_feed_reset(b->l1, last, err))) return -1;
    l2_learned_clear(b->learned); /* read counts and known-missing ids were about events that are gone */
    return 0;
}

int l2_backend_sync(l2_backend *b, char *err)
{
    uint64_t sent;
    if (l2_backend_drain(b, &sent, err)) backend_logf_(b, "draining the outbox failed: %s", err);
    if (b->l2 && b->l2vt->sync(b->l2, err)) return -1;
    return l2_store_sync(b->l1, err);
}

typedef struct {
    l2_problem_fn problem;
    void *ud;
} l2_problems;

static void report_l2_problem(void *ud, const char *msg)
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
    if (b->l2vt->check(b->l2, report_l2_problem, &p, &n2, err)) return -1;
    *nproblems += n2;
    return 0;
}
