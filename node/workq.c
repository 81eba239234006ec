/*
 * workq.c — a mutex-protected FIFO drained by N threads (see workq.h for
 * why the node has its own workers).
 *
 * Idle workers wait on their own condition variable, stacked LIFO: a submit
 * wakes the worker that went idle last, whose stack and cache are warm, and
 * the rest of a large pool stays asleep (one shared condition variable with
 * 60 waiters cost ~10% of put throughput on 2 cores).
 *
 * Invariants (under mu):
 *  1. A worker is on the idle stack iff it waits in idle_wait and has not
 *     been handed a wakeup (`woken`).
 *  2. `running` counts workers inside an item's fn and not parked in
 *     sl_workq_blocking; a worker takes an item only while running <
 *     max_running (or when stopping), so at most max_running items run on
 *     the CPU at once.  A wakeup is sent only while running + waking <
 *     max_running: a burst of submits wakes one worker per free slot, not
 *     one per submit.
 */
#include "workq.h"

#include <pthread.h>
#include <stdlib.h>

#include "shiplog.h"

typedef struct wslot {
	pthread_cond_t cv;
	int woken;
	struct wslot *next; /* on the idle stack */
} wslot;

struct sl_workq {
	pthread_mutex_t mu;
	sl_work *head, *tail;
	int stopping;
	wslot *idle; /* stack of idle workers (invariant 1) */
	int running; /* invariant 2 */
	int waking;  /* woken, not yet back on the CPU: counted as running */
	int max_running;
	int nthreads;
	pthread_t *threads;
	wslot *slots;
};

typedef struct warg {
	sl_workq *q;
	wslot *me;
} warg;

static __thread sl_workq *tl_queue; /* the queue of this worker thread */

static void wake_one(sl_workq *q)
{
	wslot *w = q->idle;
	q->idle = w->next;
	w->woken = 1;
	q->waking++;
	pthread_cond_signal(&w->cv);
}

/* With mu held: wakes one idle worker if the queue has work nobody runs. */
static void maybe_wake(sl_workq *q)
{
	if (q->head != NULL && q->idle != NULL &&
	    (q->running + q->waking < q->max_running || q->stopping)) {
		wake_one(q);
	}
}

static int can_take(const sl_workq *q)
{
	return q->head != NULL && (q->running < q->max_running || q->stopping);
}

static void *worker(void *arg)
{
	sl_workq *q = ((warg *)arg)->q;
	wslot *me = ((warg *)arg)->me;
	free(arg);
	tl_queue = q;
	pthread_mutex_lock(&q->mu);
	for (;;) {
		while (!can_take(q) && !q->stopping) {
			me->woken = 0;
			me->next = q->idle;
			q->idle = me;
			while (!me->woken) {
				pthread_cond_wait(&me->cv, &q->mu);
			}
			q->waking--;
		}
		sl_work *w = q->head;
		if (w == NULL) {
			break; /* stopping and drained */
		}
		q->head = w->next;
		if (q->head == NULL) {
			q->tail = NULL;
		}
		q->running++;
		pthread_mutex_unlock(&q->mu);
		w->next = NULL;
		w->fn(w);
		pthread_mutex_lock(&q->mu);
		q->running--;
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

int sl_workq_start(int nthreads, int running, sl_workq **out)
{
	if (nthreads < 1) {
		nthreads = 1;
	}
	if (running < 1 || running > nthreads) {
		running = nthreads;
	}
	sl_workq *q = calloc(1, sizeof(*q));
	if (q == NULL) {
		return SL_ENOMEM;
	}
	q->threads = calloc((size_t)nthreads, sizeof(pthread_t));
	q->slots = calloc((size_t)nthreads, sizeof(wslot));
	if (q->threads == NULL || q->slots == NULL) {
		free(q->threads);
		free(q->slots);
		free(q);
		return SL_ENOMEM;
	}
	q->max_running = running;
	pthread_mutex_init(&q->mu, NULL);
	for (int i = 0; i < nthreads; i++) {
		pthread_cond_init(&q->slots[i].cv, NULL);
	}
	q->nthreads = nthreads;
	for (int i = 0; i < nthreads; i++) {
		warg *a = malloc(sizeof(*a));
		if (a != NULL) {
			a->q = q;
			a->me = &q->slots[i];
		}
		if (a == NULL || pthread_create(&q->threads[i], NULL, worker, a) != 0) {
			free(a);
			q->nthreads = i;
			sl_workq_stop(q);
			return SL_EIO;
		}
	}
	*out = q;
	return SL_OK;
}

void sl_workq_submit(sl_workq *q, sl_work *w)
{
	w->next = NULL;
	pthread_mutex_lock(&q->mu);
	if (q->tail != NULL) {
		q->tail->next = w;
	} else {
		q->head = w;
	}
	q->tail = w;
	/* A busy worker takes the next item when it finishes: wake one only if
	 * one is asleep and fewer than max_running run (a futex wake per
	 * request is a syscall and often a context switch). */
	maybe_wake(q);
	pthread_mutex_unlock(&q->mu);
}

void sl_workq_blocking(int on)
{
	sl_workq *q = tl_queue;
	if (q == NULL) {
		return;
	}
	pthread_mutex_lock(&q->mu);
	if (on) {
		q->running--;
		maybe_wake(q);
	} else {
		q->running++;
	}
	pthread_mutex_unlock(&q->mu);
}

void sl_workq_stop(sl_workq *q)
{
	if (q == NULL) {
		return;
	}
	pthread_mutex_lock(&q->mu);
	q->stopping = 1;
	while (q->idle != NULL) {
		wake_one(q);
	}
	pthread_mutex_unlock(&q->mu);
	for (int i = 0; i < q->nthreads; i++) {
		pthread_join(q->threads[i], NULL);
	}
	for (int i = 0; i < q->nthreads; i++) {
		pthread_cond_destroy(&q->slots[i].cv);
	}
	pthread_mutex_destroy(&q->mu);
	free(q->threads);
	free(q->slots);
	free(q);
}
