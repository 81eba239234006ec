/*
 * test_crash_kill.c — real process crashes: SIGKILL a writer at a random
 * moment and check that nothing it acknowledged is lost.
 *
 * shiplog.h: "Under every sync policy the record is in the kernel before
 * return" — so a *process* crash (as opposed to a machine crash) must never
 * lose an acknowledged write, whatever the sync policy.
 *
 * Each cycle forks a child that opens the same data directory and runs T
 * writer threads.  Thread t owns keys t*KPT .. t*KPT+KPT-1 (disjoint, so each
 * key's writes are ordered by one thread) and numbers its writes with a
 * counter c = cycle<<40 | t<<32 | i.  Everything about a write is a function
 * of c: its key, its length, its bytes (the first 8 of which are c itself).
 * After each acknowledged sl_put the thread sends (c, seq) down a pipe.  The
 * parent kills the child 1-50 ms after the fork, reopens the directory and
 * checks, for every key:
 *
 *   - absent only if no write to it was ever acknowledged or seen;
 *   - otherwise the value decodes to some c, and the bytes equal value(c)
 *     exactly (no torn or mixed values) and key(c) is this key;
 *   - c is at least the latest acknowledged (or previously seen) write of
 *     the key; if c is newer, it must be the one write thread t may have had
 *     in flight when killed: i = (last acknowledged i of t) + 1, this cycle;
 *   - its seq equals the acknowledged seq when c was acknowledged;
 *   - all seqs are distinct, and seqs continue above the recovered last_seq.
 *
 * Cycles accumulate on one directory (SL_TEST_SEEDS cycles per variant,
 * default 30): sync=always and sync=no, each with 1 and 4 threads (group
 * commit under kill).  Writers under sync=no sleep briefly after some puts:
 * unpaced they would finish a cycle's puts before the kill.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format.h"
#include "shiplog.h"
#include "testutil.h"

#define KPT            40 /* keys per writer thread */
#define MAXT           4  /* writer threads at most */
#define NKEYS          (KPT * MAXT)
#define PUTS_PER_CYCLE 4000 /* per thread; then the child idles until killed */
#define NONE           UINT64_MAX

typedef struct ack {
	uint64_t c;
	uint64_t seq;
} ack;

static uint64_t enc(uint64_t cycle, uint64_t t, uint64_t i)
{
	return cycle << 40 | t << 32 | i;
}
static unsigned c_thread(uint64_t c)
{
	return (unsigned)((c >> 32) & 0xff);
}
static uint64_t c_cycle(uint64_t c)
{
	return c >> 40;
}
static uint64_t c_index(uint64_t c)
{
	return c & 0xffffffffu;
}

static int key_of(uint64_t c)
{
	return (int)(c_thread(c) * KPT + tu_splitmix64(c ^ 0x6b6579) % KPT);
}

static void key_name(int k, char *buf, size_t cap)
{
	snprintf(buf, cap, "t%d/key-%02d", k / KPT, k % KPT);
}

static size_t vlen_of(uint64_t c)
{
	return 16 + (size_t)(tu_splitmix64(c ^ 0x6c656e) % 600);
}

/* value(c): c, key(c), then bytes derived from c. */
static void value_of(uint64_t c, uint8_t *buf)
{
	size_t n = vlen_of(c);
	sl_put64(buf, c);
	sl_put64(buf + 8, (uint64_t)key_of(c));
	tu_fill_tagged(buf + 16, n - 16, c);
}

/* ---- the child ------------------------------------------------------- */

typedef struct child_arg {
	sl_db *db;
	int fd;
	uint64_t cycle;
	unsigned t;
	int pace; /* sleep now and then so the kill lands mid-stream */
} child_arg;

static void *writer(void *p)
{
	child_arg *a = p;
	uint8_t val[16 + 600];
	char key[32];
	for (uint64_t i = 0; i < PUTS_PER_CYCLE; i++) {
		uint64_t c = enc(a->cycle, a->t, i);
		int k = key_of(c);
		key_name(k, key, sizeof(key));
		value_of(c, val);
		uint64_t seq = 0;
		int rc = sl_put(a->db, key, strlen(key), val, vlen_of(c), &seq);
		if (rc != SL_OK) {
			_exit(20 + (rc < 0 ? -rc : rc));
		}
		ack m = {c, seq};
		if (write(a->fd, &m, sizeof(m)) != (ssize_t)sizeof(m)) {
			_exit(5);
		}
		if (a->pace && (tu_splitmix64(c) & 1)) {
			usleep(20);
		}
	}
	for (;;) {
		pause(); /* wait for the SIGKILL */
	}
	return NULL;
}

