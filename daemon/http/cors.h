/*
 * cors: which pages on other origins may read batchd's answers ([cors]).
 *
 *   browser ──OPTIONS + Origin + Access-Control-Request-Method──> head_cb ──> cors_route
 *      │            (a preflight for a route batchd answers: its own 204/403)
 *      └──GET/POST + Origin──> batchd's handler ──answer + Access-Control-Allow-Origin
 *
 * Who answers the real request answers its preflight: a preflight for
 * "DELETE /v1/sessions/s1" goes to the app when the app serves that DELETE,
 * unless proxied = yes, where batchd answers every preflight and puts its
 * headers on the app's answers too (dropping the app's own).
 *
 * A policy is built with each router (at start and on SIGHUP) and freed
 * with it, so a request keeps the policy it started with.
 */
#ifndef BATCHD_CORS_H
#define BATCHD_CORS_H

#include <stdbool.h>

#include "daemon/config.h"
#include "daemon/http/router.h"
#include "proto/buf.h"

struct req;
struct cors;

struct cors *cors_new(const struct cfg_cors *cfg);
void cors_free(struct cors *c);

/* After routing a request's head: a preflight batchd answers gets the
 * preflight route (returns ROUTER_FOUND); an answer batchd gives itself
 * gets its CORS headers now. Returns rr (or ROUTER_FOUND) otherwise
 * unchanged. */
enum router_result cors_route(const struct cors *c, const struct router *rt, struct req *r,
                              enum router_result rr);

/* For proxied = yes: true when the app's answer to r is to carry batchd's
 * CORS headers (which are appended to `lines`, each ending in CRLF) in
 * place of the app's own Access-Control-* ones. */
bool cors_proxied_headers(const struct cors *c, const struct req *r, struct buf *lines);

void cors_metrics_init(void);

#endif
