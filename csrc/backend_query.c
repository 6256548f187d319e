/* backend_query.c: reads: what L1 answers alone, and reads that reach L2 (and fill L1). Shared with
 * the other parts through backend_int.h. */
#include "backend_int.h"

int backend_l1_proves(const l2_backend *b, size_t nf, const uint8_t *incomplete, uint64_t expect)
{
    for (size_t i = 0; i < nf; i++)
        if (incomplete[i]) return 0;
    for (size_t i = 0; i < b->hits.n; i++)
        if (b->hits.v[i].stub) return 0;
    return !expect || b->hits.n == expect;
}

uint64_t backend_emit_hits(l2_backend *b, l2_row_fn row, void *ud)
{
    uint64_t n = 0;
    for (size_t i = 0; i < b->hits.n; i++) {
        const l2_hit *h = &b->hits.v[i];
        l2_row r = {0};
        memcpy(r.id, h->id, 32);
        if (h->stub || l2_store_hit_body(b->l1, h, &r.bin, &r.bin_len)) continue;
        n++;
        if (row(ud, &r)) break;
    }
    l2_store_read_end(b->l1);
    return n;
}

void backend_count_lookup_reads(l2_backend *b, const l2_filter *fs, size_t nf, const l2_hits *stubs)
{
    if (nf != 1 || !(fs[0].have & L2_F_IDS)) return;
    for (uint32_t k = 0; k < fs[0].nids; k++) {
        int stub = 0;
        for (size_t i = 0; stubs && i < stubs->n && !stub; i++)
            stub = stubs->v[i].stub && memcmp(stubs->v[i].id, fs[0].ids[k], 32) == 0;
        if (!stub) l2_backend_count_read(b, fs[0].ids[k]);
    }
}

int backend_query_l1_rows(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                         uint64_t expect, l2_row_fn row, void *ud, int *answered, uint64_t *rows, char *err)
{
    *answered = 0;
    *rows = 0;
    uint8_t small[16], *incomplete = nf <= sizeof small ? small : calloc(nf, 1);
    if (!incomplete) return l2_oom(err);
    memset(incomplete, 0, nf);
    int rc = l2_store_query(b->l1, fs, nf, max_limit, now, b->l2 ? L2_HORIZON_IN_META : 0, incomplete, &b->hits, err);
    if (rc == 0) {
        *answered = !b->l2 || backend_l1_proves(b, nf, incomplete, expect);
        if (*answered) *rows = backend_emit_hits(b, row, ud);
        else l2_store_read_end(b->l1);
        if (*answered && b->l2) backend_count_lookup_reads(b, fs, nf, NULL);
    }
    if (incomplete != small) free(incomplete);
    return rc;
}

int l2_backend_query_l1(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                        l2_row_fn row, void *ud, int *answered, uint64_t *rows, char *err)
{
    if (b->l2) backend_recover_writes(b);
    return backend_query_l1_rows(b, fs, nf, max_limit, now, 0, row, ud, answered, rows, err);
}

uint32_t l2_backend_count_read(l2_backend *b, const uint8_t id[32])
{
    return l2_learned_count_read(b->learned, id, b->o.history);
}

void l2_backend_hit(l2_backend *b, int level, uint64_t n)
{
    if (level >= 0 && level < L2_LEVELS) b->answered[level] += n;
}

uint64_t l2_backend_hits(const l2_backend *b, int level)
{
    return level >= 0 && level < L2_LEVELS ? b->answered[level] : 0;
}

/* ---- reads that reach L2 ---- */

void backend_answer_init(answer *a)
{
    memset(a, 0, sizeof *a);
    l2_buf_init(&a->arena);
    l2_event_init(&a->ev);
}

void backend_answer_free(answer *a)
{
    free(a->v);
    l2_buf_free(&a->arena);
    l2_event_free(&a->ev);
}

