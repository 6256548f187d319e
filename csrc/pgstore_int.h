/* pgstore_int.h: what the parts of the PostgreSQL store (pgstore*.c) share; private to them. The
 * public API is pgstore.h. */
#ifndef L2_PGSTORE_INT_H
#define L2_PGSTORE_INT_H

#include "pgstore.h"

#include <libpq-fe.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "buf.h"

/* Parameters and results travel in PostgreSQL's binary format: nothing from an event or a filter
 * is ever spliced into SQL text, and nothing needs escaping or parsing. */
enum { OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT4 = 23, OID_TEXT = 25, OID_BYTEA_ARR = 1001,
       OID_INT4_ARR = 1007 };

/* pg_advisory_xact_lock(LOCK_NS, bucket): writes of one author take turns (every nostr rule
 * relates events of a single author), in ascending bucket order so that batches cannot deadlock. */
#define LOCK_NS "1278364210"

typedef struct {
    l2_buf data;
    size_t *off;
    int *len, *fmt;
    Oid *type;
    const char **val;
    int n, cap;
} pg_params;

struct l2_pg {
    PGconn *conn;
    char name[256];
    PGresult *res;
    int listening, notified, staged_ready, exporting;
    uint64_t reconnects;
    pg_params par;
    l2_buf sql, json, copy;
    l2_buf ephemeral; /* payloads of ephemeral NOTIFYs not yet taken by wait, each NUL-ended */
    l2_buf removed;   /* what the last save asked to report removed: an op byte and an id each */
};

/* ---- pgstore_wire.c ---- */

int pgstore_fail_with(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The first line of libpq's message for r (or the connection), without its severity prefix. */
const char *pgstore_reason(l2_pg *pg, const PGresult *r, int *len);

int pgstore_pg_fail(l2_pg *pg, const PGresult *r, char *err);

void pgstore_par_reset(pg_params *p);

void pgstore_par_free(pg_params *p);

int pgstore_put_be32(l2_buf *b, uint32_t v);

/* Each adder returns the parameter's number ($n), or -1 when out of memory. */
int pgstore_par_bytes(pg_params *p, Oid type, const void *data, size_t n);

int pgstore_par_null(pg_params *p, Oid type);

int pgstore_par_i32(pg_params *p, int32_t v);

int pgstore_par_i64(pg_params *p, int64_t v);

int pgstore_par_bool(pg_params *p, int v);

/* A one-dimensional array: begin, add elements, end (which fills in the header). */
int pgstore_arr_begin(pg_params *p, Oid array_type, Oid elem_type);

int pgstore_arr_add(pg_params *p, const void *a, size_t an, const void *b, size_t bn);

int pgstore_arr_add_i32(pg_params *p, int32_t v);

int pgstore_arr_end(pg_params *p, int num, uint32_t count);

void pgstore_par_finish(pg_params *p);

#endif
