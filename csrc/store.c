#define _GNU_SOURCE /* qsort_r */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "answers.h"
#include "be.h"
#include "rules.h"

/* ---- layout ----
 * Format 4. P, the key prefix: the first P bytes (8; fixed when the store is made) of an id, a
 * pubkey or a 64-hex tag value stand for it in an index key. Such keys may collide (two pubkeys
 * sharing P bytes); every candidate is checked against the whole filter (an id lookup against the
 * event's own id) before it is returned, so a collision costs a read, never a wrong answer.
 * T, the tail of the scanned indexes' keys: created(4) serial(6), 10 bytes (format 3 had 8 + 8).
 * created is created_at, or 2^32 - 1 for every later one (from the year 2106): the events past
 * it share that key value, and a scan takes them all as ties of one another, ordered by their own
 * created_at (run_filter), so the key only costs them reads. Serials stay under 2^48.
 * `layer2 upgrade` rebuilds the indexes of an older store (l2_store_upgrade): format 1 had whole
 * 32-byte values everywhere, format 2 whole ids (and a cache's stub beside each body), format 3
 * 16-byte tails.
 * events   serial(8)                              -> binary event
 * ids      id(P)                                  -> serial(8), sorted duplicates (an id prefix
 *                                                    several events share holds each serial)
 * pubkey   pubkey(P) T                            -> ""
 * kind     kind(2) T                              -> ""
 * pubkind  pubkey(P) kind(2) T                    -> ""
 * tag      letter(1) value(V) T                   -> ""   (single-letter tags with a value)
 * created  T                                      -> ""
 * expire   l2_expiration(8) serial(8)                -> ""
 * replace  pubkey(32) kind(2) d(V)                -> serial(8) created_at(8) id(32)  (a slot's head: the
 *          record that refuses older versions; it outlives the event itself when a cache evicts it)
 * tomb     id(32) author(32)                      -> ""          (NIP-09 `e` deletions)
 * atomb    pubkey(32) kind(2) d(V)                -> created_at(8) (NIP-09 `a` deletions)
 * changes  seq(8)                                 -> op(1) serial(8) [id(32) for replaced/deleted]
 * meta     name                                   -> value ("u:" + name for the caller's own;
 *          "indexing": the pid of an import into an empty store whose indexes wait for its end)
 * A cache (the L1) stores its records differently, so that eviction frees space:
 * events   serial(8)      -> slot(4) body length(4) then, with a body, last access ms(8) hits(4)
 *                           (CACHE_RECORD bytes; the body is its own head: one copy of each
 *                           event), else the stub form (slot 0: a stub). Format 2 wrote the stub
 *                           form beside the body too, format 3 the access statistics apart
 * bodies   slot(4)        -> binary event    (slots are reused, lowest first, so new bodies fill the
 *                                              room old ones left inside pages: B-tree pages only
 *                                              come free when nearly empty)
 * freeslots slot(4)       -> ""
 * A cache also keeps:
 * lru      last access ms(6) serial(6)            -> ""          (coldest first; 8 + 8 in format 3)
 * stubs    created_at(8) serial(8)                -> ""          (stubs that may go, oldest first)
 * outbox   seq(8)                                 -> 'S' binary event | 'D' id(32) tombstone(1)
 * answers  remembered answers: see answers.h
 * access   format 3's access statistics (serial -> ms(8) hits(4)): the upgrade empties it
 * Integers are big-endian so cursors walk in order. V, a value key: 64-char lowercase hex as
 * 0xFE + its first P bytes (32 in replace and atomb, which are looked up, not scanned), up to 64
 * bytes as length + bytes, longer as 0xFF + 47 bytes + 16 bytes of its sha256. */

#define SCHEMA_VERSION 4
#define IDS_FLAGS (MDB_DUPSORT | MDB_DUPFIXED) /* ids since format 3: a key prefix may hold several ids */
#define TAIL 10                                 /* T: see the layout */
#define LATER 0xFFFFFFFFu                      /* T's created for created_at 2^32 - 1 and later */
#define MAX_BE48 ((1ull << 48) - 1)
#define MAX_SERIAL MAX_BE48
#define CACHE_RECORD 20 /* a cache's events record of an event with its body */
#define KEY_PREFIX 8 /* P: see the layout */
#define DEFAULT_MAP (1ull << 30)
#define INDEX_MEMORY (512u << 20)
#define MAX_VALUE_KEY 65
#define MAX_ADDR_KEY (32 + 2 + MAX_VALUE_KEY)
#define FULL 32 /* a whole 32-byte value in a key */

enum { DB_EVENTS, DB_IDS, DB_PUBKEY, DB_KIND, DB_PUBKIND, DB_TAG, DB_CREATED, DB_EXPIRE, DB_REPLACE,
       DB_TOMB, DB_ATOMB, DB_CHANGES, DB_META, DB_ACCESS, DB_LRU, DB_STUBS, DB_OUTBOX, DB_BODIES,
       DB_FREESLOTS, DB_ANSWERS, DB_GHOSTS, DB_COUNT };
static const char *db_names[DB_COUNT] = {"events", "ids", "pubkey", "kind", "pubkind", "tag", "created",
                                         "expire", "replace", "tomb", "atomb", "changes", "meta",
                                         "access", "lru", "stubs", "outbox", "bodies", "freeslots",
                                         "answers", "ghosts"};

/* One LMDB environment per directory and process: LMDB forbids opening it twice. */
typedef struct shared_env {
    dev_t dev;
    ino_t ino;
    pid_t pid;
    int refs;
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    size_t map_size;
    size_t key_prefix; /* P */
    int version;       /* the store's format (older only while l2_store_upgrade has it open) */
    struct shared_env *next;
} shared_env;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static shared_env *registry;

struct l2_store {
    shared_env *sh;
    MDB_env *env;
    MDB_dbi *dbi;
    char *path;
    int fixed_map;
    size_t index_memory; /* l2_store_opts */
    MDB_txn *rtxn;     /* reused read transaction: reset between uses, renewed when needed */
    int rtxn_live;
    MDB_cursor *iter;
    l2_event ev, old;  /* decoded bodies */
    l2_buf body, key;  /* copies and key building */
    int cache;         /* keeps access statistics and stubs (an L1) */
    uint64_t query_ms; /* a cache's query under way: when its bodies are read (an access) */
    const int64_t *horizon_floor; /* l2_store_share_horizon */
    int backed;                   /* l2_store_set_backed */
    /* reads counted in memory, written in the next write transaction: never a write per read */
    struct touch { uint64_t serial, last_ms; uint32_t hits; } *touched;
    size_t ntouched, touched_cap;
    l2_hits hits; /* a query's answer, for the store interface */
    /* a cache's next write mirrors L2's changes [mirror_first, mirror_last] (l2_store_mirror_next),
     * and what recording them did to its feed position */
    uint64_t mirror_first, mirror_last;
    int mirror_set, mirror_result, mirror_commutes;
    uint64_t last_first, last_last; /* the changes the last write recorded (l2_store_last_changes) */
};

static int fail(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, L2_ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}

static size_t meta_key(char *out, size_t cap, const char *key);

/* A meta value written as decimal text: 0, or -1 when it is not one. */
static int parse_int(const void *p, size_t n, int64_t *out)
{
    char num[24];
    if (n == 0 || n >= sizeof num) return -1;
    memcpy(num, p, n);
    num[n] = 0;
    char *end;
    *out = strtoll(num, &end, 10);
    return *end ? -1 : 0;
}

static int lmdb_fail(char *err, const char *what, int rc)
{
    return fail(err, "error: %s: %s", what, mdb_strerror(rc));
}

/* T of the layout */
static void put_tail(uint8_t *p, int64_t created_at, uint64_t serial)
{
    put_be32(p, created_at < 0 ? 0 : created_at >= LATER ? LATER : (uint32_t)created_at);
    put_be48(p + 4, serial);
}

/* T's created as a scan orders by it: the shared value of the latest is later than any other */
static int64_t tail_created(const uint8_t *p)
{
    uint32_t c = get_be32(p);
    return c == LATER ? INT64_MAX : c;
}

static uint64_t tail_serial(const uint8_t *p)
{
    return get_be48(p + 4);
}

/* A cache's lru key (the layout); milliseconds fit 48 bits until the year 10889 */
#define LRU_KEY 12
static void lru_key(uint8_t *k, uint64_t ms, uint64_t serial)
{
    put_be48(k, ms > MAX_BE48 ? MAX_BE48 : ms);
    put_be48(k + 6, serial);
}

/* The key of a tag value (V in the layout); a 64-hex value keeps its first `hex` bytes. */
static size_t value_key(uint8_t *out, const char *s, size_t n, size_t hex)
{
    uint8_t b[32];
    if (n == 64 && l2_hex_decode(b, s, 32) == 0) {
        out[0] = 0xFE;
        memcpy(out + 1, b, hex);
        return 1 + hex;
    }
    if (n <= 64) {
        out[0] = (uint8_t)n;
        if (n) memcpy(out + 1, s, n);
        return 1 + n;
    }
    uint8_t h[32];
    l2_sha256(s, n, h);
    out[0] = 0xFF;
    memcpy(out + 1, s, 47);
    memcpy(out + 48, h, 16);
    return 64;
}

static size_t addr_key(uint8_t *out, const uint8_t pubkey[32], uint32_t kind, const char *d, size_t dn)
{
    memcpy(out, pubkey, 32);
    put_be16(out + 32, kind);
    return 34 + value_key(out + 34, d, dn, FULL);
}

/* ---- the environment ---- */

/* A meta value written by meta_put_u64, or 0 when there is none. */
static int meta_get_opt(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    *out = rc == 0 && v.mv_size == 8 ? get_be64(v.mv_data) : 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int meta_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t val);
static int finish_indexing(l2_store *st, int dead_only, char *err);

static int env_open(shared_env *sh, const char *path, const l2_store_opts *o, int upgrading, char *err)
{
    int rc, dead;
    MDB_txn *txn;
    if ((rc = mdb_env_create(&sh->env))) return lmdb_fail(err, "mdb_env_create", rc);
    sh->map_size = o->map_size ? o->map_size : DEFAULT_MAP;
    mdb_env_set_maxdbs(sh->env, DB_COUNT + 2);
    mdb_env_set_maxreaders(sh->env, 1022);
    mdb_env_set_mapsize(sh->env, sh->map_size);
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (o->nosync ? MDB_NOSYNC : o->nometasync ? MDB_NOMETASYNC : 0);
    if ((rc = mdb_env_open(sh->env, path, flags, 0664))) {
        mdb_env_close(sh->env);
        return fail(err, "error: cannot open the store at '%s': %s", path, mdb_strerror(rc));
    }
    mdb_reader_check(sh->env, &dead); /* readers left by crashed processes */
    /* adopt a larger map another process may have set */
    MDB_envinfo info;
    mdb_env_info(sh->env, &info);
    if (info.me_mapsize > sh->map_size) sh->map_size = info.me_mapsize;
    if ((rc = mdb_txn_begin(sh->env, NULL, 0, &txn))) goto fail;
    /* a new store is made in this format, with its key prefix; an older one is refused, unless
     * l2_store_upgrade opens it to rebuild it */
    uint64_t version = 0, prefix = 0;
    if ((rc = mdb_dbi_open(txn, db_names[DB_META], MDB_CREATE, &sh->dbi[DB_META])) ||
        (rc = meta_get_opt(txn, sh->dbi[DB_META], "version", &version)) ||
        (rc = meta_get_opt(txn, sh->dbi[DB_META], "key_prefix", &prefix)))
        goto abort;
    if (!version) {
        version = SCHEMA_VERSION;
        prefix = o->key_prefix ? o->key_prefix : KEY_PREFIX;
        if ((rc = meta_put_u64(txn, sh->dbi[DB_META], "version", version)) ||
            (rc = meta_put_u64(txn, sh->dbi[DB_META], "key_prefix", prefix)))
            goto abort;
    }
    if (version != SCHEMA_VERSION && !(upgrading && version < SCHEMA_VERSION)) {
        mdb_txn_abort(txn);
        mdb_env_close(sh->env);
        if (version < SCHEMA_VERSION)
            return fail(err, "error: the store at '%s' is in format %llu, which this layer2 (format %d) does not "
                        "read: run `layer2 upgrade --path %s` once (stop what uses it first)", path,
                        (unsigned long long)version, SCHEMA_VERSION, path);
        return fail(err, "error: the store at '%s' is in format %llu, written by a newer layer2; this one reads "
                    "format %d", path, (unsigned long long)version, SCHEMA_VERSION);
    }
    /* formats 1 and 2 had whole ids, one each: they stay so until the upgrade rebuilds them */
    for (int i = 0; i < DB_COUNT; i++)
        if (i != DB_META &&
            (rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE | (i == DB_IDS && version >= 3 ? IDS_FLAGS : 0),
                               &sh->dbi[i])))
            goto abort;
    /* remembered answers of an older layer2 go (a cache's cache: they are asked again) */
    if ((rc = l2_answers_upgrade(txn, sh->dbi[DB_ANSWERS]))) goto abort;
    sh->version = (int)version;
    sh->key_prefix = version == 1 ? FULL : (size_t)prefix;
    if (sh->key_prefix < 1 || sh->key_prefix > FULL) {
        rc = MDB_CORRUPTED;
        goto abort;
    }
    if ((rc = mdb_txn_commit(txn))) goto fail;
    return 0;
abort:
    mdb_txn_abort(txn);
fail:
    mdb_env_close(sh->env);
    return lmdb_fail(err, "opening the store", rc);
}

/* mkdir -p */
static int make_dirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0775) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(buf, 0775) != 0 && errno != EEXIST) ? -1 : 0;
}

/* The environment's data file is the one in `path` now: a directory deleted while an environment
 * on it stayed open, and another made with the same inode number, must not share it. */
static int same_data_file(const shared_env *sh, const char *path)
{
    char file[4096];
    struct stat now, open;
    int fd;
    snprintf(file, sizeof file, "%s/data.mdb", path);
    if (stat(file, &now) != 0 || mdb_env_get_fd(sh->env, &fd) != 0 || fstat(fd, &open) != 0) return 0;
    return now.st_dev == open.st_dev && now.st_ino == open.st_ino;
}

int l2_store_open(l2_store **out, const char *path, const l2_store_opts *o, char *err)
{
    struct stat sb;
    static const l2_store_opts defaults = {0};
    if (!o) o = &defaults;
    if (make_dirs(path) != 0)
        return fail(err, "error: cannot create the store directory '%s': %s", path, strerror(errno));
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return fail(err, "error: the store path '%s' is not a directory", path);
    if (access(path, W_OK) != 0) return fail(err, "error: the store directory '%s' is not writable", path);
    l2_store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return fail(err, "error: out of memory");
    }
    pthread_mutex_lock(&registry_lock);
    pid_t pid = getpid();
    shared_env *sh = registry;
    while (sh && !(sh->dev == sb.st_dev && sh->ino == sb.st_ino && sh->pid == pid && same_data_file(sh, path)))
        sh = sh->next;
    if (!sh) {
        sh = calloc(1, sizeof *sh);
        if (!sh || env_open(sh, path, o, 0, err)) {
            pthread_mutex_unlock(&registry_lock);
            if (!sh) fail(err, "error: out of memory");
            free(sh);
            free(st->path);
            free(st);
            return -1;
        }
        sh->dev = sb.st_dev;
        sh->ino = sb.st_ino;
        sh->pid = pid;
        sh->next = registry;
        registry = sh;
    }
    sh->refs++;
    pthread_mutex_unlock(&registry_lock);
    st->sh = sh;
    st->env = sh->env;
    st->dbi = sh->dbi;
    st->fixed_map = o->fixed_map;
    st->index_memory = o->index_memory ? o->index_memory : INDEX_MEMORY;
    st->cache = o->cache;
    l2_event_init(&st->ev);
    l2_event_init(&st->old);
    l2_buf_init(&st->body);
    l2_buf_init(&st->key);
    if (!st->cache && finish_indexing(st, 1, err)) {
        l2_store_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

void l2_store_close(l2_store *st)
{
    if (!st) return;
    if (st->iter) mdb_cursor_close(st->iter);
    if (st->rtxn) mdb_txn_abort(st->rtxn);
    pthread_mutex_lock(&registry_lock);
    if (--st->sh->refs == 0) {
        shared_env **pp = &registry;
        while (*pp != st->sh) pp = &(*pp)->next;
        *pp = st->sh->next;
        /* an environment inherited across fork belongs to the parent: never close it here */
        if (st->sh->pid == getpid()) mdb_env_close(st->sh->env);
        free(st->sh);
    }
    pthread_mutex_unlock(&registry_lock);
    l2_event_free(&st->ev);
    l2_event_free(&st->old);
    l2_buf_free(&st->body);
    l2_buf_free(&st->key);
    l2_hits_free(&st->hits);
    free(st->touched);
    free(st->path);
    free(st);
}

const char *l2_store_path(const l2_store *st)
{
    return st->path;
}

/* Another process grew the map: adopt its size (no transaction of ours may be live). */
static int adopt_map(l2_store *st)
{
    MDB_envinfo info;
    int rc = mdb_env_set_mapsize(st->env, 0);
    mdb_env_info(st->env, &info);
    st->sh->map_size = info.me_mapsize;
    return rc;
}

static int read_begin(l2_store *st, char *err)
{
    int rc;
    if (st->iter) {
        mdb_cursor_close(st->iter);
        st->iter = NULL;
    }
    if (st->rtxn_live) mdb_txn_reset(st->rtxn);
    st->rtxn_live = 0;
    for (int tries = 0; tries < 2; tries++) {
        rc = st->rtxn ? mdb_txn_renew(st->rtxn) : mdb_txn_begin(st->env, NULL, MDB_RDONLY, &st->rtxn);
        if (rc != MDB_MAP_RESIZED) break;
        if (st->rtxn) {
            mdb_txn_abort(st->rtxn);
            st->rtxn = NULL;
        }
        adopt_map(st);
    }
    if (rc) return lmdb_fail(err, "read transaction", rc);
    st->rtxn_live = 1;
    return 0;
}

void l2_store_read_end(l2_store *st)
{
    if (st->iter) {
        mdb_cursor_close(st->iter);
        st->iter = NULL;
    }
    if (st->rtxn_live) mdb_txn_reset(st->rtxn);
    st->rtxn_live = 0;
    st->query_ms = 0;
}

static uint64_t entries(MDB_txn *txn, MDB_dbi dbi);

/* ---- writing ---- */

typedef struct {
    l2_store *st;
    MDB_txn *txn;
    uint64_t serial, seq; /* the next free ones */
    int may_tomb, may_atomb; /* tombstones exist: lookups are worth doing */
    int may_answer;          /* remembered answers exist: a save must look for those it touches */
    uint64_t next_slot, body_bytes; /* a cache's body slots and the bytes its bodies hold */
    int quiet; /* a cache fill: what it stores is not news, so the change feed does not hear of it */
    int defer_index; /* an import into an empty store: the indexes are built at its end */
    int drop_heads;  /* an eviction takes the slot's head too (see l2_store_set_backed) */
} wtx;

static int meta_get_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
        *out = 1;
        return 0;
    }
    if (rc) return rc;
    *out = v.mv_size == 8 ? get_be64(v.mv_data) : 1;
    return 0;
}

