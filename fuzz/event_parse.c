/* libFuzzer: the event parser, and every form an accepted event can take must round-trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_event ev, back;
    static l2_buf a, b, scratch;
    static int init;
    char err[L2_ERRLEN];
    if (!init) {
        l2_event_init(&ev);
        l2_event_init(&back);
        init = 1;
    }
    if (l2_event_parse_json(&ev, (const char *)data, size, L2_HAVE_ALL | L2_LENIENT_IDSIG, &l2_default_limits, err))
        return 0;
    l2_event_verify(&ev, &scratch, err); /* any verdict, never a crash */
    if (ev.bad) return 0;
    a.len = b.len = 0;
    if (l2_event_encode_json(&ev, &a)) abort();
    /* the wire JSON parses back to the same event */
    if (l2_event_parse_json(&back, a.data, a.len, L2_HAVE_ALL, &l2_default_limits, err) != 0) abort();
    if (l2_event_encode_json(&back, &b) || a.len != b.len || memcmp(a.data, b.data, a.len) != 0) abort();
    /* and so does the binary form */
    b.len = 0;
    if (l2_event_encode_bin(&ev, &b)) abort();
    if (l2_event_decode_bin(&back, b.data, b.len, err)) abort();
    scratch.len = 0;
    if (l2_event_encode_json(&back, &scratch) || scratch.len != a.len || memcmp(scratch.data, a.data, a.len) != 0) abort();
    return 0;
}
