/*
 * metrics.h — request counters, latency histograms and the Prometheus text
 * rendering of them plus the engine's stats (GET /metrics).
 *
 * Counting is lock-free (relaxed atomics) so workers and nng callbacks can
 * observe from any thread.
 */
#ifndef SL_NODE_METRICS_H
#define SL_NODE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "node.h"

typedef struct sl_metrics sl_metrics;

/* NULL on ENOMEM.  sl_metrics_free(NULL) is fine. */
sl_metrics *sl_metrics_new(void);
void sl_metrics_free(sl_metrics *m);

/* Counts one request of operation op (SL_OP_*) that ended with status and
 * took ns nanoseconds from receipt to reply. */
void sl_metrics_observe(sl_metrics *m, int op, int status, uint64_t ns);

/* Requests received and not yet answered (the server moves it). */
void sl_metrics_inflight_add(sl_metrics *m, int delta);

/* Renders every metric in the Prometheus text format 0.0.4 into a malloc'd
 * buffer *out of *len bytes (caller frees).  Calls sl_stats_get: run it on a
 * worker thread.  SL_OK or SL_ENOMEM. */
int sl_metrics_render(sl_metrics *m, sl_node *n, char **out, size_t *len);

#endif