static int meta_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t val)
{
    uint8_t b[8];
    put_be64(b, val);
    MDB_val k = {strlen(name), (void *)name}, v = {8, b};
    return mdb_put(txn, dbi, &k, &v, 0);
}

static int put_empty(wtx *w, int db, const uint8_t *key, size_t n)
{
    MDB_val k = {n, (void *)key}, v = {0, ""};
    return mdb_put(w->txn, w->st->dbi[db], &k, &v, 0);
}

static int del_key(wtx *w, int db, const uint8_t *key, size_t n)
{
    MDB_val k = {n, (void *)key};
    int rc = mdb_del(w->txn, w->st->dbi[db], &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Calls fn for every index key of ev (all but ids and replace): the one definition used by
 * insert, delete and check, so they can never disagree. */
typedef int (*index_fn)(void *ud, int db, const uint8_t *key, size_t n);

static int for_each_index(size_t p, const l2_event *ev, uint64_t serial, index_fn fn, void *ud)
{
    uint8_t k[1 + MAX_VALUE_KEY + TAIL], tail[TAIL];
    int rc;
    int64_t exp;
    put_tail(tail, ev->created_at, serial);
    memcpy(k, ev->pubkey, p);
    memcpy(k + p, tail, TAIL);
    if ((rc = fn(ud, DB_PUBKEY, k, p + TAIL))) return rc;
    put_be16(k + p, ev->kind);
    memcpy(k + p + 2, tail, TAIL);
    if ((rc = fn(ud, DB_PUBKIND, k, p + 2 + TAIL))) return rc;
    put_be16(k, ev->kind);
    memcpy(k + 2, tail, TAIL);
    if ((rc = fn(ud, DB_KIND, k, 2 + TAIL))) return rc;
    if ((rc = fn(ud, DB_CREATED, tail, TAIL))) return rc;
    for (uint32_t t = 0; t < ev->ntags; t++) {
        const l2_str *name = l2_tag_elem(ev, t, 0);
        if (l2_tag_len(ev, t) < 2 || name->n != 1) continue;
        const l2_str *v = l2_tag_elem(ev, t, 1);
        k[0] = (uint8_t)name->p[0];
        size_t n = 1 + value_key(k + 1, v->p, v->n, p);
        memcpy(k + n, tail, TAIL);
        if ((rc = fn(ud, DB_TAG, k, n + TAIL))) return rc;
    }
    if (l2_expiration(ev, &exp)) {
        put_be64(k, (uint64_t)exp);
        put_be64(k + 8, serial);
        if ((rc = fn(ud, DB_EXPIRE, k, 16))) return rc;
    }
    return 0;
}

static int index_put(void *ud, int db, const uint8_t *key, size_t n)
{
    return put_empty(ud, db, key, n);
}

static int index_del(void *ud, int db, const uint8_t *key, size_t n)
{
    return del_key(ud, db, key, n);
}

/* A saved event's id is in its body; a removed one's body is gone, so its record keeps the id. */
static int add_change(wtx *w, int op, const uint8_t id[32], uint64_t serial)
{
    if (w->quiet) return 0;
    uint8_t k[8], rec[41];
    put_be64(k, w->seq++);
    rec[0] = (uint8_t)op;
    put_be64(rec + 1, serial);
    memcpy(rec + 9, id, 32);
    MDB_val kv = {8, k}, vv = {op == L2_CHANGE_SAVED ? 9 : 41, rec};
    return mdb_put(w->txn, w->st->dbi[DB_CHANGES], &kv, &vv, MDB_APPEND);
}

/* An events record: for a plain store the body itself; for a cache slot | length, then the stub
 * form when there is no body (format 2 kept it beside the body too: such records still read). */
typedef struct {
    const uint8_t *head; /* what filters and indexes read: the body, or the stub form */
    size_t head_len;
    uint32_t slot, body_len; /* a cache's body: slot 0 when only the stub is left */
    int head_is_body;        /* a cache's head read from its body (valid until the next write) */
} record;

static int get_cache_body(MDB_txn *txn, l2_store *st, uint32_t slot, const void **data, size_t *len)
{
    uint8_t k[4];
    put_be32(k, slot);
    MDB_val kv = {4, k}, v;
    int rc = mdb_get(txn, st->dbi[DB_BODIES], &kv, &v);
    if (rc) return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    *data = v.mv_data;
    *len = v.mv_size;
    return 0;
}

static int get_record(MDB_txn *txn, l2_store *st, uint64_t serial, record *r)
{
    uint8_t k[8];
    put_be64(k, serial);
    MDB_val kv = {8, k}, v;
    int rc = mdb_get(txn, st->dbi[DB_EVENTS], &kv, &v);
    if (rc) return rc;
    r->head = v.mv_data;
    r->head_len = v.mv_size;
    r->slot = r->body_len = 0;
    r->head_is_body = 0;
    if (st->cache) {
        if (v.mv_size < 8) return MDB_CORRUPTED;
        r->slot = get_be32(v.mv_data);
        r->body_len = get_be32((uint8_t *)v.mv_data + 4);
        if (r->slot) {
            /* one copy: the body is the head */
            const void *body;
            if (v.mv_size != CACHE_RECORD || (rc = get_cache_body(txn, st, r->slot, &body, &r->head_len)))
                return MDB_CORRUPTED;
            r->head = body;
            r->head_is_body = 1;
            return 0;
        }
        if (v.mv_size < 8 + 65 + 4) return MDB_CORRUPTED; /* slot, length, a stub's head and more */
        r->head += 8;
        r->head_len -= 8;
    }
    return 0;
}

/* The whole binary event of a record: MDB_NOTFOUND for a cache's stub. */
static int get_body(MDB_txn *txn, l2_store *st, const record *r, const void **data, size_t *len)
{
    if (!st->cache || r->head_is_body) {
        *data = r->head;
        *len = r->head_len;
        return 0;
    }
    if (!r->slot) return MDB_NOTFOUND;
    return get_cache_body(txn, st, r->slot, data, len);
}

/* Decodes what filters and indexes need of `serial` (a cache's stub form holds all of it);
 * ev->is_stub tells whether the body is gone. */
static int decode_head(l2_store *st, const record *r, l2_event *ev)
{
    if (l2_event_decode_bin(ev, r->head, r->head_len, NULL)) return MDB_CORRUPTED;
    if (st->cache) ev->is_stub = r->slot == 0;
    return 0;
}

static int load_head(l2_store *st, MDB_txn *txn, uint64_t serial, l2_event *ev, record *r)
{
    int rc = get_record(txn, st, serial, r);
    return rc ? rc : decode_head(st, r, ev);
}

/* Decodes the stored event `serial` into ev, whole when its body is there (a private copy when
 * `copy`); MDB_NOTFOUND if absent. */
static int load(l2_store *st, MDB_txn *txn, uint64_t serial, l2_event *ev, int copy)
{
    record r;
    const void *data;
    size_t len;
    int rc = get_record(txn, st, serial, &r);
    if (rc) return rc;
    if (get_body(txn, st, &r, &data, &len) != 0) {
        data = r.head; /* a cache's stub */
        len = r.head_len;
    }
    if (copy) {
        st->body.len = 0;
        if (l2_buf_put(&st->body, data, len)) return ENOMEM;
        data = st->body.data;
    }
    if (l2_event_decode_bin(ev, data, len, NULL)) return MDB_CORRUPTED;
    if (st->cache) ev->is_stub = r.slot == 0;
    return 0;
}

/* Whether the event at `serial` has this id (its record in *r): 1, 0, or an LMDB error (negative
 * is never one). */
static int id_at(MDB_txn *txn, l2_store *st, const MDB_val *v, const uint8_t id[32], uint64_t *serial, record *r)
{
    if (v->mv_size != 8) return MDB_CORRUPTED;
    *serial = get_be64(v->mv_data);
    int rc = get_record(txn, st, *serial, r);
    if (rc == MDB_NOTFOUND) return 0; /* check() reports it */
    if (rc) return rc;
    return r->head_len >= 33 && memcmp(r->head + 1, id, 32) == 0 ? 1 : 0;
}

/* The serial of the event with this id, and its record (valid until the next write): ids keys
 * hold P bytes of it, each candidate's own id decides (the first candidate in one lookup; a
 * cursor only when P bytes are shared). */
static int find_id(MDB_txn *txn, l2_store *st, const uint8_t id[32], uint64_t *serial, record *r)
{
    MDB_val k = {st->sh->key_prefix, (void *)id}, v;
    MDB_cursor *c;
    int rc = mdb_get(txn, st->dbi[DB_IDS], &k, &v);
    if (rc || (rc = id_at(txn, st, &v, id, serial, r)) == 1) return rc == 1 ? 0 : rc;
    if (rc || (rc = mdb_cursor_open(txn, st->dbi[DB_IDS], &c))) return rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP))
        if ((rc = id_at(txn, st, &v, id, serial, r)) != 0) break;
    mdb_cursor_close(c);
    return rc == 1 ? 0 : rc;
}

static int lookup_id(MDB_txn *txn, l2_store *st, const uint8_t id[32], uint64_t *serial)
{
    record r;
    return find_id(txn, st, id, serial, &r);
}

typedef struct {
    uint64_t serial;
    int64_t created_at;
    uint8_t id[32];
} head_rec;

static int get_head(MDB_txn *txn, l2_store *st, const uint8_t *key, size_t n, head_rec *h)
{
    MDB_val k = {n, (void *)key}, v;
    int rc = mdb_get(txn, st->dbi[DB_REPLACE], &k, &v);
    if (rc) return rc;
    if (v.mv_size != 48) return MDB_CORRUPTED;
    const uint8_t *p = v.mv_data;
    h->serial = get_be64(p);
    h->created_at = (int64_t)get_be64(p + 8);
    memcpy(h->id, p + 16, 32);
    return 0;
}

static int put_head(wtx *w, const uint8_t *key, size_t n, uint64_t serial, const l2_event *ev)
{
    uint8_t v[48];
    put_be64(v, serial);
    put_be64(v + 8, (uint64_t)ev->created_at);
    memcpy(v + 16, ev->id, 32);
    MDB_val kv = {n, (void *)key}, vv = {48, v};
    return mdb_put(w->txn, w->st->dbi[DB_REPLACE], &kv, &vv, 0);
}

/* A cache's body goes into the lowest free slot, so it fills room an evicted body left. */
static int put_body(wtx *w, const void *body, size_t n, uint32_t *slot)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t key[4];
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_FREESLOTS], &c);
    if (rc) return rc;
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    if (rc == 0 && k.mv_size == 4) {
        *slot = get_be32(k.mv_data);
        rc = mdb_cursor_del(c, 0);
    } else if (rc == MDB_NOTFOUND) {
        if (w->next_slot > UINT32_MAX) rc = MDB_MAP_FULL;
        else *slot = (uint32_t)w->next_slot++, rc = 0;
    }
    mdb_cursor_close(c);
    if (rc) return rc;
    put_be32(key, *slot);
    MDB_val bk = {4, key}, bv = {n, (void *)body};
    w->body_bytes += n;
    return mdb_put(w->txn, w->st->dbi[DB_BODIES], &bk, &bv, 0);
}

static int free_body(wtx *w, uint32_t slot, uint32_t len)
{
    uint8_t key[4];
    int rc;
    put_be32(key, slot);
    if ((rc = del_key(w, DB_BODIES, key, 4))) return rc;
    w->body_bytes -= w->body_bytes >= len ? len : w->body_bytes;
    return put_empty(w, DB_FREESLOTS, key, 4);
}

/* Writes a cache's events record: slot | body length, then no access yet (set_access writes it)
 * when there is a body, the only copy of the head, else the stub form of ev (slot 0). */
static int put_cache_record(wtx *w, uint64_t serial, const l2_event *ev, uint32_t slot, uint32_t body_len)
{
    l2_store *st = w->st;
    uint8_t sk[8];
    st->key.len = 0;
    if (l2_buf_reserve(&st->key, CACHE_RECORD)) return ENOMEM;
    memset(st->key.data, 0, CACHE_RECORD);
    put_be32((uint8_t *)st->key.data, slot);
    put_be32((uint8_t *)st->key.data + 4, body_len);
    st->key.len = slot ? CACHE_RECORD : 8;
    if (!slot && l2_event_encode_stub(ev, &st->key)) return ENOMEM;
    put_be64(sk, serial);
    MDB_val k = {8, sk}, v = {st->key.len, st->key.data};
    return mdb_put(w->txn, st->dbi[DB_EVENTS], &k, &v, 0);
}

static int drop_access(wtx *w, uint64_t serial);

/* A cache keeps, for a while, the body of an event a save replaced or a deletion removed: its
 * save may still be news to a tail of the change feed (live subscribers get every accepted event,
 * even one replaced a moment later), which reads bodies by serial. Tails read within milliseconds,
 * so only an event saved (or read) within GHOST_MS leaves a ghost, a ghost lives GHOST_MS (it
 * goes with the next write after that), and there are at most ghost_max (the oldest go first):
 * a size-limited L1 cannot fill with what eviction does not see. A cache fill is not news, and an
 * eviction not a removal: neither leaves a ghost. Value: removal time in ms (8) | body. */
#define GHOST_MS 2000
#define GHOST_MAX 512

/* At most GHOST_MAX ghosts, and about a sixty-fourth of the map at 1 KiB each: a ghost takes a
 * body's bytes, and at a busy relay's pace the cap, not GHOST_MS, bounds how many there are. */
static uint64_t ghost_max(const l2_store *st)
{
    uint64_t n = st->sh->map_size / 64 / 1024;
    return n < 64 ? 64 : n > GHOST_MAX ? GHOST_MAX : n;
}

static uint64_t now_ms(void);
static int get_access(MDB_txn *txn, l2_store *st, uint64_t serial, uint64_t *last, uint32_t *hits);

