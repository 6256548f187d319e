/* backend_answers.c: remembered answers: keys, serving them, forgetting them. Shared with the other
 * parts through backend_int.h. */
#include "backend_int.h"

int backend_answer_key(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, unsigned flags,
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
    return backend_keep_known_row(ud, row, row->id, 0);
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
    backend_answer_init(&a);
    memset(&by_id, 0, sizeof by_id);
    int in_l1 = 0, served = n == 0;
    uint64_t rows = 0;
    if (!served && backend_ids_filter(&f, ids, n, err) == 0) {
        /* L1 holds all of it (the answer served before): given as L1 reads them */
        if (backend_query_l1_rows(b, &f, 1, (int64_t)n, now, n, row, ud, &in_l1, &rows, err) == 0 && in_l1) {
            served = 1;
            by_id.l1 = rows;
        } else {
            served = l2_backend_query(b, &f, 1, (int64_t)n, now, 0, keep_raw_row, &a, &by_id, err) == 0 &&
                     !a.failed && !by_id.l2_failed && a.n == n;
            if (served) backend_emit(&a, row, ud);
        }
    }
    if (served) {
        lv->l1 = by_id.l1;
        lv->stubs = by_id.stubs + by_id.l2;
        lv->remembered = 1;
        b->answered[L2_LEVEL_L1] += in_l1 ? rows : 0;
        b->answered[L2_LEVEL_ANSWERS]++;
    }
    l2_filter_free(&f);
    backend_answer_free(&a);
    return served;
}

int l2_backend_forget_answers(l2_backend *b, char *err)
{
    l2_learned_end_answers(b->learned); /* at once, and whatever the write below does */
    return l2_store_answers_clear(b->l1, err);
}

/* A query's remembered answer: whether it may have one (`remember`: its key is in `key`), and
 * the change feed's position when it was looked for (for keeping L2's answer under that key). */
typedef struct {
    int remember;
    l2_answer_key key;
    uint64_t seq;
} answer_lookup;

/* Serves the query's remembered answer when there is one that still stands (1); else 0, with what
 * keeping L2's answer later needs in *lk. Looked for before L1 is read: an answer that stands is
 * the query's answer whatever L1 holds, and serving it by id costs less than the scan it spares. */
static int serve_remembered(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                            unsigned flags, l2_row_fn row, void *ud, l2_levels *lv, answer_lookup *lk)
{
    char err[L2_ERRLEN];
    lk->seq = 0;
    lk->remember = backend_answer_key(b, fs, nf, max_limit, now, flags, &lk->key);
    if (!lk->remember) return 0;
    int found, served = 0;
    uint64_t rows;
    /* the common case, L1 holding all of it: its bodies by serial, in the answer's order */
    served = l2_store_answer_serve(b->l1, &lk->key, (int64_t)time(NULL), row, ud, &found, &rows, &lk->seq, err);
    if (served < 0) {
        backend_logf_(b, "cannot read a remembered answer: %s", err);
        lk->remember = 0;
        return 0;
    }
    if (served) {
        lv->l1 = rows;
        lv->remembered = 1;
        b->answered[L2_LEVEL_L1] += rows;
        b->answered[L2_LEVEL_ANSWERS]++;
        return 1;
    }
    if (!found) return 0;
    /* events of it kept by id, stubbed or gone: served by id (L2 brings what L1 no longer has) */
    l2_buf kept;
    l2_buf_init(&kept);
    if (l2_store_answer_get(b->l1, &lk->key, (int64_t)time(NULL), &kept, &found, &lk->seq, err)) {
        backend_logf_(b, "cannot read a remembered answer: %s", err);
        lk->remember = 0;
    } else if (found) {
        size_t n = kept.len / 32;
        const uint8_t(*ids)[32] = (const uint8_t(*)[32])kept.data;
        served = serve_answer(b, ids, n, now, row, ud, lv);
        if (!served) backend_drop_answer(b, &lk->key);
        /* L1 held all of it this time (events admitted since it was kept): kept again, by serial,
         * so that the next serve takes the path above (unless a change since the read above may
         * have touched it: then it goes) */
        if (served && lv->l1 == n && !lv->stubs) backend_keep_answer_ids(b, &lk->key, ids, n, now, lk->seq);
    }
    l2_buf_free(&kept);
    return served;
}

/* The rest of l2_backend_query, when L1 could not answer alone from its read (b->hits, with the
 * filters' completeness in `incomplete`; the read still open) and no remembered answer stood. */
