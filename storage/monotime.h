/*
 * monotime.h — timed waits on the monotonic clock.
 *
 * A condition variable made with default attributes times its waits
 * against CLOCK_REALTIME: a wall clock stepped back (NTP, a VM resumed, an
 * operator) by an hour made each such wait an hour longer — the flusher's
 * everysec sync, the compactor's interval, the primary's long polls, acks
 * and --min-seq timeouts (a review in the twenty-seventh session).  Every
 * condition that is waited on with a timeout is made with
 * sl_cond_init_mono, and its deadlines come from sl_mono_after.
 */
#ifndef SL_MONOTIME_H
#define SL_MONOTIME_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* pthread_cond_init with the condition's timed waits on CLOCK_MONOTONIC. */
static inline int sl_cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int rc = pthread_condattr_init(&a);
	if (rc != 0) {
		return rc;
	}
	rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	if (rc == 0) {
		rc = pthread_cond_init(cv, &a);
	}
	pthread_condattr_destroy(&a);
	return rc;
}

/* *ts = CLOCK_MONOTONIC's now plus ms: a deadline for a timed wait on a
 * condition made by sl_cond_init_mono. */
static inline void sl_mono_after(struct timespec *ts, uint64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	uint64_t ns = (uint64_t)ts->tv_nsec + (ms % 1000u) * 1000000u;
	ts->tv_sec += (time_t)(ms / 1000u + ns / 1000000000u);
	ts->tv_nsec = (long)(ns % 1000000000u);
}

#endif
