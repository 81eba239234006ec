/*
 * test_node_workq.c — the node's worker queue (node/workq.c): every item
 * runs exactly once, stop drains what is queued, at most `running` items
 * run on the CPU at once, sl_workq_blocking lets another worker run the
 * queue while an item waits (and without it nothing else runs), and
 * sl_workq_blocking outside a worker thread changes nothing.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "shiplog.h"
#include "workq.h"

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	nanosleep(&ts, NULL);
}

/* Polls flag for up to timeout_us; 1 when it was set in time. */
static int wait_flag(atomic_int *flag, uint64_t timeout_us)
{
	uint64_t end = mono_us() + timeout_us;
	while (!atomic_load(flag)) {
		if (mono_us() >= end) {
			return atomic_load(flag);
		}
		sleep_us(1000);
	}
	return 1;
}

/* ---- every item exactly once; stop drains ------------------------------ */

#define N_ITEMS 10000

typedef struct count_item {
	sl_work w; /* first: the fn casts back */
	int idx;
} count_item;

static count_item items[N_ITEMS];
static atomic_int runs[N_ITEMS];
static atomic_int total_runs;

static void count_fn(sl_work *w)
{
	count_item *it = (count_item *)w;
	atomic_fetch_add(&runs[it->idx], 1);
	atomic_fetch_add(&total_runs, 1);
}

typedef struct submitter {
	sl_workq *q;
	int from, to;
} submitter;

static void *submit_range(void *arg)
{
	submitter *s = arg;
	for (int i = s->from; i < s->to; i++) {
		sl_workq_submit(s->q, &items[i].w);
	}
	return NULL;
}

static void test_each_item_runs_once(void **state)
{
	(void)state;
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(4, 2, &q), SL_OK);
	assert_non_null(q);
	atomic_store(&total_runs, 0);
	for (int i = 0; i < N_ITEMS; i++) {
		atomic_store(&runs[i], 0);
		items[i].w.fn = count_fn;
		items[i].idx = i;
	}
	submitter s[2] = {{q, 0, N_ITEMS / 2}, {q, N_ITEMS / 2, N_ITEMS}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pthread_create(&t[i], NULL, submit_range, &s[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
	}
	sl_workq_stop(q);
	assert_int_equal(atomic_load(&total_runs), N_ITEMS);
	for (int i = 0; i < N_ITEMS; i++) {
		if (atomic_load(&runs[i]) != 1) {
			fail_msg("item %d ran %d times", i, atomic_load(&runs[i]));
		}
	}
}

/* One worker is held by a gate item while items pile up behind it; the
 * gate opens only after sl_workq_stop has begun, so stop must run the
 * queued items itself before it returns. */
#define N_BEHIND 100

static atomic_int gate_open, gate_entered;

static void gate_fn(sl_work *w)
{
	(void)w;
	atomic_store(&gate_entered, 1);
	while (!atomic_load(&gate_open)) {
		sleep_us(1000);
	}
}

static void *open_gate_later(void *arg)
{
	(void)arg;
	sleep_us(100 * 1000);
	atomic_store(&gate_open, 1);
	return NULL;
}

static void test_stop_drains_queue(void **state)
{
	(void)state;
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(1, 1, &q), SL_OK);
	atomic_store(&gate_open, 0);
	atomic_store(&gate_entered, 0);
	atomic_store(&total_runs, 0);
	sl_work gate = {NULL, gate_fn};
	sl_workq_submit(q, &gate);
	for (int i = 0; i < N_BEHIND; i++) {
		atomic_store(&runs[i], 0);
		items[i].w.fn = count_fn;
		items[i].idx = i;
		sl_workq_submit(q, &items[i].w);
	}
	assert_true(wait_flag(&gate_entered, 5 * 1000 * 1000));
	assert_int_equal(atomic_load(&total_runs), 0); /* all still queued */
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, open_gate_later, NULL), 0);
	sl_workq_stop(q);
	assert_int_equal(atomic_load(&total_runs), N_BEHIND);
	for (int i = 0; i < N_BEHIND; i++) {
		assert_int_equal(atomic_load(&runs[i]), 1);
	}
	pthread_join(t, NULL);
}

