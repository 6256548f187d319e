/* pgstore.c: the PostgreSQL store: its schema, the connection, saving, queries, export and the
 * change feed, maintenance and the store interface. Shared with the other parts through
 * pgstore_int.h. */
#include "pgstore_int.h"

/* The schema, version 3 (version 2 had no transaction id in layer2_changes; version 1 had the same
 * tables as 2, and its layer2_save stored a deletion request that names only other authors'
 * events): tables, then the functions (what a migration from version 1 replaces), then the
 * trigger that needs them. */

/* Each change keeps the id of the transaction that made it: a cache reads the feed by those, only
 * from transactions that have ended (l2_pg_feed), so a late commit is never passed over. Rows
 * from before version 3 take 1: older than any position a cache keeps. */
#define XID_SQL                                                                                                      \
    "ALTER TABLE layer2_changes ADD COLUMN xid xid8 NOT NULL DEFAULT '1';\n"                                       \
    "ALTER TABLE layer2_changes ALTER COLUMN xid SET DEFAULT pg_current_xact_id();\n"                              \
    "CREATE INDEX layer2_changes_xid ON layer2_changes (xid);\n"

static const char TABLES_SQL[] =
    "CREATE TABLE layer2_meta (key text PRIMARY KEY, value text NOT NULL);\n"
    "CREATE TABLE layer2_events (\n"
    "  seq bigserial PRIMARY KEY,\n"
    "  id bytea NOT NULL UNIQUE,\n"
    "  pubkey bytea NOT NULL,\n"
    "  kind integer NOT NULL,\n"
    "  created_at bigint NOT NULL,\n"
    "  expiration bigint,\n"
    "  tags bytea[] NOT NULL, -- letter || value of every single-letter tag with a value\n"
    "  json text NOT NULL);\n"
    "CREATE INDEX layer2_events_created ON layer2_events (created_at DESC, id);\n"
    "CREATE INDEX layer2_events_pubkey ON layer2_events (pubkey, created_at DESC, id);\n"
    "CREATE INDEX layer2_events_kind ON layer2_events (kind, created_at DESC, id);\n"
    "CREATE INDEX layer2_events_pubkind ON layer2_events (pubkey, kind, created_at DESC, id);\n"
    "CREATE INDEX layer2_events_tags ON layer2_events USING gin (tags);\n"
    "CREATE INDEX layer2_events_expiration ON layer2_events (expiration) WHERE expiration IS NOT NULL;\n"
    "CREATE TABLE layer2_heads (pubkey bytea, kind integer, d bytea, created_at bigint NOT NULL,\n"
    "  id bytea NOT NULL, PRIMARY KEY (pubkey, kind, d));\n"
    "CREATE INDEX layer2_heads_id ON layer2_heads (id);\n"
    "CREATE TABLE layer2_tombstones (id bytea, pubkey bytea, PRIMARY KEY (id, pubkey));\n"
    "CREATE TABLE layer2_addr_tombstones (pubkey bytea, kind integer, d bytea, until bigint NOT NULL,\n"
    "  PRIMARY KEY (pubkey, kind, d));\n"
    "CREATE TABLE layer2_changes (seq bigserial PRIMARY KEY, op smallint NOT NULL, id bytea NOT NULL);\n"
    XID_SQL;