int backend_row_decode(const answer *a, const kept_row *r, l2_event *ev, char *err)
{
    const char *p = a->arena.data + r->off;
    return r->json ? l2_event_parse_json(ev, p, r->len, L2_HAVE_ALL, &l2_default_limits, err)
                   : l2_event_decode_bin(ev, p, r->len, err);
}

/* Decodes row r of a into a->ev. 0, or -1 with a->err. */
static int answer_decode(answer *a, const kept_row *r)
{
    return backend_row_decode(a, r, &a->ev, a->err);
}

/* Keeps a row whose id and created_at are known (L1's hits): nothing to decode. */

int backend_keep_row(void *ud, const l2_row *row)
{
    return backend_keep_known_row(ud, row, NULL, 0);
}

int backend_keep_known_row(answer *a, const l2_row *row, const uint8_t id[32], int64_t created_at)
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

int backend_keep_hits(l2_backend *b, answer *a, char *err)
{
    for (size_t i = 0; i < b->hits.n && !a->failed; i++) {
        const l2_hit *h = &b->hits.v[i];
        l2_row r = {0};
        r.stub = h->stub;
        memcpy(r.id, h->id, 32);
        if (!h->stub && l2_store_hit_body(b->l1, h, &r.bin, &r.bin_len)) continue;
        backend_keep_known_row(a, &r, h->id, h->created_at);
    }
    l2_store_read_end(b->l1);
    if (a->failed) snprintf(err, L2_ERRLEN, "%s", a->err);
    return a->failed ? -1 : 0;
}

int backend_query_l1_kept(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, answer *a,
                         char *err)
{
    if (l2_store_query(b->l1, fs, nf, max_limit, now, 0, NULL, &b->hits, err)) return -1;
    return backend_keep_hits(b, a, err);
}

