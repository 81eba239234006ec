/*
 * quiet.c — the clocked half of quiet.h: callback activity and the wait
 * before nng_close.
 */
#include "quiet.h"

#include <time.h>

#include "repl_int.h"

void sl_quiet_cb_begin(sl_quiet *q)
{
	atomic_fetch_add(&q->busy, 1);
	atomic_store(&q->last_ms, repl_now_ms());
}

void sl_quiet_cb_end(sl_quiet *q)
{
	atomic_store(&q->last_ms, repl_now_ms());
	atomic_fetch_sub(&q->busy, 1);
}

void sl_quiet_wait(sl_quiet *q, unsigned idle_ms, unsigned max_ms)
{
	sl_quiet_start(q);
	uint64_t t0 = repl_now_ms();
	for (;;) {
		uint64_t now = repl_now_ms();
		if ((atomic_load(&q->busy) == 0 &&
		     repl_ms_since(now, atomic_load(&q->last_ms)) >= idle_ms) ||
		    now - t0 >= max_ms) {
			return;
		}
		struct timespec ts = {0, 5 * 1000000L};
		nanosleep(&ts, NULL);
	}
}
