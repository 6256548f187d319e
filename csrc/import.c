/* The import driver (import.h): batches of lines, checked on threads while the batch before is
 * saved. */
#include "import.h"

#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "buf.h"
#include "killpoint.h"

typedef struct {
    l2_batch_item *items;
    l2_buf lines;
    /* the next batch (its items and lines), checked while this one is saved */
    l2_batch_item *next_items;
    l2_buf next_lines;
    l2_batch_job job;
    l2_event **evs;
    l2_save_result *res;
    size_t cap;
    uint64_t lineno, bytes;
    int done; /* the source has ended */
} import_state;

static int import_init(import_state *im, size_t batch, char *err)
{
    memset(im, 0, sizeof *im);
    l2_buf_init(&im->lines);
    l2_buf_init(&im->next_lines);
    im->items = calloc(batch, sizeof *im->items);
    im->next_items = calloc(batch, sizeof *im->next_items);
    im->evs = malloc(batch * sizeof *im->evs);
    im->res = malloc(batch * sizeof *im->res);
    if (!im->items || !im->next_items || !im->evs || !im->res) return l2_oom(err);
    im->cap = batch;
    for (size_t i = 0; i < batch; i++) {
        l2_event_init(&im->items[i].ev);
        l2_event_init(&im->next_items[i].ev);
    }
    return 0;
}

static void import_free(import_state *im)
{
    l2_batch_wait(&im->job); /* its threads write into the items */
    for (size_t i = 0; i < im->cap; i++) {
        l2_event_free(&im->items[i].ev);
        l2_event_free(&im->next_items[i].ev);
    }
    free(im->items);
    free(im->next_items);
    free(im->evs);
    free(im->res);
    l2_buf_free(&im->lines);
    l2_buf_free(&im->next_lines);
}

static int is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t') return 0;
    return 1;
}

/* Reads up to a batch of lines (blank ones skipped) into im->items and im->lines: the number of
 * items, or -1 when memory ran out. */
static long read_batch(import_state *im, const l2_import_io *io, char *err)
{
    size_t n = 0;
    im->lines.len = 0;
    while (n < im->cap && !im->done) {
        const char *p;
        size_t len;
        if (!io->next_line(io->ud, &p, &len)) {
            im->done = 1;
            break;
        }
        while (len && (p[len - 1] == '\n' || p[len - 1] == '\r')) len--;
        im->lineno++;
        im->bytes += len + 1; /* a line's end counts as one byte */
        if (is_blank(p, len)) continue;
        size_t off = im->lines.len;
        if (l2_buf_put(&im->lines, p, len)) return l2_oom(err);
        im->items[n].json = (const char *)(uintptr_t)off; /* an offset until the buffer stops moving */
        im->items[n].len = len;
        im->items[n].line = im->lineno;
        n++;
    }
    for (size_t i = 0; i < n; i++) im->items[i].json = im->lines.data + (uintptr_t)im->items[i].json;
    return (long)n;
}

/* Makes the next batch the current one. */
static void swap_batches(import_state *im)
{
    l2_batch_item *items = im->items;
    l2_buf lines = im->lines;
    im->items = im->next_items;
    im->lines = im->next_lines;
    im->next_items = items;
    im->next_lines = lines;
}

static int tell_refused(const l2_import_io *io, uint64_t line, const char *msg)
{
    return io->refused && io->refused(io->ud, line, msg) ? L2_STOPPED : 0;
}

/* Counts the verdicts of a saved (or, without a store, checked) batch of n lines, telling the
 * caller of each refused one; *newest gets the newest created_at stored. */