/* Drops the ghosts past their time, and the oldest while there are more than `keep`. */
static int prune_ghosts(wtx *w, uint64_t keep)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t n = entries(w->txn, w->st->dbi[DB_GHOSTS]), now = now_ms();
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_GHOSTS], &c);
    if (rc) return rc;
    while (n && (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0 &&
           (n > keep || v.mv_size < 8 || get_be64(v.mv_data) + GHOST_MS < now)) {
        if ((rc = mdb_cursor_del(c, 0))) break;
        n--;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int keep_ghost(wtx *w, uint64_t serial, const record *r)
{
    l2_store *st = w->st;
    const void *data;
    size_t len;
    uint64_t last;
    uint32_t hits;
    int rc = get_access(w->txn, st, serial, &last, &hits);
    if (rc == MDB_NOTFOUND || (rc == 0 && last + GHOST_MS < now_ms())) return 0; /* its save is old news */
    if (rc || (rc = prune_ghosts(w, ghost_max(st) - 1)) || (rc = get_body(w->txn, st, r, &data, &len))) return rc;
    /* the body's page may move once the ghosts' tree is written */
    uint8_t *ghost = malloc(8 + len);
    if (!ghost) return ENOMEM;
    put_be64(ghost, now_ms());
    memcpy(ghost + 8, data, len);
    uint8_t sk[8];
    put_be64(sk, serial);
    MDB_val gk = {8, sk}, gv = {8 + len, ghost};
    rc = mdb_put(w->txn, st->dbi[DB_GHOSTS], &gk, &gv, 0);
    free(ghost);
    return rc;
}

static int get_ghost(MDB_txn *txn, l2_store *st, uint64_t serial, const void **data, size_t *len)
{
    uint8_t sk[8];
    put_be64(sk, serial);
    MDB_val k = {8, sk}, v;
    int rc = mdb_get(txn, st->dbi[DB_GHOSTS], &k, &v);
    if (rc) return rc;
    if (v.mv_size < 8) return MDB_CORRUPTED;
    *data = (const uint8_t *)v.mv_data + 8;
    *len = v.mv_size - 8;
    return 0;
}

/* Removes a stored event and everything that points at it; op 0 records no change (a cache
 * eviction is not a nostr deletion). */
static int remove_event(wtx *w, uint64_t serial, int op)
{
    l2_store *st = w->st;
    l2_event *ev = &st->old;
    uint8_t k[MAX_ADDR_KEY], sk[8];
    record r;
    int rc = get_record(w->txn, st, serial, &r);
    if (rc || (rc = load(st, w->txn, serial, ev, 1))) return rc;
    if (op && !w->quiet && r.slot && (rc = keep_ghost(w, serial, &r))) return rc;
    if (r.slot && (rc = free_body(w, r.slot, r.body_len))) return rc;
    if ((rc = for_each_index(st->sh->key_prefix, ev, serial, index_del, w))) return rc;
    put_be64(sk, serial);
    MDB_val ik = {st->sh->key_prefix, ev->id}, iv = {8, sk};
    if ((rc = mdb_del(w->txn, st->dbi[DB_IDS], &ik, &iv)) && rc != MDB_NOTFOUND) return rc;
    if ((op || w->drop_heads) && (l2_kind_replaceable(ev->kind) || l2_kind_addressable(ev->kind))) {
        /* a cache eviction (op 0) keeps the head record where L1 alone refuses older versions */
        l2_str d = l2_d_value(ev);
        size_t n = addr_key(k, ev->pubkey, ev->kind, d.p, d.n);
        head_rec h;
        if (get_head(w->txn, st, k, n, &h) == 0 && h.serial == serial && (rc = del_key(w, DB_REPLACE, k, n)))
            return rc;
    }
    if (st->cache) {
        uint8_t stk[16];
        put_be64(stk, (uint64_t)ev->created_at);
        put_be64(stk + 8, serial);
        if ((rc = drop_access(w, serial)) || (rc = del_key(w, DB_STUBS, stk, 16))) return rc;
    }
    if ((rc = del_key(w, DB_EVENTS, sk, 8))) return rc;
    return op ? add_change(w, op, ev->id, serial) : 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The events record of a cached event with its body (its access statistics in it); MDB_NOTFOUND
 * for a stub, an absent event, or a store that is not a cache. */
static int get_cached(MDB_txn *txn, l2_store *st, uint64_t serial, MDB_val *v)
{
    uint8_t k[8];
    put_be64(k, serial);
    MDB_val kv = {8, k};
    int rc = st->cache ? mdb_get(txn, st->dbi[DB_EVENTS], &kv, v) : MDB_NOTFOUND;
    if (rc) return rc;
    if (v->mv_size < 8) return MDB_CORRUPTED;
    if (!get_be32(v->mv_data)) return MDB_NOTFOUND;
    return v->mv_size == CACHE_RECORD ? 0 : MDB_CORRUPTED;
}

/* Reads serial's access statistics: MDB_NOTFOUND when it has none (a stub, or not a cache). */
static int get_access(MDB_txn *txn, l2_store *st, uint64_t serial, uint64_t *last, uint32_t *hits)
{
    MDB_val v;
    int rc = get_cached(txn, st, serial, &v);
    if (rc) return rc;
    *last = get_be64((const uint8_t *)v.mv_data + 8);
    *hits = get_be32((const uint8_t *)v.mv_data + 16);
    return 0;
}

/* Takes serial off the lru order (before its record loses its body or goes). */
static int drop_access(wtx *w, uint64_t serial)
{
    uint64_t last;
    uint32_t hits;
    uint8_t k[LRU_KEY];
    int rc = get_access(w->txn, w->st, serial, &last, &hits);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    lru_key(k, last, serial);
    return del_key(w, DB_LRU, k, LRU_KEY);
}

/* Writes serial's access statistics into its record (same size: in place) and the lru order. */
static int set_access(wtx *w, uint64_t serial, uint64_t last, uint32_t hits)
{
    uint8_t k[LRU_KEY], sk[8], rec[CACHE_RECORD];
    MDB_val v;
    int rc = get_cached(w->txn, w->st, serial, &v);
    if (rc) return rc;
    memcpy(rec, v.mv_data, CACHE_RECORD);
    lru_key(k, get_be64(rec + 8), serial);
    if ((rc = del_key(w, DB_LRU, k, LRU_KEY))) return rc;
    put_be64(rec + 8, last);
    put_be32(rec + 16, hits);
    put_be64(sk, serial);
    MDB_val kv = {8, sk}, vv = {CACHE_RECORD, rec};
    if ((rc = mdb_put(w->txn, w->st->dbi[DB_EVENTS], &kv, &vv, 0))) return rc;
    lru_key(k, last, serial);
    return put_empty(w, DB_LRU, k, LRU_KEY);
}

/* Writes the reads counted in memory (events removed since are skipped). */
static int flush_access(wtx *w)
{
    l2_store *st = w->st;
    for (size_t i = 0; i < st->ntouched; i++) {
        const struct touch *t = &st->touched[i];
        uint64_t last;
        uint32_t hits;
        int rc = get_access(w->txn, st, t->serial, &last, &hits);
        if (rc == MDB_NOTFOUND) continue;
        if (rc) return rc;
        if ((rc = set_access(w, t->serial, t->last_ms > last ? t->last_ms : last, hits + t->hits))) return rc;
    }
    return 0;
}

static void touch(l2_store *st, uint64_t serial, uint64_t ms)
{
    /* a small linear table: queries touch up to a few hundred events between two writes;
     * past the cap the oldest counts are simply dropped (they are statistics) */
    for (size_t i = st->ntouched; i-- > 0 && i + 64 >= st->ntouched;) {
        if (st->touched[i].serial == serial) {
            st->touched[i].last_ms = ms;
            st->touched[i].hits++;
            return;
        }
    }
    if (st->ntouched == st->touched_cap) {
        if (st->touched_cap >= 65536) return;
        size_t cap = st->touched_cap ? st->touched_cap * 2 : 256;
        struct touch *t = realloc(st->touched, cap * sizeof *t);
        if (!t) return;
        st->touched = t;
        st->touched_cap = cap;
    }
    st->touched[st->ntouched++] = (struct touch){serial, ms, 1};
}

static int put_tombstone(wtx *w, const uint8_t id[32], const uint8_t author[32])
{
    uint8_t k[64];
    w->may_tomb = 1;
    memcpy(k, id, 32);
    memcpy(k + 32, author, 32);
    return put_empty(w, DB_TOMB, k, 64);
}

/* NIP-09: what a kind-5 event deletes. Only the author's own events; never another deletion. */
static int apply_deletion(wtx *w, const l2_event *del, l2_save_result *r)
{
    l2_store *st = w->st;
    int rc;
    for (uint32_t t = 0; t < del->ntags; t++) {
        uint8_t id[32];
        uint32_t kind;
        l2_str d;
        if (l2_deletion_id(del, t, id)) {
            uint64_t serial;
            rc = lookup_id(w->txn, st, id, &serial);
            if (rc == 0) {
                if ((rc = load(st, w->txn, serial, &st->old, 0))) return rc;
                if (memcmp(st->old.pubkey, del->pubkey, 32) == 0 && st->old.kind != 5) {
                    if ((rc = remove_event(w, serial, L2_CHANGE_DELETED))) return rc;
                    r->deleted++;
                }
            } else if (rc != MDB_NOTFOUND) {
                return rc;
            }
            if ((rc = put_tombstone(w, id, del->pubkey))) return rc;
        } else if (l2_deletion_address(del, t, &kind, &d)) {
            uint8_t k[MAX_ADDR_KEY], when[8];
            size_t n = addr_key(k, del->pubkey, kind, d.p, d.n);
            MDB_val kv = {n, k}, vv;
            rc = mdb_get(w->txn, st->dbi[DB_ATOMB], &kv, &vv);
            if (rc && rc != MDB_NOTFOUND) return rc;
            if (rc == MDB_NOTFOUND || (vv.mv_size == 8 && get_be64(vv.mv_data) < (uint64_t)del->created_at)) {
                put_be64(when, (uint64_t)del->created_at);
                w->may_atomb = 1;
                vv.mv_size = 8;
                vv.mv_data = when;
                if ((rc = mdb_put(w->txn, st->dbi[DB_ATOMB], &kv, &vv, 0))) return rc;
            }
            head_rec h;
            rc = get_head(w->txn, st, k, n, &h);
            if (rc == 0 && h.created_at <= del->created_at) {
                rc = remove_event(w, h.serial, L2_CHANGE_DELETED);
                if (rc == MDB_NOTFOUND) rc = del_key(w, DB_REPLACE, k, n); /* evicted from a cache */
                else if (rc == 0) r->deleted++;
                if (rc) return rc;
            } else if (rc && rc != MDB_NOTFOUND) {
                return rc;
            }
        }
    }
    return 0;
}

/* *only: every `e` tag of the deletion request `del` names a stored event of another author, and
 * it has at least one (see l2_deletion_refusal). */
static int deletes_only_others(wtx *w, const l2_event *del, int *only)
{
    l2_store *st = w->st;
    uint32_t named = 0;
    *only = 0;
    for (uint32_t t = 0; t < del->ntags; t++) {
        uint8_t id[32];
        uint64_t serial;
        record r;
        if (!l2_deletion_id(del, t, id)) continue;
        named++;
        int rc = lookup_id(w->txn, st, id, &serial);
        if (rc == MDB_NOTFOUND) return 0; /* unknown: a tombstone of its own */
        if (rc || (rc = load_head(st, w->txn, serial, &st->old, &r))) return rc;
        if (memcmp(st->old.pubkey, del->pubkey, 32) == 0) return 0;
    }
    *only = named > 0;
    return 0;
}

static int save_one(wtx *w, const l2_event *ev, int64_t now, l2_save_result *r)
{
    l2_store *st = w->st;
    uint64_t serial;
    int64_t exp;
    int rc;
    r->replaced = r->deleted = 0;
    r->msg = NULL;
    if (l2_kind_ephemeral(ev->kind)) {
        r->status = L2_SAVE_EPHEMERAL;
        return 0;
    }
    if ((r->msg = l2_deletion_refusal(ev))) {
        r->status = L2_SAVE_REFUSED;
        return 0;
    }
    if (l2_expiration(ev, &exp) && exp <= now) {
        r->status = L2_SAVE_EXPIRED;
        return 0;
    }
    rc = lookup_id(w->txn, st, ev->id, &serial);
    if (rc == 0) {
        r->status = L2_SAVE_DUPLICATE;
        return 0;
    }
    if (rc != MDB_NOTFOUND) return rc;
    if (ev->kind != 5 && w->may_tomb) {
        uint8_t tk[64];
        memcpy(tk, ev->id, 32);
        memcpy(tk + 32, ev->pubkey, 32);
        MDB_val k = {64, tk}, v;
        rc = mdb_get(w->txn, st->dbi[DB_TOMB], &k, &v);
        if (rc == 0) {
            r->status = L2_SAVE_DELETED;
            return 0;
        }
        if (rc != MDB_NOTFOUND) return rc;
    }
    uint8_t ak[MAX_ADDR_KEY];
    size_t an = 0;
    if (l2_kind_replaceable(ev->kind) || l2_kind_addressable(ev->kind)) {
        l2_str d = l2_d_value(ev);
        an = addr_key(ak, ev->pubkey, ev->kind, d.p, d.n);
        MDB_val k = {an, ak}, v;
        rc = w->may_atomb ? mdb_get(w->txn, st->dbi[DB_ATOMB], &k, &v) : MDB_NOTFOUND;
        if (rc == 0 && v.mv_size == 8 && (uint64_t)ev->created_at <= get_be64(v.mv_data)) {
            r->status = L2_SAVE_DELETED;
            return 0;
        }
        if (rc && rc != MDB_NOTFOUND) return rc;
        head_rec h;
        rc = get_head(w->txn, st, ak, an, &h);
        if (rc == 0) {
            /* newer created_at wins; a tie goes to the lower id */
            if (h.created_at > ev->created_at || (h.created_at == ev->created_at && memcmp(h.id, ev->id, 32) < 0)) {
                r->status = L2_SAVE_OLDER;
                return 0;
            }
            rc = remove_event(w, h.serial, L2_CHANGE_REPLACED);
            if (rc == 0) r->replaced++;
            else if (rc != MDB_NOTFOUND) return rc; /* NOTFOUND: a cache had evicted it */
        } else if (rc != MDB_NOTFOUND) {
            return rc;
        }
    }
    if (ev->kind == 5) {
        int only;
        if ((rc = deletes_only_others(w, ev, &only))) return rc;
        if (only) {
            r->status = L2_SAVE_REFUSED;
            r->msg = L2_DELETION_OF_OTHERS;
            return 0;
        }
    }
    if (w->serial > MAX_SERIAL) return EOVERFLOW; /* 2^48 saves: index keys hold 6 bytes of a serial */
    serial = w->serial++;
    uint8_t sk[8];
    put_be64(sk, serial);
    st->body.len = 0;
    if (l2_event_encode_bin(ev, &st->body)) return ENOMEM;
    if (st->cache) {
        uint32_t slot;
        if ((rc = put_body(w, st->body.data, st->body.len, &slot)) ||
            (rc = put_cache_record(w, serial, ev, slot, (uint32_t)st->body.len)))
            return rc;
    } else {
        MDB_val k = {8, sk}, v = {st->body.len, st->body.data};
        if ((rc = mdb_put(w->txn, st->dbi[DB_EVENTS], &k, &v, MDB_APPEND))) return rc;
    }
    MDB_val ik = {st->sh->key_prefix, (void *)ev->id}, iv = {8, sk};
    if ((rc = mdb_put(w->txn, st->dbi[DB_IDS], &ik, &iv, 0))) return rc;
    if (!w->defer_index && (rc = for_each_index(st->sh->key_prefix, ev, serial, index_put, w))) return rc;
    if (an && (rc = put_head(w, ak, an, serial, ev))) return rc;
    if ((rc = add_change(w, L2_CHANGE_SAVED, ev->id, serial))) return rc;
    if (w->may_answer && !w->quiet && (rc = l2_answers_touch(w->txn, st->dbi[DB_ANSWERS], ev))) return rc;
    if (st->cache && (rc = set_access(w, serial, now_ms(), 0))) return rc;
    r->status = L2_SAVE_STORED;
    if (ev->kind == 5) return apply_deletion(w, ev, r);
    return 0;
}

static int write_begin(l2_store *st, wtx *w)
{
    int rc;
    l2_store_read_end(st);
    w->st = st;
    w->quiet = 0;
    w->defer_index = 0;
    w->drop_heads = 0;
    rc = mdb_txn_begin(st->env, NULL, 0, &w->txn);
    if (rc == MDB_MAP_RESIZED) {
        adopt_map(st);
        rc = mdb_txn_begin(st->env, NULL, 0, &w->txn);
    }
    if (rc) return rc;
    if ((rc = meta_get_u64(w->txn, st->dbi[DB_META], "serial", &w->serial)) ||
        (rc = meta_get_u64(w->txn, st->dbi[DB_META], "seq", &w->seq))) {
        mdb_txn_abort(w->txn);
        return rc;
    }
    if (st->cache && ((rc = meta_get_u64(w->txn, st->dbi[DB_META], "next_slot", &w->next_slot)) ||
                      (rc = meta_get_u64(w->txn, st->dbi[DB_META], "body_bytes", &w->body_bytes)))) {
        mdb_txn_abort(w->txn);
        return rc;
    }
    if (st->cache) w->body_bytes--; /* meta_get_u64 counts from 1 */
    w->may_tomb = entries(w->txn, st->dbi[DB_TOMB]) > 0;
    w->may_atomb = entries(w->txn, st->dbi[DB_ATOMB]) > 0;
    w->may_answer = st->cache && entries(w->txn, st->dbi[DB_ANSWERS]) > 0;
    return 0;
}

static int write_commit(wtx *w)
{
    int rc;
    if ((rc = meta_put_u64(w->txn, w->st->dbi[DB_META], "serial", w->serial)) ||
        (rc = meta_put_u64(w->txn, w->st->dbi[DB_META], "seq", w->seq)) ||
        (w->st->cache && ((rc = meta_put_u64(w->txn, w->st->dbi[DB_META], "next_slot", w->next_slot)) ||
                          (rc = meta_put_u64(w->txn, w->st->dbi[DB_META], "body_bytes", w->body_bytes + 1))))) {
        mdb_txn_abort(w->txn);
        return rc;
    }
    return mdb_txn_commit(w->txn);
}

/* The map is full: double it (an unlimited store) and have the caller redo its transaction. */
static int grow_map(l2_store *st, char *err)
{
    if (st->fixed_map) return fail(err, "error: the store is full (its map size is %zu bytes)", st->sh->map_size);
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    size_t size = (info.me_mapsize > st->sh->map_size ? info.me_mapsize : st->sh->map_size) * 2;
    int rc = mdb_env_set_mapsize(st->env, size);
    if (rc) return lmdb_fail(err, "growing the map", rc);
    st->sh->map_size = size;
    return 0;
}

int l2_store_reader_check(l2_store *st)
{
    int dead = 0;
    return mdb_reader_check(st->env, &dead) == 0 ? dead : 0;
}

/* LMDB reuses the pages a transaction freed only once a later one has committed: one small
 * transaction (the meta counters rewritten) makes the last one's free pages usable. */
static int age_free_pages(l2_store *st)
{
    wtx w;
    int rc = write_begin(st, &w);
    return rc ? rc : write_commit(&w);
}

static int mirror_apply(wtx *w, int *result);

/* Runs body(w, ud) in one write transaction, growing the map and retrying when it fills; a
 * fixed map first gets the pages the last transaction freed (a full cache evicts in steps, each
 * freeing what the next needs). */
static int write_txn(l2_store *st, int (*body)(wtx *w, void *ud), void *ud, char *err)
{
    int aged = 0, cleared = 0;
    for (;;) {
        wtx w;
        int rc = write_begin(st, &w);
        if (rc) {
            st->mirror_set = 0;
            return lmdb_fail(err, "write transaction", rc);
        }
        uint64_t seq0 = w.seq;
        rc = st->ntouched ? flush_access(&w) : 0;
        /* a cache's ghosts past their time go with any write (a fill, a save, an eviction) */
        if (rc == 0 && st->cache) rc = prune_ghosts(&w, ghost_max(st));
        if (rc == 0) rc = body(&w, ud);
        int result = L2_MIRROR_NONE;
        if (rc == 0 && st->mirror_set) rc = mirror_apply(&w, &result);
        if (rc == 0) rc = write_commit(&w);
        else mdb_txn_abort(w.txn);
        if (rc == 0) {
            st->ntouched = 0;
            st->mirror_set = 0;
            st->mirror_result = result;
            st->last_first = seq0;
            st->last_last = w.seq - 1;
            return 0;
        }
        if (rc == MDB_MAP_FULL) {
            /* the reads counted since the last write are statistics: a full cache drops them
             * rather than fail the write (an eviction above all) that would make room */
            if (st->fixed_map && st->ntouched) {
                st->ntouched = 0;
                continue;
            }
            /* a reader a killed process left pins the pages freed since its snapshot */
            if (st->fixed_map && !cleared++ && l2_store_reader_check(st) > 0) continue;
            if (st->fixed_map && !aged++ && age_free_pages(st) == 0) continue;
            if (grow_map(st, err)) {
                st->mirror_set = 0;
                return -1;
            }
            continue;
        }
        st->mirror_set = 0;
        if (rc == ENOMEM) return fail(err, "error: out of memory");
        return lmdb_fail(err, "writing", rc);
    }
}

/* appends one record to the outbox */
static int outbox_put(wtx *w, char type, const void *data, size_t n)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t key[8];
    uint64_t seq = 1;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_OUTBOX], &c);
    if (rc) return rc;
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8) seq = get_be64(k.mv_data) + 1;
    put_be64(key, seq);
    k.mv_size = 8;
    k.mv_data = key;
    v.mv_size = n + 1;
    if ((rc = mdb_cursor_put(c, &k, &v, MDB_APPEND | MDB_RESERVE)) == 0) {
        ((char *)v.mv_data)[0] = type;
        memcpy((char *)v.mv_data + 1, data, n);
    }
    mdb_cursor_close(c);
    return rc;
}

