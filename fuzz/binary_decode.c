/* libFuzzer: the binary decoder on arbitrary bytes; what decodes re-encodes to a fixed point. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_event ev, again;
    static l2_buf a, b;
    static int init;
    char err[L2_ERRLEN];
    if (!init) {
        l2_event_init(&ev);
        l2_event_init(&again);
        init = 1;
    }
    if (l2_event_decode_bin(&ev, data, size, err)) return 0;
    a.len = b.len = 0;
    if (ev.is_stub ? l2_event_encode_stub(&ev, &a) : l2_event_encode_bin(&ev, &a)) abort();
    if (l2_event_decode_bin(&again, a.data, a.len, err)) abort();
    if (again.is_stub ? l2_event_encode_stub(&again, &b) : l2_event_encode_bin(&again, &b)) abort();
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) abort();
    return 0;
}
