/* The import driver: wire events from a source, a line each, stored in batches (one write
 * transaction per batch, through the store interface), each batch checked (parsed, verified) on
 * threads while the one before it is saved. The source and the callbacks are the caller's (a
 * file, or Lua code through its binding); no Lua here. */
#ifndef L2_IMPORT_H
#define L2_IMPORT_H

#include <stdint.h>

#include "status.h"
#include "storeif.h"

/* The counts of an import: lines read (blank ones too), and what became of each event line. A dry
 * run (no store) counts the valid lines as SAVED. */
enum {
    L2_IMPORT_SAVED,
    L2_IMPORT_DUPLICATE, /* already there, or older than the stored version */
    L2_IMPORT_REPLACED,  /* older versions the saves removed */
    L2_IMPORT_INVALID,   /* refused: malformed, a bad signature, expired, or refused by the store */
    L2_IMPORT_DELETED,   /* events the lines' NIP-09 deletions removed */
    L2_IMPORT_BLOCKED,   /* deleted by their authors before */
    L2_IMPORT_EPHEMERAL, /* accepted, never stored */
    L2_IMPORT_LINES,
    L2_IMPORT_NCOUNTS
};

typedef struct {
    size_t batch; /* lines per batch (at least 1) */
    int threads;  /* checking threads beside the writer */
    int verify;   /* check ids and signatures */
    int64_t now;  /* the clock for expiration and the future limit */
    int flags;    /* save flags (storeif.h); L2_SAVE_IMPORT is added */
} l2_import_opts;

/* The caller's side of an import, each with ud. A callback returns 0 to go on; nonzero stops the
 * import at once (l2_import_run returns L2_STOPPED: the caller knows why). */
typedef struct {
    /* The next line into *p, *n (valid until the next call; its end of line may be included): 1,
     * or 0 at the end of the source (also when it failed: what was read before is still saved). */
    int (*next_line)(void *ud, const char **p, size_t *n);
    /* A refused line, with the NIP-01 message saying why (NULL: not told). */
    int (*refused)(void *ud, uint64_t line, const char *msg);
    /* After each batch: lines and bytes read up to its end (NULL: not told). */
    int (*progress)(void *ud, uint64_t lines, uint64_t bytes);
    void *ud;
} l2_import_io;

/* Imports every line of io's source into the store (vt NULL: a dry run, checked and counted the
 * same way). counts[L2_IMPORT_NCOUNTS] gets the counts, *newest the newest created_at stored (-1
 * for none). 0; L2_STOPPED; -1 with err when the store failed or memory ran out (the batches
 * before are saved). The store's after_import is the caller's to call. */
int l2_import_run(const l2_store_if *vt, void *st, const l2_limits *lim, const l2_import_opts *o,
                  const l2_import_io *io, uint64_t counts[L2_IMPORT_NCOUNTS], int64_t *newest, char *err);

#endif
