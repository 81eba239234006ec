/*
 * slice.c — see slice.h.
 */
#define _GNU_SOURCE
#include "slice.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* struct sched_attr (linux/sched/types.h clashes with glibc's sched.h). */
typedef struct slice_attr {
	uint32_t size;
	uint32_t sched_policy;
	uint64_t sched_flags;
	int32_t sched_nice;
	uint32_t sched_priority;
	uint64_t sched_runtime;
	uint64_t sched_deadline;
	uint64_t sched_period;
	uint32_t sched_util_min;
	uint32_t sched_util_max;
} slice_attr;

static atomic_uint slice_us = SL_SLICE_DEFAULT_US;
static atomic_int repl_batch;
static atomic_int repl_fifo;
static _Thread_local int tl_fifo; /* this thread runs SCHED_FIFO (sl_slice_repl_streaming) */
static _Thread_local int tl_nice; /* its nice value before (a real-time thread reports 0) */
static atomic_int fifo_refused;   /* said once: no privilege for it */

void sl_slice_set(uint32_t us)
{
	atomic_store(&slice_us, us);
}

void sl_slice_set_batch(int on)
{
	atomic_store(&repl_batch, on);
}

void sl_slice_set_fifo(int on)
{
	atomic_store(&repl_fifo, on);
}

/* The calling thread: the slice (0: the kernel's own) and, when policy
 * is not -1, that policy (SCHED_OTHER or SCHED_BATCH); its nice value
 * stays. */
static void apply(uint32_t us, int policy)
{
#if defined(SYS_sched_setattr) && defined(SYS_sched_getattr)
	if (us == 0 && policy < 0) {
		return;
	}
	slice_attr a;
	memset(&a, 0, sizeof(a));
	/* read first: the thread's nice value (and policy) stay as they are */
	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) != 0) {
		return;
	}
	if (a.sched_policy != SCHED_OTHER && a.sched_policy != SCHED_BATCH) {
		return; /* real-time or deadline: not ours to change */
	}
	a.size = sizeof(a);
	/* reset on fork: the threads this one starts (a full resync opens a
	 * store from the fetch thread: its flusher, its compactor) get the
	 * kernel's own slice, not this one */
	a.sched_flags = 0x01; /* SCHED_FLAG_RESET_ON_FORK */
	if (policy >= 0) {
		a.sched_policy = (uint32_t)policy;
	}
	a.sched_runtime = (uint64_t)us * 1000u; /* 0: the kernel's own slice */
	(void)syscall(SYS_sched_setattr, 0, &a, 0);
#else
	(void)us;
	(void)policy;
#endif
}

void sl_slice_apply(void)
{
	apply(atomic_load(&slice_us), -1);
}

void sl_slice_apply_repl(void)
{
	apply(atomic_load(&slice_us), atomic_load(&repl_batch) ? SCHED_BATCH : -1);
}

/* The calling thread, SCHED_FIFO by sl_slice_repl_streaming, back to
 * SCHED_OTHER with its slice and the nice value it had (a real-time
 * thread reads as nice 0, and lowering nice needs CAP_SYS_NICE). */
static void fifo_off(void)
{
#if defined(SYS_sched_setattr)
	slice_attr a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.sched_policy = SCHED_OTHER;
	a.sched_flags = 0x01; /* SCHED_FLAG_RESET_ON_FORK */
	a.sched_nice = tl_nice;
	a.sched_runtime = (uint64_t)atomic_load(&slice_us) * 1000u;
	struct sched_param sp = {0};
	if (syscall(SYS_sched_setattr, 0, &a, 0) == 0 ||
	    sched_setscheduler(0, SCHED_OTHER, &sp) == 0) {
		tl_fifo = 0;
	}
#endif
}

void sl_slice_apply_normal(void)
{
	if (tl_fifo) {
		fifo_off(); /* fifo and batch are one flag's values */
	} else if (atomic_load(&repl_batch)) {
		apply(atomic_load(&slice_us), SCHED_OTHER);
	}
}

int sl_slice_repl_streaming(int caught_up)
{
	if (!atomic_load(&repl_fifo) || caught_up == tl_fifo ||
	    (caught_up && atomic_load(&fifo_refused))) {
		return 0;
	}
	if (!caught_up) {
		fifo_off();
		return 0;
	}
#if defined(SYS_sched_setattr)
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0); /* this thread's */
	tl_nice = errno == 0 ? nice : 0;
	slice_attr a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.sched_policy = SCHED_FIFO;
	a.sched_priority = 1;
	a.sched_flags = 0x01; /* SCHED_FLAG_RESET_ON_FORK: not the threads it starts */
	if (syscall(SYS_sched_setattr, 0, &a, 0) == 0) {
		tl_fifo = 1;
		return 0;
	}
	int first = atomic_exchange(&fifo_refused, 1) == 0;
	return first ? -1 : 0;
#else
	return 0;
#endif
}
