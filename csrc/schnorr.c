#include "schnorr.h"

#include <pthread.h>
#include <secp256k1.h>
#include <secp256k1_extrakeys.h>
#include <secp256k1_schnorrsig.h>
#include <string.h>
#include <sys/random.h>

static secp256k1_context *ctx;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;

static void fill_random(uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        }
    }
}

static void ctx_create(void)
{
    uint8_t seed[32];
    ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    /* randomization protects signing against side channels; verification does not need it */
    fill_random(seed, sizeof seed);
    int randomized = secp256k1_context_randomize(ctx, seed);
    (void)randomized; /* it fails only on the static context, never on a created one */
}

/* The module may be unloaded (lua_close dlcloses C libraries): free the context with it. */
__attribute__((destructor)) static void ctx_destroy(void)
{
    if (ctx) secp256k1_context_destroy(ctx);
    ctx = NULL;
}

static const secp256k1_context *context(void)
{
    pthread_once(&ctx_once, ctx_create);
    return ctx;
}

int l2_schnorr_verify(const uint8_t sig[64], const uint8_t *msg, size_t msglen, const uint8_t pub[32])
{
    secp256k1_xonly_pubkey pk;
    const secp256k1_context *c = context();
    if (!secp256k1_xonly_pubkey_parse(c, &pk, pub)) return 0;
    return secp256k1_schnorrsig_verify(c, sig, msg, msglen, &pk);
}

int l2_schnorr_pubkey(uint8_t pub[32], const uint8_t sec[32])
{
    secp256k1_keypair kp;
    secp256k1_xonly_pubkey pk;
    const secp256k1_context *c = context();
    if (!secp256k1_keypair_create(c, &kp, sec)) return 0;
    if (!secp256k1_keypair_xonly_pub(c, &pk, NULL, &kp)) return 0;
    return secp256k1_xonly_pubkey_serialize(c, pub, &pk);
}

int l2_schnorr_sign(uint8_t sig[64], const uint8_t *msg, size_t msglen, const uint8_t sec[32],
                    const uint8_t aux[32])
{
    secp256k1_keypair kp;
    uint8_t rnd[32];
    const secp256k1_context *c = context();
    if (!secp256k1_keypair_create(c, &kp, sec)) return 0;
    if (!aux) {
        fill_random(rnd, sizeof rnd);
        aux = rnd;
    }
    secp256k1_schnorrsig_extraparams extra = SECP256K1_SCHNORRSIG_EXTRAPARAMS_INIT;
    extra.ndata = (unsigned char *)(uintptr_t)aux;
    int ok = secp256k1_schnorrsig_sign_custom(c, sig, msg, msglen, &kp, &extra);
    memset(&kp, 0, sizeof kp);
    return ok;
}