static const char FUNCTIONS_SQL[] =
    "CREATE OR REPLACE FUNCTION layer2_notify() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN PERFORM pg_notify('layer2_changes', ''); RETURN NULL; END $$;\n"
    "\n"
    "CREATE OR REPLACE FUNCTION layer2_lock(p_pubkey bytea) RETURNS void LANGUAGE sql AS\n"
    "$$ SELECT pg_advisory_xact_lock(" LOCK_NS ", get_byte(p_pubkey, 0)) $$;\n"
    "\n"
    "CREATE OR REPLACE FUNCTION layer2_remove(p_id bytea, p_op smallint) RETURNS boolean LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  DELETE FROM layer2_events WHERE id = p_id;\n"
    "  IF NOT FOUND THEN RETURN false; END IF;\n"
    "  DELETE FROM layer2_heads WHERE id = p_id;\n"
    "  INSERT INTO layer2_changes (op, id) VALUES (p_op, p_id);\n"
    "  RETURN true;\n"
    "END $$;\n"
    "\n"
    /* status: 0 stored, 2 duplicate, 3 older, 4 deleted (blocked), 5 expired, 6 a deletion request
     * whose e tags name only other authors' events (L2_DELETION_OF_OTHERS): enum l2_save_status */
    "CREATE OR REPLACE FUNCTION layer2_save(p_id bytea, p_pubkey bytea, p_kind integer, p_created bigint,\n"
    "    p_expiration bigint, p_addr boolean, p_d bytea, p_tags bytea[], p_json text, p_del_ids bytea[],\n"
    "    p_del_kinds integer[], p_del_ds bytea[], p_now bigint,\n"
    "    OUT status integer, OUT replaced integer, OUT deleted integer) LANGUAGE plpgsql AS $$\n"
    "DECLARE h_created bigint; h_id bytea; x bytea; i integer;\n"
    "BEGIN\n"
    "  replaced := 0; deleted := 0;\n"
    "  IF p_expiration IS NOT NULL AND p_expiration <= p_now THEN status := 5; RETURN; END IF;\n"
    "  PERFORM layer2_lock(p_pubkey);\n"
    "  PERFORM 1 FROM layer2_events WHERE id = p_id;\n"
    "  IF FOUND THEN status := 2; RETURN; END IF;\n"
    "  IF p_kind <> 5 THEN\n"
    "    PERFORM 1 FROM layer2_tombstones WHERE id = p_id AND pubkey = p_pubkey;\n"
    "    IF FOUND THEN status := 4; RETURN; END IF;\n"
    "  END IF;\n"
    "  IF p_addr THEN\n"
    "    PERFORM 1 FROM layer2_addr_tombstones\n"
    "      WHERE pubkey = p_pubkey AND kind = p_kind AND d = p_d AND until >= p_created;\n"
    "    IF FOUND THEN status := 4; RETURN; END IF;\n"
    "    SELECT created_at, id INTO h_created, h_id FROM layer2_heads\n"
    "      WHERE pubkey = p_pubkey AND kind = p_kind AND d = p_d;\n"
    "    IF FOUND AND (h_created > p_created OR (h_created = p_created AND h_id < p_id)) THEN\n"
    "      status := 3; RETURN;\n"
    "    END IF;\n"
    "    -- the conditional upsert: one head per address, the newest, a tie to the lower id\n"
    "    INSERT INTO layer2_heads AS cur VALUES (p_pubkey, p_kind, p_d, p_created, p_id)\n"
    "      ON CONFLICT (pubkey, kind, d) DO UPDATE SET created_at = excluded.created_at, id = excluded.id\n"
    "      WHERE cur.created_at < excluded.created_at\n"
    "         OR (cur.created_at = excluded.created_at AND cur.id > excluded.id);\n"
    "    IF NOT FOUND THEN status := 3; RETURN; END IF;\n"
    "    IF h_id IS NOT NULL AND layer2_remove(h_id, 2::smallint) THEN replaced := 1; END IF;\n"
    "  END IF;\n"
    "  IF p_kind = 5 AND coalesce(array_length(p_del_ids, 1), 0) > 0 AND NOT EXISTS (\n"
    "      SELECT 1 FROM unnest(p_del_ids) AS t(target) WHERE NOT EXISTS (\n"
    "        SELECT 1 FROM layer2_events e WHERE e.id = t.target AND e.pubkey <> p_pubkey)) THEN\n"
    "    status := 6; RETURN;\n"
    "  END IF;\n"
    "  INSERT INTO layer2_events (id, pubkey, kind, created_at, expiration, tags, json)\n"
    "    VALUES (p_id, p_pubkey, p_kind, p_created, p_expiration, p_tags, p_json);\n"
    "  INSERT INTO layer2_changes (op, id) VALUES (1, p_id);\n"
    "  status := 0;\n"
    "  IF p_kind <> 5 THEN RETURN; END IF;\n"
    "  -- NIP-09: only the author's own events, never another deletion; tombstones either way\n"
    "  FOREACH x IN ARRAY p_del_ids LOOP\n"
    "    PERFORM 1 FROM layer2_events WHERE id = x AND pubkey = p_pubkey AND kind <> 5;\n"
    "    IF FOUND AND layer2_remove(x, 3::smallint) THEN deleted := deleted + 1; END IF;\n"
    "    INSERT INTO layer2_tombstones VALUES (x, p_pubkey) ON CONFLICT DO NOTHING;\n"
    "  END LOOP;\n"
    "  FOR i IN 1 .. coalesce(array_length(p_del_kinds, 1), 0) LOOP\n"
    "    INSERT INTO layer2_addr_tombstones AS cur VALUES (p_pubkey, p_del_kinds[i], p_del_ds[i], p_created)\n"
    "      ON CONFLICT (pubkey, kind, d) DO UPDATE SET until = excluded.until WHERE cur.until < excluded.until;\n"
    "    SELECT created_at, id INTO h_created, h_id FROM layer2_heads\n"
    "      WHERE pubkey = p_pubkey AND kind = p_del_kinds[i] AND d = p_del_ds[i];\n"
    "    IF FOUND AND h_created <= p_created AND layer2_remove(h_id, 3::smallint) THEN\n"
    "      deleted := deleted + 1;\n"
    "    END IF;\n"
    "  END LOOP;\n"
    "END $$;\n"
    "\n"
    /* a batch staged by COPY, saved in order; the locks of all its authors are taken first */
    "CREATE OR REPLACE FUNCTION layer2_save_staged(p_now bigint)\n"
    "    RETURNS TABLE (status integer, replaced integer, deleted integer) LANGUAGE plpgsql AS $$\n"
    "DECLARE r record; k integer;\n"
    "BEGIN\n"
    "  FOR k IN SELECT DISTINCT get_byte(s.pubkey, 0) FROM layer2_staged s ORDER BY 1 LOOP\n"
    "    PERFORM pg_advisory_xact_lock(" LOCK_NS ", k);\n"
    "  END LOOP;\n"
    "  FOR r IN SELECT * FROM layer2_staged s ORDER BY s.ord LOOP\n"
    "    SELECT f.status, f.replaced, f.deleted INTO status, replaced, deleted\n"
    "      FROM layer2_save(r.id, r.pubkey, r.kind, r.created_at, r.expiration, r.addr, r.d, r.tags, r.json,\n"
    "                       r.del_ids, r.del_kinds, r.del_ds, p_now) f;\n"
    "    RETURN NEXT;\n"
    "  END LOOP;\n"
    "END $$;\n"
    "\n"
    "CREATE OR REPLACE FUNCTION layer2_delete(p_id bytea, p_tombstone boolean) RETURNS boolean LANGUAGE plpgsql AS $$\n"
    "DECLARE pk bytea;\n"
    "BEGIN\n"
    "  SELECT pubkey INTO pk FROM layer2_events WHERE id = p_id;\n"
    "  IF NOT FOUND THEN RETURN false; END IF;\n"
    "  PERFORM layer2_lock(pk);\n"
    "  IF NOT layer2_remove(p_id, 3::smallint) THEN RETURN false; END IF;\n"
    "  IF p_tombstone THEN INSERT INTO layer2_tombstones VALUES (p_id, pk) ON CONFLICT DO NOTHING; END IF;\n"
    "  RETURN true;\n"
    "END $$;\n"
    "\n"
    "CREATE OR REPLACE FUNCTION layer2_sweep(p_now bigint) RETURNS bigint LANGUAGE plpgsql AS $$\n"
    "DECLARE k integer; x bytea; n bigint := 0; ids bytea[];\n"
    "BEGIN\n"
    "  SELECT coalesce(array_agg(id), '{}') INTO ids FROM layer2_events WHERE expiration <= p_now;\n"
    "  FOR k IN SELECT DISTINCT get_byte(e.pubkey, 0) FROM layer2_events e WHERE e.id = ANY(ids) ORDER BY 1 LOOP\n"
    "    PERFORM pg_advisory_xact_lock(" LOCK_NS ", k);\n"
    "  END LOOP;\n"
    "  FOREACH x IN ARRAY ids LOOP\n"
    "    IF layer2_remove(x, 3::smallint) THEN n := n + 1; END IF;\n"
    "  END LOOP;\n"
    "  RETURN n;\n"
    "END $$;\n";

static const char TRIGGER_SQL[] =
    "CREATE TRIGGER layer2_changes_notify AFTER INSERT ON layer2_changes\n"
    "  FOR EACH STATEMENT EXECUTE FUNCTION layer2_notify();\n";

static const char STAGED_SQL[] =
    "CREATE TEMP TABLE IF NOT EXISTS layer2_staged (ord bigserial, id bytea, pubkey bytea, kind integer,"
    " created_at bigint, expiration bigint, addr boolean, d bytea, tags bytea[], json text, del_ids bytea[],"
    " del_kinds integer[], del_ds bytea[]) ON COMMIT DELETE ROWS";

/* ---- the connection ---- */

/* The channels: changes committed (no payload), and ephemeral events (the payload). */
#define CHANGES_CHANNEL "layer2_changes"
#define EPHEMERAL_CHANNEL "layer2_ephemeral"
/* ephemeral events kept between waits, at most: past it the oldest wait's are dropped */
#define EPHEMERAL_KEPT (4u << 20)

static void collect_notifies(l2_pg *pg)
{
    PGnotify *n;
    while ((n = PQnotifies(pg->conn))) {
        if (strcmp(n->relname, EPHEMERAL_CHANNEL) != 0) {
            pg->notified = 1;
        } else if (pg->ephemeral.len < EPHEMERAL_KEPT) {
            /* a payload that cannot be kept is lost, as an ephemeral event may be */
            if (l2_buf_put(&pg->ephemeral, n->extra, strlen(n->extra) + 1)) pg->ephemeral.len = 0;
        }
        PQfreemem(n);
    }
}

static void clear_result(l2_pg *pg)
{
    if (pg->res) PQclear(pg->res);
    pg->res = NULL;
}

