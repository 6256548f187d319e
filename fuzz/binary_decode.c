/* libFuzzer: the binary decoder on arbitrary bytes; what decodes re-encodes to a fixed point, and
 * the direct JSON writer (l2_event_bin_to_json) takes exactly what the decoder takes (stubs
 * apart) and writes what encoding the decoded event writes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static l2_event ev, again;
    static l2_buf a, b, direct, decoded;
    static int init;
    char err[L2_ERRLEN];
    if (!init) {
        l2_event_init(&ev);
        l2_event_init(&again);
        init = 1;
    }
    direct.len = 0;
    int direct_rc = l2_event_bin_to_json(data, size, &direct, NULL);
    if (l2_event_decode_bin(&ev, data, size, err)) {
        if (direct_rc == 0) abort();
        return 0;
    }
    if (ev.is_stub) {
        if (direct_rc == 0) abort();
    } else {
        decoded.len = 0;
        if (direct_rc || l2_event_encode_json(&ev, &decoded)) abort();
        if (direct.len != decoded.len || memcmp(direct.data, decoded.data, direct.len) != 0) abort();
    }
    a.len = b.len = 0;
    if (ev.is_stub ? l2_event_encode_stub(&ev, &a) : l2_event_encode_bin(&ev, &a)) abort();
    if (l2_event_decode_bin(&again, a.data, a.len, err)) abort();
    if (again.is_stub ? l2_event_encode_stub(&again, &b) : l2_event_encode_bin(&again, &b)) abort();
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) abort();
    return 0;
}