static void child_main(const char *dir, const sl_options *o, int fd, uint64_t cycle,
                       unsigned nthreads)
{
	sl_db *db = NULL;
	int rc = sl_open(dir, o, &db);
	if (rc != SL_OK) {
		_exit(10 + (rc < 0 ? -rc : rc));
	}
	static child_arg args[MAXT];
	pthread_t th[MAXT];
	for (unsigned t = 0; t < nthreads; t++) {
		args[t] = (child_arg){db, fd, cycle, t, o->sync != SL_SYNC_ALWAYS};
		if (t > 0 && pthread_create(&th[t], NULL, writer, &args[t]) != 0) {
			_exit(6);
		}
	}
	writer(&args[0]);
	_exit(7);
}

/* ---- the parent ------------------------------------------------------ */

typedef struct state {
	uint64_t known[NKEYS];     /* newest write of the key known to be stored, or NONE */
	uint64_t known_seq[NKEYS]; /* its seq */
	uint64_t last_seq;         /* stats.last_seq at the previous verification */
	uint64_t acks, inflight_seen, empty_cycles;
	uint64_t compacted_segs; /* segments written by compaction, seen at the last check */
} state;

/* After a reopen: no temporary file survives (compaction and hint outputs
 * are *.tmp until renamed), and count the compaction outputs. */
static void check_dir(const char *dir, uint64_t cycle, state *S)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		if (n >= 4 && strcmp(e->d_name + n - 4, ".tmp") == 0) {
			fail_msg("cycle %llu: %s left behind after a reopen",
			         (unsigned long long)cycle, e->d_name);
		}
	}
	closedir(d);
	uint64_t *ids;
	int ns = tu_list_ids(dir, "seg", &ids);
	assert_true(ns >= 1);
	S->compacted_segs = 0;
	for (int i = 0; i < ns; i++) {
		char p[TU_PATH];
		tu_seg_path(p, sizeof(p), dir, ids[i], "seg");
		int fd = open(p, O_RDONLY);
		uint8_t h[SL_SEG_HDR_SIZE];
		if (fd >= 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
		    (sl_get32(h + 20) & SL_SEG_COMPACTED)) {
			S->compacted_segs++;
		}
		if (fd >= 0) {
			close(fd);
		}
	}
	free(ids);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

typedef struct scan_count {
	int n, bad;
} scan_count;

static int count_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
	scan_count *s = arg;
	s->n++;
	char key[32];
	if (vl < 16 || kl >= sizeof(key)) {
		s->bad++;
		return 0;
	}
	uint64_t c = sl_get64(v);
	key_name(key_of(c), key, sizeof(key));
	if (strlen(key) != kl || memcmp(key, k, kl) != 0 || vl != vlen_of(c)) {
		s->bad++;
	}
	return 0;
}