/* Runs one statement; the result stays in pg->res. NULL with err on any failure. */
static PGresult *run(l2_pg *pg, const char *sql, pg_params *p, char *err)
{
    clear_result(pg);
    if (p) pgstore_par_finish(p);
    PGresult *r = PQexecParams(pg->conn, sql, p ? p->n : 0, p ? p->type : NULL, p ? p->val : NULL,
                               p ? p->len : NULL, p ? p->fmt : NULL, 1);
    collect_notifies(pg);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        pgstore_pg_fail(pg, r, err);
        if (r) PQclear(r);
        return NULL;
    }
    pg->res = r;
    return r;
}

static int run_plain(l2_pg *pg, const char *sql, char *err)
{
    clear_result(pg);
    PGresult *r = PQexec(pg->conn, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? 0 : pgstore_pg_fail(pg, r, err);
    if (r) PQclear(r);
    return rc;
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* NOTICEs (e.g. "relation already exists, skipping") are not for the relay's log */
}

static int session_setup(l2_pg *pg, char *err)
{
    PQsetNoticeProcessor(pg->conn, quiet, NULL);
    if (PQsetClientEncoding(pg->conn, "UTF8")) return pgstore_pg_fail(pg, NULL, err);
    pg->staged_ready = 0;
    if (pg->listening && run_plain(pg, "LISTEN " CHANGES_CHANNEL "; LISTEN " EPHEMERAL_CHANNEL, err)) return -1;
    return 0;
}

/* Reads what the server sent while we were idle: notifications, or the news that it ended the
 * session (a restart sends FATAL, then closes; the close shows on a second read). 0 when the
 * connection looks alive. */
static int look(l2_pg *pg)
{
    for (int i = 0; i < 4 && PQstatus(pg->conn) == CONNECTION_OK; i++) {
        struct pollfd pfd = {PQsocket(pg->conn), POLLIN, 0};
        if (pfd.fd < 0 || poll(&pfd, 1, 0) <= 0) break;
        if (!PQconsumeInput(pg->conn)) return -1;
    }
    collect_notifies(pg);
    return PQstatus(pg->conn) == CONNECTION_OK ? 0 : -1;
}

/* Called at the start of every operation: a connection found lost is reset (and a signal may
 * have been missed meanwhile, so it counts as one); a transaction a failed export left open is
 * rolled back. */
static int ready(l2_pg *pg, char *err)
{
    clear_result(pg);
    if (look(pg)) {
        PQreset(pg->conn);
        if (PQstatus(pg->conn) != CONNECTION_OK) {
            int n;
            const char *m = pgstore_reason(pg, NULL, &n);
            return pgstore_fail_with(err, "error: PostgreSQL: connection lost, reconnecting failed: %.*s", n, m);
        }
        pg->reconnects++;
        pg->exporting = 0;
        if (session_setup(pg, err)) return -1;
        if (pg->listening) pg->notified = 1;
    }
    if (!pg->exporting && PQtransactionStatus(pg->conn) != PQTRANS_IDLE) return run_plain(pg, "ROLLBACK", err);
    return 0;
}

static int create_schema(l2_pg *pg, char *err)
{
    char v[32], set_version[128], insert_version[128];
    snprintf(set_version, sizeof set_version, "UPDATE layer2_meta SET value = '%d' WHERE key = 'schema_version'",
             L2_PG_SCHEMA_VERSION);
    snprintf(insert_version, sizeof insert_version, "INSERT INTO layer2_meta VALUES ('schema_version', '%d')",
             L2_PG_SCHEMA_VERSION);
    if (run_plain(pg, "BEGIN", err)) return -1;
    /* bucket locks are 0..255: -1 is the schema's */
    if (!run(pg, "SELECT pg_advisory_xact_lock(" LOCK_NS ", -1), to_regclass('layer2_meta') IS NOT NULL", NULL, err))
        goto rollback;
    if (PQgetvalue(pg->res, 0, 1)[0]) {
        if (!run(pg, "SELECT value FROM layer2_meta WHERE key = 'schema_version'", NULL, err)) goto rollback;
        size_t n = PQntuples(pg->res) ? (size_t)PQgetlength(pg->res, 0, 0) : 0;
        snprintf(v, sizeof v, "%.*s", (int)(n < sizeof v ? n : sizeof v - 1), n ? PQgetvalue(pg->res, 0, 0) : "");
        int version = atoi(v);
        if (version == 1 || version == 2) {
            /* under the schema's lock, in this transaction: version 1's functions are replaced, and
             * the changes get their transaction ids */
            if ((version == 1 && run_plain(pg, FUNCTIONS_SQL, err)) || run_plain(pg, XID_SQL, err) ||
                run_plain(pg, set_version, err))
                goto rollback;
        } else if (version != L2_PG_SCHEMA_VERSION) {
            pgstore_fail_with(err, "error: PostgreSQL: the database holds layer2 schema version '%s'; this layer2 knows version %d "
                      "and leaves it alone", v, L2_PG_SCHEMA_VERSION);
            goto rollback;
        }
    } else {
        if (run_plain(pg, TABLES_SQL, err) || run_plain(pg, FUNCTIONS_SQL, err) || run_plain(pg, TRIGGER_SQL, err) ||
            run_plain(pg, insert_version, err))
            goto rollback;
    }
    return run_plain(pg, "COMMIT", err);
rollback:
    run_plain(pg, "ROLLBACK", v);
    return -1;
}

int l2_pg_open(l2_pg **out, const char *conninfo, char *err)
{
    l2_pg *pg = calloc(1, sizeof *pg);
    *out = NULL;
    if (!pg) return pgstore_fail_with(err, "error: out of memory");
    l2_buf_init(&pg->sql);
    l2_buf_init(&pg->json);
    l2_buf_init(&pg->copy);
    l2_buf_init(&pg->removed);
    l2_buf_init(&pg->ephemeral);
    pg->conn = PQconnectdb(conninfo);
    if (!pg->conn || PQstatus(pg->conn) != CONNECTION_OK) {
        int n;
        const char *m = pgstore_reason(pg, NULL, &n);
        pgstore_fail_with(err, "error: PostgreSQL: cannot connect: %.*s", n, m);
        l2_pg_close(pg);
        return -1;
    }
    const char *host = PQhost(pg->conn);
    snprintf(pg->name, sizeof pg->name, "postgresql://%s@%s:%s/%s", PQuser(pg->conn),
             host && host[0] != '/' ? host : "localhost", PQport(pg->conn), PQdb(pg->conn));
    if (session_setup(pg, err) || create_schema(pg, err)) {
        l2_pg_close(pg);
        return -1;
    }
    *out = pg;
    return 0;
}

void l2_pg_close(l2_pg *pg)
{
    if (!pg) return;
    clear_result(pg);
    if (pg->conn) PQfinish(pg->conn);
    pgstore_par_free(&pg->par);
    l2_buf_free(&pg->sql);
    l2_buf_free(&pg->json);
    l2_buf_free(&pg->copy);
    l2_buf_free(&pg->removed);
    l2_buf_free(&pg->ephemeral);
    free(pg);
}

const char *l2_pg_name(const l2_pg *pg)
{
    return pg->name;
}

const char *l2_pg_value(l2_pg *pg, size_t row, int col, size_t *len)
{
    if (!pg->res || PQgetisnull(pg->res, (int)row, col)) {
        *len = 0;
        return NULL;
    }
    *len = (size_t)PQgetlength(pg->res, (int)row, col);
    return PQgetvalue(pg->res, (int)row, col);
}

int64_t l2_pg_int(l2_pg *pg, size_t row, int col)
{
    size_t n;
    const uint8_t *p = (const uint8_t *)l2_pg_value(pg, row, col, &n);
    uint64_t v = 0;
    if (!p || (n != 2 && n != 4 && n != 8)) return 0;
    for (size_t i = 0; i < n; i++) v = v << 8 | p[i];
    if (n < 8 && (p[0] & 0x80)) v |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    return (int64_t)v;
}

/* ---- saving ---- */

/* The 12 values of layer2_save (all but p_now) for one event, in its order. */
static int event_params(l2_pg *pg, const l2_event *ev)
{
    pg_params *p = &pg->par;
    int64_t exp;
    int addr = l2_kind_replaceable(ev->kind) || l2_kind_addressable(ev->kind);
    l2_str d = l2_d_value(ev);
    pg->json.len = 0;
    if (l2_event_encode_json(ev, &pg->json)) return -1;
    if (pgstore_par_bytes(p, OID_BYTEA, ev->id, 32) < 0 || pgstore_par_bytes(p, OID_BYTEA, ev->pubkey, 32) < 0 ||
        pgstore_par_i32(p, (int32_t)ev->kind) < 0 || pgstore_par_i64(p, ev->created_at) < 0 ||
        (l2_expiration(ev, &exp) ? pgstore_par_i64(p, exp) : pgstore_par_null(p, OID_INT8)) < 0 || pgstore_par_bool(p, addr) < 0 ||
        pgstore_par_bytes(p, OID_BYTEA, d.p, d.n) < 0)
        return -1;
    int tags = pgstore_arr_begin(p, OID_BYTEA_ARR, OID_BYTEA);
    uint32_t count = 0;
    for (uint32_t t = 0; tags > 0 && t < ev->ntags; t++) {
        const l2_str *name = l2_tag_elem(ev, t, 0);
        if (l2_tag_len(ev, t) < 2 || name->n != 1) continue;
        const l2_str *v = l2_tag_elem(ev, t, 1);
        if (pgstore_arr_add(p, name->p, 1, v->p, v->n)) return -1;
        count++;
    }
    if (tags < 0 || pgstore_arr_end(p, tags, count) < 0 || pgstore_par_bytes(p, OID_TEXT, pg->json.data, pg->json.len) < 0) return -1;
    /* NIP-09 targets: ids, then addresses as parallel arrays of kinds and d values */
    int ids = pgstore_arr_begin(p, OID_BYTEA_ARR, OID_BYTEA);
    count = 0;
    for (uint32_t t = 0; ids > 0 && ev->kind == 5 && t < ev->ntags; t++) {
        uint8_t id[32];
        if (!l2_deletion_id(ev, t, id)) continue;
        if (pgstore_arr_add(p, id, 32, NULL, 0)) return -1;
        count++;
    }
    if (ids < 0 || pgstore_arr_end(p, ids, count) < 0) return -1;
    for (int pass = 0; pass < 2; pass++) {
        int arr = pass == 0 ? pgstore_arr_begin(p, OID_INT4_ARR, OID_INT4) : pgstore_arr_begin(p, OID_BYTEA_ARR, OID_BYTEA);
        count = 0;
        for (uint32_t t = 0; arr > 0 && ev->kind == 5 && t < ev->ntags; t++) {
            uint32_t kind;
            l2_str ad;
            if (!l2_deletion_address(ev, t, &kind, &ad)) continue;
            if (pass == 0 ? pgstore_arr_add_i32(p, (int32_t)kind) : pgstore_arr_add(p, ad.p, ad.n, NULL, 0)) return -1;
            count++;
        }
        if (arr < 0 || pgstore_arr_end(p, arr, count) < 0) return -1;
    }
    return 0;
}

static void read_result(l2_pg *pg, size_t row, l2_save_result *r)
{
    r->status = (int)l2_pg_int(pg, row, 0);
    r->replaced = (unsigned)l2_pg_int(pg, row, 1);
    r->deleted = (unsigned)l2_pg_int(pg, row, 2);
    /* the server refuses for one reason only (see layer2_save) */
    r->msg = r->status == L2_SAVE_REFUSED ? L2_DELETION_OF_OTHERS : NULL;
}

static int oom(char *err)
{
    return pgstore_fail_with(err, "error: out of memory");
}

/* The removals this transaction made (its change records of other ops than a save), into
 * pg->removed. */
static int collect_removed(l2_pg *pg, char *err)
{
    if (!run(pg, "SELECT op::integer, id FROM layer2_changes WHERE xid = pg_current_xact_id() AND op <> 1 ORDER BY seq",
             NULL, err))
        return -1;
    for (int i = 0; i < PQntuples(pg->res); i++) {
        size_t n;
        const char *id = l2_pg_value(pg, (size_t)i, 1, &n);
        uint8_t op = (uint8_t)l2_pg_int(pg, (size_t)i, 0);
        if (id && n == 32 && (l2_buf_put(&pg->removed, &op, 1) || l2_buf_put(&pg->removed, id, 32))) return oom(err);
    }
    clear_result(pg);
    return 0;
}

static int any_removed(const l2_save_result *res, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (res[i].replaced || res[i].deleted) return 1;
    return 0;
}

static int rollback(l2_pg *pg)
{
    char ignored[L2_ERRLEN];
    run_plain(pg, "ROLLBACK", ignored);
    return -1;
}

/* One event, one statement; with `removals`, in a transaction that reads what it removed. */
static int pg_save_one(l2_pg *pg, const l2_event *ev, int64_t now, int removals, l2_save_result *res, char *err)
{
    pgstore_par_reset(&pg->par);
    if (event_params(pg, ev) || pgstore_par_i64(&pg->par, now) < 0) return oom(err);
    if (removals && run_plain(pg, "BEGIN", err)) return -1;
    if (!run(pg,
             "SELECT status, replaced, deleted FROM layer2_save($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
             &pg->par, err))
        return removals ? rollback(pg) : -1;
    read_result(pg, 0, res);
    if (!removals) return 0;
    if (any_removed(res, 1) && collect_removed(pg, err)) return rollback(pg);
    return run_plain(pg, "COMMIT", err);
}

/* One row of the staging table in COPY's binary format: the event's parameters as fields. */
static int copy_row(l2_pg *pg, const l2_event *ev)
{
    pg_params *p = &pg->par;
    pgstore_par_reset(p);
    if (event_params(pg, ev)) return -1;
    uint8_t nfields[2] = {0, (uint8_t)p->n};
    if (l2_buf_put(&pg->copy, nfields, 2)) return -1;
    for (int i = 0; i < p->n; i++)
        if (pgstore_put_be32(&pg->copy, (uint32_t)p->len[i]) ||
            (p->len[i] > 0 && l2_buf_put(&pg->copy, p->data.data + p->off[i], (size_t)p->len[i])))
            return -1;
    return 0;
}

static int copy_batch(l2_pg *pg, l2_event *const *evs, size_t n, char *err)
{
    static const char header[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
    clear_result(pg);
    PGresult *start = PQexec(pg->conn, "COPY layer2_staged (id, pubkey, kind, created_at, expiration, addr, d, tags,"
                                       " json, del_ids, del_kinds, del_ds) FROM STDIN (FORMAT binary)");
    int copying = start && PQresultStatus(start) == PGRES_COPY_IN;
    if (!copying) pgstore_pg_fail(pg, start, err);
    if (start) PQclear(start);
    if (!copying) return -1;
    pg->copy.len = 0;
    if (l2_buf_put(&pg->copy, header, sizeof header)) return oom(err);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (copy_row(pg, evs[i])) rc = oom(err);
        if (rc == 0 && (pg->copy.len > (1u << 20) || i + 1 == n)) {
            if (i + 1 == n && l2_buf_put(&pg->copy, "\377\377", 2)) rc = oom(err);
            else if (PQputCopyData(pg->conn, pg->copy.data, (int)pg->copy.len) != 1) rc = pgstore_pg_fail(pg, NULL, err);
            pg->copy.len = 0;
        }
    }
    if (PQputCopyEnd(pg->conn, rc ? "layer2: batch abandoned" : NULL) != 1 && rc == 0) rc = pgstore_pg_fail(pg, NULL, err);
    PGresult *r;
    while ((r = PQgetResult(pg->conn))) {
        if (rc == 0 && PQresultStatus(r) != PGRES_COMMAND_OK) rc = pgstore_pg_fail(pg, r, err);
        PQclear(r);
    }
    return rc;
}

static int save_staged(l2_pg *pg, l2_event *const *evs, size_t n, int64_t now, int removals, l2_save_result *res,
                       char *err)
{
    if (!pg->staged_ready) {
        if (run_plain(pg, STAGED_SQL, err)) return -1;
        pg->staged_ready = 1;
    }
    if (run_plain(pg, "BEGIN", err)) return -1;
    pgstore_par_reset(&pg->par);
    if (copy_batch(pg, evs, n, err)) goto rollback;
    pgstore_par_reset(&pg->par);
    if (pgstore_par_i64(&pg->par, now) < 0) {
        oom(err);
        goto rollback;
    }
    if (!run(pg, "SELECT status, replaced, deleted FROM layer2_save_staged($1)", &pg->par, err)) goto rollback;
    if ((size_t)PQntuples(pg->res) != n) {
        pgstore_fail_with(err, "error: PostgreSQL: the batch came back with %d results for %zu events", PQntuples(pg->res), n);
        goto rollback;
    }
    for (size_t i = 0; i < n; i++) read_result(pg, i, &res[i]);
    clear_result(pg);
    if (removals && any_removed(res, n) && collect_removed(pg, err)) goto rollback;
    return run_plain(pg, "COMMIT", err);
rollback:
    return rollback(pg);
}

/* What is decided without the server: an ephemeral event, a deletion request naming another
 * pubkey's address. 1 with *r set, or 0. */
static int decided_here(const l2_event *ev, l2_save_result *r)
{
    const char *why = l2_deletion_refusal(ev);
    if (!why && !l2_kind_ephemeral(ev->kind)) return 0;
    *r = (l2_save_result){why ? L2_SAVE_REFUSED : L2_SAVE_EPHEMERAL, 0, 0, why};
    return 1;
}

int l2_pg_save_batch(l2_pg *pg, l2_event *const *evs, size_t n, int64_t now, int removals, l2_save_result *res,
                     char *err)
{
    pg->removed.len = 0;
    if (ready(pg, err)) return -1;
    /* one event to store (every relay save) needs no staging arrays */
    if (n == 1 && !decided_here(evs[0], res)) return pg_save_one(pg, evs[0], now, removals, res, err);
    /* what is decided here is answered here; the rest go to the server */
    l2_event **keep = malloc((n ? n : 1) * sizeof *keep);
    l2_save_result *kres = malloc((n ? n : 1) * sizeof *kres);
    size_t k = 0;
    int rc = 0;
    if (!keep || !kres) rc = oom(err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!decided_here(evs[i], &res[i])) keep[k++] = evs[i];
    if (rc == 0 && k == 1) rc = pg_save_one(pg, keep[0], now, removals, kres, err);
    else if (rc == 0 && k > 1) rc = save_staged(pg, keep, k, now, removals, kres, err);
    for (size_t i = 0, j = 0; rc == 0 && i < n; i++)
        if (!decided_here(evs[i], &res[i])) res[i] = kres[j++];
    free(keep);
    free(kres);
    return rc;
}

int l2_pg_last_removed(l2_pg *pg, l2_change_fn fn, void *ud)
{
    for (size_t at = 0; at + 33 <= pg->removed.len; at += 33)
        if (fn(ud, 0, (uint8_t)pg->removed.data[at], (const uint8_t *)pg->removed.data + at + 1, NULL)) break;
    return 0;
}

int l2_pg_delete(l2_pg *pg, const uint8_t id[32], int tombstone, int *found, char *err)
{
    if (ready(pg, err)) return -1;
    pgstore_par_reset(&pg->par);
    if (pgstore_par_bytes(&pg->par, OID_BYTEA, id, 32) < 0 || pgstore_par_bool(&pg->par, tombstone) < 0) return oom(err);
    if (!run(pg, "SELECT layer2_delete($1, $2)", &pg->par, err)) return -1;
    size_t n;
    const char *v = l2_pg_value(pg, 0, 0, &n);
    *found = v && n == 1 && v[0];
    return 0;
}

int l2_pg_sweep(l2_pg *pg, int64_t now, uint64_t *removed, char *err)
{
    if (ready(pg, err)) return -1;
    pgstore_par_reset(&pg->par);
    if (pgstore_par_i64(&pg->par, now) < 0) return oom(err);
    if (!run(pg, "SELECT layer2_sweep($1)", &pg->par, err)) return -1;
    *removed = (uint64_t)l2_pg_int(pg, 0, 0);
    return 0;
}

int l2_pg_analyze(l2_pg *pg, char *err)
{
    if (ready(pg, err)) return -1;
    return run_plain(pg, "ANALYZE layer2_events, layer2_heads", err);
}

int l2_pg_nuke(l2_pg *pg, char *err)
{
    if (ready(pg, err)) return -1;
    return run_plain(pg, "TRUNCATE layer2_events, layer2_heads, layer2_tombstones, layer2_addr_tombstones, layer2_changes",
                     err);
}

/* ---- queries ---- */

static int sql_add(l2_buf *b, const char *s)
{
    return l2_buf_put(b, s, strlen(s));
}

static int sql_param(l2_buf *b, const char *before, int num)
{
    char x[16];
    snprintf(x, sizeof x, "$%d", num);
    return num < 0 || sql_add(b, before) || sql_add(b, x);
}

static int hex_array(pg_params *p, const uint8_t (*v)[32], uint32_t n)
{
    int a = pgstore_arr_begin(p, OID_BYTEA_ARR, OID_BYTEA);
    for (uint32_t i = 0; a > 0 && i < n; i++)
        if (pgstore_arr_add(p, v[i], 32, NULL, 0)) return -1;
    return a < 0 ? -1 : pgstore_arr_end(p, a, n);
}

/* One filter's SELECT: `cols`, every condition a parameter, then the order and limit when
 * limit >= 0. The expiry condition uses parameter $1 (now). */
static int filter_sql(l2_pg *pg, const l2_filter *f, const char *cols, int64_t limit)
{
    l2_buf *s = &pg->sql;
    pg_params *p = &pg->par;
    int rc = sql_add(s, "SELECT ") || sql_add(s, cols) ||
             sql_add(s, " FROM layer2_events WHERE (expiration IS NULL OR expiration > $1)");
    if (f->have & L2_F_IDS) rc = rc || sql_param(s, " AND id = ANY(", hex_array(p, f->ids, f->nids)) || sql_add(s, ")");
    if (f->have & L2_F_AUTHORS)
        rc = rc || sql_param(s, " AND pubkey = ANY(", hex_array(p, f->authors, f->nauthors)) || sql_add(s, ")");
    if (f->have & L2_F_KINDS) {
        int a = pgstore_arr_begin(p, OID_INT4_ARR, OID_INT4);
        for (uint32_t i = 0; a > 0 && i < f->nkinds; i++) rc = rc || pgstore_arr_add_i32(p, f->kinds[i]);
        rc = rc || a < 0 || sql_param(s, " AND kind = ANY(", pgstore_arr_end(p, a, f->nkinds)) || sql_add(s, ")");
    }
    for (uint32_t t = 0; t < f->ntags; t++) {
        const l2_tag_cond *c = &f->tags[t];
        int a = pgstore_arr_begin(p, OID_BYTEA_ARR, OID_BYTEA);
        for (uint32_t i = 0; a > 0 && i < c->n; i++) {
            const l2_str *v = &f->values[c->first + i];
            rc = rc || pgstore_arr_add(p, &c->letter, 1, v->p, v->n);
        }
        rc = rc || a < 0 || sql_param(s, " AND tags && ", pgstore_arr_end(p, a, c->n));
    }
    if (f->have & L2_F_SINCE) rc = rc || sql_param(s, " AND created_at >= ", pgstore_par_i64(p, f->since));
    if (f->have & L2_F_UNTIL) rc = rc || sql_param(s, " AND created_at <= ", pgstore_par_i64(p, f->until));
    if (limit >= 0) rc = rc || sql_param(s, " ORDER BY created_at DESC, id LIMIT ", pgstore_par_i64(p, limit));
    return rc ? -1 : 0;
}

static int64_t filter_limit(const l2_filter *f, int64_t max_limit)
{
    return (f->have & L2_F_LIMIT) && f->limit < max_limit ? f->limit : max_limit;
}

/* Runs head, the union of a SELECT of `cols` per filter that can match (limited when `limited`),
 * tail. *used is the number of such filters; with none, nothing runs. */
static int run_union(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, const char *cols,
                     int limited, const char *head, const char *tail, size_t *used, char *err)
{
    *used = 0;
    if (ready(pg, err)) return -1;
    pg->sql.len = 0;
    pgstore_par_reset(&pg->par);
    if (pgstore_par_i64(&pg->par, now) < 0 || sql_add(&pg->sql, head)) return oom(err);
    for (size_t i = 0; i < nf; i++) {
        int64_t limit = limited ? filter_limit(&fs[i], max_limit) : -1;
        if (l2_filter_is_empty(&fs[i]) || (limited && limit <= 0)) continue;
        if ((*used)++ && sql_add(&pg->sql, " UNION ")) return oom(err);
        if (sql_add(&pg->sql, "(") || filter_sql(pg, &fs[i], cols, limit) || sql_add(&pg->sql, ")")) return oom(err);
    }
    if (sql_add(&pg->sql, tail) || l2_buf_putc(&pg->sql, 0)) return oom(err);
    return *used && !run(pg, pg->sql.data, &pg->par, err) ? -1 : 0;
}

int l2_pg_query(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, size_t *rows, char *err)
{
    size_t used;
    *rows = 0;
    /* the union removes events several filters found; the outer order is the REQ's */
    if (run_union(pg, fs, nf, max_limit, now, "created_at, id, json", 1, "SELECT json FROM (",
                  ") u ORDER BY created_at DESC, id", &used, err))
        return -1;
    if (used) *rows = (size_t)PQntuples(pg->res);
    return 0;
}

int l2_pg_items(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, size_t *rows, char *err)
{
    size_t used;
    *rows = 0;
    if (run_union(pg, fs, nf, max_limit, now, "created_at, id", 1, "", "", &used, err)) return -1;
    if (used) *rows = (size_t)PQntuples(pg->res);
    return 0;
}

int l2_pg_count(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t now, uint64_t *count, char *err)
{
    size_t used;
    *count = 0;
    if (run_union(pg, fs, nf, 0, now, "id", 0, "SELECT count(*) FROM (", ") u", &used, err)) return -1;
    if (used) *count = (uint64_t)l2_pg_int(pg, 0, 0);
    return 0;
}

/* ---- export, changes ---- */

int l2_pg_export_begin(l2_pg *pg, const uint8_t (*keys)[32], size_t nkeys, int filtered, char *err)
{
    if (ready(pg, err)) return -1;
    pgstore_par_reset(&pg->par);
    const char *sql = "DECLARE layer2_export NO SCROLL CURSOR FOR SELECT json FROM layer2_events ORDER BY seq";
    if (filtered) {
        int a = pgstore_arr_begin(&pg->par, OID_BYTEA_ARR, OID_BYTEA);
        for (size_t i = 0; a > 0 && i < nkeys; i++) {
            char hex[65];
            l2_hex_encode(hex, keys[i], 32);
            if (pgstore_arr_add(&pg->par, "p", 1, hex, 64)) return oom(err);
        }
        if (a < 0 || pgstore_arr_end(&pg->par, a, (uint32_t)nkeys) < 0 || hex_array(&pg->par, keys, (uint32_t)nkeys) < 0)
            return oom(err);
        sql = "DECLARE layer2_export NO SCROLL CURSOR FOR SELECT json FROM layer2_events"
              " WHERE tags && $1 OR pubkey = ANY($2) ORDER BY seq";
    }
    if (run_plain(pg, "BEGIN READ ONLY", err)) return -1;
    pg->exporting = 1;
    if (!run(pg, sql, &pg->par, err)) {
        l2_pg_export_end(pg);
        return -1;
    }
    return 0;
}

int l2_pg_export_next(l2_pg *pg, size_t *rows, char *err)
{
    *rows = 0;
    if (!run(pg, "FETCH FORWARD 2000 FROM layer2_export", NULL, err)) return -1;
    *rows = (size_t)PQntuples(pg->res);
    return 0;
}

void l2_pg_export_end(l2_pg *pg)
{
    char ignored[L2_ERRLEN];
    pg->exporting = 0;
    clear_result(pg);
    if (PQstatus(pg->conn) == CONNECTION_OK && PQtransactionStatus(pg->conn) != PQTRANS_IDLE)
        run_plain(pg, "ROLLBACK", ignored); /* read only: nothing to keep */
}

int l2_pg_changes(l2_pg *pg, uint64_t after, size_t max, size_t *rows, char *err)
{
    *rows = 0;
    if (ready(pg, err)) return -1;
    pgstore_par_reset(&pg->par);
    if (pgstore_par_i64(&pg->par, (int64_t)after) < 0 || pgstore_par_i64(&pg->par, (int64_t)max) < 0) return oom(err);
    if (!run(pg,
             "SELECT c.seq, c.op, c.id, e.json FROM layer2_changes c"
             " LEFT JOIN layer2_events e ON c.op = 1 AND e.id = c.id WHERE c.seq > $1 ORDER BY c.seq LIMIT $2",
             &pg->par, err))
        return -1;
    *rows = (size_t)PQntuples(pg->res);
    return 0;
}

/* The window of finished transactions from `pos`: up to the oldest transaction still running
 * (the snapshot's xmin), or past the transaction of the max-th change when that comes first. A
 * transaction that took its sequence numbers early and commits late is still running while the
 * window stops before it, so no position can pass it. When the window reaches xmin, the changes
 * of transactions past it that have committed come too (up to max more): they are read again
 * until the position passes them, and applying a change twice changes nothing. */
int l2_pg_feed(l2_pg *pg, uint64_t pos, size_t max, size_t *rows, uint64_t *next, char *err)
{
    *rows = 0;
    *next = pos;
    if (ready(pg, err)) return -1;
    pgstore_par_reset(&pg->par);
    if (pgstore_par_i64(&pg->par, (int64_t)pos) < 0 || pgstore_par_i64(&pg->par, (int64_t)(max ? max - 1 : 0)) < 0 ||
        pgstore_par_bool(&pg->par, max > 0) < 0)
        return oom(err);
    if (!run(pg,
             "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),"
             " w AS (SELECT least(s.xmin, coalesce(CASE WHEN $3 THEN (SELECT (c.xid::text::bigint + 1)::text::xid8"
             "   FROM layer2_changes c WHERE c.xid >= $1::text::xid8 ORDER BY c.xid OFFSET $2 LIMIT 1) END,"
             "   s.xmin)) AS upto, s.xmin FROM s),"
             " c AS (SELECT c.* FROM layer2_changes c, w WHERE $3 AND c.xid >= $1::text::xid8 AND c.xid < w.upto"
             "   UNION ALL (SELECT c.* FROM layer2_changes c, w WHERE $3 AND w.upto = w.xmin AND c.xid >= w.upto"
             "   ORDER BY c.seq LIMIT $2 + 1))"
             " SELECT greatest(w.upto::text::bigint, $1), c.seq, c.op, c.id, e.json FROM w"
             " LEFT JOIN c ON true LEFT JOIN layer2_events e ON c.op = 1 AND e.id = c.id ORDER BY c.seq",
             &pg->par, err))
        return -1;
    size_t n = (size_t)PQntuples(pg->res);
    if (n) *next = (uint64_t)l2_pg_int(pg, 0, 0);
    /* a window without changes is one row of NULLs past the position */
    *rows = n == 1 && !l2_pg_value(pg, 0, 1, &(size_t){0}) ? 0 : n;
    return 0;
}

/* ---- maintenance ---- */

int l2_pg_stats_get(l2_pg *pg, l2_pg_stats *s, char *err)
{
    memset(s, 0, sizeof *s);
    if (ready(pg, err)) return -1;
    if (!run(pg,
             "SELECT (SELECT count(*) FROM layer2_events),"
             " (SELECT count(*) FROM layer2_tombstones) + (SELECT count(*) FROM layer2_addr_tombstones),"
             " (SELECT count(*) FROM layer2_changes), (SELECT coalesce(max(seq), 0) FROM layer2_changes),"
             " (SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['layer2_events', 'layer2_heads',"
             "   'layer2_tombstones', 'layer2_addr_tombstones', 'layer2_changes']::regclass[]) c)::bigint,"
             " pg_backend_pid()",
             NULL, err))
        return -1;
    s->events = (uint64_t)l2_pg_int(pg, 0, 0);
    s->tombstones = (uint64_t)l2_pg_int(pg, 0, 1);
    s->changes = (uint64_t)l2_pg_int(pg, 0, 2);
    s->last_seq = (uint64_t)l2_pg_int(pg, 0, 3);
    s->disk_bytes = (uint64_t)l2_pg_int(pg, 0, 4);
    s->backend_pid = (int)l2_pg_int(pg, 0, 5);
    s->reconnects = pg->reconnects;
    clear_result(pg);
    return 0;
}

int l2_pg_check(l2_pg *pg, void (*problem)(void *ud, const char *msg), void *ud, uint64_t *nproblems, char *err)
{
    static const char *const checks[] = {
        "SELECT 'the head of an address names a missing event ' || encode(h.id, 'hex') FROM layer2_heads h"
        " WHERE NOT EXISTS (SELECT 1 FROM layer2_events e WHERE e.id = h.id) LIMIT 1000",
        "SELECT 'replaceable event ' || encode(e.id, 'hex') || ' is not the head of its address'"
        " FROM layer2_events e WHERE (e.kind IN (0, 3) OR e.kind BETWEEN 10000 AND 19999"
        " OR e.kind BETWEEN 30000 AND 39999) AND NOT EXISTS (SELECT 1 FROM layer2_heads h WHERE h.id = e.id)"
        " LIMIT 1000",
        "SELECT 'event ' || encode(e.id, 'hex') || ' is ephemeral' FROM layer2_events e"
        " WHERE e.kind BETWEEN 20000 AND 29999 LIMIT 1000",
    };
    char msg[L2_ERRLEN];
    *nproblems = 0;
    if (ready(pg, err)) return -1;
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        if (!run(pg, checks[i], NULL, err)) return -1;
        for (int r = 0; r < PQntuples(pg->res); r++) {
            size_t n;
            const char *v = l2_pg_value(pg, (size_t)r, 0, &n);
            snprintf(msg, sizeof msg, "%.*s", (int)n, v ? v : "");
            problem(ud, msg);
            (*nproblems)++;
        }
    }
    clear_result(pg);
    return 0;
}