typedef struct {
    l2_event *const *evs;
    size_t n;
    int64_t now;
    int flags;
    l2_save_result *res;
} save_args;

static int deferring(wtx *w, int *defer);

static int save_body(wtx *w, void *ud)
{
    save_args *a = ud;
    int rc;
    w->quiet = (a->flags & L2_SAVE_FILL) != 0;
    if ((a->flags & L2_SAVE_IMPORT) && !w->st->cache && (rc = deferring(w, &w->defer_index))) return rc;
    for (size_t i = 0; i < a->n; i++) {
        rc = save_one(w, a->evs[i], a->now, &a->res[i]);
        if (rc) return rc;
        if ((a->flags & L2_SAVE_OUTBOX) && a->res[i].status == L2_SAVE_STORED) {
            w->st->body.len = 0;
            if (l2_event_encode_bin(a->evs[i], &w->st->body)) return ENOMEM;
            if ((rc = outbox_put(w, 'S', w->st->body.data, w->st->body.len))) return rc;
        }
    }
    return 0;
}

int l2_store_save_batch(l2_store *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                        char *err)
{
    save_args a = {evs, n, now, flags, res};
    return write_txn(st, save_body, &a, err);
}

typedef struct {
    const uint8_t *id;
    int tombstone, outbox, found;
} delete_args;

static int delete_body(wtx *w, void *ud)
{
    delete_args *a = ud;
    uint64_t serial;
    uint8_t rec[33];
    int rc = lookup_id(w->txn, w->st, a->id, &serial);
    a->found = rc == 0;
    if (a->outbox) {
        memcpy(rec, a->id, 32);
        rec[32] = (uint8_t)a->tombstone;
        if ((rc = outbox_put(w, 'D', rec, 33))) return rc;
    }
    if (!a->found) return rc == MDB_NOTFOUND ? 0 : rc;
    if ((rc = remove_event(w, serial, L2_CHANGE_DELETED))) return rc;
    return a->tombstone ? put_tombstone(w, a->id, w->st->old.pubkey) : 0;
}

int l2_store_delete(l2_store *st, const uint8_t id[32], int tombstone, int outbox, int *found, char *err)
{
    delete_args a = {id, tombstone, outbox, 0};
    if (write_txn(st, delete_body, &a, err)) return -1;
    *found = a.found;
    return 0;
}

typedef struct {
    int64_t now;
    uint64_t removed;
} sweep_args;

static int sweep_body(wtx *w, void *ud)
{
    sweep_args *a = ud;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_EXPIRE], &c);
    a->removed = 0;
    if (rc) return rc;
    /* removing an event deletes its expire key, so always restart from the first one */
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0) {
        if (k.mv_size != 16 || (int64_t)get_be64(k.mv_data) > a->now) break;
        uint64_t serial = get_be64((uint8_t *)k.mv_data + 8);
        rc = remove_event(w, serial, L2_CHANGE_DELETED);
        if (rc == MDB_NOTFOUND) rc = mdb_cursor_del(c, 0); /* a dangling key: drop it */
        else a->removed++;
        if (rc) break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int l2_store_sweep(l2_store *st, int64_t now, uint64_t *removed, char *err)
{
    sweep_args a = {now, 0};
    if (write_txn(st, sweep_body, &a, err)) return -1;
    *removed = a.removed;
    return 0;
}

#define FEED_KEY "l2_feed"

/* Deletes the caller's meta values (meta_key's "u:" ones) and the feed position. */
static int forget_callers_meta(wtx *w)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_META], &c);
    if (rc) return rc;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        int callers = k.mv_size >= 2 && memcmp(k.mv_data, "u:", 2) == 0;
        int feed = k.mv_size == strlen(FEED_KEY) && memcmp(k.mv_data, FEED_KEY, k.mv_size) == 0;
        if ((callers || feed) && (rc = mdb_cursor_del(c, 0))) break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int nuke_body(wtx *w, void *ud)
{
    (void)ud;
    for (int i = 0; i < DB_COUNT; i++) {
        int rc;
        if (i == DB_META) continue;
        if ((rc = mdb_drop(w->txn, w->st->dbi[i], 0))) return rc;
    }
    /* serial and seq keep counting up, so change cursors held by readers stay meaningful; a
     * cache's horizon and place in L2's feed described what it held: an emptied L1 proves nothing
     * until its backend sets them again */
    return w->st->cache ? forget_callers_meta(w) : 0;
}

int l2_store_nuke(l2_store *st, char *err)
{
    return write_txn(st, nuke_body, NULL, err);
}

int l2_store_sync(l2_store *st, char *err)
{
    int rc = mdb_env_sync(st->env, 1);
    return rc ? lmdb_fail(err, "sync", rc) : 0;
}

/* ---- reading ---- */

void l2_hits_free(l2_hits *h)
{
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}

static int hits_push(l2_hits *h, const l2_event *ev, uint64_t serial)
{
    if (h->counting) {
        for (size_t i = 0; i < h->nearlier; i++)
            if (l2_filter_match(&h->earlier[i], ev)) return 0;
        h->n++;
        return 0;
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        l2_hit *v = realloc(h->v, cap * sizeof *v);
        if (!v) return ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    l2_hit *x = &h->v[h->n++];
    x->created_at = ev->created_at;
    memcpy(x->id, ev->id, 32);
    x->serial = serial;
    x->stub = ev->is_stub;
    return 0;
}

static int hit_order(const void *a, const void *b)
{
    const l2_hit *x = a, *y = b;
    if (x->created_at != y->created_at) return x->created_at > y->created_at ? -1 : 1;
    int c = memcmp(x->id, y->id, 32);
    if (c) return c;
    return (x->serial > y->serial) - (x->serial < y->serial);
}

/* sorts [from, n) by order and drops repeated serials (equal serials sort next to each other) */
static void sort_unique_hits(l2_hits *h, size_t from, int (*order)(const void *, const void *))
{
    size_t n = h->n - from, out = 0;
    if (n < 2) return; /* also: no qsort on an empty (NULL) array */
    l2_hit *v = h->v + from;
    qsort(v, n, sizeof *v, order);
    for (size_t i = 0; i < n; i++)
        if (out == 0 || v[out - 1].serial != v[i].serial) v[out++] = v[i];
    h->n = from + out;
}

/* One backward walk over an index range: prefix, created_at in [since, until], serial. */
typedef struct {
    MDB_cursor *cur;
    size_t plen;
    uint8_t prefix[1 + MAX_VALUE_KEY + 34];
    int64_t created_at; /* as the key says it (tail_created) */
    uint64_t serial;
} scan;

static int scan_load(scan *s, const MDB_val *k, int64_t since)
{
    const uint8_t *p = k->mv_data;
    if (k->mv_size != s->plen + TAIL || (s->plen && memcmp(p, s->prefix, s->plen) != 0)) return 0;
    s->created_at = tail_created(p + s->plen);
    s->serial = tail_serial(p + s->plen);
    return s->created_at >= since;
}

static int scan_start(scan *s, int64_t since, int64_t until)
{
    uint8_t key[sizeof s->prefix + TAIL];
    MDB_val k = {s->plen + TAIL, key}, v;
    memcpy(key, s->prefix, s->plen);
    put_tail(key + s->plen, until, MAX_SERIAL);
    int rc = mdb_cursor_get(s->cur, &k, &v, MDB_SET_RANGE);
    rc = mdb_cursor_get(s->cur, &k, &v, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
    return rc == 0 && scan_load(s, &k, since);
}

static int scan_next(scan *s, int64_t since)
{
    MDB_val k, v;
    return mdb_cursor_get(s->cur, &k, &v, MDB_PREV) == 0 && scan_load(s, &k, since);
}

static void heap_down(scan **h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l]->created_at > h[m]->created_at) m = l;
        if (r < n && h[r]->created_at > h[m]->created_at) m = r;
        if (m == i) return;
        scan *t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* A small open-addressing set of serials: one event reached through two tag values is one hit. */
typedef struct {
    uint64_t *slot;
    size_t cap, n;
} serial_set;

static int set_add(serial_set *s, uint64_t x) /* 1 added, 0 present, -1 no memory */
{
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        uint64_t *slot = calloc(cap, sizeof *slot);
        if (!slot) return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slot[i]) continue;
            size_t j = (s->slot[i] * 0x9E3779B97F4A7C15ull) & (cap - 1);
            while (slot[j]) j = (j + 1) & (cap - 1);
            slot[j] = s->slot[i];
        }
        free(s->slot);
        s->slot = slot;
        s->cap = cap;
    }
    size_t j = (x * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
    while (s->slot[j]) {
        if (s->slot[j] == x) return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->slot[j] = x; /* serials start at 1, so 0 marks an empty slot */
    s->n++;
    return 1;
}

/* Appends serial (its record in r) to out when it matches f and has not expired. */
static int consider_record(l2_store *st, const l2_filter *f, uint64_t serial, const record *r, int64_t now,
                           l2_hits *out, int *matched)
{
    int64_t exp;
    int rc = decode_head(st, r, &st->ev);
    *matched = 0;
    if (rc || !l2_filter_match(f, &st->ev)) return rc;
    if (l2_expiration(&st->ev, &exp) && exp <= now) return 0;
    *matched = 1;
    return hits_push(out, &st->ev, serial);
}

/* Loads serial and appends it to out when it matches f and has not expired. */
static int consider(l2_store *st, const l2_filter *f, uint64_t serial, int64_t now, l2_hits *out, int *matched)
{
    record r;
    int rc = get_record(st->rtxn, st, serial, &r);
    *matched = 0;
    if (rc == MDB_NOTFOUND) return 0; /* a dangling index entry: never returned */
    return rc ? rc : consider_record(st, f, serial, &r, now, out, matched);
}

static int by_prefix(const void *a, const void *b)
{
    const scan *x = a, *y = b;
    if (x->plen != y->plen) return x->plen < y->plen ? -1 : 1;
    return memcmp(x->prefix, y->prefix, x->plen);
}

/* Picks the index for a filter (ids, then the tag with fewest values, pubkey+kind, pubkey, kind,
 * created_at) and fills one scan per prefix. Two values may share a prefix (see P in the layout):
 * their scans would walk the same keys twice, so each prefix is scanned once. */
static int plan(l2_store *st, const l2_filter *f, scan **scans, size_t *nscans, int *db)
{
    size_t n = 0, p = st->sh->key_prefix;
    scan *s = NULL;
    if (f->ntags) {
        const l2_tag_cond *best = &f->tags[0];
        for (uint32_t i = 1; i < f->ntags; i++)
            if (f->tags[i].n < best->n) best = &f->tags[i];
        *db = DB_TAG;
        if (!(s = calloc(best->n, sizeof *s))) return ENOMEM;
        for (uint32_t i = 0; i < best->n; i++, n++) {
            const l2_str *v = &f->values[best->first + i];
            s[n].prefix[0] = (uint8_t)best->letter;
            s[n].plen = 1 + value_key(s[n].prefix + 1, v->p, v->n, p);
        }
    } else if ((f->have & L2_F_AUTHORS) && (f->have & L2_F_KINDS) && (uint64_t)f->nauthors * f->nkinds <= 4096) {
        *db = DB_PUBKIND;
        if (!(s = calloc((size_t)f->nauthors * f->nkinds, sizeof *s))) return ENOMEM;
        for (uint32_t a = 0; a < f->nauthors; a++)
            for (uint32_t k = 0; k < f->nkinds; k++, n++) {
                memcpy(s[n].prefix, f->authors[a], p);
                put_be16(s[n].prefix + p, f->kinds[k]);
                s[n].plen = p + 2;
            }
    } else if (f->have & L2_F_AUTHORS) {
        *db = DB_PUBKEY;
        if (!(s = calloc(f->nauthors, sizeof *s))) return ENOMEM;
        for (uint32_t a = 0; a < f->nauthors; a++, n++) {
            memcpy(s[n].prefix, f->authors[a], p);
            s[n].plen = p;
        }
    } else if (f->have & L2_F_KINDS) {
        *db = DB_KIND;
        if (!(s = calloc(f->nkinds, sizeof *s))) return ENOMEM;
        for (uint32_t k = 0; k < f->nkinds; k++, n++) {
            put_be16(s[n].prefix, f->kinds[k]);
            s[n].plen = 2;
        }
    } else {
        *db = DB_CREATED;
        if (!(s = calloc(1, sizeof *s))) return ENOMEM;
        n = 1;
    }
    if (n > 1) {
        qsort(s, n, sizeof *s, by_prefix);
        size_t u = 1;
        for (size_t i = 1; i < n; i++)
            if (by_prefix(&s[u - 1], &s[i])) s[u++] = s[i];
        n = u;
    }
    *scans = s;
    *nscans = n;
    return 0;
}

/* Runs one filter; a scan stops where the limit is certain, or below `horizon` (when it is not
 * INT64_MIN) while the limit is not reached: such an answer cannot be proven complete, and the
 * caller asks elsewhere. */
static int run_filter(l2_store *st, const l2_filter *f, int64_t limit, int64_t now, int64_t horizon, l2_hits *out)
{
    int rc = 0, matched;
    size_t base = out->n;
    if (l2_filter_is_empty(f) || limit <= 0) return 0;
    if (f->have & L2_F_IDS) {
        for (uint32_t i = 0; i < f->nids && rc == 0; i++) {
            uint64_t serial;
            record r;
            rc = find_id(st->rtxn, st, f->ids[i], &serial, &r);
            if (rc == MDB_NOTFOUND) rc = 0;
            else if (rc == 0) rc = consider_record(st, f, serial, &r, now, out, &matched);
        }
    } else {
        scan *scans;
        size_t nscans, live = 0;
        int db;
        int64_t since = (f->have & L2_F_SINCE) ? f->since : 0;
        int64_t until = (f->have & L2_F_UNTIL) ? f->until : L2_MAX_CREATED_AT;
        if ((rc = plan(st, f, &scans, &nscans, &db))) return rc;
        scan **heap = malloc(nscans * sizeof *heap);
        serial_set seen = {NULL, 0, 0};
        if (!heap) rc = ENOMEM;
        for (size_t i = 0; i < nscans && rc == 0; i++) {
            if ((rc = mdb_cursor_open(st->rtxn, st->dbi[db], &scans[i].cur))) break;
            if (scan_start(&scans[i], since, until)) heap[live++] = &scans[i];
        }
        for (size_t i = live / 2; i-- > 0;) heap_down(heap, live, i);
        int64_t count = 0, stop_at = -1;
        while (rc == 0 && live) {
            scan *s = heap[0];
            /* `limit` found: keep only the ties of the last one (they are ordered by id below) */
            if (count >= limit && s->created_at < stop_at) break;
            if (count < limit && s->created_at < horizon) break;
            /* an event is under one key of a scan: only several scans of a tag's values meet */
            int fresh = f->ntags && nscans > 1 ? set_add(&seen, s->serial) : 1;
            if (fresh < 0) rc = ENOMEM;
            else if (fresh && (rc = consider(st, f, s->serial, now, out, &matched)) == 0 && matched &&
                     ++count == limit)
                stop_at = s->created_at;
            if (!scan_next(s, since)) heap[0] = heap[--live];
            heap_down(heap, live, 0);
        }
        for (size_t i = 0; i < nscans; i++)
            if (scans[i].cur) mdb_cursor_close(scans[i].cur);
        free(seen.slot);
        free(heap);
        free(scans);
    }
    if (rc) return rc;
    if (!out->counting) sort_unique_hits(out, base, hit_order);
    if ((int64_t)(out->n - base) > limit) out->n = base + (size_t)limit;
    return 0;
}

/* Can this store prove the answer to f complete (see l2_store_query)? */
static int complete(l2_store *st, const l2_filter *f, int64_t limit, int64_t horizon, const l2_hits *h, size_t base)
{
    if (horizon <= 0 || l2_filter_is_empty(f)) return 1;
    if (f->have & L2_F_IDS) {
        for (uint32_t i = 0; i < f->nids; i++) {
            uint64_t serial;
            if (lookup_id(st->rtxn, st, f->ids[i], &serial) != 0) return 0;
        }
        return 1;
    }
    if ((f->have & L2_F_SINCE) && f->since >= horizon) return 1;
    size_t n = h->n - base;
    return (int64_t)n >= limit && h->v[base + n - 1].created_at >= horizon;
}

int l2_store_query(l2_store *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                   uint8_t *incomplete, l2_hits *out, char *err)
{
    out->n = 0;
    if (read_begin(st, err)) return -1;
    if (horizon == L2_HORIZON_IN_META) {
        /* the caller's own horizon, read in this snapshot (one read for the two) */
        static const char key[] = "u:horizon"; /* meta_key("horizon") */
        MDB_val kv = {sizeof key - 1, (void *)key}, v;
        if (mdb_get(st->rtxn, st->dbi[DB_META], &kv, &v) || parse_int(v.mv_data, v.mv_size, &horizon))
            horizon = L2_MAX_CREATED_AT + 1; /* none yet: nothing is proven */
        int64_t floor = st->horizon_floor ? __atomic_load_n(st->horizon_floor, __ATOMIC_ACQUIRE) : 0;
        if (floor > horizon) horizon = floor;
    }
    for (size_t i = 0; i < nf; i++) {
        const l2_filter *f = &fs[i];
        int64_t limit = (f->have & L2_F_LIMIT) && f->limit < max_limit ? f->limit : max_limit;
        size_t base = out->n;
        int rc = run_filter(st, f, limit, now, incomplete && horizon > 0 ? horizon : INT64_MIN, out);
        if (rc) {
            l2_store_read_end(st);
            return rc == ENOMEM ? fail(err, "error: out of memory") : lmdb_fail(err, "query", rc);
        }
        if (incomplete) incomplete[i] = !complete(st, f, limit, horizon, out, base);
    }
    if (nf > 1) sort_unique_hits(out, 0, hit_order);
    /* a cache counts the bodies read from this answer as accesses (l2_store_body) */
    st->query_ms = st->cache ? now_ms() : 0;
    return 0;
}

void l2_store_share_horizon(l2_store *st, const int64_t *floor)
{
    st->horizon_floor = floor;
}

void l2_store_set_backed(l2_store *st, int backed)
{
    st->backed = backed;
}

int l2_store_count(l2_store *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *count, char *err)
{
    /* counted as they are found, each filter's matches less those an earlier filter matched:
     * no memory per event, whatever the count */
    l2_hits hits = {.counting = 1, .earlier = fs};
    int rc = 0;
    if (read_begin(st, err)) return -1;
    for (size_t i = 0; i < nf && rc == 0; i++) {
        hits.nearlier = i;
        rc = run_filter(st, &fs[i], INT64_MAX, now, INT64_MIN, &hits);
    }
    l2_store_read_end(st);
    *count = hits.n;
    if (rc) return rc == ENOMEM ? fail(err, "error: out of memory") : lmdb_fail(err, "count", rc);
    return 0;
}

int l2_store_body(l2_store *st, uint64_t serial, const void **data, size_t *len)
{
    record r;
    if (!st->rtxn_live) return -1;
    if (get_record(st->rtxn, st, serial, &r)) return st->cache && get_ghost(st->rtxn, st, serial, data, len) == 0 ? 0 : -1;
    if (get_body(st->rtxn, st, &r, data, len)) return -1;
    if (st->query_ms) touch(st, serial, st->query_ms);
    return 0;
}

int l2_store_iter_begin(l2_store *st, char *err)
{
    if (read_begin(st, err)) return -1;
    int rc = mdb_cursor_open(st->rtxn, st->dbi[DB_EVENTS], &st->iter);
    if (rc) {
        l2_store_read_end(st);
        return lmdb_fail(err, "export", rc);
    }
    return 0;
}

int l2_store_iter_next(l2_store *st, uint64_t *serial, const void **data, size_t *len)
{
    MDB_val k, v;
    while (st->iter && mdb_cursor_get(st->iter, &k, &v, MDB_NEXT) == 0) {
        record r;
        *serial = get_be64(k.mv_data);
        /* a cache's stubs are not whole events: skipped */
        if (get_record(st->rtxn, st, *serial, &r) == 0 && get_body(st->rtxn, st, &r, data, len) == 0) return 1;
    }
    return 0;
}

int l2_store_changes(l2_store *st, uint64_t after, size_t max, l2_change *out, size_t *n, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[8];
    *n = 0;
    if (read_begin(st, err)) return -1;
    int rc = mdb_cursor_open(st->rtxn, st->dbi[DB_CHANGES], &c);
    if (rc) {
        l2_store_read_end(st);
        return lmdb_fail(err, "changes", rc);
    }
    put_be64(start, after + 1);
    k.mv_size = 8;
    k.mv_data = start;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && *n < max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const uint8_t *rec = v.mv_data;
        if (k.mv_size != 8 || (v.mv_size != 9 && v.mv_size != 41)) continue;
        l2_change *ch = &out[*n];
        ch->seq = get_be64(k.mv_data);
        ch->op = rec[0];
        ch->serial = get_be64(rec + 1);
        ch->have_id = 1;
        if (v.mv_size == 41) {
            memcpy(ch->id, rec + 9, 32);
        } else {
            record r;
            const void *ghost;
            size_t glen;
            /* the record holds the id; an event removed since then is reported by its later change
             * (and a cache may still hold its body) */
            if (get_record(st->rtxn, st, ch->serial, &r) == 0 && r.head_len >= 33) memcpy(ch->id, r.head + 1, 32);
            else if (st->cache && get_ghost(st->rtxn, st, ch->serial, &ghost, &glen) == 0 && glen >= 33)
                memcpy(ch->id, (const uint8_t *)ghost + 1, 32);
            else ch->have_id = 0;
        }
        (*n)++;
    }
    mdb_cursor_close(c);
    return 0;
}

