/* BIP-340 over libsecp256k1: one context for the process, created once. */
#ifndef L2_SCHNORR_H
#define L2_SCHNORR_H

#include <stddef.h>
#include <stdint.h>

/* 1 when sig is a valid signature of msg by the x-only key pub, else 0. */
int l2_schnorr_verify(const uint8_t sig[64], const uint8_t *msg, size_t msglen, const uint8_t pub[32]);
/* The x-only public key of a secret key; 0 when the secret key is invalid. */
int l2_schnorr_pubkey(uint8_t pub[32], const uint8_t sec[32]);
/* Signs msg; aux may be NULL (then 32 fresh random bytes are used). 0 when the key is invalid. */
int l2_schnorr_sign(uint8_t sig[64], const uint8_t *msg, size_t msglen, const uint8_t sec[32],
                    const uint8_t aux[32]);

#endif
