/*
 * slot_tag: names for keys that must live in another key's Redis Cluster
 * slot (a tombstone beside its key, an idempotency key beside its Stream),
 * because a script's keys must share one slot.
 *
 *   key with a hash tag, "s:{u1}:x"  ──> prefix + key          "batchd:inval:s:{u1}:x"
 *   key with no '}', "session:s1"    ──> prefix + "{" key "}"  "batchd:inval:{session:s1}"
 *   anything else, "a}b"             ──> prefix + "{" T "}" key, T a short string of
 *                                        key's slot ("batchd:inval:{4711}a}b")
 *
 * The prefix must hold no '{' (it would start a tag of its own).
 */
#ifndef BATCHD_PROTO_SLOT_TAG_H
#define BATCHD_PROTO_SLOT_TAG_H

#include <stddef.h>

#include "proto/buf.h"

/* Appends prefix + a form of key[0..len) that hashes to key's slot. */
void slot_tag_prefixed(const char *prefix, const char *key, size_t len, struct buf *out);

#endif
