/* bench/probe: the raw LMDB bound for an import, what the store's trusted import is measured
 * against (bench/store). It writes N records the way an import of N events could at best: a body
 * of BODY bytes under an 8-byte big-endian serial (appended), and 7 index keys of 17 bytes each
 * in 7 sub-databases, the keys of each index sorted within each batch of 4,096 records, one
 * committed (fsynced) transaction per batch, with the store's environment flags. No parsing, no
 * nostr rules: what is left is LMDB's own cost for that many bytes and keys.
 *
 *   cc -O2 -o build/probe bench/probe.c -llmdb && build/probe DIR N BODY   -> "seconds records/s"
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define BATCH 4096
#define INDEXES 7
#define KEY 17

static void check(int rc, const char *what)
{
    if (rc) {
        fprintf(stderr, "probe: %s: %s\n", what, mdb_strerror(rc));
        exit(1);
    }
}

static uint64_t state = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) /* xorshift64*: keys spread like hashes */
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
}

static int by_key(const void *a, const void *b)
{
    return memcmp(a, b, KEY);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: probe DIR RECORDS BODY_BYTES\n");
        return 2;
    }
    const char *dir = argv[1];
    long n = atol(argv[2]), body_len = atol(argv[3]);
    if (n <= 0 || body_len <= 0) return 2;
    mkdir(dir, 0755);
    MDB_env *env;
    check(mdb_env_create(&env), "env");
    check(mdb_env_set_mapsize(env, (size_t)(n * (body_len + INDEXES * KEY) * 4 + (64 << 20))), "map size");
    check(mdb_env_set_maxdbs(env, INDEXES + 1), "max dbs");
    check(mdb_env_open(env, dir, MDB_NOTLS | MDB_NORDAHEAD, 0664), "open");
    MDB_dbi events, index[INDEXES];
    MDB_txn *txn;
    check(mdb_txn_begin(env, NULL, 0, &txn), "begin");
    check(mdb_dbi_open(txn, "events", MDB_CREATE, &events), "dbi");
    for (int i = 0; i < INDEXES; i++) {
        char name[8];
        snprintf(name, sizeof name, "i%d", i);
        check(mdb_dbi_open(txn, name, MDB_CREATE, &index[i]), "dbi");
    }
    check(mdb_txn_commit(txn), "commit");
    uint8_t *body = malloc((size_t)body_len), (*keys)[KEY] = malloc((size_t)BATCH * KEY);
    if (!body || !keys) return 1;
    for (long i = 0; i < body_len; i++) body[i] = (uint8_t)next_random();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long from = 0; from < n; from += BATCH) {
        long k = n - from < BATCH ? n - from : BATCH;
        check(mdb_txn_begin(env, NULL, 0, &txn), "begin");
        for (long r = 0; r < k; r++) {
            uint8_t sk[8];
            uint64_t serial = (uint64_t)(from + r + 1);
            for (int b = 0; b < 8; b++) sk[b] = (uint8_t)(serial >> (56 - 8 * b));
            memcpy(body, sk, 8); /* no two bodies alike */
            MDB_val kv = {8, sk}, vv = {(size_t)body_len, body};
            check(mdb_put(txn, events, &kv, &vv, MDB_APPEND), "put body");
        }
        for (int i = 0; i < INDEXES; i++) {
            for (long r = 0; r < k; r++) {
                uint64_t a = next_random(), b = next_random();
                memcpy(keys[r], &a, 8);
                memcpy(keys[r] + 8, &b, 8);
                keys[r][16] = (uint8_t)r;
            }
            qsort(keys, (size_t)k, KEY, by_key);
            for (long r = 0; r < k; r++) {
                MDB_val kv = {KEY, keys[r]}, vv = {0, NULL};
                check(mdb_put(txn, index[i], &kv, &vv, 0), "put key");
            }
        }
        check(mdb_txn_commit(txn), "commit");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%.3f %.0f\n", s, (double)n / s);
    free(body);
    free(keys);
    mdb_env_close(env);
    return 0;
}