int l2_pg_listen(l2_pg *pg, char *err)
{
    if (ready(pg, err)) return -1;
    if (run_plain(pg, "LISTEN " CHANGES_CHANNEL "; LISTEN " EPHEMERAL_CHANNEL, err)) return -1;
    pg->listening = 1;
    return 0;
}

int l2_pg_wait(l2_pg *pg, int timeout_ms, int *notified, void (*each)(void *ud, const char *payload, size_t len),
               void *ud, char *err)
{
    *notified = 0;
    if (ready(pg, err)) return -1;
    if (!pg->notified && !pg->ephemeral.len && timeout_ms > 0) {
        struct pollfd pfd = {PQsocket(pg->conn), POLLIN, 0};
        if (pfd.fd >= 0 && poll(&pfd, 1, timeout_ms) > 0) {
            if (!PQconsumeInput(pg->conn)) return pgstore_pg_fail(pg, NULL, err);
            collect_notifies(pg);
        }
    }
    *notified = pg->notified;
    pg->notified = 0;
    for (size_t at = 0; at < pg->ephemeral.len;) {
        const char *p = pg->ephemeral.data + at;
        size_t len = strlen(p);
        if (each) each(ud, p, len);
        at += len + 1;
    }
    pg->ephemeral.len = 0;
    return 0;
}

