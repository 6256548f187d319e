/* pgstore_wire.c: what travels to and from PostgreSQL: binary parameters (nothing spliced into SQL
 * text) and the messages of its errors. Shared with the other parts through pgstore_int.h. */
#include "pgstore_int.h"

int pgstore_fail_with(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, L2_ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}

const char *pgstore_reason(l2_pg *pg, const PGresult *r, int *len)
{
    const char *m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m || !*m) m = pg->conn ? PQerrorMessage(pg->conn) : "out of memory";
    if (!m || !*m) m = "unknown failure";
    static const char *const severities[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
    for (size_t i = 0; i < 3; i++)
        if (strncmp(m, severities[i], 8) == 0) m += 8;
    size_t n = strcspn(m, "\n");
    *len = (int)(n > 160 ? 160 : n);
    return m;
}

int pgstore_pg_fail(l2_pg *pg, const PGresult *r, char *err)
{
    int n;
    const char *m = pgstore_reason(pg, r, &n);
    return pgstore_fail_with(err, "error: PostgreSQL: %.*s", n, m);
}

/* ---- binary parameters ---- */

void pgstore_par_reset(pg_params *p)
{
    p->n = 0;
    p->data.len = 0;
}

void pgstore_par_free(pg_params *p)
{
    l2_buf_free(&p->data);
    free(p->off);
    free(p->len);
    free(p->fmt);
    free(p->type);
    free(p->val);
    memset(p, 0, sizeof *p);
}

static int par_slot(pg_params *p, Oid type)
{
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 32;
        size_t *off = realloc(p->off, (size_t)cap * sizeof *off);
        if (off) p->off = off;
        int *len = realloc(p->len, (size_t)cap * sizeof *len);
        if (len) p->len = len;
        int *fmt = realloc(p->fmt, (size_t)cap * sizeof *fmt);
        if (fmt) p->fmt = fmt;
        Oid *t = realloc(p->type, (size_t)cap * sizeof *t);
        if (t) p->type = t;
        const char **val = realloc(p->val, (size_t)cap * sizeof *val);
        if (val) p->val = val;
        if (!off || !len || !fmt || !t || !val) return -1;
        p->cap = cap;
    }
    p->off[p->n] = p->data.len;
    p->len[p->n] = 0;
    p->fmt[p->n] = 1;
    p->type[p->n] = type;
    return p->n++;
}

int pgstore_put_be32(l2_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return l2_buf_put(b, x, 4);
}

static int put_be64(l2_buf *b, uint64_t v)
{
    return pgstore_put_be32(b, (uint32_t)(v >> 32)) || pgstore_put_be32(b, (uint32_t)v);
}

static void set_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

int pgstore_par_bytes(pg_params *p, Oid type, const void *data, size_t n)
{
    int i = par_slot(p, type);
    if (i < 0 || l2_buf_put(&p->data, data, n)) return -1;
    p->len[i] = (int)n;
    return i + 1;
}

int pgstore_par_null(pg_params *p, Oid type)
{
    int i = par_slot(p, type);
    if (i < 0) return -1;
    p->len[i] = -1;
    return i + 1;
}

int pgstore_par_i32(pg_params *p, int32_t v)
{
    int i = par_slot(p, OID_INT4);
    if (i < 0 || pgstore_put_be32(&p->data, (uint32_t)v)) return -1;
    p->len[i] = 4;
    return i + 1;
}

int pgstore_par_i64(pg_params *p, int64_t v)
{
    int i = par_slot(p, OID_INT8);
    if (i < 0 || put_be64(&p->data, (uint64_t)v)) return -1;
    p->len[i] = 8;
    return i + 1;
}

int pgstore_par_bool(pg_params *p, int v)
{
    uint8_t b = v ? 1 : 0;
    return pgstore_par_bytes(p, OID_BOOL, &b, 1);
}

int pgstore_arr_begin(pg_params *p, Oid array_type, Oid elem_type)
{
    int i = par_slot(p, array_type);
    if (i < 0 || pgstore_put_be32(&p->data, 1) || pgstore_put_be32(&p->data, 0) || pgstore_put_be32(&p->data, elem_type) ||
        pgstore_put_be32(&p->data, 0) || pgstore_put_be32(&p->data, 1))
        return -1;
    return i + 1;
}

int pgstore_arr_add(pg_params *p, const void *a, size_t an, const void *b, size_t bn)
{
    return pgstore_put_be32(&p->data, (uint32_t)(an + bn)) || l2_buf_put(&p->data, a, an) || l2_buf_put(&p->data, b, bn);
}

int pgstore_arr_add_i32(pg_params *p, int32_t v)
{
    return pgstore_put_be32(&p->data, 4) || pgstore_put_be32(&p->data, (uint32_t)v);
}

int pgstore_arr_end(pg_params *p, int num, uint32_t count)
{
    char *h = p->data.data + p->off[num - 1];
    if (count == 0) {
        set_be32(h, 0); /* no dimensions: the empty array */
        p->data.len = p->off[num - 1] + 12;
    } else {
        set_be32(h + 12, count);
    }
    p->len[num - 1] = (int)(p->data.len - p->off[num - 1]);
    return num;
}

void pgstore_par_finish(pg_params *p)
{
    for (int i = 0; i < p->n; i++) p->val[i] = p->len[i] < 0 ? NULL : p->data.data + p->off[i];
}
