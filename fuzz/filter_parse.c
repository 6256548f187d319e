/* libFuzzer: the filter parser, and matching what it accepts against a fixed event. */
#include <stdint.h>
#include <stdlib.h>

#include "filter.h"

static const char EVENT[] =
    "{\"id\":\"4376c65d2f232afbe9b882a35baa4f6fe8667c4e684749af565f981833ed6a65\",\"pubkey\":"
    "\"6e468422dfb74a5738702a8823b9b28168abab8655faacb6853cd0ee15deee93\",\"created_at\":1673347337,\"kind\":1,"
    "\"tags\":[[\"e\",\"3da979448d9ba263864c4d6f14984c423a3838364ec255f03c7904b1ae77f206\"],[\"t\",\"nostr\"],[\"p\","
    "\"bf2376e17ba4ec269d10fcc996a4746b451152be9031fa48e74553dde5526bce\",\"wss://r\"]],\"content\":\"hi\",\"sig\":"
    "\"908a15e46fb4d8675bab026fc230a0e3542bfade63da02d542fb78b2a8513fcd0092619a2c8c1221e581946e0191f2af505dfdf8657a414d"
    "bca329186f009262\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_filter f;
    static l2_event ev;
    static int init;
    char err[L2_ERRLEN];
    if (!init) {
        l2_filter_init(&f);
        l2_event_init(&ev);
        if (l2_event_parse_json(&ev, EVENT, sizeof EVENT - 1, L2_HAVE_ALL, &l2_default_limits, err)) abort();
        init = 1;
    }
    if (l2_filter_parse_json(&f, (const char *)data, size, &l2_default_filter_limits, err)) return 0;
    (void)l2_filter_match(&f, &ev);
    (void)l2_filter_is_empty(&f);
    return 0;
}