int l2_pg_publish(l2_pg *pg, const char *payload, size_t len, char *err)
{
    if (len > L2_PG_PUBLISH_MAX)
        return pgstore_fail_with(err, "blocked: an ephemeral event of more than %d bytes does not cross the cluster",
                                 L2_PG_PUBLISH_MAX);
    if (ready(pg, err)) return -1;
    pg_params *p = &pg->par;
    pgstore_par_reset(p);
    if (pgstore_par_bytes(p, OID_TEXT, payload, len) < 0) return l2_oom(err);
    return run(pg, "SELECT pg_notify('" EPHEMERAL_CHANNEL "', $1)", p, err) ? 0 : -1;
}

/* ---- the store interface (storeif.h) ---- */

static const char *pg_path(void *pg)
{
    return l2_pg_name(pg);
}

static void pg_close(void *pg)
{
    l2_pg_close(pg);
}

static int pg_save(void *pg, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res, char *err)
{
    /* an authority has no outbox, and nothing to fill */
    return l2_pg_save_batch(pg, evs, n, now, (flags & L2_SAVE_REMOVALS) != 0, res, err);
}

static int pg_last_removed(void *pg, l2_change_fn fn, void *ud, char *err)
{
    (void)err;
    return l2_pg_last_removed(pg, fn, ud);
}

