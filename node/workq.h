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

/* Starts nthreads (>= 1) workers, of which at most `running` (>= 1; 0:
 * nthreads) run items at once unless some of them are parked in
 * sl_workq_blocking.  Many threads cover requests that wait (for follower
 * acks, for a follower to catch up, for a compaction); a small running
 * bound keeps requests that never wait from paying a wakeup and a context
 * switch each.  SL_OK, SL_ENOMEM, SL_EIO (thread creation failed). */
int sl_workq_start(int nthreads, int running, sl_workq **out);

/* Called by an item's fn around a wait that is not CPU work (1 before, 0
 * after): while it waits another worker may run the queue.  A no-op
 * outside a worker thread. */
void sl_workq_blocking(int on);

/* Queues w; w must stay valid until its fn runs.  Never blocks on work. */
void sl_workq_submit(sl_workq *q, sl_work *w);

/* Runs every item already queued, stops the workers and frees q.  Items
 * submitted after this begins are run before it returns as long as they
 * come from items being run.  NULL is fine. */
void sl_workq_stop(sl_workq *q);

#endif