int l2_backend_admit(l2_backend *b, const uint8_t id[32])
{
    uint32_t n = l2_backend_count_read(b, id);
    /* the bar keeps one-off reads from pushing out what is read again: an L1 without a size limit
     * pushes nothing out, and a second trip to L2 (and a second write) would buy nothing */
    return b->o.admit == L2_ADMIT_ALWAYS || !b->o.size_limit || n >= l2_learned_admit_bar(b->learned);
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

int64_t backend_answered_missing(l2_backend *b, const l2_filter *fs, size_t nf, const uint8_t *incomplete,
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

void backend_remember_missing(l2_backend *b, const l2_filter *fs, size_t nf, const uint8_t *incomplete,
                             const answer *l2, int64_t now)
{
    if (b->o.missing_ttl <= 0) return;
    for (size_t i = 0; i < nf; i++) {
        if (!incomplete[i] || !ids_only(&fs[i])) continue;
        for (uint32_t k = 0; k < fs[i].nids; k++)
            if (!in_answer(l2, fs[i].ids[k])) l2_learned_missing_add(b->learned, fs[i].ids[k], now + b->o.missing_ttl);
    }
}

int backend_ids_filter(l2_filter *f, const uint8_t (*ids)[32], size_t n, char *err)
{
    int rc = l2_filter_begin(f, L2_F_IDS, 0, err);
    for (size_t i = 0; rc == 0 && i < n; i++) rc = l2_filter_add_key(f, L2_F_IDS, ids[i], i, &l2_unlimited_filter_limits, err);
    return rc ? rc : l2_filter_finish(f, err);
}

/* Asks L2 for these ids. */
static int read_l2_by_ids(l2_backend *b, const uint8_t (*ids)[32], size_t n, int64_t now, answer *out, char *err)
{
    l2_filter f;
    l2_filter_init(&f);
    int rc = backend_ids_filter(&f, ids, n, err);
    if (rc == 0) rc = b->l2vt->query(b->l2, &f, 1, (int64_t)n, now, 0, NULL, backend_keep_row, out, err);
    if (rc == 0 && out->failed) rc = -1, snprintf(err, L2_ERRLEN, "%s", out->err);
    l2_filter_free(&f);
    return rc;
}

void backend_fill_l1(l2_backend *b, answer *a, size_t from, int revive, int64_t now, const l2_answer_key *k,
                    uint64_t seq)
{
    if (b->o.admit == L2_ADMIT_NEVER) return;
    /* what admission takes (a read's counts and known-missing ids change here, once) */
    size_t rows = a->n - from;
    uint8_t small[64], *take = rows <= sizeof small ? small : malloc(rows);
    if (!take) return;
    for (size_t i = from; i < a->n; i++) {
        kept_row *r = &a->v[i];
        take[i - from] = 0;
        if (r->stub) continue;
        l2_learned_missing_forget(b->learned, r->id);
        take[i - from] = (uint8_t)l2_backend_admit(b, r->id);
    }
    fill_job job = {a, from, take, revive, now, k, seq};
    if (b->defer) backend_defer_fill(b, &job);
    else backend_write_fills(b, &job, 1);
    if (take != small) free(take);
}

static int id_order(const void *x, const void *y)
{
    return memcmp(x, y, 32);
}

/* What keep_what_l2_holds works on: the fills, and the array their events' pointers are in. */
typedef struct {
    l2_backend *b;
    l2_fill *fills;
    size_t nfills;
    l2_event **ptrs;
    size_t n;
} fill_check;

/* Inside L1's write transaction, its lock held, before the fills are written: the events L2 no
 * longer holds are taken out of them. A removal L2 committed before this read is seen here; one
 * it commits after waits for L1's lock, then finds the event in L1 and removes it there too. So
 * a fill never brings back what L2 removed while the fill waited (an operator's deletion leaves
 * no tombstone for L1's rules to refuse it by). */
static void keep_what_l2_holds(void *ud)
{
    fill_check *c = ud;
    if (!c->n) return;
    uint8_t(*ids)[32] = malloc(c->n * 32);
    answer held;
    backend_answer_init(&held);
    char err[L2_ERRLEN] = "error: out of memory";
    for (size_t i = 0; ids && i < c->n; i++) memcpy(ids[i], c->ptrs[i]->id, 32);
    int rc = !ids || read_l2_by_ids(c->b, (const uint8_t(*)[32])ids, c->n, (int64_t)time(NULL), &held, err);
    if (rc) backend_logf_(c->b, "L1 keeps none of what L2 returned: L2 cannot say it still holds it: %s", err);
    /* L2's ids, sorted, in place of the events' */
    for (size_t i = 0; !rc && i < held.n; i++) memcpy(ids[i], held.v[i].id, 32);
    if (!rc) qsort(ids, held.n, 32, id_order);
    for (size_t j = 0; j < c->nfills; j++) {
        l2_fill *f = &c->fills[j];
        l2_event **slice = c->ptrs + (f->evs - (l2_event *const *)c->ptrs);
        size_t kept = 0;
        for (size_t i = 0; i < f->n; i++)
            if (!rc && bsearch(slice[i]->id, ids, held.n, 32, id_order)) slice[kept++] = slice[i];
        f->n = kept;
    }
    free(ids);
    backend_answer_free(&held);
}

void backend_write_fills(l2_backend *b, const fill_job *jobs, size_t njobs)
{
    size_t rows = 0, n = 0, nids = 0;
    for (size_t j = 0; j < njobs; j++) rows += jobs[j].a->n - jobs[j].from;
    uint64_t bytes = 0;
    l2_event *evs = calloc(rows + 1, sizeof *evs);
    l2_event **ptrs = calloc(rows + 1, sizeof *ptrs);
    l2_save_result *res = calloc(rows + 1, sizeof *res);
    uint8_t(*ids)[32] = malloc((rows + 1) * 32);
    l2_fill *fills = calloc(njobs + 1, sizeof *fills);
    char err[L2_ERRLEN] = "error: out of memory";
    int rc = !evs || !ptrs || !res || !ids || !fills, keyed = 0;
    for (size_t j = 0; !rc && j < njobs; j++) {
        const fill_job *job = &jobs[j];
        l2_fill *f = &fills[j];
        *f = (l2_fill){.evs = ptrs + n, .revive = job->revive, .now = job->now, .res = res + n, .k = job->k,
                       .ids = (const uint8_t(*)[32])ids + nids, .nids = job->a->n - job->from,
                       .expires = (int64_t)time(NULL) + b->o.answers_ttl, .max_ids = b->o.answers_max_ids,
                       .seq = job->seq};
        keyed |= job->k != NULL;
        for (size_t i = job->from; i < job->a->n; i++) {
            const kept_row *r = &job->a->v[i];
            memcpy(ids[nids++], r->id, 32);
            if (r->stub || !job->take[i - job->from]) continue;
            l2_event_init(&evs[n]);
            if (backend_row_decode(job->a, r, &evs[n], err)) {
                l2_event_free(&evs[n]);
                continue;
            }
            bytes += r->len;
            ptrs[n] = &evs[n];
            n++;
            f->n++;
        }
    }
    int room = !rc && n ? backend_make_room(b, bytes, n, err) : 0;
    /* more than L1 can take in one transaction: in halves (after this one's memory is freed) */
    size_t half = room == 1 && njobs > 1 ? njobs / 2 : 0;
    if (!rc && !half && (n || keyed)) {
        /* without room the answers may still be kept */
        if (room) for (size_t j = 0; j < njobs; j++) fills[j].n = 0;
        for (int tries = 0; tries < 2; tries++) {
            fill_check check = {b, fills, njobs, ptrs, room ? 0 : n};
            rc = l2_store_fills(b->l1, fills, njobs, keep_what_l2_holds, &check, err);
            /* the pages the transaction copies filled L1 below its high water mark (as in
             * backend_save_l1): evict, then try once more */
            if (rc != L2_FULL || tries || !b->o.size_limit) break;
            if (backend_evict(b, L2_GC_FULL, err)) backend_logf_(b, "eviction failed: %s", err);
        }
        if (rc) backend_logf_(b, "L1 could not keep what L2 returned: %s", err);
    }
    for (size_t i = 0; evs && i < n; i++) l2_event_free(&evs[i]);
    free(evs);
    free(ptrs);
    free(res);
    free(ids);
    free(fills);
    if (half) {
        backend_write_fills(b, jobs, half);
        backend_write_fills(b, jobs + half, njobs - half);
    }
}

void backend_fill_stubs(l2_backend *b, answer *l1, int64_t now, uint64_t *filled)
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
    if (read_l2_by_ids(b, (const uint8_t(*)[32])ids, nstubs, now, l1, err)) backend_logf_(b, "L2 could not fill stubs: %s", err);
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
    backend_fill_l1(b, l1, from, 1, now, NULL, 0);
    l1->n = from;
    free(ids);
}

uint64_t backend_emit(const answer *a, l2_row_fn row, void *ud)
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

void backend_merge_outbox(l2_backend *b, answer *l2, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now)
{
    l2_outbox_item item;
    size_t waiting = 0;
    char err[L2_ERRLEN];
    int rc = l2_store_outbox_list(b->l1, 1, &item, &waiting, err);
    l2_store_read_end(b->l1);
    if (rc || !waiting) return;
    answer l1;
    backend_answer_init(&l1);
    if (backend_query_l1_kept(b, fs, nf, max_limit, now, &l1, err)) backend_logf_(b, "L1's part of an answer: %s", err);
    for (size_t i = 0; i < l1.n; i++) {
        const kept_row *r = &l1.v[i];
        if (r->stub || in_answer(l2, r->id)) continue;
        l2_row row = {0};
        row.bin = l1.arena.data + r->off;
        row.bin_len = r->len;
        if (backend_keep_row(l2, &row)) break;
    }
    backend_answer_free(&l1);
    qsort(l2->v, l2->n, sizeof *l2->v, newest_first);
}