static uint64_t entries(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_stat s;
    return mdb_stat(txn, dbi, &s) ? 0 : s.ms_entries;
}

int l2_store_stats_get(l2_store *st, l2_store_stats *s, char *err)
{
    MDB_envinfo info;
    MDB_stat es;
    char file[4096];
    struct stat sb;
    memset(s, 0, sizeof *s);
    if (read_begin(st, err)) return -1;
    MDB_txn *t = st->rtxn;
    s->events = entries(t, st->dbi[DB_EVENTS]);
    s->index_entries = entries(t, st->dbi[DB_PUBKEY]) + entries(t, st->dbi[DB_KIND]) +
                       entries(t, st->dbi[DB_PUBKIND]) + entries(t, st->dbi[DB_TAG]) +
                       entries(t, st->dbi[DB_CREATED]) + entries(t, st->dbi[DB_EXPIRE]) + entries(t, st->dbi[DB_IDS]);
    s->tombstones = entries(t, st->dbi[DB_TOMB]) + entries(t, st->dbi[DB_ATOMB]);
    s->heads = entries(t, st->dbi[DB_REPLACE]);
    s->changes = entries(t, st->dbi[DB_CHANGES]);
    s->stubs = entries(t, st->dbi[DB_STUBS]);
    uint64_t holes = 0;
    if (st->cache) {
        /* a cache's bodies go into the lowest free slots, so the room evicted bodies left inside
         * the bodies' pages is reused by the next ones: it counts as free */
        MDB_stat bs;
        uint64_t body_bytes = 1;
        if (mdb_stat(t, st->dbi[DB_BODIES], &bs) == 0 && meta_get_u64(t, st->dbi[DB_META], "body_bytes", &body_bytes) == 0) {
            uint64_t room = (uint64_t)(bs.ms_leaf_pages + bs.ms_overflow_pages) * bs.ms_psize;
            uint64_t held = body_bytes - 1 + bs.ms_entries * 16; /* node headers and keys */
            holes = room > held ? room - held : 0;
        }
    }
    s->outbox = entries(t, st->dbi[DB_OUTBOX]);
    meta_get_u64(t, st->dbi[DB_META], "seq", &s->last_seq);
    s->last_seq--;
    /* pages on the freelist are reusable: "used" is what the data really occupies */
    uint64_t free_pages = 0;
    MDB_cursor *fc;
    MDB_val fk, fv;
    if (mdb_cursor_open(t, 0, &fc) == 0) {
        while (mdb_cursor_get(fc, &fk, &fv, MDB_NEXT) == 0)
            if (fv.mv_size >= sizeof(size_t)) free_pages += *(const size_t *)fv.mv_data;
        mdb_cursor_close(fc);
    }
    l2_store_read_end(st);
    mdb_env_info(st->env, &info);
    mdb_env_stat(st->env, &es);
    s->page_size = es.ms_psize;
    uint64_t pages = (uint64_t)info.me_last_pgno + 1;
    s->free_bytes = (free_pages < pages ? free_pages : pages) * es.ms_psize;
    s->used_bytes = pages * es.ms_psize - s->free_bytes;
    s->used_bytes -= holes < s->used_bytes ? holes : s->used_bytes;
    s->free_bytes += holes;
    s->map_bytes = info.me_mapsize;
    snprintf(file, sizeof file, "%s/data.mdb", st->path);
    if (stat(file, &sb) == 0) s->file_bytes = (uint64_t)sb.st_size;
    return 0;
}

/* ---- the cache (L1) side ---- */

static int flush_only(wtx *w, void *ud)
{
    (void)w;
    (void)ud;
    return 0; /* write_txn flushes the counted reads before calling this */
}

static void fill_candidate(l2_candidate *c, uint64_t serial, const l2_event *ev, size_t size, uint64_t last,
                           uint32_t hits)
{
    c->serial = serial;
    memcpy(c->id, ev->id, 32);
    memcpy(c->pubkey, ev->pubkey, 32);
    c->kind = ev->kind;
    c->created_at = ev->created_at;
    c->size = (uint32_t)size;
    c->last_ms = last;
    c->hits = hits;
}

int l2_store_candidates(l2_store *st, int by_created, size_t max, l2_candidate *out, size_t *n, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    *n = 0;
    if (st->ntouched && write_txn(st, flush_only, NULL, err)) return -1;
    if (read_begin(st, err)) return -1;
    if ((rc = mdb_cursor_open(st->rtxn, st->dbi[by_created ? DB_CREATED : DB_LRU], &c))) goto fail;
    while (*n < max && mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        if (k.mv_size != (by_created ? TAIL : LRU_KEY)) continue;
        uint64_t serial = by_created ? tail_serial(k.mv_data) : get_be48((uint8_t *)k.mv_data + 6), last = 0;
        uint32_t hits = 0;
        record r;
        if (load_head(st, st->rtxn, serial, &st->ev, &r) != 0 || st->ev.is_stub) continue;
        get_access(st->rtxn, st, serial, &last, &hits);
        fill_candidate(&out[(*n)++], serial, &st->ev, st->cache ? r.body_len : r.head_len, last, hits);
    }
    mdb_cursor_close(c);
    l2_store_read_end(st);
    return 0;
fail:
    l2_store_read_end(st);
    return lmdb_fail(err, "candidates", rc);
}

typedef struct {
    const uint8_t (*ids)[32];
    size_t n;
    int delete_mode;
    uint64_t evicted, freed;
    int64_t horizon; /* past the newest event deleted */
} evict_args;

/* Raises the caller's meta value "horizon" to at least h in this transaction: readers never see
 * events gone from a cache with its horizon not yet past them. */
static int raise_horizon(wtx *w, int64_t h);

/* Whether an eviction may take a slot's head: in a backed cache whose outbox is empty, the store
 * behind refuses older versions; while writes wait in the outbox, L1 decides alone. */
static int drops_heads(wtx *w)
{
    return w->st->backed && entries(w->txn, w->st->dbi[DB_OUTBOX]) == 0;
}

static int evict_body(wtx *w, void *ud)
{
    evict_args *a = ud;
    l2_store *st = w->st;
    int rc;
    a->evicted = a->freed = 0;
    w->drop_heads = drops_heads(w);
    for (size_t i = 0; i < a->n; i++) {
        uint64_t serial;
        record r;
        rc = lookup_id(w->txn, st, a->ids[i], &serial);
        if (rc == MDB_NOTFOUND) continue;
        if (rc || (rc = get_record(w->txn, st, serial, &r))) return rc;
        if (!r.slot) continue; /* a stub already */
        uint32_t size = r.body_len;
        if (l2_event_decode_bin(&st->old, r.head, r.head_len, NULL)) return MDB_CORRUPTED;
        if (a->delete_mode) {
            if (st->old.created_at + 1 > a->horizon) a->horizon = st->old.created_at + 1;
            if ((rc = remove_event(w, serial, 0))) return rc;
        } else {
            /* the body goes; the record takes the stub form (encoded before the body's page is
             * written, since st->old points into it) with slot 0 */
            uint8_t stk[16];
            put_be64(stk, (uint64_t)st->old.created_at);
            put_be64(stk + 8, serial);
            if ((rc = drop_access(w, serial)) || (rc = put_cache_record(w, serial, &st->old, 0, size)) ||
                (rc = free_body(w, r.slot, size)) || (rc = put_empty(w, DB_STUBS, stk, 16)))
                return rc;
        }
        a->freed += size;
        a->evicted++;
    }
    return a->horizon > 0 ? raise_horizon(w, a->horizon) : 0;
}

int l2_store_evict(l2_store *st, const uint8_t (*ids)[32], size_t n, int delete_mode, uint64_t *evicted,
                   uint64_t *freed, char *err)
{
    evict_args a = {ids, n, delete_mode, 0, 0, 0};
    if (write_txn(st, evict_body, &a, err)) return -1;
    *evicted = a.evicted;
    *freed = a.freed;
    return 0;
}

typedef struct {
    size_t max;
    uint64_t dropped;
    int64_t horizon;
} drop_args;

static int drop_body(wtx *w, void *ud)
{
    drop_args *a = ud;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = 0;
    a->dropped = 0;
    w->drop_heads = drops_heads(w);
    while (a->dropped < a->max) {
        if ((rc = mdb_cursor_open(w->txn, w->st->dbi[DB_STUBS], &c))) return rc;
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        uint8_t key[16];
        if (rc == 0 && k.mv_size == 16) memcpy(key, k.mv_data, 16);
        mdb_cursor_close(c);
        if (rc == MDB_NOTFOUND) break; /* no stub left */
        if (rc) return rc;
        int64_t created_at = (int64_t)get_be64(key);
        rc = remove_event(w, get_be64(key + 8), 0);
        if (rc == MDB_NOTFOUND) rc = del_key(w, DB_STUBS, key, 16); /* a dangling entry */
        if (rc) return rc;
        if (created_at + 1 > a->horizon) a->horizon = created_at + 1;
        a->dropped++;
    }
    return a->dropped ? raise_horizon(w, a->horizon) : 0;
}

int l2_store_drop_stubs(l2_store *st, size_t max, uint64_t *dropped, int64_t *horizon, char *err)
{
    drop_args a = {max, 0, 0};
    if (write_txn(st, drop_body, &a, err)) return -1;
    *dropped = a.dropped;
    *horizon = a.horizon;
    return 0;
}

typedef struct {
    l2_event *const *evs;
    size_t n;
    uint64_t revived;
} revive_args;

static int revive_body(wtx *w, void *ud)
{
    revive_args *a = ud;
    l2_store *st = w->st;
    uint64_t ms = now_ms();
    a->revived = 0;
    for (size_t i = 0; i < a->n; i++) {
        const l2_event *ev = a->evs[i];
        uint64_t serial;
        uint8_t stk[16];
        uint32_t slot;
        record r;
        int rc = lookup_id(w->txn, st, ev->id, &serial);
        if (rc == MDB_NOTFOUND || !st->cache) continue;
        if (rc || (rc = get_record(w->txn, st, serial, &r))) return rc;
        if (r.slot) continue; /* whole already */
        st->body.len = 0;
        if (l2_event_encode_bin(ev, &st->body)) return ENOMEM;
        put_be64(stk, (uint64_t)ev->created_at);
        put_be64(stk + 8, serial);
        if ((rc = put_body(w, st->body.data, st->body.len, &slot)) ||
            (rc = put_cache_record(w, serial, ev, slot, (uint32_t)st->body.len)) ||
            (rc = del_key(w, DB_STUBS, stk, 16)) || (rc = set_access(w, serial, ms, 1)))
            return rc;
        a->revived++;
    }
    return 0;
}

int l2_store_revive(l2_store *st, l2_event *const *evs, size_t n, uint64_t *revived, char *err)
{
    revive_args a = {evs, n, 0};
    if (write_txn(st, revive_body, &a, err)) return -1;
    *revived = a.revived;
    return 0;
}

static size_t meta_key(char *out, size_t cap, const char *key)
{
    int n = snprintf(out, cap, "u:%s", key);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

int l2_store_meta_get(l2_store *st, const char *key, l2_buf *out, int *found, char *err)
{
    char k[256];
    MDB_val kv = {meta_key(k, sizeof k, key), k}, v;
    if (read_begin(st, err)) return -1;
    int rc = mdb_get(st->rtxn, st->dbi[DB_META], &kv, &v);
    *found = rc == 0;
    out->len = 0;
    if (rc == 0 && l2_buf_put(out, v.mv_data, v.mv_size)) rc = ENOMEM;
    l2_store_read_end(st);
    if (rc && rc != MDB_NOTFOUND) return lmdb_fail(err, "meta", rc);
    return 0;
}

int l2_store_meta_get_int(l2_store *st, const char *key, int64_t *value, int *found, char *err)
{
    l2_buf v;
    l2_buf_init(&v);
    int rc = l2_store_meta_get(st, key, &v, found, err);
    if (rc == 0 && *found && parse_int(v.data, v.len, value)) *found = 0;
    l2_buf_free(&v);
    return rc;
}

typedef struct {
    const char *key;
    const void *val;
    size_t n;
} meta_args;

static int meta_body(wtx *w, void *ud)
{
    meta_args *a = ud;
    char k[256];
    MDB_val kv = {meta_key(k, sizeof k, a->key), k}, v = {a->n, (void *)a->val};
    return mdb_put(w->txn, w->st->dbi[DB_META], &kv, &v, 0);
}

int l2_store_meta_set(l2_store *st, const char *key, const void *val, size_t n, char *err)
{
    meta_args a = {key, val, n};
    return write_txn(st, meta_body, &a, err);
}

int l2_store_meta_set_int(l2_store *st, const char *key, int64_t value, char *err)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%lld", (long long)value);
    return l2_store_meta_set(st, key, num, (size_t)n, err);
}

typedef struct {
    const char *key;
    int64_t value;
} meta_raise_args;