static int pg_delete(void *pg, const uint8_t id[32], int tombstone, int flags, int *found, char *err)
{
    (void)flags;
    return l2_pg_delete(pg, id, tombstone, found, err);
}

/* The JSON of column col of each row, handed on as it is. */
static int rows_json(l2_pg *pg, size_t rows, int col, l2_row_fn row, void *ud)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < rows; i++) {
        l2_row r = {0};
        r.json = l2_pg_value(pg, i, col, &r.json_len);
        if (r.json) rc = row(ud, &r);
    }
    return rc;
}

static int pg_query(void *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                    uint8_t *incomplete, l2_row_fn row, void *ud, char *err)
{
    size_t rows;
    (void)horizon; /* it holds everything: every answer is complete */
    if (incomplete) memset(incomplete, 0, nf);
    if (l2_pg_query(pg, fs, nf, max_limit, now, &rows, err)) return -1;
    rows_json(pg, rows, 0, row, ud);
    return 0;
}

static int pg_count(void *pg, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err)
{
    return l2_pg_count(pg, fs, nf, now, n, err);
}

static int pg_export(void *pg, const uint8_t (*keys)[32], size_t nkeys, int filtered, l2_row_fn row, void *ud,
                     char *err)
{
    size_t rows;
    if (l2_pg_export_begin(pg, keys, nkeys, filtered, err)) return -1;
    int rc = 0, stopped = 0;
    while (!stopped && (rc = l2_pg_export_next(pg, &rows, err)) == 0 && rows) stopped = rows_json(pg, rows, 0, row, ud);
    l2_pg_export_end(pg);
    return rc;
}

