/*
 * redis_reply: reply objects built in one arena per top-level reply.
 *
 * hiredis builds a reply with one malloc per element and frees it right
 * after the callback. These functions build the same redisReply structs,
 * but every object of one top-level reply comes from one arena: an MGET of
 * 50 keys costs a malloc or two, and a callback may keep the reply (and the
 * strings inside it) past its return with redis_reply_retain. The arena
 * header sits just before the top-level object, so any reply finds it.
 *
 *   block (16 KiB) ──> [arena header][reply][element ptrs][reply][str]...
 *       └─ next: older blocks of the same arena; big strings get their own
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/backend/redis_int.h"
#include "proto/freelist.h"
#include "proto/mem.h"

#define ARENA_BLOCK 16384

struct ablock {
    struct ablock *next;        /* also the free list's link while spare */
    size_t used, cap;
    char data[];
};

struct arena {
    uint32_t refs;
    uint32_t n_parts;           /* a composed reply: the part arenas it holds */
    struct arena **parts;
    struct ablock *blocks;      /* the first one also holds this header */
};

/* Full-size blocks are kept for the next reply (up to 16): freeing and
 * re-getting 16 KiB per MGET kept malloc consolidating. */
static struct freelist block_cache = FREELIST_INIT(16);

static struct ablock *block_get(size_t cap)
{
    struct ablock *b = cap == ARENA_BLOCK ? freelist_get(&block_cache) : NULL;
    if (b == NULL)
        b = mem_alloc(sizeof(*b) + cap);
    b->cap = cap;
    return b;
}

static void block_put(struct ablock *b)
{
    if (b->cap != ARENA_BLOCK || !freelist_put(&block_cache, b))
        free(b);
}

void redis_reply_drain(void)
{
    freelist_drain(&block_cache, NULL); /* replies still retained return theirs later */
}