/* Reads the value and writes the larger of it and the new one, in one write transaction: LMDB
 * has one writer at a time, so processes raising a value together never lower it. */
static int meta_raise_body(wtx *w, void *ud)
{
    meta_raise_args *a = ud;
    char k[256], text[32];
    MDB_val kv = {meta_key(k, sizeof k, a->key), k}, v;
    int64_t stored;
    if (mdb_get(w->txn, w->st->dbi[DB_META], &kv, &v) == 0 && parse_int(v.mv_data, v.mv_size, &stored) == 0 &&
        stored >= a->value) {
        a->value = stored;
        return 0;
    }
    int n = snprintf(text, sizeof text, "%lld", (long long)a->value);
    v.mv_size = (size_t)n;
    v.mv_data = text;
    return mdb_put(w->txn, w->st->dbi[DB_META], &kv, &v, 0);
}

static int raise_horizon(wtx *w, int64_t h)
{
    meta_raise_args a = {"horizon", h};
    return meta_raise_body(w, &a);
}

int l2_store_meta_raise(l2_store *st, const char *key, int64_t value, int64_t *now_value, char *err)
{
    meta_raise_args a = {key, value};
    if (write_txn(st, meta_raise_body, &a, err)) return -1;
    *now_value = a.value;
    return 0;
}

/* ---- a cache's place in its L2's change feed ---- */

/* The record under FEED_KEY: pos(8), then up to AHEAD_MAX ranges first(8) last(8) past pos that
 * were applied out of order, ascending; a range's last has NONCOMMUTING set when its changes may
 * not commute with others (see l2_store_mirror_next). */
#define AHEAD_MAX 64
#define NONCOMMUTING (UINT64_C(1) << 63)

typedef struct {
    uint64_t pos;
    size_t n;
    uint64_t ahead[AHEAD_MAX][2];
} feed_pos;

static int feed_get(MDB_txn *txn, l2_store *st, feed_pos *f, int *known)
{
    MDB_val k = {strlen(FEED_KEY), (void *)FEED_KEY}, v;
    int rc = mdb_get(txn, st->dbi[DB_META], &k, &v);
    memset(f, 0, sizeof *f);
    *known = rc == 0;
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    const uint8_t *p = v.mv_data;
    if (v.mv_size < 8 || (v.mv_size - 8) % 16 || (v.mv_size - 8) / 16 > AHEAD_MAX) return MDB_CORRUPTED;
    f->pos = get_be64(p);
    f->n = (v.mv_size - 8) / 16;
    for (size_t i = 0; i < f->n; i++) {
        f->ahead[i][0] = get_be64(p + 8 + 16 * i);
        f->ahead[i][1] = get_be64(p + 16 + 16 * i);
    }
    return 0;
}

static int feed_put(wtx *w, const feed_pos *f)
{
    uint8_t b[8 + 16 * AHEAD_MAX];
    put_be64(b, f->pos);
    for (size_t i = 0; i < f->n; i++) {
        put_be64(b + 8 + 16 * i, f->ahead[i][0]);
        put_be64(b + 16 + 16 * i, f->ahead[i][1]);
    }
    MDB_val k = {strlen(FEED_KEY), (void *)FEED_KEY}, v = {8 + 16 * f->n, b};
    return mdb_put(w->txn, w->st->dbi[DB_META], &k, &v, 0);
}

/* Records, in the write under way, that it mirrors L2's changes [first, last]: the position
 * moves past them when they follow it, and past the ranges ahead that then follow, when all of
 * them commute (then the order they were applied in does not matter); otherwise L1 must replay
 * them in order. Changes that do not follow the position are kept ahead of the gap (a writer
 * between its two commits, or one that died there). */
static int mirror_apply(wtx *w, int *result)
{
    l2_store *st = w->st;
    uint64_t first = st->mirror_first, last = st->mirror_last;
    feed_pos f;
    int known, rc = feed_get(w->txn, st, &f, &known);
    if (rc) return rc;
    if (!known) {
        *result = L2_MIRROR_REPLAY; /* no position yet: the backend's catch-up sets one */
        return 0;
    }
    if (first > last || last <= f.pos) {
        *result = L2_MIRROR_AT;
        return 0;
    }
    if (first <= f.pos + 1) {
        int commute = st->mirror_commutes;
        f.pos = last;
        size_t kept = 0;
        for (size_t i = 0; i < f.n; i++) {
            uint64_t a_first = f.ahead[i][0], a_last = f.ahead[i][1] & ~NONCOMMUTING;
            int a_commutes = !(f.ahead[i][1] & NONCOMMUTING);
            if (a_last <= f.pos) continue;
            if (commute && a_commutes && a_first <= f.pos + 1) {
                f.pos = a_last; /* ascending: the next may follow this one */
                continue;
            }
            if (!a_commutes) commute = 0;
            memcpy(f.ahead[kept++], f.ahead[i], sizeof f.ahead[i]);
        }
        f.n = kept;
        *result = f.n && !commute ? L2_MIRROR_REPLAY : f.n ? L2_MIRROR_AHEAD : L2_MIRROR_AT;
    } else if (f.n == AHEAD_MAX) {
        *result = L2_MIRROR_REPLAY; /* no room to keep it: a replay from the position covers it */
        return 0;
    } else {
        size_t at = f.n;
        while (at > 0 && f.ahead[at - 1][0] > first) at--;
        memmove(f.ahead[at + 1], f.ahead[at], (f.n - at) * sizeof f.ahead[0]);
        f.ahead[at][0] = first;
        f.ahead[at][1] = last | (st->mirror_commutes ? 0 : NONCOMMUTING);
        f.n++;
        *result = L2_MIRROR_AHEAD;
    }
    return feed_put(w, &f);
}

void l2_store_mirror_next(l2_store *st, uint64_t first, uint64_t last, int commutes)
{
    st->mirror_first = first;
    st->mirror_last = last;
    st->mirror_commutes = commutes;
    st->mirror_set = 1;
    st->mirror_result = L2_MIRROR_NONE;
}

int l2_store_mirror_result(l2_store *st)
{
    int r = st->mirror_result;
    st->mirror_result = L2_MIRROR_NONE;
    return r;
}

int l2_store_feed_pos(l2_store *st, uint64_t *pos, int *known, size_t *ahead, char *err)
{
    feed_pos f;
    if (read_begin(st, err)) return -1;
    int rc = feed_get(st->rtxn, st, &f, known);
    l2_store_read_end(st);
    if (rc) return lmdb_fail(err, "feed position", rc);
    *pos = f.pos;
    *ahead = f.n;
    return 0;
}

static int feed_reset_body(wtx *w, void *ud)
{
    feed_pos f = {*(const uint64_t *)ud, 0, {{0}}};
    return feed_put(w, &f);
}

int l2_store_feed_reset(l2_store *st, uint64_t pos, char *err)
{
    return write_txn(st, feed_reset_body, &pos, err);
}

static int nothing_body(wtx *w, void *ud)
{
    (void)w;
    (void)ud;
    return 0;
}

int l2_store_feed_advance(l2_store *st, uint64_t first, uint64_t last, int *result, char *err)
{
    l2_store_mirror_next(st, first, last, 0); /* a replay's changes: anything */
    if (write_txn(st, nothing_body, NULL, err)) return -1;
    *result = l2_store_mirror_result(st);
    return 0;
}

void l2_store_last_changes(const l2_store *st, uint64_t *first, uint64_t *last)
{
    *first = st->last_first;
    *last = st->last_last;
}

/* ---- remembered answers ---- */

/* An answer's events by id: an event kept by serial gives its record's id; one no longer in L1
 * (dropped, deleted) leaves no id to give, and the answer does not stand (MDB_NOTFOUND). */
static int answer_ids(l2_store *st, const l2_answer_view *a, l2_buf *ids)
{
    size_t start = ids->len;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t serial;
        const uint8_t *id;
        record r;
        int whole = l2_answer_entry(a, i, &serial, &id), rc;
        if (whole < 0) return MDB_CORRUPTED;
        if (whole == 1) {
            if ((rc = get_record(st->rtxn, st, serial, &r))) {
                ids->len = start;
                return rc;
            }
            if (r.head_len < 33) return MDB_CORRUPTED;
            id = r.head + 1;
        }
        if (l2_buf_put(ids, id, 32)) return ENOMEM;
    }
    return 0;
}

int l2_store_answer_get(l2_store *st, const l2_answer_key *k, int64_t t, l2_buf *ids, int *found, uint64_t *seq,
                        char *err)
{
    l2_answer_view a;
    *found = 0;
    if (read_begin(st, err)) return -1;
    int rc = meta_get_u64(st->rtxn, st->dbi[DB_META], "seq", seq);
    if (rc == 0) rc = l2_answers_get(st->rtxn, st->dbi[DB_ANSWERS], k, t, &a);
    if (rc == 0) rc = answer_ids(st, &a, ids);
    *found = rc == 0;
    l2_store_read_end(st);
    if (rc == ENOMEM) return fail(err, "error: out of memory");
    if (rc && rc != MDB_NOTFOUND) return lmdb_fail(err, "reading a remembered answer", rc);
    return 0;
}

typedef struct {
    save_args save;
    const l2_answer_key *k;
    const uint8_t (*ids)[32];
    size_t n;
    int64_t expires;
    uint64_t max_ids, seq;
    int kept;
} fill_args;

/* Did a change from seq on save an event the filter may match (or one no longer there to say)? */
static int touched_since(wtx *w, const l2_filter *f, uint64_t seq, int *touched)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[8];
    uint64_t seen = 0;
    *touched = 0;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_CHANGES], &c);
    if (rc) return rc;
    put_be64(start, seq);
    k.mv_size = 8;
    k.mv_data = start;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && !*touched;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        seen++;
        if (v.mv_size < 9 || ((const uint8_t *)v.mv_data)[0] != L2_CHANGE_SAVED) continue;
        record r;
        int lrc = load_head(w->st, w->txn, get_be64((const uint8_t *)v.mv_data + 1), &w->st->old, &r);
        if (lrc && lrc != MDB_NOTFOUND) {
            rc = lrc;
            break;
        }
        *touched = lrc == MDB_NOTFOUND || l2_filter_match(f, &w->st->old);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) return rc;
    /* changes pruned since seq cannot be read: the answer may have missed them */
    if (!*touched && seen != w->seq - seq) *touched = 1;
    return 0;
}

static int fill_body(wtx *w, void *ud)
{
    fill_args *a = ud;
    int rc = a->save.n ? save_body(w, &a->save) : 0;
    a->kept = 0;
    if (rc || !a->k) return rc;
    l2_filter f;
    l2_filter_init(&f);
    int touched = 1;
    rc = l2_answer_filter(a->k, &f) ? MDB_INCOMPATIBLE : touched_since(w, &f, a->seq, &touched);
    l2_filter_free(&f);
    a->kept = rc == 0 && !touched;
    if (!a->kept) return rc;
    /* the events L1 holds (this fill's among them) are kept by serial */
    uint64_t small[64], *serials = a->n <= 64 ? small : malloc(a->n * sizeof *serials);
    if (!serials) return ENOMEM;
    for (size_t i = 0; rc == 0 && i < a->n; i++) {
        rc = lookup_id(w->txn, w->st, a->ids[i], &serials[i]);
        if (rc == MDB_NOTFOUND) serials[i] = 0, rc = 0;
    }
    if (rc == 0) rc = l2_answers_put(w->txn, w->st->dbi[DB_ANSWERS], a->k, serials, a->ids, a->n, a->expires, a->max_ids);
    if (serials != small) free(serials);
    return rc;
}

int l2_store_fill(l2_store *st, l2_event *const *evs, size_t n, int64_t now, l2_save_result *res,
                  const l2_answer_key *k, const uint8_t (*ids)[32], size_t nids, int64_t expires, uint64_t max_ids,
                  uint64_t seq, int *kept, char *err)
{
    fill_args a = {{evs, n, now, L2_SAVE_FILL, res}, k, ids, nids, expires, max_ids, seq, 0};
    int rc = write_txn(st, fill_body, &a, err);
    *kept = a.kept;
    return rc;
}

static int answer_drop_body(wtx *w, void *ud)
{
    return l2_answers_drop(w->txn, w->st->dbi[DB_ANSWERS], ud);
}

int l2_store_answer_drop(l2_store *st, const l2_answer_key *k, char *err)
{
    return write_txn(st, answer_drop_body, (void *)k, err);
}

static int answers_clear_body(wtx *w, void *ud)
{
    (void)ud;
    return mdb_drop(w->txn, w->st->dbi[DB_ANSWERS], 0);
}

int l2_store_answers_clear(l2_store *st, char *err)
{
    return write_txn(st, answers_clear_body, NULL, err);
}

int l2_store_outbox_list(l2_store *st, size_t max, l2_outbox_item *out, size_t *n, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    *n = 0;
    if (read_begin(st, err)) return -1;
    int rc = mdb_cursor_open(st->rtxn, st->dbi[DB_OUTBOX], &c);
    if (rc) {
        l2_store_read_end(st);
        return lmdb_fail(err, "outbox", rc);
    }
    while (*n < max && mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        if (k.mv_size != 8) continue;
        out[*n].seq = get_be64(k.mv_data);
        out[*n].data = v.mv_data;
        out[*n].len = v.mv_size;
        (*n)++;
    }
    mdb_cursor_close(c);
    return 0;
}

static int ack_body(wtx *w, void *ud)
{
    uint8_t k[8];
    put_be64(k, *(uint64_t *)ud);
    return del_key(w, DB_OUTBOX, k, 8);
}

int l2_store_outbox_ack(l2_store *st, uint64_t seq, char *err)
{
    return write_txn(st, ack_body, &seq, err);
}

typedef struct {
    uint64_t keep, pruned;
} prune_args;

