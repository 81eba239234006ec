/*
 * workq.h — the node's own worker threads.
 *
 * nng runs completion callbacks on a small shared thread pool; blocking one
 * on disk or fsync stalls every connection (DESIGN.md §4).  Callbacks
 * therefore only enqueue an sl_work item; the workers here run it.  Items
 * are intrusive (no allocation on submit) and run in FIFO order.
 */
#ifndef SL_NODE_WORKQ_H
#define SL_NODE_WORKQ_H

typedef struct sl_work {
	struct sl_work *next;
	void (*fn)(struct sl_work *w); /* runs on a worker thread */
} sl_work;

typedef struct sl_workq sl_workq;

/* Starts nthreads (>= 1) workers.  SL_OK, SL_ENOMEM, SL_EIO (thread
 * creation failed). */
int sl_workq_start(int nthreads, sl_workq **out);

/* Queues w; w must stay valid until its fn runs.  Never blocks on work. */
void sl_workq_submit(sl_workq *q, sl_work *w);

/* Runs every item already queued, stops the workers and frees q.  Items
 * submitted after this begins are run before it returns as long as they
 * come from items being run.  NULL is fine. */
void sl_workq_stop(sl_workq *q);

#endif