static int tally_batch(const import_state *im, size_t n, int saved, const l2_import_io *io, uint64_t *counts,
                       int64_t *newest)
{
    size_t k = 0;
    counts[L2_IMPORT_LINES] += n;
    for (size_t i = 0; i < n; i++) {
        const l2_batch_item *it = &im->items[i];
        if (!it->ok) {
            counts[L2_IMPORT_INVALID]++;
            if (tell_refused(io, it->line, it->err)) return L2_STOPPED;
            continue;
        }
        if (!saved) {
            counts[L2_IMPORT_SAVED]++; /* valid */
            continue;
        }
        const l2_save_result *r = &im->res[k++];
        counts[L2_IMPORT_REPLACED] += r->replaced;
        counts[L2_IMPORT_DELETED] += r->deleted;
        if (r->status == L2_SAVE_STORED && it->ev.created_at > *newest) *newest = it->ev.created_at;
        switch (r->status) {
        case L2_SAVE_STORED: counts[L2_IMPORT_SAVED]++; break;
        case L2_SAVE_EPHEMERAL: counts[L2_IMPORT_EPHEMERAL]++; break;
        case L2_SAVE_DUPLICATE:
        case L2_SAVE_OLDER: counts[L2_IMPORT_DUPLICATE]++; break;
        case L2_SAVE_DELETED: counts[L2_IMPORT_BLOCKED]++; break;
        default: counts[L2_IMPORT_INVALID]++;
        }
        if (r->status != L2_SAVE_STORED && r->status != L2_SAVE_EPHEMERAL &&
            tell_refused(io, it->line, l2_save_result_message(r)))
            return L2_STOPPED;
    }
    return 0;
}

/* Saves the current batch's valid events (none without a store): 0, or -1 with err. */
static int save_batch(import_state *im, size_t n, const l2_store_if *vt, void *st, const l2_import_opts *o,
                      char *err)
{
    size_t nok = 0;
    for (size_t i = 0; i < n; i++)
        if (im->items[i].ok) im->evs[nok++] = &im->items[i].ev;
    if (!nok || !vt) return 0;
    if (vt->save_batch(st, im->evs, nok, o->now, o->flags | L2_SAVE_IMPORT, im->res, err)) return -1;
    l2_killpoint("import:batch");
    return 0;
}

/* The batches: the next one is read here and checked on the threads while this one is saved. */
static int run_batches(import_state *im, const l2_store_if *vt, void *st, const l2_limits *lim,
                       const l2_import_opts *o, const l2_import_io *io, uint64_t *counts, int64_t *newest, char *err)
{
    long n = read_batch(im, io, err);
    if (n < 0) return -1;
    l2_batch_check(im->items, (size_t)n, o->threads, o->verify, lim);
    while (n > 0) {
        /* what this batch reports: the lines and bytes read up to its end */
        uint64_t lines = im->lineno, bytes = im->bytes;
        long next = 0;
        if (!im->done) {
            swap_batches(im);
            next = read_batch(im, io, err);
            swap_batches(im);
            if (next < 0) return -1;
            l2_batch_start(&im->job, im->next_items, (size_t)next, o->threads, o->verify, lim);
        }
        int rc = save_batch(im, (size_t)n, vt, st, o, err);
        l2_batch_wait(&im->job);
        if (rc) return rc;
        if (tally_batch(im, (size_t)n, vt != NULL, io, counts, newest)) return L2_STOPPED;
        if (io->progress && io->progress(io->ud, lines, bytes)) return L2_STOPPED;
        swap_batches(im);
        n = next;
    }
    return 0;
}

int l2_import_run(const l2_store_if *vt, void *st, const l2_limits *lim, const l2_import_opts *o,
                  const l2_import_io *io, uint64_t counts[L2_IMPORT_NCOUNTS], int64_t *newest, char *err)
{
    memset(counts, 0, L2_IMPORT_NCOUNTS * sizeof *counts);
    *newest = -1;
    import_state im;
    int rc = import_init(&im, o->batch ? o->batch : 1, err);
    if (rc == 0) rc = run_batches(&im, vt, st, lim, o, io, counts, newest, err);
    import_free(&im);
    return rc;
}