static int prune_body(wtx *w, void *ud)
{
    prune_args *a = ud;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t n = entries(w->txn, w->st->dbi[DB_CHANGES]);
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_CHANGES], &c);
    a->pruned = 0;
    if (rc) return rc;
    while (n > a->keep && (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0) {
        if ((rc = mdb_cursor_del(c, 0))) break;
        n--;
        a->pruned++;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int l2_store_prune_changes(l2_store *st, uint64_t keep, uint64_t *pruned, char *err)
{
    prune_args a = {keep, 0};
    if (write_txn(st, prune_body, &a, err)) return -1;
    *pruned = a.pruned;
    return 0;
}

/* ---- repacking (a cache) ----
 * A cache's trees churn: entries arrive in one order and leave in another, and LMDB merges a page
 * only once it is under a quarter full, so they settle about half full: bytes the cache could hold
 * events in. A tree whose leaves are less full than asked is rewritten: its entries copied out,
 * the tree emptied, the entries appended in order (which fills every page). One write transaction
 * per tree, the smaller trees first: the pages a rewrite frees come free when it commits, for the
 * next. Memory: one tree's entries. */

#define REPACK_TREE_MAX (64u << 20) /* bytes: a larger tree is left as it is */
#define NO_CHANGE (-2)              /* a tree left as it is: its transaction is aborted */

static const int repacked_trees[] = {DB_STUBS,   DB_FREESLOTS, DB_REPLACE, DB_TOMB,   DB_ATOMB,  DB_EXPIRE,
                                     DB_ANSWERS, DB_CREATED,   DB_KIND,    DB_LRU,    DB_ACCESS, DB_PUBKEY,
                                     DB_PUBKIND, DB_IDS,       DB_TAG,     DB_EVENTS, DB_BODIES};

/* Keys arrive anywhere in these trees (by pubkey, kind, tag value...): packed full, each page
 * would split at its next insert and the tree be half empty again by the next pass. They are
 * rewritten with SLACK percent of each page left free, which a pass's inserts fill; except in a
 * map of less than SLACK_MIN_MAP, whose write transactions need every page it can free. */
#define SLACK 20
#define SLACK_MIN_MAP (4u << 20)
static int has_slack(const l2_store *st, int db)
{
    return st->sh->map_size >= SLACK_MIN_MAP &&
           (db == DB_PUBKEY || db == DB_KIND || db == DB_PUBKIND || db == DB_TAG || db == DB_CREATED ||
            db == DB_REPLACE || db == DB_STUBS || db == DB_EXPIRE);
}

typedef struct {
    int db;
    unsigned min_fill;      /* percent */
    uint64_t before, after; /* bytes in the leaf and overflow pages of the trees rewritten */
    l2_buf copy;            /* entries: key length (2) | value length (4) | key | value */
    l2_buf fillers;         /* the keys that held the slack while the tree was written */
} repack_args;

/* The bytes an entry takes in a leaf of LMDB: node header, key, value (a page number when the
 * value overflows), even-aligned, and its slot in the page's index. */
static uint64_t node_bytes(size_t psize, size_t k, size_t v)
{
    size_t n = 8 + k + v;
    if (n > ((psize - 16) / 2 & ~(size_t)1) - 2) n = 8 + k + 8;
    return (n + 1) / 2 * 2 + 2;
}

/* Rewrites the tree a->db when its leaves are less than a->min_fill full: NO_CHANGE when not. */
static int repack_tree(wtx *w, repack_args *a)
{
    MDB_dbi dbi = w->st->dbi[a->db];
    MDB_stat s, after;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t held = 0;
    int rc = mdb_stat(w->txn, dbi, &s);
    if (rc) return rc;
    uint64_t bytes = (uint64_t)(s.ms_leaf_pages + s.ms_overflow_pages) * s.ms_psize;
    if (s.ms_leaf_pages < 8) return NO_CHANGE;
    if (bytes > 2 * (uint64_t)REPACK_TREE_MAX) return E2BIG;
    /* first how full the leaves are, then (when worth it) the copy */
    if ((rc = mdb_cursor_open(w->txn, dbi, &c))) return rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        held += node_bytes(s.ms_psize, k.mv_size, v.mv_size);
    if (rc == MDB_NOTFOUND && held * 100 >= (uint64_t)s.ms_leaf_pages * (s.ms_psize - 16) * a->min_fill)
        rc = NO_CHANGE;
    a->copy.len = 0;
    for (rc = rc == MDB_NOTFOUND ? mdb_cursor_get(c, &k, &v, MDB_FIRST) : rc; rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint8_t len[6];
        put_be16(len, (uint32_t)k.mv_size);
        put_be32(len + 2, (uint32_t)v.mv_size);
        if (a->copy.len + 6 + k.mv_size + v.mv_size > REPACK_TREE_MAX) rc = E2BIG;
        else if (l2_buf_put(&a->copy, len, 6) || l2_buf_put(&a->copy, k.mv_data, k.mv_size) ||
                 l2_buf_put(&a->copy, v.mv_data, v.mv_size))
            rc = ENOMEM;
        if (rc) break;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return rc;
    if ((rc = mdb_drop(w->txn, dbi, 0)) || (rc = mdb_cursor_open(w->txn, dbi, &c))) return rc;
    /* appended in order, LMDB fills a page until the next entry does not fit, then starts the
     * next: `used` follows that, and where a page of a tree with slack has taken its share, a
     * filler entry (the previous key and a 0 byte: between it and the next) takes the rest */
    size_t room = s.ms_psize - 16, share = has_slack(w->st, a->db) ? room * (100 - SLACK) / 100 : room, used = 0;
    MDB_val prev = {0, NULL};
    a->fillers.len = 0;
    for (const uint8_t *p = (const uint8_t *)a->copy.data, *end = p + a->copy.len; rc == 0 && p < end;) {
        k.mv_size = (size_t)p[0] << 8 | p[1];
        v.mv_size = get_be32(p + 2);
        k.mv_data = (void *)(p + 6);
        v.mv_data = (void *)(p + 6 + k.mv_size);
        p += 6 + k.mv_size + v.mv_size;
        size_t node = node_bytes(s.ms_psize, k.mv_size, v.mv_size);
        if (used && used + node > share && share < room) {
            /* a node of 8 + key + value bytes, even, and 2 for its slot: the page's last bytes */
            size_t fk = prev.mv_size + 1, fv = room - used >= 8 + fk + 2 + 1 ? (room - used - 2 - 8 - fk) & ~(size_t)1 : 0;
            uint8_t key[MAX_ADDR_KEY + 1 + 16];
            if (fv && fk <= sizeof key && 8 + fk + fv <= room / 2 - 2) {
                memcpy(key, prev.mv_data, prev.mv_size);
                key[prev.mv_size] = 0;
                MDB_val fkey = {fk, key}, fval = {fv - (fk & 1), NULL};
                if ((rc = mdb_cursor_put(c, &fkey, &fval, MDB_APPEND | MDB_RESERVE))) break;
                memset(fval.mv_data, 0, fval.mv_size);
                uint8_t len = (uint8_t)fk;
                if (l2_buf_put(&a->fillers, &len, 1) || l2_buf_put(&a->fillers, key, fk)) {
                    rc = ENOMEM;
                    break;
                }
                used = 0;
            }
        }
        used = used + node > room ? node : used + node;
        /* a key's further values (ids sharing a prefix) follow it as sorted duplicates */
        int again = prev.mv_data && prev.mv_size == k.mv_size && memcmp(prev.mv_data, k.mv_data, k.mv_size) == 0;
        rc = mdb_cursor_put(c, &k, &v, again ? MDB_APPENDDUP : MDB_APPEND);
        prev = k;
    }
    mdb_cursor_close(c);
    for (const uint8_t *p = (const uint8_t *)a->fillers.data, *end = p + a->fillers.len; rc == 0 && p < end; p += 1 + p[0]) {
        MDB_val fkey = {p[0], (void *)(p + 1)};
        rc = mdb_del(w->txn, dbi, &fkey, NULL);
    }
    if (rc || (rc = mdb_stat(w->txn, dbi, &after))) return rc;
    a->before += bytes;
    a->after += (uint64_t)(after.ms_leaf_pages + after.ms_overflow_pages) * s.ms_psize;
    return 0;
}

int l2_store_repack(l2_store *st, unsigned min_fill, uint64_t *freed, int *whole, char *err)
{
    repack_args a = {.min_fill = min_fill};
    int rc = 0;
    *whole = 1;
    l2_buf_init(&a.copy);
    l2_buf_init(&a.fillers);
    for (size_t i = 0; rc == 0 && i < sizeof repacked_trees / sizeof repacked_trees[0]; i++) {
        wtx w;
        a.db = repacked_trees[i];
        if ((rc = write_begin(st, &w))) break;
        rc = repack_tree(&w, &a);
        if (rc == 0) rc = write_commit(&w);
        else mdb_txn_abort(w.txn);
        /* a tree too large, or that finds no room for its copy, stays as it is (a later pass may
         * find room) */
        if (rc == E2BIG || rc == MDB_MAP_FULL) *whole = 0;
        if (rc == NO_CHANGE || rc == E2BIG || rc == MDB_MAP_FULL) rc = 0;
    }
    l2_buf_free(&a.copy);
    l2_buf_free(&a.fillers);
    *freed = a.before > a.after ? a.before - a.after : 0;
    if (rc == ENOMEM) return fail(err, "error: out of memory");
    return rc ? lmdb_fail(err, "repacking", rc) : 0;
}

/* ---- indexes built at the end of an import ----
 * An import into an empty store writes events, ids and heads batch by batch, and the indexes
 * once at its end: each index's keys sorted, then appended (MDB_APPEND fills every page; keys
 * put in random order leave B-tree pages about half full, and each batch would copy most of them
 * again, pages the file keeps as free space). One pass over the events decodes each once and
 * collects the keys of all six indexes (about 250 bytes an event in memory); when they would not
 * fit in the store's index_memory, one pass per index holds one index's keys at a time. The meta
 * record "indexing" names the importing process: while it runs, other processes save with their
 * indexes as usual (the build includes them); if it dies, the next process to open the store or
 * to import builds them. */

typedef struct {
    int db;
    l2_buf keys; /* length (1 byte) and key, one after another */
    size_t *at, n, cap;
} key_list;

/* The indexes one pass over the events collects: all of them, or one at a time for a store so
 * large that all its keys would not fit in memory together. */
enum { NINDEX = 6 };
typedef struct {
    key_list l[NINDEX];
    size_t n;
    /* lists 1..n-1 are sorted on a thread while the writer appends the ones before */
    pthread_mutex_t lock;
    pthread_cond_t sorted_one;
    size_t sorted; /* lists sorted so far */
} key_lists;
#define KEYS_PER_EVENT 250 /* bytes of index keys an event, about */

static int collect_key(void *ud, int db, const uint8_t *key, size_t n)
{
    key_lists *ls = ud;
    key_list *l = NULL;
    for (size_t i = 0; i < ls->n && !l; i++)
        if (ls->l[i].db == db) l = &ls->l[i];
    if (!l) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        size_t *at = realloc(l->at, cap * sizeof *at);
        if (!at) return ENOMEM;
        l->at = at;
        l->cap = cap;
    }
    l->at[l->n++] = l->keys.len;
    return l2_buf_putc(&l->keys, (char)n) || l2_buf_put(&l->keys, key, n) ? ENOMEM : 0;
}

/* LMDB's default order: bytes, then the shorter first */
static int key_order(const void *a, const void *b, void *ud)
{
    const uint8_t *base = ud, *x = base + *(const size_t *)a, *y = base + *(const size_t *)b;
    size_t nx = x[0], ny = y[0];
    int c = memcmp(x + 1, y + 1, nx < ny ? nx : ny);
    return c ? c : (nx > ny) - (nx < ny);
}

static void sort_list(key_list *l)
{
    if (l->n) qsort_r(l->at, l->n, sizeof *l->at, key_order, l->keys.data); /* an index without keys has no list */
}

/* Sorts the lists after the first, in order, saying when each is done. */
static void *sort_lists(void *arg)
{
    key_lists *ls = arg;
    for (size_t i = 1; i < ls->n; i++) {
        sort_list(&ls->l[i]);
        pthread_mutex_lock(&ls->lock);
        ls->sorted = i + 1;
        pthread_cond_signal(&ls->sorted_one);
        pthread_mutex_unlock(&ls->lock);
    }
    return NULL;
}

/* Appends the sorted keys of one index to its emptied tree. */
static int write_index(wtx *w, key_list *l)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    if ((rc = mdb_drop(w->txn, w->st->dbi[l->db], 0)) || (rc = mdb_cursor_open(w->txn, w->st->dbi[l->db], &c)))
        return rc;
    const uint8_t *prev = NULL;
    for (size_t i = 0; rc == 0 && i < l->n; i++) {
        const uint8_t *key = (const uint8_t *)l->keys.data + l->at[i];
        if (prev && prev[0] == key[0] && memcmp(prev + 1, key + 1, key[0]) == 0) continue; /* a tag twice */
        prev = key;
        k.mv_size = key[0];
        k.mv_data = (void *)(key + 1);
        v.mv_size = 0;
        v.mv_data = "";
        rc = mdb_cursor_put(c, &k, &v, MDB_APPEND);
    }
    mdb_cursor_close(c);
    return rc;
}

/* Builds the indexes in ls: one decode of each event, then each index written. */
static int build_some(wtx *w, key_lists *ls)
{
    l2_store *st = w->st;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(w->txn, st->dbi[DB_EVENTS], &c);
    for (size_t i = 0; i < ls->n; i++) ls->l[i].n = ls->l[i].keys.len = 0;
    for (rc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8 || l2_event_decode_bin(&st->ev, v.mv_data, v.mv_size, NULL)) continue; /* check() says */
        if ((rc = for_each_index(st->sh->key_prefix, &st->ev, get_be64(k.mv_data), collect_key, ls))) break;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return rc;
    /* the writer sorts the first list and appends each in turn; a thread sorts the others
     * meanwhile (all of them itself when the thread cannot start) */
    pthread_t tid;
    ls->sorted = 1;
    int threaded = ls->n > 1 && pthread_create(&tid, NULL, sort_lists, ls) == 0;
    if (!threaded) sort_lists(ls);
    sort_list(&ls->l[0]);
    rc = 0;
    for (size_t i = 0; rc == 0 && i < ls->n; i++) {
        pthread_mutex_lock(&ls->lock);
        while (ls->sorted <= i) pthread_cond_wait(&ls->sorted_one, &ls->lock);
        pthread_mutex_unlock(&ls->lock);
        rc = write_index(w, &ls->l[i]);
    }
    if (threaded) pthread_join(tid, NULL);
    return rc;
}

static int build_indexes(wtx *w)
{
    static const int dbs[NINDEX] = {DB_PUBKEY, DB_KIND, DB_PUBKIND, DB_TAG, DB_CREATED, DB_EXPIRE};
    key_lists ls;
    memset(&ls, 0, sizeof ls);
    pthread_mutex_init(&ls.lock, NULL);
    pthread_cond_init(&ls.sorted_one, NULL);
    for (size_t i = 0; i < NINDEX; i++) {
        ls.l[i].db = dbs[i];
        l2_buf_init(&ls.l[i].keys);
    }
    int rc = 0;
    if (entries(w->txn, w->st->dbi[DB_EVENTS]) <= w->st->index_memory / KEYS_PER_EVENT) {
        ls.n = NINDEX;
        rc = build_some(w, &ls);
    } else {
        /* one index a pass, in the first list's memory */
        ls.n = 1;
        for (size_t i = 0; rc == 0 && i < NINDEX; i++) {
            ls.l[0].db = dbs[i];
            rc = build_some(w, &ls);
        }
    }
    for (size_t i = 0; i < NINDEX; i++) {
        l2_buf_free(&ls.l[i].keys);
        free(ls.l[i].at);
    }
    pthread_mutex_destroy(&ls.lock);
    pthread_cond_destroy(&ls.sorted_one);
    if (rc) return rc;
    MDB_val k = {8, "indexing"};
    rc = mdb_del(w->txn, w->st->dbi[DB_META], &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int process_gone(uint64_t pid)
{
    return pid > 0 && pid < INT32_MAX && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Whether this batch of an import leaves the indexes to its end: this process's import into a
 * store that was empty. An importer that died left them to be built: done here first. */
static int deferring(wtx *w, int *defer)
{
    uint64_t pid;
    int rc = meta_get_opt(w->txn, w->st->dbi[DB_META], "indexing", &pid);
    *defer = 0;
    if (rc) return rc;
    if (pid == (uint64_t)getpid()) {
        *defer = 1;
        return 0;
    }
    if (process_gone(pid)) {
        if ((rc = build_indexes(w))) return rc;
        pid = 0;
    }
    if (pid || entries(w->txn, w->st->dbi[DB_EVENTS]) > 0) return 0;
    *defer = 1;
    return meta_put_u64(w->txn, w->st->dbi[DB_META], "indexing", (uint64_t)getpid());
}

typedef struct {
    int dead_only; /* only for an importer that died: on open */
} finish_args;

static int finish_body(wtx *w, void *ud)
{
    finish_args *a = ud;
    uint64_t pid;
    int rc = meta_get_opt(w->txn, w->st->dbi[DB_META], "indexing", &pid);
    if (rc || !pid) return rc;
    if (a->dead_only ? !process_gone(pid) : pid != (uint64_t)getpid()) return 0;
    return build_indexes(w);
}

/* The indexes an import left to its end, built: this process's (after_import), or, on open, a
 * dead importer's. A read first, so an open has no write to do in the usual case. */
static int finish_indexing(l2_store *st, int dead_only, char *err)
{
    MDB_txn *txn;
    uint64_t pid = 0;
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = meta_get_opt(txn, st->dbi[DB_META], "indexing", &pid);
        mdb_txn_abort(txn);
    }
    if (rc) return lmdb_fail(err, "reading the store", rc);
    if (!pid) return 0;
    finish_args a = {dead_only};
    return write_txn(st, finish_body, &a, err);
}

int l2_store_after_import(l2_store *st, char *err)
{
    return finish_indexing(st, 0, err);
}

/* ---- upgrade ---- */

typedef struct {
    MDB_txn *txn;
    MDB_dbi *dbi;
} reindex;

/* The indexes every older format keyed otherwise (all but expire) get the key. */
static int reindex_put(void *ud, int db, const uint8_t *key, size_t n)
{
    reindex *r = ud;
    if (db == DB_EXPIRE) return 0;
    MDB_val k = {n, (void *)key}, v = {0, ""};
    return mdb_put(r->txn, r->dbi[db], &k, &v, 0);
}

/* Orders items of *(size_t *)n bytes. */
static int same_size_order(const void *a, const void *b, void *n)
{
    return memcmp(a, b, *(const size_t *)n);
}

int l2_store_upgrade(const char *path, void (*progress)(void *ud, uint64_t done, uint64_t total), void *ud,
                     uint64_t *events, int *already, char *err)
{
    char file[4096];
    struct stat sb;
    *events = 0;
    *already = 0;
    snprintf(file, sizeof file, "%s/data.mdb", path);
    if (stat(file, &sb) != 0) return fail(err, "error: no store at '%s'", path);
    if (stat(path, &sb) != 0) return fail(err, "error: cannot read '%s': %s", path, strerror(errno));
    pthread_mutex_lock(&registry_lock);
    shared_env *open_here = registry;
    while (open_here && !(open_here->dev == sb.st_dev && open_here->ino == sb.st_ino)) open_here = open_here->next;
    pthread_mutex_unlock(&registry_lock);
    if (open_here) return fail(err, "error: the store at '%s' is open in this process: close it first", path);
    shared_env sh;
    memset(&sh, 0, sizeof sh);
    static const l2_store_opts defaults = {0};
    if (env_open(&sh, path, &defaults, 1, err)) return -1;
    if (sh.version == SCHEMA_VERSION) {
        *already = 1;
        mdb_env_close(sh.env);
        return 0;
    }
    /* one write transaction: killed at any point, the store is the store it was */
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    MDB_val k, v;
    l2_event ev;
    l2_event_init(&ev);
    l2_buf ids;
    l2_buf_init(&ids);
    uint64_t cache = 0, total = 0;
    size_t prefix = sh.version == 1 ? KEY_PREFIX : sh.key_prefix, item = prefix + 8;
    int rc = mdb_txn_begin(sh.env, NULL, 0, &txn);
    if (rc) goto fail;
    total = entries(txn, sh.dbi[DB_EVENTS]);
    /* a cache's records start with slot and length (see the layout); only a cache counts slots.
     * The scanned indexes (their tails) and the ids are rebuilt. */
    if ((rc = meta_get_opt(txn, sh.dbi[DB_META], "next_slot", &cache)) ||
        (rc = mdb_drop(txn, sh.dbi[DB_PUBKEY], 0)) || (rc = mdb_drop(txn, sh.dbi[DB_PUBKIND], 0)) ||
        (rc = mdb_drop(txn, sh.dbi[DB_KIND], 0)) || (rc = mdb_drop(txn, sh.dbi[DB_CREATED], 0)) ||
        (rc = mdb_drop(txn, sh.dbi[DB_TAG], 0)) || (rc = mdb_drop(txn, sh.dbi[DB_IDS], 1)) ||
        (rc = mdb_dbi_open(txn, db_names[DB_IDS], MDB_CREATE | IDS_FLAGS, &sh.dbi[DB_IDS])) ||
        (rc = mdb_cursor_open(txn, sh.dbi[DB_EVENTS], &c)))
        goto abort;
    reindex r = {txn, sh.dbi};
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        /* the head: after a cache's slot and length, or (format 3) its body when that is all */
        MDB_val head = {v.mv_size - (cache ? 8 : 0), (uint8_t *)v.mv_data + (cache ? 8 : 0)};
        if (cache && v.mv_size == 8) {
            MDB_val slot = {4, v.mv_data};
            if ((rc = mdb_get(txn, sh.dbi[DB_BODIES], &slot, &head))) rc = MDB_CORRUPTED;
        }
        if (rc == 0 && (k.mv_size != 8 || v.mv_size < 8 || head.mv_size < 33 ||
                        l2_event_decode_bin(&ev, head.mv_data, head.mv_size, NULL)))
            rc = MDB_CORRUPTED;
        if (rc || (rc = for_each_index(prefix, &ev, get_be64(k.mv_data), reindex_put, &r))) goto abort;
        if (l2_buf_put(&ids, (const uint8_t *)head.mv_data + 1, prefix) || l2_buf_put(&ids, k.mv_data, 8)) {
            rc = ENOMEM;
            goto abort;
        }
        /* a cached body's record takes in its access statistics, which format 3 kept apart */
        if (cache && get_be32(v.mv_data)) {
            uint8_t sk[8], rec[CACHE_RECORD] = {0};
            memcpy(sk, k.mv_data, 8);
            memcpy(rec, v.mv_data, 8);
            MDB_val key = {8, sk}, acc, rv = {CACHE_RECORD, rec};
            if ((rc = mdb_get(txn, sh.dbi[DB_ACCESS], &key, &acc)) == 0 && acc.mv_size == 12)
                memcpy(rec + 8, acc.mv_data, 12);
            if ((rc && rc != MDB_NOTFOUND) || (rc = mdb_cursor_put(c, &key, &rv, MDB_CURRENT))) goto abort;
        }
        if (++*events % 4096 == 0 && progress) progress(ud, *events, total);
    }
    if (rc != MDB_NOTFOUND) goto abort;
    mdb_cursor_close(c);
    c = NULL;
    /* a cache's lru keys, from its access records */
    if (cache && ((rc = mdb_drop(txn, sh.dbi[DB_LRU], 0)) || (rc = mdb_cursor_open(txn, sh.dbi[DB_ACCESS], &c))))
        goto abort;
    for (rc = cache ? mdb_cursor_get(c, &k, &v, MDB_FIRST) : MDB_NOTFOUND; rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint8_t lk[LRU_KEY];
        if (k.mv_size != 8 || v.mv_size != 12) {
            rc = MDB_CORRUPTED;
            goto abort;
        }
        lru_key(lk, get_be64(v.mv_data), get_be64(k.mv_data));
        MDB_val lkv = {LRU_KEY, lk}, empty = {0, ""};
        if ((rc = mdb_put(txn, sh.dbi[DB_LRU], &lkv, &empty, 0))) goto abort;
    }
    if (rc != MDB_NOTFOUND || (cache && (rc = mdb_drop(txn, sh.dbi[DB_ACCESS], 0)))) goto abort;
    if (c) mdb_cursor_close(c);
    c = NULL;
    /* the ids, sorted and appended: full pages */
    if (ids.len) qsort_r(ids.data, ids.len / item, item, same_size_order, &item);
    if ((rc = mdb_cursor_open(txn, sh.dbi[DB_IDS], &c))) goto abort;
    for (size_t i = 0; i < ids.len; i += item) {
        MDB_val ik = {prefix, ids.data + i}, iv = {8, ids.data + i + prefix};
        int again = i && memcmp(ids.data + i - item, ids.data + i, prefix) == 0;
        if ((rc = mdb_cursor_put(c, &ik, &iv, again ? MDB_APPENDDUP : MDB_APPEND))) goto abort;
    }
    mdb_cursor_close(c);
    c = NULL;
    if ((rc = meta_put_u64(txn, sh.dbi[DB_META], "version", SCHEMA_VERSION)) ||
        (rc = meta_put_u64(txn, sh.dbi[DB_META], "key_prefix", prefix)))
        goto abort;
    rc = mdb_txn_commit(txn);
    if (rc) goto fail;
    if (progress) progress(ud, *events, total);
    l2_event_free(&ev);
    l2_buf_free(&ids);
    mdb_env_close(sh.env);
    return 0;
abort:
    if (c) mdb_cursor_close(c);
    mdb_txn_abort(txn);
fail:
    l2_event_free(&ev);
    l2_buf_free(&ids);
    mdb_env_close(sh.env);
    *events = 0;
    if (rc == ENOMEM) return fail(err, "error: out of memory");
    return lmdb_fail(err, "upgrading the store", rc);
}

/* ---- copy ---- */

typedef struct {
    MDB_env *env;
    int fd, compact, rc;
} copy_job;

static void *copy_thread(void *arg)
{
    copy_job *j = arg;
    j->rc = mdb_env_copyfd2(j->env, j->fd, j->compact ? MDB_CP_COMPACT : 0);
    close(j->fd); /* the reader sees the end */
    return NULL;
}

int l2_store_copy(l2_store *st, const char *dir, int compact, void (*progress)(void *ud, uint64_t bytes), void *ud,
                  char *err)
{
    char file[4096];
    int fds[2];
    if (make_dirs(dir) != 0) return fail(err, "error: cannot create '%s': %s", dir, strerror(errno));
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    if (access(file, F_OK) == 0) return fail(err, "error: '%s' already holds a store", dir);
    int out = open(file, O_WRONLY | O_CREAT | O_EXCL, 0664);
    if (out < 0) return fail(err, "error: cannot write '%s': %s", file, strerror(errno));
    if (pipe(fds) != 0) {
        close(out);
        return fail(err, "error: pipe: %s", strerror(errno));
    }
    /* LMDB writes the copy into a pipe from its own thread; this one writes the file and can
     * report progress to its caller (a Lua callback must run on the Lua thread) */
    copy_job job = {st->env, fds[1], compact, 0};
    pthread_t tid;
    if (pthread_create(&tid, NULL, copy_thread, &job) != 0) {
        close(fds[0]);
        close(fds[1]);
        close(out);
        return fail(err, "error: cannot start the copy");
    }
    char buf[1 << 16];
    uint64_t total = 0, reported = 0;
    int werr = 0;
    for (;;) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t off = 0; off < n && !werr;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) werr = errno;
            else off += w;
        }
        total += (uint64_t)n;
        if (progress && total - reported >= (1u << 20)) {
            progress(ud, total);
            reported = total;
        }
        if (werr) break;
    }
    close(fds[0]); /* a write error stops LMDB with EPIPE */
    pthread_join(tid, NULL);
    if (fsync(out) != 0 && !werr) werr = errno;
    close(out);
    if (werr) return fail(err, "error: writing the copy: %s", strerror(werr));
    if (job.rc) return lmdb_fail(err, "copying the store", job.rc);
    if (progress) progress(ud, total);
    return 0;
}

