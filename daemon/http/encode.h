/*
 * encode: what happens to batchd's own document answers (entity, batch,
 * list; req_encodable) between the handler and the socket:
 *
 *   handler ──req_respond*(200)──> encode_answer ──> If-None-Match matches? ──yes──> 304, no body
 *                                     │ Vary: Accept-Encoding, ETag
 *                                     └─> gzip accepted and body ≥ gzip_min_bytes? ──yes──> deflated
 *                                         (one z_stream per process, deflateReset per answer)
 *
 * Errors, SSE streams and proxied answers never come here: only 200s a
 * handler marked. HEAD runs the same steps, so its head matches GET's.
 */
#ifndef BATCHD_ENCODE_H
#define BATCHD_ENCODE_H

#include <stdbool.h>

struct req;
struct cfg_batchd;

/* gzip, gzip_level, gzip_min_bytes, etag: at start and on reload. */
void encode_configure(const struct cfg_batchd *cfg);
void encode_metrics_init(void);
/* Whether answers get ETags: a handler skips hashing when not. */
bool encode_etag_on(void);
/* Applies the above to r's answer (status 200, body set; r->conn set).
 * Called by req.c before the answer is queued. */
void encode_answer(struct req *r);
/* Frees the z_stream (at exit). */
void encode_deinit(void);

#endif
