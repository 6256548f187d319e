/* What a function of the core returns: 0, or the kind of its failure (a negative status), with the
 * message in err. L2_FAILED is -1, so `if (rc)` and `return -1` keep their meaning; a caller that
 * acts on the kind compares the status, never the message's text. */
#ifndef L2_STATUS_H
#define L2_STATUS_H

enum {
    L2_OK = 0,
    L2_FAILED = -1,  /* the store could not do it ("error: ..."): another level may answer */
    L2_REFUSED = -2, /* the request is refused ("invalid: ...", "unsupported: ..."): that is the answer */
    L2_FULL = -3,    /* a fixed-size store is full: eviction may make room */
    L2_STOPPED = -4, /* a caller's callback stopped it (the caller knows why; err is not set) */
};

#endif