static void *arena_alloc(struct arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    struct ablock *b = a->blocks;
    if (b->cap - b->used < n) {
        struct ablock *nb = block_get(n > ARENA_BLOCK ? n : ARENA_BLOCK);
        nb->used = 0;
        /* Keep filling the head block; big strings get blocks of their own. */
        if (n > ARENA_BLOCK / 2) {
            nb->next = b->next;
            b->next = nb;
            nb->used = n;
            return nb->data;
        }
        nb->next = b;
        a->blocks = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static struct arena *arena_of(const redisReply *top)
{
    return (struct arena *)((char *)top - sizeof(struct arena));
}

static void arena_unref(struct arena *a)
{
    if (--a->refs > 0)
        return;
    for (uint32_t i = 0; i < a->n_parts; i++)
        arena_unref(a->parts[i]);
    struct ablock *b = a->blocks;
    while (b) {
        struct ablock *next = b->next;
        block_put(b);
        b = next;
    }
}

/* A new arena, its header at the start of a first block of cap bytes,
 * with one reference; the top-level object is allocated right after it. */
static struct arena *arena_open(size_t cap)
{
    struct ablock *b = block_get(cap);
    b->next = NULL;
    struct arena *a = (struct arena *)b->data;
    b->used = sizeof(*a);
    a->refs = 1;
    a->n_parts = 0;
    a->parts = NULL;
    a->blocks = b;
    return a;
}

static struct arena *task_arena(const redisReadTask *task, redisReply *r)
{
    if (task->parent == NULL)
        return arena_of(r);
    const redisReadTask *root = task->parent;
    while (root->parent)
        root = root->parent;
    return arena_of(root->obj);
}

/* A new object for `task`: the top-level one opens an arena whose first
 * block is sized by `hint` (bytes the reply will need, as far as known). */
static redisReply *reply_new(const redisReadTask *task, int type, size_t hint)
{
    redisReply *r;
    if (task->parent == NULL) {
        size_t cap = sizeof(struct arena) + sizeof(redisReply) + ((hint + 7) & ~(size_t)7);
        r = arena_alloc(arena_open(cap > ARENA_BLOCK ? ARENA_BLOCK : cap), sizeof(*r));
    } else {
        r = arena_alloc(task_arena(task, NULL), sizeof(*r));
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    memset(r, 0, sizeof(*r));
    r->type = type;
    return r;
}

char redis_reply_sharded_mark;

/* A sharded push (smessage, ssubscribe, sunsubscribe) on a node's pub/sub
 * connection: its channel, element 1 of the top-level array. */
static bool sharded_channel(const redisReadTask *task)
{
    if (task->privdata != &redis_reply_sharded_mark || task->idx != 1 || task->parent == NULL ||
        task->parent->parent != NULL)
        return false;
    const redisReply *top = task->parent->obj;
    const redisReply *kind = top->element[0];
    return kind && kind->type == REDIS_REPLY_STRING && kind->len >= 8 && (kind->str[0] | 0x20) == 's' &&
           (strcasecmp(kind->str, "smessage") == 0 || strcasecmp(kind->str, "ssubscribe") == 0 ||
            strcasecmp(kind->str, "sunsubscribe") == 0);
}

const redisReply *redis_reply_sharded_channel(const redisReply *chan)
{
    if (chan->type != REDIS_REPLY_STRING || chan->elements != 1 ||
        chan->len != sizeof(REDIS_SHARDED_CHANNEL) - 1 || strcmp(chan->str, REDIS_SHARDED_CHANNEL) != 0)
        return NULL;
    return chan->element[0];
}

static void *create_string_cb(const redisReadTask *task, char *str, size_t len)
{
    if (sharded_channel(task)) {
        /* hiredis routes pushes by channel name: give it the one the
         * connection subscribed, and keep the real one beneath. */
        redisReply *r = reply_new(task, REDIS_REPLY_STRING, len + 64);
        struct arena *a = task_arena(task, r);
        r->str = (char *)REDIS_SHARDED_CHANNEL;
        r->len = sizeof(REDIS_SHARDED_CHANNEL) - 1;
        r->elements = 1;
        r->element = arena_alloc(a, sizeof(redisReply *));
        redisReply *real = arena_alloc(a, sizeof(*real));
        memset(real, 0, sizeof(*real));
        real->type = REDIS_REPLY_STRING;
        real->str = arena_alloc(a, len + 1);
        memcpy(real->str, str, len);
        real->str[len] = '\0';
        real->len = len;
        r->element[0] = real;
        return r;
    }
    redisReply *r = reply_new(task, task->type, len + 1);
    r->str = arena_alloc(task_arena(task, r), len + 1);
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    return r;
}

/* hiredis sizes an array by its header alone: "*2147483647" from a broken
 * or hostile server would ask for 16 GiB. No reply batchd asks for comes
 * near this; one that does breaks the connection (hiredis reports OOM). */
#define MAX_ARRAY_ELEMENTS (1 << 20)

static void *create_array_cb(const redisReadTask *task, int elements)
{
    if (elements > MAX_ARRAY_ELEMENTS)
        return NULL;
    /* Room for the elements and, typically, their small strings. */
    redisReply *r = reply_new(task, REDIS_REPLY_ARRAY,
                              elements > 0 ? (size_t)elements * (sizeof(redisReply) + 8 + 256) : 0);
    if (elements > 0)
        r->element = arena_alloc(task_arena(task, r), (size_t)elements * sizeof(redisReply *));
    r->elements = (size_t)(elements > 0 ? elements : 0);
    return r;
}

static void *create_integer_cb(const redisReadTask *task, long long value)
{
    redisReply *r = reply_new(task, REDIS_REPLY_INTEGER, 0);
    r->integer = value;
    return r;
}

static void *create_nil_cb(const redisReadTask *task)
{
    return reply_new(task, REDIS_REPLY_NIL, 0);
}

static void free_object_cb(void *obj)
{
    arena_unref(arena_of(obj)); /* hiredis only frees top-level replies */
}

redisReplyObjectFunctions redis_reply_fns = {
    create_string_cb, create_array_cb, create_integer_cb, create_nil_cb, free_object_cb,
};

void *redis_reply_retain(const redisReply *reply)
{
    struct arena *a = arena_of(reply);
    a->refs++;
    return a;
}

void redis_reply_release(void *ref)
{
    arena_unref(ref);
}

/* --- composed replies (a cluster's MGET, merged from one MGET per slot) ------------ */

redisReply *redis_reply_compose(size_t elements, unsigned max_parts)
{
    size_t need = sizeof(struct arena) + sizeof(redisReply) + elements * sizeof(redisReply *) +
                  max_parts * sizeof(struct arena *) + 32;
    struct arena *a = arena_open(need > ARENA_BLOCK ? need : ARENA_BLOCK);
    redisReply *r = arena_alloc(a, sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->type = REDIS_REPLY_ARRAY;
    r->elements = elements;
    r->element = elements ? arena_alloc(a, elements * sizeof(redisReply *)) : NULL;
    a->parts = max_parts ? arena_alloc(a, max_parts * sizeof(struct arena *)) : NULL;
    return r;
}

void redis_reply_compose_hold(redisReply *top, const redisReply *part)
{
    struct arena *a = arena_of(top), *pa = arena_of(part);
    pa->refs++;
    a->parts[a->n_parts++] = pa;
}

void redis_reply_put(redisReply *top)
{
    arena_unref(arena_of(top));
}