/* ---- check ---- */

typedef struct {
    l2_store *st;
    void (*problem)(void *ud, const char *msg);
    void *ud;
    uint64_t count;
} check_ctx;

typedef struct {
    int db;
    const void *key;
    size_t n;
    int found;
} key_match;

static int key_equal(void *ud, int db, const uint8_t *key, size_t n)
{
    key_match *m = ud;
    if (db == m->db && n == m->n && memcmp(key, m->key, n) == 0) m->found = 1;
    return m->found; /* stop at the first match */
}

static void report(check_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(check_ctx *c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->count++;
    if (c->problem) c->problem(c->ud, msg);
}

static int index_present(void *ud, int db, const uint8_t *key, size_t n)
{
    check_ctx *c = ud;
    MDB_val k = {n, (void *)key}, v;
    if (mdb_get(c->st->rtxn, c->st->dbi[db], &k, &v) != 0) {
        char hex[65];
        l2_hex_encode(hex, c->st->ev.id, 32);
        hex[64] = 0;
        report(c, "event %s is missing from the %s index", hex, db_names[db]);
    }
    return 0;
}

int l2_store_check(l2_store *st, void (*problem)(void *ud, const char *msg), void *ud, uint64_t *nproblems, char *err)
{
    check_ctx c = {st, problem, ud, 0};
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;
    if (read_begin(st, err)) return -1;
    MDB_txn *t = st->rtxn;
    uint64_t importer;
    if ((rc = meta_get_opt(t, st->dbi[DB_META], "indexing", &importer))) goto fail;
    /* every event: decodes, is in ids, and has all its index keys (unless an import running
     * now builds them at its end: then only that is said) */
    if ((rc = mdb_cursor_open(t, st->dbi[DB_EVENTS], &cur))) goto fail;
    if (importer)
        report(&c, "an import (process %llu) is under way: its events get their index keys when it ends",
               (unsigned long long)importer);
    uint64_t nevents = 0, nbodies = 0;
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        uint64_t serial = get_be64(k.mv_data), s2;
        record r;
        nevents++;
        if (load_head(st, t, serial, &st->ev, &r) != 0) {
            report(&c, "event at serial %llu does not decode", (unsigned long long)serial);
            continue;
        }
        if (lookup_id(t, st, st->ev.id, &s2) != 0 || s2 != serial)
            report(&c, "event at serial %llu is missing from the ids index", (unsigned long long)serial);
        if (!importer) for_each_index(st->sh->key_prefix, &st->ev, serial, index_present, &c);
        if (st->cache && r.slot) {
            /* a cache's body: there, whole, and the same event as its record */
            const void *body;
            size_t len;
            nbodies++;
            if (get_body(t, st, &r, &body, &len) != 0 || len != r.body_len || len < 33 ||
                memcmp((const uint8_t *)body + 1, st->ev.id, 32) != 0)
                report(&c, "event at serial %llu has a missing or wrong body", (unsigned long long)serial);
        }
    }
    mdb_cursor_close(cur);
    if (st->cache && entries(t, st->dbi[DB_BODIES]) != nbodies)
        report(&c, "the cache holds %llu bodies for %llu whole events",
               (unsigned long long)entries(t, st->dbi[DB_BODIES]), (unsigned long long)nbodies);
    /* every index entry: points at a live event whose own keys include it */
    static const int dbs[] = {DB_PUBKEY, DB_KIND, DB_PUBKIND, DB_TAG, DB_CREATED, DB_EXPIRE};
    for (size_t i = 0; i < sizeof dbs / sizeof *dbs; i++) {
        if ((rc = mdb_cursor_open(t, st->dbi[dbs[i]], &cur))) goto fail;
        while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
            uint64_t serial = dbs[i] == DB_EXPIRE ? (k.mv_size == 16 ? get_be64((uint8_t *)k.mv_data + 8) : 0)
                              : k.mv_size >= TAIL ? tail_serial((uint8_t *)k.mv_data + k.mv_size - TAIL) : 0;
            key_match m = {dbs[i], k.mv_data, k.mv_size, 0};
            if (load(st, t, serial, &st->ev, 0) != 0)
                report(&c, "a %s index entry points at no event (serial %llu)", db_names[dbs[i]],
                       (unsigned long long)serial);
            else if (for_each_index(st->sh->key_prefix, &st->ev, serial, key_equal, &m), !m.found)
                report(&c, "a %s index entry does not describe the event it points at (serial %llu)",
                       db_names[dbs[i]], (unsigned long long)serial);
        }
        mdb_cursor_close(cur);
    }
    if (entries(t, st->dbi[DB_IDS]) != nevents)
        report(&c, "the ids index holds %llu entries for %llu events", (unsigned long long)entries(t, st->dbi[DB_IDS]),
               (unsigned long long)nevents);
    /* every replace head describes an event of that slot (which a cache may have evicted) */
    if ((rc = mdb_cursor_open(t, st->dbi[DB_REPLACE], &cur))) goto fail;
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        head_rec h;
        if (get_head(t, st, k.mv_data, k.mv_size, &h) != 0) {
            report(&c, "a replaceable head record is malformed");
            continue;
        }
        if (load(st, t, h.serial, &st->ev, 0) != 0) {
            if (!st->cache) report(&c, "a replaceable head points at no event (serial %llu)", (unsigned long long)h.serial);
            continue;
        }
        uint8_t ak[MAX_ADDR_KEY];
        l2_str d = l2_d_value(&st->ev);
        size_t n = addr_key(ak, st->ev.pubkey, st->ev.kind, d.p, d.n);
        if (n != k.mv_size || memcmp(ak, k.mv_data, n) != 0 || h.created_at != st->ev.created_at ||
            memcmp(h.id, st->ev.id, 32) != 0)
            report(&c, "a replaceable head does not describe the event it points at (serial %llu)",
                   (unsigned long long)h.serial);
    }
    mdb_cursor_close(cur);
    l2_store_read_end(st);
    *nproblems = c.count;
    return 0;
fail:
    l2_store_read_end(st);
    return lmdb_fail(err, "check", rc);
}

/* ---- the store interface (storeif.h) ---- */

static const char *if_path(void *st)
{
    return l2_store_path(st);
}

static void if_close(void *st)
{
    l2_store_close(st);
}

static int if_save(void *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res, char *err)
{
    return l2_store_save_batch(st, evs, n, now, flags, res, err);
}

static int if_delete(void *st, const uint8_t id[32], int tombstone, int flags, int *found, char *err)
{
    return l2_store_delete(st, id, tombstone, (flags & L2_SAVE_OUTBOX) != 0, found, err);
}

static int if_query(void *vst, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                    uint8_t *incomplete, l2_row_fn row, void *ud, char *err)
{
    l2_store *st = vst;
    if (l2_store_query(st, fs, nf, max_limit, now, horizon, incomplete, &st->hits, err)) return -1;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < st->hits.n; i++) {
        const l2_hit *h = &st->hits.v[i];
        l2_row r = {0};
        r.stub = h->stub;
        memcpy(r.id, h->id, 32);
        if (!h->stub && l2_store_body(st, h->serial, &r.bin, &r.bin_len)) continue;
        rc = row(ud, &r);
    }
    l2_store_read_end(st);
    return 0;
}

static int if_count(void *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err)
{
    return l2_store_count(st, fs, nf, now, n, err);
}

static int if_export(void *vst, const uint8_t (*keys)[32], size_t nkeys, int filtered, l2_row_fn row, void *ud,
                     char *err)
{
    l2_store *st = vst;
    uint64_t serial;
    l2_row r = {0};
    if (l2_store_iter_begin(st, err)) return -1;
    int rc = 0;
    while (rc == 0 && l2_store_iter_next(st, &serial, &r.bin, &r.bin_len)) {
        if (filtered && (l2_event_decode_bin(&st->ev, r.bin, r.bin_len, NULL) ||
                         !l2_event_names_pubkey(&st->ev, keys, nkeys)))
            continue;
        rc = row(ud, &r);
    }
    l2_store_read_end(st);
    return 0;
}

static int if_changes(void *vst, uint64_t after, size_t max, l2_change_fn fn, void *ud, char *err)
{
    l2_store *st = vst;
    l2_change *ch = malloc((max ? max : 1) * sizeof *ch);
    size_t n;
    if (!ch) return fail(err, "error: out of memory");
    if (l2_store_changes(st, after, max, ch, &n, err)) {
        free(ch);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        l2_row r = {0};
        int have = ch[i].op == L2_CHANGE_SAVED && l2_store_body(st, ch[i].serial, &r.bin, &r.bin_len) == 0;
        if (have) memcpy(r.id, ch[i].id, 32);
        rc = fn(ud, ch[i].seq, ch[i].op, ch[i].have_id ? ch[i].id : NULL, have ? &r : NULL);
    }
    l2_store_read_end(st);
    free(ch);
    return 0;
}

static int if_stats(void *st, l2_stat_fn field, void *ud, char *err)
{
    l2_store_stats s;
    if (l2_store_stats_get(st, &s, err)) return -1;
#define FIELD(name) field(ud, #name, s.name)
    FIELD(events);
    FIELD(stubs);
    FIELD(outbox);
    FIELD(free_bytes);
    FIELD(index_entries);
    FIELD(tombstones);
    FIELD(heads);
    FIELD(changes);
    FIELD(last_seq);
    FIELD(used_bytes);
    FIELD(map_bytes);
    FIELD(file_bytes);
    FIELD(page_size);
#undef FIELD
    return 0;
}

static int if_check(void *st, l2_problem_fn problem, void *ud, uint64_t *n, char *err)
{
    return l2_store_check(st, problem, ud, n, err);
}

static int if_sweep(void *st, int64_t now, uint64_t *removed, char *err)
{
    return l2_store_sweep(st, now, removed, err);
}

static int if_nuke(void *st, char *err)
{
    return l2_store_nuke(st, err);
}

static int if_sync(void *st, char *err)
{
    return l2_store_sync(st, err);
}

static int if_after_import(void *st, char *err)
{
    return l2_store_after_import(st, err);
}

typedef struct {
    l2_item_fn item;
    void *ud;
} items_walk;

/* An item from the binary form's head: created_at and id, the body left unread. */
static int item_of_row(void *ud, const l2_row *r)
{
    items_walk *w = ud;
    int64_t at;
    uint8_t id[32];
    if (r->stub || l2_event_bin_key(r->bin, r->bin_len, &at, id)) return 0; /* unreadable: check() says so */
    return w->item(w->ud, at, id);
}

static int if_items(void *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, l2_item_fn item,
                    void *ud, char *err)
{
    items_walk w = {item, ud};
    return if_query(st, fs, nf, max_limit, now, 0, NULL, item_of_row, &w, err);
}

static void if_last_changes(void *st, uint64_t *first, uint64_t *last)
{
    l2_store_last_changes(st, first, last);
}

typedef struct {
    l2_change_fn fn;
    void *ud;
    uint64_t last;
} feed_walk;

static int feed_change(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *row)
{
    feed_walk *w = ud;
    w->last = seq;
    return w->fn(w->ud, seq, op, id, row);
}

/* Sequence numbers are taken inside the one write transaction at a time: their order is commit
 * order, and the feed is the change records as they are. */
static int if_feed(void *st, uint64_t pos, size_t max, l2_change_fn fn, void *ud, uint64_t *next, char *err)
{
    if (!max) {
        l2_store_stats s;
        if (l2_store_stats_get(st, &s, err)) return -1;
        *next = s.last_seq;
        return 0;
    }
    feed_walk w = {fn, ud, pos};
    if (if_changes(st, pos, max, feed_change, &w, err)) return -1;
    *next = w.last;
    return 0;
}

const l2_store_if l2_lmdb_store_if = {
    "lmdb", if_path, if_close, if_save, if_delete, if_query, if_count, if_export, if_changes, if_stats, if_check,
    if_sweep, if_nuke, if_sync, if_after_import, if_items, if_last_changes, if_feed,
};