static int query_beyond_l1(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now,
                           const uint8_t *incomplete, const answer_lookup *lk, l2_row_fn row, void *ud, l2_levels *lv,
                           char *err)
{
    int rc = 0;
    answer l1, l2;
    backend_answer_init(&l1);
    backend_answer_init(&l2);
    int complete = 1;
    for (size_t i = 0; i < nf; i++) complete &= !incomplete[i];
    /* known-missing ids are kept by the clock, whatever `now` the caller gives the rules */
    int64_t missing = complete ? 0 : backend_answered_missing(b, fs, nf, incomplete, &b->hits, (int64_t)time(NULL));
    /* a stub's read is counted when its body comes */
    if (complete) backend_count_lookup_reads(b, fs, nf, &b->hits);
    /* L1's bodies are needed only when L1 answers; else nobody gets them, and reading them would
     * count them as accesses */
    if (missing < 0) l2_store_read_end(b->l1);
    else if ((rc = backend_keep_hits(b, &l1, err))) goto done;
    uint64_t bodies = 0;
    for (size_t i = 0; i < l1.n; i++) bodies += !l1.v[i].stub;
    if (missing >= 0) {
        backend_fill_stubs(b, &l1, now, &lv->stubs);
        lv->l1 = bodies;
        lv->missing = (uint64_t)missing;
        backend_emit(&l1, row, ud);
        b->answered[L2_LEVEL_L1] += bodies, b->answered[L2_LEVEL_STUBS] += lv->stubs, b->answered[L2_LEVEL_MISSING] += lv->missing;
        goto done;
    }
    /* L1 cannot prove the answer, and none was remembered: L2, the authority */
    lv->asked_l2 = 1;
    int asked = b->l2vt->query(b->l2, fs, nf, max_limit, now, 0, NULL, backend_keep_row, &l2, lv->l2_error);
    if (asked || l2.failed) {
        if (l2.failed) {
            snprintf(lv->l2_error, sizeof lv->l2_error, "%s", l2.err);
            asked = L2_FAILED;
        }
        if (asked == L2_REFUSED) {
            /* a refusal (a filter L2 will not run) is the answer */
            snprintf(err, L2_ERRLEN, "%s", lv->l2_error);
            rc = L2_REFUSED;
            goto done;
        }
        backend_logf_(b, "L2 query failed, answering from L1: %s", lv->l2_error);
        lv->l2_failed = 1;
        backend_answer_free(&l1);
        backend_answer_init(&l1);
        if ((rc = backend_query_l1_kept(b, fs, nf, max_limit, now, &l1, err))) goto done;
        backend_fill_stubs(b, &l1, now, &lv->stubs);
        lv->l1 = backend_emit(&l1, row, ud) - lv->stubs;
        goto done;
    }
    backend_merge_outbox(b, &l2, fs, nf, max_limit, now);
    backend_remember_missing(b, fs, nf, incomplete, &l2, (int64_t)time(NULL));
    backend_fill_l1(b, &l2, 0, 0, now, lk->remember ? &lk->key : NULL, lk->seq);
    lv->l2 = backend_emit(&l2, row, ud);
    b->answered[L2_LEVEL_L2] += lv->l2;
done:
    backend_answer_free(&l1);
    backend_answer_free(&l2);
    return rc;
}

int l2_backend_query(l2_backend *b, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, unsigned flags,
                     l2_row_fn row, void *ud, l2_levels *lv, char *err)
{
    memset(lv, 0, sizeof *lv);
    if (b->l2) backend_recover_writes(b);
    uint8_t small[16], *incomplete = nf <= sizeof small ? small : malloc(nf);
    if (!incomplete) return l2_oom(err);
    memset(incomplete, 0, nf);
    int64_t horizon = b->l2 && !(flags & L2_QUERY_L1_ONLY) ? L2_HORIZON_IN_META : 0;
    answer_lookup lk = {0};
    if (b->l2 && serve_remembered(b, fs, nf, max_limit, now, flags, row, ud, lv, &lk)) {
        if (incomplete != small) free(incomplete);
        return 0;
    }
    int rc = l2_store_query(b->l1, fs, nf, max_limit, now, horizon, incomplete, &b->hits, err);
    if (rc == 0 && (!b->l2 || (flags & L2_QUERY_L1_ONLY) || backend_l1_proves(b, nf, incomplete, 0))) {
        /* L1 answers alone: straight from its read */
        lv->l1 = backend_emit_hits(b, row, ud);
        if (b->l2 && !(flags & L2_QUERY_L1_ONLY)) backend_count_lookup_reads(b, fs, nf, NULL);
        b->answered[L2_LEVEL_L1] += lv->l1;
    } else if (rc == 0) {
        rc = query_beyond_l1(b, fs, nf, max_limit, now, incomplete, &lk, row, ud, lv, err);
    }
    if (incomplete != small) free(incomplete);
    return rc;
}
