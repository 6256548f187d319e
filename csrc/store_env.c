/* store_env.c: the environment: one LMDB environment per directory and process, opening and closing
 * a store. Shared with the other parts through store_int.h. */
#include "store_int.h"

const char *store_db_names[DB_COUNT] = {"events", "ids", "pubkey", "kind", "pubkind", "tag", "created",
                                         "expire", "replace", "tomb", "atomb", "changes", "meta",
                                         "access", "lru", "stubs", "outbox", "bodies", "freeslots",
                                         "answers", "ghosts"};
pthread_mutex_t store_registry_lock = PTHREAD_MUTEX_INITIALIZER;
shared_env *store_registry;
int store_fail(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, L2_ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}
int store_parse_int(const void *p, size_t n, int64_t *out)
{
    char num[24];
    if (n == 0 || n >= sizeof num) return -1;
    memcpy(num, p, n);
    num[n] = 0;
    char *end;
    *out = strtoll(num, &end, 10);
    return *end ? -1 : 0;
}
int store_lmdb_fail(char *err, const char *what, int rc)
{
    return store_fail(err, "error: %s: %s", what, mdb_strerror(rc));
}
/* ---- the environment ---- */

int store_meta_get_opt(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    *out = rc == 0 && v.mv_size == 8 ? get_be64(v.mv_data) : 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* LMDB's own order (memcmp over the shorter key, then the shorter first) for keys that are
 * big-endian integers, without a call to memcmp for each of a search's comparisons: events and
 * bodies are looked up once for each event a query returns (store_get_record). The same order,
 * so any program that opens the store without it (mdb_dump, an older layer2) agrees with it. */
static int cmp_be_keys(const MDB_val *a, const MDB_val *b)
{
    if (a->mv_size == 8 && b->mv_size == 8) {
        uint64_t x = get_be64(a->mv_data), y = get_be64(b->mv_data);
        return (x > y) - (x < y);
    }
    if (a->mv_size == 4 && b->mv_size == 4) {
        uint32_t x = get_be32(a->mv_data), y = get_be32(b->mv_data);
        return (x > y) - (x < y);
    }
    size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
    int c = memcmp(a->mv_data, b->mv_data, n);
    return c ? c : (a->mv_size > b->mv_size) - (a->mv_size < b->mv_size);
}

int store_env_open(shared_env *sh, const char *path, const l2_store_opts *o, int upgrading, char *err)
{
    int rc, dead;
    MDB_txn *txn;
    if ((rc = mdb_env_create(&sh->env))) return store_lmdb_fail(err, "mdb_env_create", rc);
    sh->map_size = o->map_size ? o->map_size : DEFAULT_MAP;
    mdb_env_set_maxdbs(sh->env, DB_COUNT + 2);
    mdb_env_set_maxreaders(sh->env, 1022);
    mdb_env_set_mapsize(sh->env, sh->map_size);
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (o->nosync ? MDB_NOSYNC : o->nometasync ? MDB_NOMETASYNC : 0);
    if ((rc = mdb_env_open(sh->env, path, flags, 0664))) {
        mdb_env_close(sh->env);
        return store_fail(err, "error: cannot open the store at '%s': %s", path, mdb_strerror(rc));
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
    if ((rc = mdb_dbi_open(txn, store_db_names[DB_META], MDB_CREATE, &sh->dbi[DB_META])) ||
        (rc = store_meta_get_opt(txn, sh->dbi[DB_META], "version", &version)) ||
        (rc = store_meta_get_opt(txn, sh->dbi[DB_META], "key_prefix", &prefix)))
        goto abort;
    if (!version) {
        version = SCHEMA_VERSION;
        prefix = o->key_prefix ? o->key_prefix : KEY_PREFIX;
        if ((rc = store_meta_put_u64(txn, sh->dbi[DB_META], "version", version)) ||
            (rc = store_meta_put_u64(txn, sh->dbi[DB_META], "key_prefix", prefix)))
            goto abort;
    }
    if (version != SCHEMA_VERSION && !(upgrading && version < SCHEMA_VERSION)) {
        mdb_txn_abort(txn);
        mdb_env_close(sh->env);
        if (version < SCHEMA_VERSION)
            return store_fail(err, "error: the store at '%s' is in format %llu, which this layer2 (format %d) does not "
                        "read: run `layer2 upgrade --path %s` once (stop what uses it first)", path,
                        (unsigned long long)version, SCHEMA_VERSION, path);
        return store_fail(err, "error: the store at '%s' is in format %llu, written by a newer layer2; this one reads "
                    "format %d", path, (unsigned long long)version, SCHEMA_VERSION);
    }
    /* formats 1 and 2 had whole ids, one each: they stay so until the upgrade rebuilds them */
    for (int i = 0; i < DB_COUNT; i++) {
        if (i == DB_META) continue;
        if ((rc = mdb_dbi_open(txn, store_db_names[i], MDB_CREATE | (i == DB_IDS && version >= 3 ? IDS_FLAGS : 0),
                               &sh->dbi[i])) ||
            ((i == DB_EVENTS || i == DB_BODIES) && (rc = mdb_set_compare(txn, sh->dbi[i], cmp_be_keys))))
            goto abort;
    }
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
    return store_lmdb_fail(err, "opening the store", rc);
}

int store_make_dirs(const char *path)
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
    if (store_make_dirs(path) != 0)
        return store_fail(err, "error: cannot create the store directory '%s': %s", path, strerror(errno));
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return store_fail(err, "error: the store path '%s' is not a directory", path);
    if (access(path, W_OK) != 0) return store_fail(err, "error: the store directory '%s' is not writable", path);
    l2_store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return store_fail(err, "error: out of memory");
    }
    pthread_mutex_lock(&store_registry_lock);
    pid_t pid = getpid();
    shared_env *sh = store_registry;
    while (sh && !(sh->dev == sb.st_dev && sh->ino == sb.st_ino && sh->pid == pid && same_data_file(sh, path)))
        sh = sh->next;
    if (!sh) {
        sh = calloc(1, sizeof *sh);
        if (!sh || store_env_open(sh, path, o, 0, err)) {
            pthread_mutex_unlock(&store_registry_lock);
            if (!sh) store_fail(err, "error: out of memory");
            free(sh);
            free(st->path);
            free(st);
            return -1;
        }
        sh->dev = sb.st_dev;
        sh->ino = sb.st_ino;
        sh->pid = pid;
        sh->next = store_registry;
        store_registry = sh;
    }
    sh->refs++;
    pthread_mutex_unlock(&store_registry_lock);
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
    if (!st->cache && store_finish_indexing(st, 1, err)) {
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
    store_read_cursors_close(st);
    if (st->rtxn) mdb_txn_abort(st->rtxn);
    pthread_mutex_lock(&store_registry_lock);
    if (--st->sh->refs == 0) {
        shared_env **pp = &store_registry;
        while (*pp != st->sh) pp = &(*pp)->next;
        *pp = st->sh->next;
        /* an environment inherited across fork belongs to the parent: never close it here */
        if (st->sh->pid == getpid()) mdb_env_close(st->sh->env);
        free(st->sh);
    }
    pthread_mutex_unlock(&store_registry_lock);
    l2_event_free(&st->ev);
    l2_event_free(&st->old);
    l2_buf_free(&st->body);
    l2_buf_free(&st->key);
    l2_hits_free(&st->hits);
    free(st->touched);
    free(st->touch_slots);
    free(st->path);
    free(st);
}

const char *l2_store_path(const l2_store *st)
{
    return st->path;
}

int store_adopt_map(l2_store *st)
{
    MDB_envinfo info;
    int rc = mdb_env_set_mapsize(st->env, 0);
    mdb_env_info(st->env, &info);
    st->sh->map_size = info.me_mapsize;
    return rc;
}

int store_read_begin(l2_store *st, char *err)
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
            store_read_cursors_close(st);
            mdb_txn_abort(st->rtxn);
            st->rtxn = NULL;
        }
        store_adopt_map(st);
    }
    if (rc) return store_lmdb_fail(err, "read transaction", rc);
    st->rtxn_live = 1;
    st->rcur_live[0] = st->rcur_live[1] = 0;
    /* numbered across every store of the process: a hit read from one store is never taken for
     * one of another's */
    static uint64_t reads_begun;
    st->reads = __atomic_add_fetch(&reads_begun, 1, __ATOMIC_RELAXED);
    return 0;
}

void store_read_cursors_close(l2_store *st)
{
    for (int i = 0; i < 2; i++) {
        if (st->rcur[i]) mdb_cursor_close(st->rcur[i]);
        st->rcur[i] = NULL;
        st->rcur_live[i] = 0;
    }
}

MDB_cursor *store_read_cursor(l2_store *st, int which)
{
    if (st->rcur_live[which]) return st->rcur[which];
    int rc = st->rcur[which] ? mdb_cursor_renew(st->rtxn, st->rcur[which])
                             : mdb_cursor_open(st->rtxn, st->dbi[which ? DB_BODIES : DB_EVENTS], &st->rcur[which]);
    if (rc) {
        if (st->rcur[which]) mdb_cursor_close(st->rcur[which]);
        st->rcur[which] = NULL;
        return NULL;
    }
    st->rcur_live[which] = 1;
    return st->rcur[which];
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
