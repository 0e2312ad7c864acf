/*
 * freelist: spare objects of one kind kept for reuse instead of a
 * free()/malloc() pair, up to a bound.
 *
 *   put(obj) ──(len < max)──> [obj]->[obj]->... ──get()──> obj
 *           └─(full)──> false: the caller frees it
 *
 * The link lives in the first bytes of a spare object, so an object must
 * be at least pointer-sized and its contents are garbage once put; the
 * caller resets what it needs after get(). No I/O, no allocation here:
 * the caller allocates when get() returns NULL and frees when put()
 * refuses, so objects that own more (buffers) are destroyed its way.
 */
#ifndef BATCHD_FREELIST_H
#define BATCHD_FREELIST_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

struct freelist {
    void *head;
    uint32_t len, max;
};

#define FREELIST_INIT(bound) { NULL, 0, (bound) }

/* A spare object, or NULL when none is kept. */
static inline void *freelist_get(struct freelist *fl)
{
    void *obj = fl->head;
    if (obj) {
        memcpy(&fl->head, obj, sizeof(void *));
        fl->len--;
    }
    return obj;
}

/* Keeps obj for reuse; false when the list is full (obj is untouched and
 * still the caller's to free). */
static inline bool freelist_put(struct freelist *fl, void *obj)
{
    if (fl->len >= fl->max)
        return false;
    memcpy(obj, &fl->head, sizeof(void *));
    fl->head = obj;
    fl->len++;
    return true;
}

/* Hands every spare object to destroy (free when NULL), leaving it empty. */
void freelist_drain(struct freelist *fl, void (*destroy)(void *));

#endif
