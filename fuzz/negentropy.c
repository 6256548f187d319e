/* libFuzzer: NIP-77 messages (NEG-MSG payloads, decoded from hex) against both roles of a
 * session holding items with shared timestamps. Any input must be answered or refused cleanly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "negentropy.h"

static l2_neg *make(size_t limit)
{
    l2_neg *n;
    char err[L2_ERRLEN];
    if (l2_neg_new(&n, limit, err)) abort();
    for (uint32_t i = 0; i < 300; i++) {
        uint8_t id[32];
        for (int b = 0; b < 32; b++) id[b] = (uint8_t)(i * 131 + b * 7);
        if (l2_neg_add(n, 1000 + i / 5, id, err)) abort();
    }
    if (l2_neg_seal(n, err)) abort();
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_neg *relay, *client;
    static l2_buf out, have, need;
    char err[L2_ERRLEN];
    if (!relay) {
        relay = make(4096);
        client = make(0);
        l2_buf_init(&out);
        if (l2_neg_initiate(client, &out, err)) abort();
    }
    (void)l2_neg_reconcile(relay, data, size, &out, NULL, NULL, err);
    have.len = need.len = 0;
    (void)l2_neg_reconcile(client, data, size, &out, &have, &need, err);
    return 0;
}
