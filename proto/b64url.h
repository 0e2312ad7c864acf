/*
 * b64url: unpadded base64url (RFC 4648 section 5), the alphabet of JWT
 * segments and of list cursors. No I/O.
 *
 * Decoding is canonical: one spelling per byte string, so a length that
 * leaves a lone character (n % 4 == 1), a character outside the alphabet,
 * padding, or non-zero bits after the last byte are all refused.
 */
#ifndef BATCHD_PROTO_B64URL_H
#define BATCHD_PROTO_B64URL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "proto/buf.h"

/* The 6-bit value of an alphabet character, or -1. */
int b64url_value(unsigned char c);
/* True when s[0..n) has only alphabet characters and n % 4 != 1. */
bool b64url_valid(const char *s, size_t n);
/* Length of the encoding of n bytes. */
size_t b64url_encoded_len(size_t n);
/* Appends the encoding of in[0..n). */
void b64url_encode(const void *in, size_t n, struct buf *out);
/* Decodes s[0..n) into out, which has room for n * 3 / 4 bytes. Returns the
 * length, or -1 when s is not the canonical encoding of any bytes. */
ssize_t b64url_decode(const char *s, size_t n, unsigned char *out);

#endif