/* Hands rows of a changes result (seq, op, id, json from column `col`) to fn. */
static int rows_changes(void *pg, size_t rows, int col, l2_change_fn fn, void *ud)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < rows; i++) {
        size_t n;
        l2_row r = {0};
        const char *id = l2_pg_value(pg, i, col + 2, &n);
        r.json = l2_pg_value(pg, i, col + 3, &r.json_len);
        if (id && n == 32) memcpy(r.id, id, 32);
        rc = fn(ud, (uint64_t)l2_pg_int(pg, i, col), (int)l2_pg_int(pg, i, col + 1),
                id && n == 32 ? (const uint8_t *)id : NULL, r.json ? &r : NULL);
    }
    return 0;
}

static int pg_changes(void *pg, uint64_t after, size_t max, l2_change_fn fn, void *ud, char *err)
{
    size_t rows;
    if (l2_pg_changes(pg, after, max, &rows, err)) return -1;
    return rows_changes(pg, rows, 0, fn, ud);
}

static int pg_feed(void *pg, uint64_t pos, size_t max, l2_change_fn fn, void *ud, uint64_t *next, char *err)
{
    size_t rows;
    if (l2_pg_feed(pg, pos, max, &rows, next, err)) return -1;
    return rows_changes(pg, rows, 1, fn, ud);
}

