/*
 * slice.h — the scheduler slice shiplogd's latency-bound threads ask for.
 *
 * Linux's EEVDF scheduler (6.6 and later; custom slices since 6.12) gives
 * each thread a virtual deadline of its eligible time plus its slice: a
 * thread that asks for a shorter slice than the default (0.75 ms times
 * 1 + log2(CPUs)) gets an earlier deadline, so a wakeup can preempt a busy
 * thread at once instead of waiting for that thread's slice to end.  Its
 * share of the CPU is unchanged (that is its weight, its nice value): it
 * runs sooner and for shorter turns.  No privilege is needed
 * (sched_setattr on SCHED_OTHER, sched_runtime = the slice).
 *
 * The threads that stand between a request and its answer ask for it: the
 * client front's event loops and the follower's fetch and reader threads.
 * On a machine whose CPUs are busy (a primary, its followers and the
 * clients on the same cores, or noisy neighbours) the wakeups on that path
 * waited for another thread's slice; see docs/performance.md.
 *
 *   sl_slice_set(us)     the process-wide setting (--io-slice-us), before
 *                        any thread starts; 0: the kernel's default
 *   sl_slice_apply()     the calling thread asks for it (best effort: an
 *                        older kernel ignores the slice or refuses, and
 *                        a real-time thread is left as it is); threads it
 *                        starts later get the kernel's own (reset on fork)
 *   sl_slice_set_batch(on)   --repl-sched batch, before any thread starts
 *   sl_slice_apply_repl()    a follower's fetch and reader threads: the
 *                        slice, and SCHED_BATCH when set.  A SCHED_BATCH
 *                        thread is never given the CPU at wakeup while
 *                        another runs there (no wakeup preemption): it
 *                        takes an idle core, or the next tick (4 ms at
 *                        HZ=250).  Its share of the CPU is unchanged.
 *                        Unlike the slice, the policy passes on to the
 *                        threads it starts (reset on fork resets only
 *                        real-time ones), so:
 *   sl_slice_set_fifo(on)   --repl-sched fifo, before any thread starts
 *   sl_slice_repl_streaming(caught_up)   the fetch thread, after each
 *                        reply: under --repl-sched fifo it runs SCHED_FIFO
 *                        (priority 1) while caught up (replies under 256
 *                        KiB) and SCHED_OTHER while catching up (bigger
 *                        replies: the work of a whole core, which a real-
 *                        time thread would take from everything else).  A
 *                        woken SCHED_FIFO thread takes the CPU from a busy
 *                        SCHED_OTHER one at once; a SCHED_OTHER one that
 *                        EEVDF does not find eligible waits for that
 *                        thread's slice to end, which is seen only at the
 *                        next tick (4 ms at HZ=250; perf sched showed the
 *                        fetch thread waiting 0.5-4 ms behind a busy
 *                        primary's event loop on the same core).  Needs
 *                        CAP_SYS_NICE or RLIMIT_RTPRIO: -1 the first time
 *                        it is refused (the caller says so; not tried
 *                        again), 0 otherwise.  Back to SCHED_OTHER, the
 *                        thread gets the nice value it had (a real-time
 *                        thread reports 0, and lowering it is refused
 *                        without CAP_SYS_NICE).
 *   sl_slice_apply_normal()  when SCHED_BATCH is set (or the thread runs
 *                        SCHED_FIFO), the calling thread back to SCHED_OTHER (the slice kept),
 * before it starts threads of the store's own (a full resync opens a store: its flusher, compactor)
 */
#ifndef SL_SLICE_H
#define SL_SLICE_H

#include <stdint.h>

#define SL_SLICE_DEFAULT_US 100 /* the shortest slice Linux takes */

void sl_slice_set(uint32_t us);
void sl_slice_apply(void);
void sl_slice_set_batch(int on);
void sl_slice_apply_repl(void);
void sl_slice_apply_normal(void);
void sl_slice_set_fifo(int on);
int sl_slice_repl_streaming(int caught_up);

#endif