/* ---- the running bound ------------------------------------------------- */

#define N_SPIN 2000

static atomic_int concurrent, max_concurrent, spinner_started;

static void spin_fn(sl_work *w)
{
	atomic_store(&spinner_started, 1);
	int now = atomic_fetch_add(&concurrent, 1) + 1;
	int m = atomic_load(&max_concurrent);
	while (now > m && !atomic_compare_exchange_weak(&max_concurrent, &m, now)) {
	}
	uint64_t end = mono_us() + 50;
	while (mono_us() < end) {
	}
	atomic_fetch_sub(&concurrent, 1);
	count_fn(w);
}

/* Runs N_SPIN spinning items, submitted from two threads after first (if
 * not NULL), on q and stops q; returns the highest number of spinners seen
 * running at once. */
static int run_spinners(sl_workq *q, sl_work *first)
{
	atomic_store(&concurrent, 0);
	atomic_store(&max_concurrent, 0);
	atomic_store(&total_runs, 0);
	atomic_store(&spinner_started, 0);
	if (first != NULL) {
		sl_workq_submit(q, first);
	}
	for (int i = 0; i < N_SPIN; i++) {
		atomic_store(&runs[i], 0);
		items[i].w.fn = spin_fn;
		items[i].idx = i;
	}
	submitter s[2] = {{q, 0, N_SPIN / 2}, {q, N_SPIN / 2, N_SPIN}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pthread_create(&t[i], NULL, submit_range, &s[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
	}
	/* Let the workers drain most of it while the queue is live (stop lifts
	 * the bound for the rest, so the bound is judged before it). */
	uint64_t end = mono_us() + 5 * 1000 * 1000;
	while (atomic_load(&total_runs) < N_SPIN && mono_us() < end) {
		sleep_us(1000);
	}
	assert_int_equal(atomic_load(&total_runs), N_SPIN);
	int m = atomic_load(&max_concurrent);
	sl_workq_stop(q);
	for (int i = 0; i < N_SPIN; i++) {
		assert_int_equal(atomic_load(&runs[i]), 1);
	}
	return m;
}

static void test_running_bound(void **state)
{
	(void)state;
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(16, 2, &q), SL_OK);
	int m = run_spinners(q, NULL);
	print_message("max concurrent items: %d (bound 2)\n", m);
	assert_true(m >= 1);
	assert_true(m <= 2);
}

/* An item that parks in sl_workq_blocking until a spinner has started,
 * then returns.  While it is parked a second worker runs spinners; once it
 * is done the bound of 1 must hold again: its worker goes idle rather than
 * taking spinners alongside the other one. */
static atomic_int parked_saw_spinner;

static void park_fn(sl_work *w)
{
	(void)w;
	sl_workq_blocking(1);
	atomic_store(&parked_saw_spinner, wait_flag(&spinner_started, 5 * 1000 * 1000));
	sl_workq_blocking(0);
}

static void test_running_bound_after_blocking(void **state)
{
	(void)state;
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(4, 1, &q), SL_OK);
	atomic_store(&parked_saw_spinner, 0);
	sl_work park = {NULL, park_fn};
	int m = run_spinners(q, &park); /* stops q */
	assert_int_equal(atomic_load(&parked_saw_spinner), 1);
	assert_int_equal(m, 1);
}

/* ---- sl_workq_blocking -------------------------------------------------- */

typedef struct wait_item {
	sl_work w;
	int use_blocking;
	uint64_t timeout_us;
	atomic_int *b_ran;
	atomic_int done;
	atomic_int saw_b;    /* B had run when the wait ended */
	atomic_int timedout; /* the wait ended by its timeout */
} wait_item;