static int pg_stats(void *pg, l2_stat_fn field, void *ud, char *err)
{
    l2_pg_stats s;
    if (l2_pg_stats_get(pg, &s, err)) return -1;
    field(ud, "events", s.events);
    field(ud, "tombstones", s.tombstones);
    field(ud, "changes", s.changes);
    field(ud, "last_seq", s.last_seq);
    field(ud, "disk_bytes", s.disk_bytes);
    field(ud, "reconnects", s.reconnects);
    field(ud, "backend_pid", (uint64_t)s.backend_pid);
    return 0;
}

static int pg_check(void *pg, l2_problem_fn problem, void *ud, uint64_t *n, char *err)
{
    return l2_pg_check(pg, problem, ud, n, err);
}

static int pg_sweep(void *pg, int64_t now, uint64_t *removed, char *err)
{
    return l2_pg_sweep(pg, now, removed, err);
}

static int pg_nuke(void *pg, char *err)
{
    return l2_pg_nuke(pg, err);
}

/* Every save is its own committed transaction: there is nothing left to flush. */
static int pg_sync(void *pg, char *err)
{
    (void)pg;
    (void)err;
    return 0;
}

static int pg_after_import(void *pg, char *err)
{
    return l2_pg_analyze(pg, err);
}

static int pg_items(void *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, l2_item_fn item,
                    void *ud, char *err)
{
    size_t rows, n;
    if (l2_pg_items(pg, fs, nf, max_limit, now, &rows, err)) return -1;
    for (size_t i = 0; i < rows; i++) {
        const char *id = l2_pg_value(pg, i, 1, &n);
        if (id && n == 32 && item(ud, l2_pg_int(pg, i, 0), (const uint8_t *)id)) break;
    }
    return 0;
}

const l2_store_if l2_pg_store_if = {
    "postgres", pg_path, pg_close, pg_save, pg_delete, pg_query, pg_count, pg_export, pg_changes, pg_stats,
    pg_check, pg_sweep, pg_nuke, pg_sync, pg_after_import, pg_items,
    NULL, /* last_changes: a sequence number is taken before commit, so commit order is not its order */
    pg_feed, pg_last_removed,
};