static void run_cycle(const char *dir, const sl_options *o, unsigned nthreads, uint64_t cycle,
                      state *S, tu_rng *r)
{
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		child_main(dir, o, fds[1], cycle, nthreads);
	}
	close(fds[1]);

	/* Collect acknowledgements until the kill, then drain the pipe. */
	size_t cap = 1024, n = 0;
	ack *acks = malloc(cap * sizeof(*acks));
	assert_non_null(acks);
	uint64_t deadline = tu_mono_ms() + tu_rng_range(r, 1, 50);
	int killed = 0;
	size_t have = 0; /* bytes of a partial ack */
	uint8_t part[sizeof(ack)];
	for (;;) {
		uint64_t now = tu_mono_ms();
		if (!killed && now >= deadline) {
			kill(pid, SIGKILL);
			killed = 1;
		}
		struct pollfd pf = {fds[0], POLLIN, 0};
		int pr = poll(&pf, 1, killed ? 1000 : (int)(deadline - now));
		if (pr <= 0) {
			continue;
		}
		uint8_t buf[4096];
		ssize_t got = read(fds[0], buf, sizeof(buf));
		if (got < 0 && errno == EINTR) {
			continue;
		}
		if (got <= 0) {
			if (!killed) {
				kill(pid, SIGKILL);
				killed = 1;
			}
			break; /* EOF: the child is gone */
		}
		for (ssize_t j = 0; j < got; j++) {
			part[have++] = buf[j];
			if (have == sizeof(ack)) {
				if (n == cap) {
					cap *= 2;
					acks = realloc(acks, cap * sizeof(*acks));
					assert_non_null(acks);
				}
				memcpy(&acks[n++], part, sizeof(ack));
				have = 0;
			}
		}
	}
	close(fds[0]);
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
		fail_msg("cycle %llu: child ended on its own (exit status %d): a write failed",
		         (unsigned long long)cycle, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	}
	assert_int_equal(have, 0); /* pipe writes of 16 bytes are atomic */

	/* What was acknowledged this cycle. */
	int64_t last_i[MAXT];
	uint64_t last_seq_t[MAXT];
	for (unsigned t = 0; t < MAXT; t++) {
		last_i[t] = -1;
		last_seq_t[t] = 0;
	}
	uint64_t acked[NKEYS], acked_seq[NKEYS];
	for (int k = 0; k < NKEYS; k++) {
		acked[k] = NONE;
		acked_seq[k] = 0;
	}
	for (size_t j = 0; j < n; j++) {
		uint64_t c = acks[j].c;
		unsigned t = c_thread(c);
		assert_int_equal(c_cycle(c), cycle);
		assert_true(t < nthreads);
		/* each thread's acks arrive in its order, one per write */
		assert_int_equal((int64_t)c_index(c), last_i[t] + 1);
		last_i[t] = (int64_t)c_index(c);
		if (acks[j].seq <= S->last_seq || acks[j].seq <= last_seq_t[t]) {
			fail_msg("cycle %llu: write %llx got seq %llu; recovered last_seq %llu, "
			         "thread's previous %llu",
			         (unsigned long long)cycle, (unsigned long long)c,
			         (unsigned long long)acks[j].seq, (unsigned long long)S->last_seq,
			         (unsigned long long)last_seq_t[t]);
		}
		last_seq_t[t] = acks[j].seq;
		int k = key_of(c);
		acked[k] = c;
		acked_seq[k] = acks[j].seq;
	}
	S->acks += n;
	S->empty_cycles += n == 0;
	free(acks);

	/* Recover and check every key.  No compaction in the checking handle:
	 * a *.tmp seen below is then a leftover of the killed child that
	 * recovery failed to remove. */
	sl_db *db = NULL;
	sl_options vo = *o;
	vo.compact_background = 0;
	int rc = sl_open(dir, &vo, &db);
	if (rc != SL_OK) {
		fail_msg("cycle %llu: reopen after SIGKILL = %d (%s)", (unsigned long long)cycle,
		         rc, sl_strerror(rc));
	}
	uint64_t seqs[NKEYS];
	int nseqs = 0, found = 0;
	uint8_t want[16 + 600];
	for (int k = 0; k < (int)nthreads * KPT; k++) {
		char key[32];
		key_name(k, key, sizeof(key));
		uint64_t req = acked[k] != NONE ? acked[k] : S->known[k];
		uint64_t req_seq = acked[k] != NONE ? acked_seq[k] : S->known_seq[k];
		void *v = NULL;
		size_t vl = 0;
		uint64_t seq = 0;
		rc = sl_get_seq(db, key, strlen(key), &v, &vl, &seq);
		if (rc == SL_ENOTFOUND) {
			if (req != NONE) {
				fail_msg("cycle %llu: key %s lost: write %llx (seq %llu) was %s",
				         (unsigned long long)cycle, key, (unsigned long long)req,
				         (unsigned long long)req_seq,
				         acked[k] != NONE ? "acknowledged" : "seen before");
			}
			continue;
		}
		if (rc != SL_OK) {
			fail_msg("cycle %llu: get %s = %d (%s)", (unsigned long long)cycle, key, rc,
			         sl_strerror(rc));
		}
		found++;
		if (vl < 16) {
			fail_msg("cycle %llu: key %s holds %zu bytes", (unsigned long long)cycle,
			         key, vl);
		}
		uint64_t c = sl_get64(v);
		if (key_of(c) != k || vl != vlen_of(c)) {
			fail_msg("cycle %llu: key %s holds write %llx of another key or length",
			         (unsigned long long)cycle, key, (unsigned long long)c);
		}
		value_of(c, want);
		if (memcmp(v, want, vl) != 0) {
			fail_msg("cycle %llu: key %s: bytes of write %llx differ",
			         (unsigned long long)cycle, key, (unsigned long long)c);
		}
		free(v);
		if (req != NONE && c < req) {
			fail_msg("cycle %llu: key %s went back to write %llx; %llx was %s",
			         (unsigned long long)cycle, key, (unsigned long long)c,
			         (unsigned long long)req,
			         acked[k] != NONE ? "acknowledged" : "seen");
		}
		if (c == req && seq != req_seq) {
			fail_msg("cycle %llu: key %s: seq %llu, acknowledged %llu",
			         (unsigned long long)cycle, key, (unsigned long long)seq,
			         (unsigned long long)req_seq);
		}
		if (req == NONE || c > req) {
			/* Only the write its thread had in flight may show up unacknowledged. */
			unsigned t = c_thread(c);
			if (c_cycle(c) != cycle || t >= nthreads ||
			    (int64_t)c_index(c) != last_i[t] + 1) {
				fail_msg(
				    "cycle %llu: key %s holds unacknowledged write %llx; thread "
				    "%u acknowledged up to index %lld",
				    (unsigned long long)cycle, key, (unsigned long long)c, t,
				    (long long)last_i[t < MAXT ? t : 0]);
			}
			S->inflight_seen++;
		}
		S->known[k] = c;
		S->known_seq[k] = seq;
		seqs[nseqs++] = seq;
	}
	qsort(seqs, (size_t)nseqs, sizeof(seqs[0]), cmp_u64);
	for (int j = 1; j < nseqs; j++) {
		if (seqs[j] == seqs[j - 1]) {
			fail_msg("cycle %llu: two keys share seq %llu", (unsigned long long)cycle,
			         (unsigned long long)seqs[j]);
		}
	}
	sl_stats st;
	assert_int_equal(sl_stats_get(db, &st), SL_OK);
	if (nseqs > 0 && st.last_seq < seqs[nseqs - 1]) {
		fail_msg("cycle %llu: last_seq %llu below a stored seq %llu",
		         (unsigned long long)cycle, (unsigned long long)st.last_seq,
		         (unsigned long long)seqs[nseqs - 1]);
	}
	for (unsigned t = 0; t < nthreads; t++) {
		assert_true(st.last_seq >= last_seq_t[t]);
	}
	assert_true(st.last_seq >= S->last_seq);
	assert_int_equal(st.keys, (uint64_t)found);
	scan_count sc = {0, 0};
	assert_int_equal(sl_scan(db, "", 0, count_cb, &sc), 0);
	assert_int_equal(sc.bad, 0);
	assert_int_equal(sc.n, found);
	S->last_seq = st.last_seq;
	check_dir(dir, cycle, S);
	sl_close(db);
}