static void wait_fn(sl_work *w)
{
	wait_item *a = (wait_item *)w;
	if (a->use_blocking) {
		sl_workq_blocking(1);
	}
	int ok = wait_flag(a->b_ran, a->timeout_us);
	atomic_store(&a->saw_b, atomic_load(a->b_ran));
	atomic_store(&a->timedout, !ok);
	if (a->use_blocking) {
		sl_workq_blocking(0);
	}
	atomic_store(&a->done, 1);
}

typedef struct flag_item {
	sl_work w;
	atomic_int ran;
} flag_item;

static void flag_fn(sl_work *w)
{
	atomic_store(&((flag_item *)w)->ran, 1);
}

static void test_blocking_lets_others_run(void **state)
{
	(void)state;
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(4, 1, &q), SL_OK);
	sleep_us(50 * 1000); /* every worker idle: only a wakeup can run B */
	flag_item b = {{NULL, flag_fn}, 0};
	wait_item a = {{NULL, wait_fn}, 1, 5 * 1000 * 1000, &b.ran, 0, 0, 0};
	uint64_t t0 = mono_us();
	sl_workq_submit(q, &a.w);
	sl_workq_submit(q, &b.w);
	/* Stop only once A is done: stopping lifts the running bound. */
	assert_true(wait_flag(&a.done, 8 * 1000 * 1000));
	sl_workq_stop(q);
	assert_int_equal(atomic_load(&a.done), 1);
	assert_int_equal(atomic_load(&a.timedout), 0); /* B ran while A waited */
	assert_int_equal(atomic_load(&a.saw_b), 1);
	assert_int_equal(atomic_load(&b.ran), 1);
	assert_true(mono_us() - t0 < 4 * 1000 * 1000);
}

static void test_without_blocking_nothing_else_runs(void **state)
{
	(void)state;
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(4, 1, &q), SL_OK);
	sleep_us(50 * 1000); /* every worker idle: only a wakeup can run B */
	flag_item b = {{NULL, flag_fn}, 0};
	wait_item a = {{NULL, wait_fn}, 0, 300 * 1000, &b.ran, 0, 0, 0};
	sl_workq_submit(q, &a.w);
	sl_workq_submit(q, &b.w);
	/* Stop only once A is done: stopping lifts the running bound. */
	assert_true(wait_flag(&a.done, 5 * 1000 * 1000));
	sl_workq_stop(q);
	assert_int_equal(atomic_load(&a.done), 1);
	assert_int_equal(atomic_load(&a.timedout), 1); /* B did not run meanwhile */
	assert_int_equal(atomic_load(&a.saw_b), 0);
	assert_int_equal(atomic_load(&b.ran), 1); /* but did run after A */
}

/* Outside a worker thread sl_workq_blocking must neither crash nor change
 * a live queue's accounting: after the calls below the running bound of 1
 * still holds (a decremented count would let two items run at once). */
static void test_blocking_outside_worker_is_noop(void **state)
{
	(void)state;
	sl_workq_blocking(1);
	sl_workq_blocking(0);
	sl_workq *q = NULL;
	assert_int_equal(sl_workq_start(8, 1, &q), SL_OK);
	for (int i = 0; i < 5; i++) {
		sl_workq_blocking(1);
	}
	int m = run_spinners(q, NULL); /* stops q */
	for (int i = 0; i < 5; i++) {
		sl_workq_blocking(0);
	}
	assert_int_equal(m, 1);
	sl_workq_stop(NULL); /* documented as fine */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_each_item_runs_once),
	    cmocka_unit_test(test_stop_drains_queue),
	    cmocka_unit_test(test_running_bound),
	    cmocka_unit_test(test_running_bound_after_blocking),
	    cmocka_unit_test(test_blocking_lets_others_run),
	    cmocka_unit_test(test_without_blocking_nothing_else_runs),
	    cmocka_unit_test(test_blocking_outside_worker_is_noop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
