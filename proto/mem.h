/*
 * mem: allocation that never returns NULL.
 *
 * batchd cannot do anything useful once malloc fails, and checking every
 * call site hides the real logic, so an allocation failure prints what was
 * asked for and aborts (the h2o_mem_alloc convention).
 */
#ifndef BATCHD_PROTO_MEM_H
#define BATCHD_PROTO_MEM_H

#include <stddef.h>

void *mem_alloc(size_t n);
void *mem_calloc(size_t count, size_t size);
void *mem_realloc(void *p, size_t n);
char *mem_strdup(const char *s);
char *mem_strndup(const char *s, size_t n);

#endif
