/*
 * workq.c — a mutex + condition variable FIFO drained by N threads (see
 * workq.h for why the node has its own workers).
 */
#include "workq.h"

#include <pthread.h>
#include <stdlib.h>

#include "shiplog.h"

struct sl_workq {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	sl_work *head, *tail;
	int stopping;
	int idle; /* workers waiting on cv */
	int nthreads;
	pthread_t *threads;
};

static void *worker(void *arg)
{
	sl_workq *q = arg;
	pthread_mutex_lock(&q->mu);
	for (;;) {
		while (q->head == NULL && !q->stopping) {
			q->idle++;
			pthread_cond_wait(&q->cv, &q->mu);
			q->idle--;
		}
		sl_work *w = q->head;
		if (w == NULL) {
			break; /* stopping and drained */
		}
		q->head = w->next;
		if (q->head == NULL) {
			q->tail = NULL;
		}
		pthread_mutex_unlock(&q->mu);
		w->next = NULL;
		w->fn(w);
		pthread_mutex_lock(&q->mu);
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

int sl_workq_start(int nthreads, sl_workq **out)
{
	if (nthreads < 1) {
		nthreads = 1;
	}
	sl_workq *q = calloc(1, sizeof(*q));
	if (q == NULL) {
		return SL_ENOMEM;
	}
	q->threads = calloc((size_t)nthreads, sizeof(pthread_t));
	if (q->threads == NULL) {
		free(q);
		return SL_ENOMEM;
	}
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	for (int i = 0; i < nthreads; i++) {
		if (pthread_create(&q->threads[i], NULL, worker, q) != 0) {
			q->nthreads = i;
			sl_workq_stop(q);
			return SL_EIO;
		}
	}
	q->nthreads = nthreads;
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
	 * one is asleep (a futex wake per request is a syscall and often a
	 * context switch). */
	if (q->idle > 0) {
		pthread_cond_signal(&q->cv);
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
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
	for (int i = 0; i < q->nthreads; i++) {
		pthread_join(q->threads[i], NULL);
	}
	pthread_cond_destroy(&q->cv);
	pthread_mutex_destroy(&q->mu);
	free(q->threads);
	free(q);
}
