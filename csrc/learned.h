/* What a two-level store learns from its reads, kept where every process on the same L1 sees it:
 * a file beside L1 (`learned`), mapped shared, updated with atomic operations only, so nginx
 * workers (and any process that opens the same L1) learn from each other's reads. No locks are
 * held across calls and nothing here can block. No Lua here.
 *
 * - Read counts (for admission and the eviction policy): a count-min sketch, 4 rows of up to
 *   65,536 16-bit counters (fewer for a small L1: see l2_learned_open), each row indexed by its own hash of the id. Every `period` counted reads
 *   all counters halve (TinyLFU's reset), so the counts follow what is hot now. A count is never
 *   below the true recent count and rarely above it.
 * - The admission bar: what an event fetched from L2 must have been read to enter L1.
 * - A floor under the horizon and the generation of remembered answers (see below).
 * - Writes in flight to both levels (see l2_learned_begin_write).
 * - Known-missing ids: ids L2 said it does not have, each until a time; up to 16,384 slots, 8 probes,
 *   the entry that expires first making room. Each slot is guarded by a sequence word (odd while
 *   written), so a reader never takes a torn id for a known-missing one. */
#ifndef L2_LEARNED_H
#define L2_LEARNED_H

#include <stddef.h>
#include <stdint.h>

typedef struct l2_learned l2_learned;

/* Maps `dir`/learned, making it when there is none, or when it is not of this format (a new
 * file is put in its place by rename: a process still mapping the old one keeps it intact). A
 * new file is sized from L1's `size_limit` (at most a thirty-second of it, down to 19 KB; 1.2 MB
 * without a limit) and its blocks reserved, so a full disk is an error here; an existing file of
 * this format is taken with the size it has. The path is opened without following a symbolic
 * link, and an existing file must be a regular file with one link, owned by this process's user
 * or the directory's, not writable by others: otherwise an error says which. 0, or -1 with err. */
int l2_learned_open(l2_learned **out, const char *dir, uint64_t size_limit, char *err);
void l2_learned_close(l2_learned *l);
/* The file's size. */
size_t l2_learned_bytes(const l2_learned *l);

/* Counts one read of id and returns its recent count (this one included); every `period` reads
 * (over all processes) the counts halve. */
uint32_t l2_learned_count_read(l2_learned *l, const uint8_t id[32], uint64_t period);
/* The recent count of id, without counting. */
uint32_t l2_learned_reads(l2_learned *l, const uint8_t id[32]);

uint32_t l2_learned_admit_bar(l2_learned *l);
void l2_learned_set_admit_bar(l2_learned *l, uint32_t bar);

/* Known-missing ids: remembered until `until` (seconds), asked at `now`, forgotten. */
void l2_learned_missing_add(l2_learned *l, const uint8_t id[32], int64_t until);
int l2_learned_missing(l2_learned *l, const uint8_t id[32], int64_t now);
void l2_learned_missing_forget(l2_learned *l, const uint8_t id[32]);
/* A floor under L1's horizon, raised where raising it cannot fail (a raise in L1 itself is a
 * write, which a full L1 can refuse): queries take the larger of it and L1's own horizon. */
const int64_t *l2_learned_horizon_floor(l2_learned *l);
void l2_learned_raise_horizon_floor(l2_learned *l, int64_t h);
/* After L1 was emptied: the only time it goes down. */
void l2_learned_set_horizon_floor(l2_learned *l, int64_t h);

/* The generation of L1's remembered answers: ending them all is a step of it, which cannot fail
 * (clearing them in L1 is a write, which a full L1 may refuse); an answer of another generation
 * does not stand. */
uint64_t l2_learned_answers_epoch(l2_learned *l);
void l2_learned_end_answers(l2_learned *l);

/* A save goes to L2, committed, then to L1: a process that dies between the two commits leaves
 * events in L2 that L1 does not hold, under a horizon that says it would. So a save takes a slot
 * naming its process and the newest created_at it writes, from before L2's commit until L1's;
 * slot, or -1 when all 64 are taken (the caller then raises the floor first). A killed process
 * frees nothing: l2_learned_abandoned_writes frees the slots of processes that are gone and
 * returns the newest created_at they wrote (INT64_MIN when none), so the caller raises the floor
 * past it and ends the remembered answers. A process crash is covered: the file is shared memory
 * the kernel keeps. A power loss is not: the file is not flushed to disk. */
int l2_learned_begin_write(l2_learned *l, int64_t newest);
void l2_learned_end_write(l2_learned *l, int slot);
/* A light save (a few events) says, in its write slot, whose write lock it waits for: level 2
 * (L2's), 1 (L1's) or 0 (none). A large save writing that level gives way to it (l2_store_give_way)
 * when l2_learned_light_waiting(level) says one waits. A killed process's slot is freed with its
 * other slots (l2_learned_abandoned_writes). */
void l2_learned_light_wait(l2_learned *l, int slot, int level);
int l2_learned_light_waiting(l2_learned *l, int level);
int64_t l2_learned_abandoned_writes(l2_learned *l);

/* Forgets every known-missing id (L2 was emptied) and every read count. */
void l2_learned_clear(l2_learned *l);

#endif