static void crash_variant(sl_sync sync, unsigned nthreads, uint64_t segment_bytes, const char *name)
{
	char *dir = tu_mkdtemp(name);
	assert_non_null(dir);
	sl_options o;
	sl_options_init(&o);
	o.sync = sync;
	o.segment_bytes = segment_bytes;
	o.quiet = tu_quiet();
	o.compact_interval_ms = 5; /* kills land in compactions too */
	uint64_t cycles = tu_env_u64("SL_TEST_SEEDS", 30);
	uint64_t seed = tu_env_u64("SL_TEST_SEED", 1) * 7919 + nthreads * 31 + (uint64_t)sync;
	tu_rng r;
	tu_rng_seed(&r, seed);
	state *S = calloc(1, sizeof(*S));
	assert_non_null(S);
	for (int k = 0; k < NKEYS; k++) {
		S->known[k] = NONE;
	}
	uint64_t t0 = tu_mono_ms();
	for (uint64_t cycle = 1; cycle <= cycles; cycle++) {
		run_cycle(dir, &o, nthreads, cycle, S, &r);
	}
	print_message("%s: %llu cycles, %llu acknowledged puts, %llu unacknowledged writes "
	              "found stored, %llu cycles without an ack, last_seq %llu, %llu compacted "
	              "segments at the end, %llu ms\n",
	              name, (unsigned long long)cycles, (unsigned long long)S->acks,
	              (unsigned long long)S->inflight_seen, (unsigned long long)S->empty_cycles,
	              (unsigned long long)S->last_seq, (unsigned long long)S->compacted_segs,
	              (unsigned long long)(tu_mono_ms() - t0));
	/* The kills must have landed while writes were going on. */
	assert_true(S->acks > 0);
	assert_true(S->empty_cycles < cycles);
	free(S);
	tu_rm_rf(dir);
	free(dir);
}

static void test_crash_kill_sync_always(void **state)
{
	(void)state;
	crash_variant(SL_SYNC_ALWAYS, 1, 16 << 10, "crash-always");
}

static void test_crash_kill_sync_always_4_threads(void **state)
{
	(void)state;
	crash_variant(SL_SYNC_ALWAYS, 4, 16 << 10, "crash-always4");
}

static void test_crash_kill_sync_no(void **state)
{
	(void)state;
	crash_variant(SL_SYNC_NO, 1, 64 << 10, "crash-no");
}

static void test_crash_kill_sync_no_4_threads(void **state)
{
	(void)state;
	crash_variant(SL_SYNC_NO, 4, 64 << 10, "crash-no4");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_crash_kill_sync_always),
	    cmocka_unit_test(test_crash_kill_sync_always_4_threads),
	    cmocka_unit_test(test_crash_kill_sync_no),
	    cmocka_unit_test(test_crash_kill_sync_no_4_threads),
	};
	const char *filter = getenv("SL_TEST_FILTER"); /* e.g. "test_hint*" */
	if (filter != NULL) {
		cmocka_set_test_filter(filter);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
