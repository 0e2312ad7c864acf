#include "proto/freelist.h"

#include <stdlib.h>

void freelist_drain(struct freelist *fl, void (*destroy)(void *))
{
    void *obj;
    while ((obj = freelist_get(fl)) != NULL) {
        if (destroy)
            destroy(obj);
        else
            free(obj);
    }
}
