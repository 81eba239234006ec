/*
 * replbench.c — `shiplog-bench repl`: the replication benchmark.
 *
 * Starts its own shiplogd processes on 127.0.0.1 (a primary and two
 * followers, plus short-lived ones for the resync figures), each on free
 * ports with its data under --dir, and stops each by its pid.  It measures
 * what /work/shared/anchors/redis/run.sh measures for Redis, so that the two
 * can be quoted side by side:
 *
 *   resync    a fresh follower gets 1M keys x 100 B (--keys, --value-size):
 *             "full resync" is the snapshot path (the follower's dir holds a
 *             diverged history, so the primary answers stale and streams a
 *             pinned snapshot); "initial sync" is an empty follower, which
 *             the primary serves from its log.  Clock: from exec of the
 *             follower until it reports applied_seq >= the primary's head
 *             (stats polled every 10 ms), like Redis's waitsync.
 *   acks      one client, --acks-writes puts each with --acks 0, 1, 2 (a
 *             primary with 2 followers, no other load): p50/p99/max.
 *   lag       write -> visible on a follower: put on the primary, then plain
 *             gets on the follower until the value is seen, as the Redis
 *             anchor's probe reads its replica; latency from before the put
 *             to the reply of the get that saw it, after 100 unmeasured
 *             put+get pairs on the same connections.  The probe's client
 *             (--probe) is a plain TCP socket speaking nng's SP framing
 *             (spclient.h), as the Redis anchor's is a plain socket, or
 *             the client library.  --lag-read park sends one get with
 *             min_seq = the put's seq instead (read-your-writes: the follower
 *             answers as soon as it has applied it);
 *             --probe-spin makes the raw probe spin on its socket for each
 *             reply (a client whose core never halts) instead of blocking.
 *             With --lag-followers 1 (the default)
 *             follower2 is stopped for these figures: one primary and one
 *             replica streaming, the Redis anchor's shape.  "idle": one writer
 *             pausing --lag-pause-us (default 0) between writes, as the
 *             Redis anchor does none; "load": the same while
 *             --load-clients clients put 100 B values non-stop (random keys
 *             over 1M), like redis-benchmark -t set -c 50 -d 100 -r 1000000:
 *             the load is `shiplog-bench --url P -t put -c 50 -d 100
 *             -r 1000000` (this binary, its one-thread epoll engine, or
 *             the one --load-engine names).
 *   tput      put throughput of --load-clients clients (-P 1) on the primary
 *             with its 2 followers streaming, then with both stopped; each
 *             measured by `shiplog-bench --url P -t put` as above.
 *   catchup   one follower is SIGKILLed, --catchup-mb MB of log (100 B
 *             values) are written, it is restarted: MB/s of log it fetched
 *             from exec (and from the moment it is streaming) until it has
 *             applied the primary's head.  Then the same with the follower
 *             SIGSTOPped and SIGCONTed (its link stays up, the Redis
 *             anchor's 3C): MB/s from SIGCONT.  The primary keeps a backlog large
 *             enough (--repl-backlog-bytes 2x the figure, at least 1 GiB).
 *
 *   shiplog-bench repl [--shiplogd PATH] [--dir D] [--figures LIST] [--json]
 *                      [--keys N] [--value-size B] [--acks-writes N]
 *                      [--lag-writes N] [--lag-pause-us US] [--lag-followers 1|2]
 *                      [--lag-read park|poll] [--probe-spin]
 *                      [--load-clients N]
 *                      [--tput-requests N] [--catchup-mb MB] [--keep]
 *                      [--load-engine epoll|async|threads] [--probe raw|lib]
 *
 * --json prints one object per figure ({"engine":"shiplog","benchmark":
 * "repl_...", ...}).  Exit status 0; 1 when a figure failed; 2 on bad
 * arguments.
 */
#define _GNU_SOURCE
#include "client.h"
#include "shiplog.pb-c.h"
#include "spclient.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int sl_replbench_main(int argc, char **argv);

static const char *opt_shiplogd;
static const char *opt_dir = "/tmp/shiplog-replbench";
static const char *opt_figures = "resync,acks,lag,tput,catchup";
static int opt_json, opt_keep;
static uint64_t opt_keys = 1000000;
static size_t opt_value_size = 100;
static uint64_t opt_acks_writes = 10000;
static uint64_t opt_lag_writes = 2000;
static uint64_t opt_lag_pause_us = 0; /* back to back, as the Redis anchor */
static int opt_load_clients = 50;
static const char *opt_load_engine = "epoll"; /* shiplog-bench --url --engine */
static uint64_t opt_tput_requests = 300000;
static int opt_tput_rounds = 3;
static uint64_t opt_catchup_mb = 500;
static int opt_lag_followers = 1; /* streaming during the lag figures */
static int opt_lag_poll = 1;      /* --lag-read poll (default): plain gets until seen */
static int opt_probe_spin;        /* --probe-spin: the raw probe spins on recv */

static int failed;

/* ---- small things ------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	if (opt_json) {
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	printf("# ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("shiplog-bench repl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	failed = 1;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (as anchor.py) of n sorted values, in µs. */
static double pct_us(const uint64_t *v, size_t n, double q)
{
	if (n == 0) {
		return 0;
	}
	size_t k = (size_t)(q / 100.0 * (double)n + 0.999999);
	k = k == 0 ? 0 : k - 1;
	if (k >= n) {
		k = n - 1;
	}
	return (double)v[k] / 1000.0;
}

/* ---- processes ------------------------------------------------------------ */

typedef struct node {
	const char *name;
	pid_t pid;
	char dir[1024], log[1100];
	char url[64], rurl[64];
	uint64_t t_exec; /* now_ns() just before the fork */
} node;

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
		port = ntohs(a.sin_port);
	}
	if (fd >= 0) {
		close(fd);
	}
	return port;
}

/* Starts shiplogd over n->dir (ports chosen on the first start and kept),
 * following `follow` (NULL: none) with extra flags; waits until it answers
 * a ping.  0 or -1. */
static int node_start(node *n, const char *follow, const char *const *extra)
{
	if (n->url[0] == '\0') {
		snprintf(n->url, sizeof(n->url), "tcp://127.0.0.1:%d", free_port());
		snprintf(n->rurl, sizeof(n->rurl), "tcp://127.0.0.1:%d", free_port());
		snprintf(n->log, sizeof(n->log), "%s.log", n->dir);
	}
	const char *argv[40];
	int a = 0;
	argv[a++] = opt_shiplogd;
	argv[a++] = "--dir";
	argv[a++] = n->dir;
	argv[a++] = "--listen";
	argv[a++] = n->url;
	argv[a++] = "--repl-listen";
	argv[a++] = n->rurl;
	if (follow != NULL) {
		argv[a++] = "--follow";
		argv[a++] = follow;
	}
	for (int i = 0; extra != NULL && extra[i] != NULL && a < 38; i++) {
		argv[a++] = extra[i];
	}
	argv[a] = NULL;
	n->t_exec = now_ns();
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (pid < 0) {
		return -1;
	}
	n->pid = pid;
	for (int waited = 0; waited < 60000; waited += 5) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			n->pid = 0;
			fail("%s exited at start (see %s)", n->name, n->log);
			return -1;
		}
		sl_client *c = NULL;
		if (sl_client_open(n->url, 1000, &c) == SL_OK) {
			int rc = sl_client_ping(c);
			sl_client_close(c);
			if (rc == SL_OK) {
				return 0;
			}
		}
		sleep_ms(5);
	}
	fail("%s did not answer within 60 s", n->name);
	return -1;
}

static void node_stop(node *n, int sig)
{
	if (n->pid <= 0) {
		return;
	}
	kill(n->pid, sig);
	kill(n->pid, SIGCONT); /* fig_tput may have stopped it */
	for (int waited = 0; waited < 30000; waited += 10) {
		int st;
		if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
			n->pid = 0;
			return;
		}
		sleep_ms(10);
	}
	fprintf(stderr, "shiplog-bench repl: %s (pid %d) did not stop in 30 s; SIGKILL\n", n->name,
	        (int)n->pid);
	kill(n->pid, SIGKILL);
	waitpid(n->pid, NULL, 0);
	n->pid = 0;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(p);
	return 0;
}

static void rm_rf(const char *p)
{
	nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A numeric stat of the node at url (UINT64_MAX when unavailable); text
 * stats into text when given. */
static uint64_t stat_of(sl_client *c, const char *name, char *text, size_t cap)
{
	uint64_t v = UINT64_MAX;
	sl_client_stats *st = NULL;
	if (text != NULL) {
		text[0] = '\0';
	}
	if (sl_client_stats_get(c, &st) == SL_OK) {
		const sl_client_stat *s = sl_client_stats_find(st, name);
		if (s != NULL) {
			v = s->value;
			if (text != NULL && s->text != NULL) {
				snprintf(text, cap, "%s", s->text);
			}
		}
		sl_client_stats_free(st);
	}
	return v;
}

static uint64_t node_stat(const node *n, const char *name)
{
	sl_client *c = NULL;
	if (sl_client_open(n->url, 5000, &c) != SL_OK) {
		return UINT64_MAX;
	}
	uint64_t v = stat_of(c, name, NULL, 0);
	sl_client_close(c);
	return v;
}

/* Polls f every 10 ms until it has applied seq (and is streaming).  Returns
 * now_ns() at that moment, 0 on timeout; *t_stream (may be NULL) gets the
 * first poll that saw "streaming". */
static uint64_t wait_applied(const node *f, uint64_t seq, int timeout_s, uint64_t *t_stream)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_s * 1000000000ull;
	sl_client *c = NULL;
	char state[32];
	if (t_stream != NULL) {
		*t_stream = 0;
	}
	while (now_ns() < deadline) {
		if (c == NULL && sl_client_open(f->url, 5000, &c) != SL_OK) {
			c = NULL;
			sleep_ms(10);
			continue;
		}
		uint64_t a = stat_of(c, "applied_seq", NULL, 0);
		stat_of(c, "repl_state", state, sizeof(state));
		uint64_t t = now_ns();
		if (t_stream != NULL && *t_stream == 0 && strcmp(state, "streaming") == 0) {
			*t_stream = t;
		}
		if (a != UINT64_MAX && a >= seq) {
			sl_client_close(c);
			if (t_stream != NULL && *t_stream == 0) {
				*t_stream = t;
			}
			return t;
		}
		sleep_ms(10);
	}
	sl_client_close(c);
	return 0;
}

/* ---- loaders ------------------------------------------------------------------ */

/* One connection writing keys prefix%0Nllu first .. first+count-1 in
 * pipelined batches (the catch-up and resync data). */
typedef struct loader {
	pthread_t th;
	const char *url;
	const char *prefix;
	uint64_t first, count;
	int pipeline;
	uint64_t rng;
	uint64_t ops;
	int err;
} loader;

static void make_key(char *k, const char *prefix, uint64_t i)
{
	/* 16 bytes: prefix + zero-padded number */
	char b[48];
	size_t pl = strlen(prefix);
	snprintf(b, sizeof(b), "%s%0*llu", prefix, (int)(16 - pl), (unsigned long long)i);
	memcpy(k, b, 16);
	k[16] = '\0';
}

static void *loader_main(void *arg)
{
	loader *l = arg;
	sl_client *c = NULL;
	sl_pipeline *p = NULL;
	int rc = sl_client_open(l->url, 30000, &c);
	if (rc == SL_OK) {
		rc = sl_pipeline_new(c, &p);
	}
	if (rc != SL_OK) {
		l->err = rc;
		sl_client_close(c);
		return NULL;
	}
	char *vbuf = malloc(opt_value_size + 256);
	for (size_t i = 0; i < opt_value_size + 256; i++) {
		vbuf[i] = (char)rng_next(&l->rng);
	}
	char k[17];
	for (uint64_t i = 0; i < l->count;) {
		int batch = l->pipeline;
		if (l->count - i < (uint64_t)batch) {
			batch = (int)(l->count - i);
		}
		for (int j = 0; j < batch; j++) {
			make_key(k, l->prefix, l->first + i + j);
			sl_pipeline_put(p, k, 16, vbuf + rng_next(&l->rng) % 256, opt_value_size,
			                0);
		}
		const sl_client_item *it;
		size_t n;
		rc = sl_pipeline_exec(p, &it, &n);
		if (rc != SL_OK && !l->err) {
			l->err = rc;
			sl_pipeline_reset(p);
		}
		i += (uint64_t)batch;
		l->ops += (uint64_t)batch;
	}
	free(vbuf);
	sl_pipeline_free(p);
	sl_client_close(c);
	return NULL;
}

/* Runs n loaders; returns wall seconds. */
static double run_loaders(loader *ls, int n)
{
	uint64_t t0 = now_ns();
	for (int i = 0; i < n; i++) {
		pthread_create(&ls[i].th, NULL, loader_main, &ls[i]);
	}
	for (int i = 0; i < n; i++) {
		pthread_join(ls[i].th, NULL);
		if (ls[i].err) {
			fail("loader %d: %s", i, sl_client_strerror(ls[i].err));
		}
	}
	return (double)(now_ns() - t0) / 1e9;
}

/* count sequential keys prefix000.. through `clients` pipelined clients. */
static double load_seq(const char *url, const char *prefix, uint64_t count, int clients)
{
	loader *ls = calloc((size_t)clients, sizeof(*ls));
	for (int i = 0; i < clients; i++) {
		ls[i].url = url;
		ls[i].prefix = prefix;
		ls[i].first = count * (uint64_t)i / (uint64_t)clients;
		ls[i].count = count * (uint64_t)(i + 1) / (uint64_t)clients - ls[i].first;
		ls[i].pipeline = 100;
		ls[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 7);
	}
	double s = run_loaders(ls, clients);
	free(ls);
	return s;
}

/* ---- output --------------------------------------------------------------------- */

static void emit_lat(const char *bench, uint64_t *v, size_t n, const char *extra_json,
                     const char *extra_text)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	double p50 = pct_us(v, n, 50), p99 = pct_us(v, n, 99), mx = pct_us(v, n, 100);
	if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"%s\",\"n\":%zu,\"p50_us\":%.1f,"
		       "\"p99_us\":%.1f,\"max_us\":%.1f%s}\n",
		       bench, n, p50, p99, mx, extra_json ? extra_json : "");
	} else {
		printf("%-22s p50 %9.1f us   p99 %9.1f us   max %9.1f us   (n %zu%s)\n", bench, p50,
		       p99, mx, n, extra_text ? extra_text : "");
	}
	fflush(stdout);
}

/* ---- the cluster ------------------------------------------------------------------ */

static node P = {.name = "primary"}, F1 = {.name = "follower1"}, F2 = {.name = "follower2"};
static char backlog_flag[32];
static const char *p_flags[] = {"--repl-backlog-bytes", backlog_flag, NULL};
static const char *opt_batch_us = "0";   /* --batch-us: the followers' --repl-batch-us */
static const char *opt_sched = "normal"; /* --follower-sched: their --repl-sched */
static const char *f_flags[] = {"--repl-batch-us", NULL, "--repl-sched", NULL, NULL};

static void stop_all(void)
{
	node_stop(&F2, SIGTERM);
	node_stop(&F1, SIGTERM);
	node_stop(&P, SIGTERM);
}

static void on_signal(int sig)
{
	(void)sig;
	stop_all();
	_exit(130);
}

static int figure_on(const char *name)
{
	char b[256], *save = NULL;
	snprintf(b, sizeof(b), "%s", opt_figures);
	for (char *t = strtok_r(b, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (!strcmp(t, name)) {
			return 1;
		}
	}
	return 0;
}

/* Both followers at the primary's head. */
static int converge(int timeout_s)
{
	uint64_t head = node_stat(&P, "last_seq");
	node *fs[] = {&F1, &F2};
	for (int i = 0; i < 2; i++) {
		if (fs[i]->pid > 0 && wait_applied(fs[i], head, timeout_s, NULL) == 0) {
			fail("%s did not reach seq %llu", fs[i]->name, (unsigned long long)head);
			return -1;
		}
	}
	return 0;
}

/* ---- figures ------------------------------------------------------------------------ */

static void fig_resync(void)
{
	uint64_t head = node_stat(&P, "last_seq");
	uint64_t live = node_stat(&P, "live_bytes");
	/* full resync: a dir with a diverged history (one write as a lone primary) */
	node F = {.name = "resync-follower"};
	snprintf(F.dir, sizeof(F.dir), "%s/resync", opt_dir);
	rm_rf(F.dir);
	if (node_start(&F, NULL, f_flags) != 0) {
		return;
	}
	sl_client *c = NULL;
	if (sl_client_open(F.url, 5000, &c) != SL_OK || sl_client_put(c, "x", 1, "y", 1, NULL)) {
		fail("cannot write to the resync follower's dir");
	}
	sl_client_close(c);
	node_stop(&F, SIGTERM);
	node_start(&F, P.rurl, f_flags);
	uint64_t t_stream = 0;
	uint64_t t = wait_applied(&F, head, 300, &t_stream);
	uint64_t full = node_stat(&F, "resyncs_full"), bytes = node_stat(&F, "repl_bytes_fetched");
	node_stop(&F, SIGTERM);
	rm_rf(F.dir);
	if (t == 0) {
		fail("full resync did not finish in 300 s");
		return;
	}
	double secs = (double)(t - F.t_exec) / 1e9;
	if (full != 1) {
		fail("expected a full resync, the follower reports %llu", (unsigned long long)full);
	}
	if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"repl_full_resync\",\"keys\":%llu,"
		       "\"value_size\":%zu,\"seconds\":%.3f,\"bytes\":%llu,\"MBps\":%.1f,"
		       "\"live_MBps\":%.1f,\"resyncs_full\":%llu}\n",
		       (unsigned long long)opt_keys, opt_value_size, secs,
		       (unsigned long long)bytes, (double)bytes / 1e6 / secs,
		       (double)live / 1e6 / secs, (unsigned long long)full);
	} else {
		printf("full resync (snapshot)  %.3f s   %.1f MB/s   (%llu keys x %zu B, %.1f MB "
		       "streamed, exec -> applied head)\n",
		       secs, (double)bytes / 1e6 / secs, (unsigned long long)opt_keys,
		       opt_value_size, (double)bytes / 1e6);
	}
	/* initial sync: an empty follower (served from the log) */
	snprintf(F.dir, sizeof(F.dir), "%s/initial", opt_dir);
	rm_rf(F.dir);
	F.url[0] = '\0';
	node_start(&F, P.rurl, f_flags);
	t = wait_applied(&F, head, 300, NULL);
	full = node_stat(&F, "resyncs_full");
	bytes = node_stat(&F, "repl_bytes_fetched");
	node_stop(&F, SIGTERM);
	rm_rf(F.dir);
	if (t == 0) {
		fail("initial sync did not finish in 300 s");
		return;
	}
	secs = (double)(t - F.t_exec) / 1e9;
	if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"repl_initial_sync\",\"keys\":%llu,"
		       "\"value_size\":%zu,\"seconds\":%.3f,\"bytes\":%llu,\"MBps\":%.1f,"
		       "\"resyncs_full\":%llu}\n",
		       (unsigned long long)opt_keys, opt_value_size, secs,
		       (unsigned long long)bytes, (double)bytes / 1e6 / secs,
		       (unsigned long long)full);
	} else {
		printf("initial sync (log)      %.3f s   %.1f MB/s   (empty follower, %.1f MB "
		       "streamed)\n",
		       secs, (double)bytes / 1e6 / secs, (double)bytes / 1e6);
	}
	fflush(stdout);
}

static void fig_acks(void)
{
	sl_client *c = NULL;
	if (sl_client_open(P.url, 10000, &c) != SL_OK) {
		fail("cannot connect to the primary");
		return;
	}
	uint64_t *lat = malloc(opt_acks_writes * sizeof(*lat));
	char k[17], v[4096];
	uint64_t rng = 42;
	for (size_t i = 0; i < sizeof(v); i++) {
		v[i] = (char)rng_next(&rng);
	}
	size_t vs = opt_value_size < sizeof(v) - 64 ? opt_value_size : sizeof(v) - 64;
	for (int acks = 0; acks <= 2; acks++) {
		sl_client_set_acks(c, (uint32_t)acks, 1000);
		uint64_t short_acks = 0;
		for (uint64_t i = 0; i < opt_acks_writes + 200; i++) {
			make_key(k, "acks:", i % 100000);
			uint64_t t0 = now_ns();
			int rc = sl_client_put(c, k, 16, v + i % 64, vs, NULL);
			uint64_t dt = now_ns() - t0;
			if (rc != SL_OK) {
				short_acks++;
			}
			if (i >= 200) { /* 200 warm-up writes */
				lat[i - 200] = dt;
			}
		}
		char name[32], ej[64], et[64];
		snprintf(name, sizeof(name), "repl_put_acks%d", acks);
		snprintf(ej, sizeof(ej), ",\"acks\":%d,\"failed\":%llu", acks,
		         (unsigned long long)short_acks);
		snprintf(et, sizeof(et), ", %llu without enough acks",
		         (unsigned long long)short_acks);
		emit_lat(name, lat, opt_acks_writes, ej, et);
	}
	sl_client_close(c);
	free(lat);
}

/* Starts `shiplog-bench --url url -t put -c clients -n requests --json`
 * --engine opt_load_engine (this same binary: by default the network
 * benchmark's epoll engine, one thread driving every connection like
 * redis-benchmark) with its stdout on a pipe: *fd_out.  Returns its pid, or
 * -1. */
static pid_t netbench_start(const char *url, int clients, uint64_t requests, int *fd_out)
{
	char c[16], n[24], d[24];
	snprintf(c, sizeof(c), "%d", clients);
	snprintf(n, sizeof(n), "%llu", (unsigned long long)requests);
	snprintf(d, sizeof(d), "%zu", opt_value_size);
	int pfd[2];
	if (pipe(pfd) != 0) {
		return -1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		dup2(pfd[1], 1);
		close(pfd[0]);
		close(pfd[1]);
		execl("/proc/self/exe", "shiplog-bench", "--url", url, "-t", "put", "-c", c, "-n",
		      n, "-d", d, "-r", "1000000", "--engine", opt_load_engine, "--json",
		      (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	if (pid < 0) {
		close(pfd[0]);
		return -1;
	}
	*fd_out = pfd[0];
	return pid;
}

/* Waits for a netbench_start child; its put ops/s (0 when it failed). */
static double netbench_finish(pid_t pid, int fd)
{
	char out[4096];
	size_t len = 0;
	ssize_t k;
	while (len < sizeof(out) - 1 && (k = read(fd, out + len, sizeof(out) - 1 - len)) > 0) {
		len += (size_t)k;
	}
	out[len] = '\0';
	close(fd);
	int st = 0;
	waitpid(pid, &st, 0);
	const char *f = strstr(out, "\"ops_per_sec\":");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || f == NULL) {
		fail("load client (shiplog-bench --url) failed: %s", out);
		return 0;
	}
	return strtod(f + strlen("\"ops_per_sec\":"), NULL);
}

/* The write -> visible probe's client.  --probe raw (the default) sends the
 * client library's requests over spclient's blocking socket, no thread
 * of its own (a send, then blocking receives), as the Redis
 * anchor's Python socket does for SET and GET; --probe lib goes through the
 * client library (nng's REQ socket: its threads add 40-60 us to each round
 * trip on this machine class, docs/performance.md). */
typedef struct probe {
	int raw;
	sl_client *c;
	int fd;
	uint32_t id;
	uint8_t *buf, *req;
	size_t cap, rcap;
	char err[160];
} probe;

static int opt_probe_raw = 1;

static int probe_open(probe *p, const char *url)
{
	memset(p, 0, sizeof(*p));
	p->raw = opt_probe_raw;
	p->fd = -1;
	if (!p->raw) {
		return sl_client_open(url, 10000, &p->c);
	}
	char host[256], port[16];
	if (sp_parse_url(url, host, sizeof host, port, sizeof port) != 0) {
		snprintf(p->err, sizeof p->err, "%s: --probe raw takes tcp:// URLs", url);
		return SL_EINVAL;
	}
	int rc = SL_OK;
	p->fd = sp_dial(host, port, 10000, p->err, sizeof p->err, &rc);
	return p->fd >= 0 ? SL_OK : rc;
}

static void probe_close(probe *p)
{
	sl_client_close(p->c);
	if (p->fd >= 0) {
		close(p->fd);
	}
	free(p->buf);
	free(p->req);
}

/* One request q over the raw socket; *out is the unpacked response. */
static int probe_call(probe *p, Shiplog__Request *q, Shiplog__Response **out)
{
	q->has_id = 1;
	q->id = ++p->id;
	size_t n = shiplog__request__get_packed_size(q);
	if (p->rcap < n) {
		free(p->req);
		p->req = malloc(n);
		p->rcap = p->req ? n : 0;
		if (p->req == NULL) {
			return SL_ENOMEM;
		}
	}
	shiplog__request__pack(q, p->req);
	const uint8_t *body;
	size_t blen;
	p->err[0] = '\0';
	int rc = sp_call(p->fd, (uint32_t)p->id, p->req, n, &p->buf, &p->cap, &body, &blen, p->err,
	                 sizeof p->err);
	if (rc != SL_OK) {
		return rc;
	}
	*out = shiplog__response__unpack(NULL, blen, body);
	if (*out == NULL || (*out)->id != q->id || !(*out)->has_status) {
		snprintf(p->err, sizeof p->err, "%s",
		         *out == NULL          ? "a response that does not decode"
		         : (*out)->id != q->id ? "a response to another request"
		                               : "a response without a status");
		shiplog__response__free_unpacked(*out, NULL);
		*out = NULL;
		return SL_EPROTO;
	}
	if ((*out)->status < 0 && (*out)->error != NULL) {
		snprintf(p->err, sizeof p->err, "%s", (*out)->error);
	}
	return (*out)->status;
}

static int probe_put(probe *p, const char *k, size_t kl, const void *v, size_t vl, uint64_t *seq)
{
	if (!p->raw) {
		return sl_client_put(p->c, k, kl, v, vl, seq);
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Put put = SHIPLOG__PUT__INIT;
	put.has_key = put.has_value = 1;
	put.key.data = (uint8_t *)k;
	put.key.len = kl;
	put.value.data = (uint8_t *)v;
	put.value.len = vl;
	q.op_case = SHIPLOG__REQUEST__OP_PUT;
	q.put = &put;
	Shiplog__Response *r = NULL;
	int rc = probe_call(p, &q, &r);
	if (r != NULL) {
		*seq = r->seq;
		shiplog__response__free_unpacked(r, NULL);
	}
	return rc;
}

/* A get of k that waits on the node until it has applied min_seq. */
static int probe_get(probe *p, const char *k, size_t kl, uint64_t min_seq, void **val, size_t *vl)
{
	*val = NULL;
	*vl = 0;
	if (!p->raw) {
		sl_client_set_min_seq(p->c, min_seq);
		return sl_client_get(p->c, k, kl, val, vl, NULL);
	}
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Get get = SHIPLOG__GET__INIT;
	get.has_key = 1;
	get.key.data = (uint8_t *)k;
	get.key.len = kl;
	q.op_case = SHIPLOG__REQUEST__OP_GET;
	q.get = &get;
	q.has_min_seq = min_seq > 0;
	q.min_seq = min_seq;
	Shiplog__Response *r = NULL;
	int rc = probe_call(p, &q, &r);
	if (r != NULL) {
		if (rc == SL_OK && r->has_value) {
			*val = malloc(r->value.len ? r->value.len : 1);
			if (*val != NULL) {
				memcpy(*val, r->value.data, r->value.len);
				*vl = r->value.len;
			}
		}
		shiplog__response__free_unpacked(r, NULL);
	}
	return rc;
}

/* The Redis anchor's way of reading a write on the follower: plain gets
 * of the 16-byte key k until one answers v (vs bytes), for at most 10 s
 * from t0; *polls counts the gets. */
static int probe_poll(probe *f, const char *k, const char *v, size_t vs, uint64_t t0, void **got,
                      size_t *gl, uint64_t *polls)
{
	for (;;) {
		int rc = probe_get(f, k, 16, 0, got, gl);
		(*polls)++;
		if (rc == SL_OK && *gl == vs && memcmp(*got, v, vs) == 0) {
			return SL_OK;
		}
		free(*got);
		*got = NULL;
		*gl = 0;
		if (rc != SL_OK && rc != SL_ENOTFOUND) {
			return rc;
		}
		if (now_ns() - t0 > 10000000000ull) {
			return SL_ETIMEDOUT;
		}
	}
}

/* write -> visible on F1; with load > 0 clients putting meanwhile. */
#define LAG_WARMUP 100

static void fig_lag(int load)
{
	/* The load: shiplog-bench --url -t put -c LOAD (one thread driving
	 * every connection, like redis-benchmark), stopped by its pid. */
	pid_t lpid = -1;
	int lfd = -1;
	if (load > 0) {
		lpid = netbench_start(P.url, load, 1000000000ull, &lfd);
		if (lpid < 0) {
			fail("cannot start the load client");
			return;
		}
		sleep_ms(1000);
	}
	probe p, f;
	int orc = probe_open(&p, P.url);
	if (orc == SL_OK) {
		orc = probe_open(&f, F1.url);
		if (orc != SL_OK) {
			snprintf(p.err, sizeof p.err, "%s", f.err);
			probe_close(&f);
		}
	}
	if (orc != SL_OK) {
		fail("cannot connect: %s", p.err[0] ? p.err : sl_client_strerror(orc));
		probe_close(&p);
		if (lpid > 0) {
			kill(lpid, SIGKILL);
			waitpid(lpid, NULL, 0);
			close(lfd);
		}
		return;
	}
	uint64_t *vis = malloc(opt_lag_writes * sizeof(*vis));
	uint64_t *rtt = malloc(opt_lag_writes * sizeof(*rtt));
	char k[17], v[4096];
	size_t vs = opt_value_size < sizeof(v) - 32 ? opt_value_size : sizeof(v) - 32;
	uint64_t bad = 0, polls = 0;
	/* Warm-up, not measured: the first put and get on fresh connections
	 * (nng's dial, the first pages the follower touches) took 4-13 ms,
	 * which is connection setup, not replication lag. */
	for (int i = 0; i < LAG_WARMUP; i++) {
		uint64_t seq = 0;
		void *got = NULL;
		size_t gl = 0;
		make_key(k, "lagw:", (uint64_t)i);
		if (probe_put(&p, k, 16, "w", 1, &seq) == SL_OK) {
			probe_get(&f, k, 16, seq, &got, &gl);
			free(got);
		}
	}
	uint64_t ops0 = node_stat(&P, "last_seq");
	uint64_t waits0 = node_stat(&F1, "repl_min_seq_waits");
	uint64_t t_start = now_ns();
	for (uint64_t i = 0; i < opt_lag_writes; i++) {
		make_key(k, "lag:", i);
		memset(v, 'a' + (int)(i % 26), vs);
		snprintf(v, vs, "%llu-%d", (unsigned long long)i, load);
		uint64_t seq = 0;
		void *got = NULL;
		size_t gl = 0;
		uint64_t t0 = now_ns();
		int rc = probe_put(&p, k, 16, v, vs, &seq);
		uint64_t t1 = now_ns();
		int rc2 = !opt_lag_poll ? probe_get(&f, k, 16, seq, &got, &gl)
		          : rc == SL_OK ? probe_poll(&f, k, v, vs, t0, &got, &gl, &polls)
		                        : rc;
		uint64_t t2 = now_ns();
		if (rc != SL_OK || rc2 != SL_OK || gl != vs || memcmp(got, v, vs) != 0) {
			if (bad++ == 0) {
				fprintf(stderr,
				        "shiplog-bench repl: write -> visible %llu: put %s, get "
				        "%s%s%s\n",
				        (unsigned long long)i, sl_client_strerror(rc),
				        sl_client_strerror(rc2), p.err[0] || f.err[0] ? ": " : "",
				        p.err[0] ? p.err : f.err);
			}
		}
		free(got);
		vis[i] = t2 - t0;
		rtt[i] = t1 - t0;
		if (opt_lag_pause_us > 0) {
			struct timespec ts = {0, (long)opt_lag_pause_us * 1000};
			nanosleep(&ts, NULL);
		}
	}
	double secs = (double)(now_ns() - t_start) / 1e9;
	uint64_t ops1 = node_stat(&P, "last_seq") - opt_lag_writes; /* the load's writes */
	/* gets that reached F1 before the record and were parked there */
	uint64_t waited = node_stat(&F1, "repl_min_seq_waits") - waits0;
	if (lpid > 0) {
		int st = 0;
		if (waitpid(lpid, &st, WNOHANG) != 0) {
			fail("the load client stopped early");
		} else {
			kill(lpid, SIGKILL);
			waitpid(lpid, &st, 0);
		}
		close(lfd);
	}
	probe_close(&p);
	probe_close(&f);
	if (bad) {
		fail("%llu writes not read back correctly on the follower",
		     (unsigned long long)bad);
	}
	qsort(rtt, opt_lag_writes, sizeof(*rtt), cmp_u64);
	double load_ops = (double)(ops1 - ops0) / secs;
	double gets_per_write = opt_lag_poll ? (double)polls / (double)opt_lag_writes : 1.0;
	char ej[400], et[400];
	snprintf(ej, sizeof(ej),
	         ",\"load_clients\":%d,\"load_puts_per_sec\":%.0f,\"put_rtt_p50_us\":%.1f,"
	         "\"put_rtt_p99_us\":%.1f,\"gets_waited\":%llu,\"pause_us\":%llu,"
	         "\"probe\":\"%s\",\"followers\":%d,\"read\":\"%s\",\"gets_per_write\":%.2f,"
	         "\"probe_spin\":%s",
	         load, load_ops, pct_us(rtt, opt_lag_writes, 50), pct_us(rtt, opt_lag_writes, 99),
	         (unsigned long long)waited, (unsigned long long)opt_lag_pause_us,
	         opt_probe_raw ? "raw" : "lib", opt_lag_followers, opt_lag_poll ? "poll" : "park",
	         gets_per_write, opt_probe_spin ? "true" : "false");
	snprintf(et, sizeof(et),
	         ", put RTT p50 %.1f p99 %.1f us, %llu gets waited, %s probe, %d follower%s%s",
	         pct_us(rtt, opt_lag_writes, 50), pct_us(rtt, opt_lag_writes, 99),
	         (unsigned long long)waited, opt_probe_raw ? "raw" : "lib", opt_lag_followers,
	         opt_lag_followers > 1 ? "s" : "", opt_lag_poll ? ", polled" : "");
	if (opt_lag_poll) {
		snprintf(et + strlen(et), sizeof(et) - strlen(et), " (%.2f gets a write)",
		         gets_per_write);
	}
	if (opt_probe_spin) {
		snprintf(et + strlen(et), sizeof(et) - strlen(et), ", spinning");
	}
	if (load > 0) {
		snprintf(et + strlen(et), sizeof(et) - strlen(et),
		         ", under %d clients: %.0f puts/s", load, load_ops);
	}
	emit_lat(load > 0 ? "repl_visible_load" : "repl_visible_idle", vis, opt_lag_writes, ej, et);
	free(vis);
	free(rtt);
}

/* Put throughput of --load-clients connections at -P 1, measured by the
 * network benchmark (as `shiplog-bench --url URL -t put` would). */
static double put_tput(void)
{
	int fd;
	pid_t pid = netbench_start(P.url, opt_load_clients, opt_tput_requests, &fd);
	if (pid < 0) {
		fail("cannot start the load client");
		return 0;
	}
	return netbench_finish(pid, fd);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	double t[64];
	memcpy(t, v, (size_t)n * sizeof(*v));
	qsort(t, (size_t)n, sizeof(*t), cmp_double);
	return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

/* Rounds of "with 2 followers" and "without" runs on the same primary, in
 * alternating order (the machine is shared and drifts).  "Without" stops
 * the followers with SIGSTOP: they use no CPU and fetch nothing, and
 * SIGCONT brings them back to catch up before the next run, so a round
 * costs no restart and no resync. */
static void fig_tput(void)
{
	double with[16], without[16], cost[16];
	int n = opt_tput_rounds;
	if (F1.pid <= 0 || F2.pid <= 0) {
		/* kill(0, SIGSTOP) would stop this process's own group */
		fail("a follower is not running: no throughput figure");
		return;
	}
	converge(120);
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < 2; k++) {
			int followers = (i + k) % 2 == 0;
			if (followers) {
				with[i] = put_tput();
				converge(120);
			} else {
				kill(F1.pid, SIGSTOP);
				kill(F2.pid, SIGSTOP);
				without[i] = put_tput();
				kill(F1.pid, SIGCONT);
				kill(F2.pid, SIGCONT);
				converge(300);
			}
		}
		cost[i] = without[i] > 0 ? 100.0 * (1.0 - with[i] / without[i]) : 0;
	}
	double w = median(with, n), wo = median(without, n), c = median(cost, n);
	char runs[512];
	size_t off = 0;
	for (int i = 0; i < n && off < sizeof(runs); i++) {
		off += (size_t)snprintf(runs + off, sizeof(runs) - off, "%s%s[%.0f,%.0f,%.1f]",
		                        i ? "," : "", opt_json ? "" : " ", with[i], without[i],
		                        cost[i]);
	}
	if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"repl_put_tput\",\"clients\":%d,"
		       "\"requests\":%llu,\"ops_per_sec_2_followers\":%.0f,"
		       "\"ops_per_sec_no_followers\":%.0f,\"cost_pct\":%.1f,"
		       "\"rounds\":[%s]}\n",
		       opt_load_clients, (unsigned long long)opt_tput_requests, w, wo, c, runs);
	} else {
		printf("put throughput          %.0f puts/s with 2 followers, %.0f without "
		       "(medians of "
		       "%d rounds): replication costs %.1f%% (median of the rounds' costs)   "
		       "(%d clients, -P 1)\n"
		       "  rounds [with, without, cost%%]:%s\n",
		       w, wo, n, c, opt_load_clients, runs);
	}
	fflush(stdout);
}

/* A process's minor page faults so far (/proc/PID/stat field 10), or
 * UINT64_MAX. */
static uint64_t proc_minflt(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return UINT64_MAX;
	}
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	unsigned long long v = 0;
	if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %llu", &v) != 1) {
		return UINT64_MAX;
	}
	return v;
}

/* One catch-up of --catchup-mb MB by follower2.  live = 0: it is SIGKILLed,
 * the log written, and it is restarted (clock from exec: its store's
 * recovery, the dial and the fetches).  live = 1: it is SIGSTOPped instead
 * and SIGCONTed (clock from SIGCONT: its link stays up, as in the Redis
 * anchor's 3C catch-up). */
static void catchup_run(int live)
{
	if (F2.pid <= 0) {
		fail("follower2 is not running: no %s catch-up", live ? "live-link" : "restart");
		return;
	}
	converge(120);
	uint64_t bytes0 = live ? node_stat(&F2, "repl_bytes_fetched") : 0;
	uint64_t flt0 = live ? proc_minflt(F2.pid) : 0;             /* a restart counts from exec */
	uint64_t full0 = live ? node_stat(&F2, "resyncs_full") : 0; /* a restart counts from 0 */
	uint64_t part0 = live ? node_stat(&F2, "resyncs_partial") : 0;
	if (bytes0 == UINT64_MAX || full0 == UINT64_MAX || part0 == UINT64_MAX) {
		fail("cannot read follower2's stats");
		return;
	}
	if (live) {
		kill(F2.pid, SIGSTOP);
	} else {
		node_stop(&F2, SIGKILL);
	}
	uint64_t rec = 28 + 16 + opt_value_size;
	uint64_t count = opt_catchup_mb * 1000000ull / rec;
	uint64_t head0 = node_stat(&P, "last_seq");
	double ws = load_seq(P.url, live ? "cl:" : "cu:", count, 4);
	uint64_t head = node_stat(&P, "last_seq");
	note("catch-up: wrote %llu records (%.0f MB of log) in %.1f s while follower2 was %s",
	     (unsigned long long)(head - head0), (double)(count * rec) / 1e6, ws,
	     live ? "stopped (SIGSTOP)" : "down");
	/* follower1 at the head: only follower2 works now */
	if (wait_applied(&F1, head, 300, NULL) == 0) {
		fail("follower1 did not reach seq %llu", (unsigned long long)head);
	}
	uint64_t t0;
	if (live) {
		t0 = now_ns();
		kill(F2.pid, SIGCONT);
	} else {
		if (node_start(&F2, NULL, f_flags) != 0) {
			fail("follower2 did not restart");
			return;
		}
		t0 = F2.t_exec;
	}
	uint64_t t_stream = 0;
	uint64_t t = wait_applied(&F2, head, 600, &t_stream);
	uint64_t bytes = node_stat(&F2, "repl_bytes_fetched");
	uint64_t full = node_stat(&F2, "resyncs_full");
	uint64_t part = node_stat(&F2, "resyncs_partial");
	uint64_t flt = proc_minflt(F2.pid);
	flt = flt != UINT64_MAX && flt0 != UINT64_MAX && flt >= flt0 ? flt - flt0 : 0;
	if (t == 0 || bytes == UINT64_MAX || full == UINT64_MAX || part == UINT64_MAX) {
		fail("follower2 did not catch up in 600 s (or its stats cannot be read)");
		return;
	}
	/* counters live on in a stopped process: what this catch-up did */
	bytes -= bytes0 <= bytes ? bytes0 : bytes;
	full -= full0 <= full ? full0 : full;
	part -= part0 <= part ? part0 : part;
	if (full != 0) {
		fail("follower2 did a full resync instead of catching up");
	}
	double secs = (double)(t - t0) / 1e9;
	double secs_s = (double)(t - t_stream) / 1e9;
	if (live) {
		/* Its fetch in flight times out after 6 s (FETCH_WAIT_MS + 5 s,
		 * follower.c): stopped longer, it may find the timeout before
		 * the reply waiting in its socket, and fetch again after a
		 * 50 ms backoff: "reconnects" says so. */
		if (opt_json) {
			printf("{\"engine\":\"shiplog\",\"benchmark\":\"repl_catchup_live\","
			       "\"bytes\":%llu,\"records\":%llu,\"seconds\":%.3f,\"MBps\":%.1f,"
			       "\"resyncs_full\":%llu,\"reconnects\":%llu,\"minor_faults\":%llu}\n",
			       (unsigned long long)bytes, (unsigned long long)(head - head0), secs,
			       (double)bytes / 1e6 / secs, (unsigned long long)full,
			       (unsigned long long)part, (unsigned long long)flt);
		} else {
			printf(
			    "catch-up (live link)    %.3f s   %.1f MB/s   (%.1f MB of log missed "
			    "while SIGSTOPped; from SIGCONT; %s; %llu page faults)\n",
			    secs, (double)bytes / 1e6 / secs, (double)bytes / 1e6,
			    part ? "its fetch had timed out: it fetched again"
			         : "the same connection and fetch",
			    (unsigned long long)flt);
		}
	} else if (opt_json) {
		printf("{\"engine\":\"shiplog\",\"benchmark\":\"repl_catchup\",\"bytes\":%llu,"
		       "\"records\":%llu,\"seconds\":%.3f,\"MBps\":%.1f,"
		       "\"seconds_after_streaming\":%.3f,\"MBps_after_streaming\":%.1f,"
		       "\"resyncs_full\":%llu,\"minor_faults\":%llu}\n",
		       (unsigned long long)bytes, (unsigned long long)(head - head0), secs,
		       (double)bytes / 1e6 / secs, secs_s,
		       secs_s > 0 ? (double)bytes / 1e6 / secs_s : 0, (unsigned long long)full,
		       (unsigned long long)flt);
	} else {
		printf("catch-up                %.3f s   %.1f MB/s   (%.1f MB of log missed; "
		       "%.1f MB/s once streaming; %llu page faults from exec)\n",
		       secs, (double)bytes / 1e6 / secs, (double)bytes / 1e6,
		       secs_s > 0 ? (double)bytes / 1e6 / secs_s : 0, (unsigned long long)flt);
	}
	fflush(stdout);
}

static void fig_catchup(void)
{
	catchup_run(0);
	catchup_run(1);
}

/* ---- main ---------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: shiplog-bench repl [options]   (replication benchmark: starts its own\n"
	           "       primary and followers on 127.0.0.1)\n"
	           "  --shiplogd PATH     the server (default: shiplogd beside shiplog-bench)\n"
	           "  --dir D             data directories under D (default "
	           "/tmp/shiplog-replbench; wiped)\n"
	           "  --figures LIST      resync,acks,lag,tput,catchup (default: all)\n"
	           "  --keys N            keys for the resync figure (default 1000000)\n"
	           "  --value-size B      value bytes (default 100)\n"
	           "  --acks-writes N     puts per --acks level (default 10000)\n"
	           "  --lag-writes N      write->visible samples (default 2000)\n"
	           "  --lag-pause-us US   pause between them (default 0: back to back, like\n"
	           "                      the Redis anchor's write->visible loop)\n"
	           "  --lag-followers N   followers streaming during the write->visible\n"
	           "                      figures: 1 (default: the Redis anchor's primary and\n"
	           "                      one replica; follower2 is stopped meanwhile) or 2\n"
	           "  --lag-read poll|park how the probe reads the write on the follower:\n"
	           "                      poll (default) sends plain gets until the value\n"
	           "                      is seen, as the Redis anchor's probe does; park\n"
	           "                      sends one get carrying the put's seq (--min-seq,\n"
	           "                      read-your-writes), answered once applied\n"
	           "  --probe-spin        the raw probe spins on its socket for each reply\n"
	           "                      instead of blocking (its core never halts; it\n"
	           "                      takes a core from the load meanwhile)\n"
	           "  --probe raw|lib     the write->visible probe's client: raw (default)\n"
	           "                      sends its requests over a plain blocking TCP\n"
	           "                      socket in nng's SP framing, no thread of its\n"
	           "                      own, like the Redis anchor's socket; lib\n"
	           "                      goes through the client library (nng REQ)\n"
	           "  --load-clients N    clients of the write load (default 50)\n"
	           "  --load-engine E     shiplog-bench --url's --engine for that load: epoll\n"
	           "                      (default), async or threads\n"
	           "  --tput-requests N   puts per throughput run (default 300000)\n"
	           "  --tput-rounds N     rounds of with/without-followers runs (default 3,\n"
	           "                      at most 16; medians are reported)\n"
	           "  --catchup-mb MB     log written while a follower is down (default 500)\n"
	           "  --batch-us US       the followers' --repl-batch-us (default 0)\n"
	           "  --follower-sched S  the followers' --repl-sched: normal (default), batch\n"
	           "                      or fifo\n"
	           "  --json              one JSON object per figure\n"
	           "  --keep              keep the data directories\n"
	           "  --help              this text\n");
}

int sl_replbench_main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"shiplogd", required_argument, NULL, 's'},
	    {"dir", required_argument, NULL, 'd'},
	    {"figures", required_argument, NULL, 'f'},
	    {"keys", required_argument, NULL, 'k'},
	    {"value-size", required_argument, NULL, 'v'},
	    {"acks-writes", required_argument, NULL, 'a'},
	    {"lag-writes", required_argument, NULL, 'l'},
	    {"lag-pause-us", required_argument, NULL, 'p'},
	    {"lag-followers", required_argument, NULL, 'L'},
	    {"lag-read", required_argument, NULL, 'Q'},
	    {"probe-spin", no_argument, NULL, 'Z'},
	    {"load-clients", required_argument, NULL, 'c'},
	    {"load-engine", required_argument, NULL, 'e'},
	    {"probe", required_argument, NULL, 'P'},
	    {"tput-requests", required_argument, NULL, 't'},
	    {"tput-rounds", required_argument, NULL, 'R'},
	    {"catchup-mb", required_argument, NULL, 'm'},
	    {"json", no_argument, NULL, 'j'},
	    {"keep", no_argument, NULL, 'K'},
	    {"batch-us", required_argument, NULL, 'B'},
	    {"follower-sched", required_argument, NULL, 'S'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		char *end = NULL;
		unsigned long long v = optarg ? strtoull(optarg, &end, 10) : 0;
		int num_ok = optarg && end != optarg && *end == '\0' && optarg[0] != '-';
		switch (ch) {
		case 's':
			opt_shiplogd = optarg;
			break;
		case 'd':
			opt_dir = optarg;
			break;
		case 'f':
			opt_figures = optarg;
			break;
		case 'j':
			opt_json = 1;
			break;
		case 'K':
			opt_keep = 1;
			break;
		case 'e':
			if (strcmp(optarg, "epoll") && strcmp(optarg, "async") &&
			    strcmp(optarg, "threads")) {
				fprintf(stderr, "shiplog-bench repl: bad --load-engine '%s'\n",
				        optarg);
				return 2;
			}
			opt_load_engine = optarg;
			break;
		case 'P':
			if (strcmp(optarg, "raw") && strcmp(optarg, "lib")) {
				fprintf(stderr, "shiplog-bench repl: bad --probe '%s'\n", optarg);
				return 2;
			}
			opt_probe_raw = !strcmp(optarg, "raw");
			break;
		case 'B':
			if (!num_ok || v > 100000) {
				fprintf(stderr, "shiplog-bench repl: bad --batch-us '%s'\n",
				        optarg);
				return 2;
			}
			opt_batch_us = optarg;
			break;
		case 'S':
			if (strcmp(optarg, "normal") != 0 && strcmp(optarg, "batch") != 0 &&
			    strcmp(optarg, "fifo") != 0) {
				fprintf(
				    stderr,
				    "shiplog-bench repl: bad --follower-sched '%s' (normal, batch "
				    "or fifo)\n",
				    optarg);
				return 2;
			}
			opt_sched = optarg;
			break;
		case 'R':
			if (!num_ok || v == 0 || v > 16) {
				fprintf(stderr, "shiplog-bench repl: bad --tput-rounds '%s'\n",
				        optarg);
				return 2;
			}
			opt_tput_rounds = (int)v;
			break;
		case 'L':
			if (!num_ok || v < 1 || v > 2) {
				fprintf(stderr,
				        "shiplog-bench repl: bad --lag-followers '%s' (1 or 2)\n",
				        optarg);
				return 2;
			}
			opt_lag_followers = (int)v;
			break;
		case 'Z':
			opt_probe_spin = 1;
			sp_set_spin(1);
			break;
		case 'Q':
			if (strcmp(optarg, "park") && strcmp(optarg, "poll")) {
				fprintf(stderr,
				        "shiplog-bench repl: bad --lag-read '%s' (park or poll)\n",
				        optarg);
				return 2;
			}
			opt_lag_poll = !strcmp(optarg, "poll");
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'k':
		case 'v':
		case 'a':
		case 'l':
		case 'p':
		case 'c':
		case 't':
		case 'm':
			if (!num_ok || (ch != 'p' && v == 0) || (ch == 'v' && v > 4000) ||
			    (ch == 'c' && v > 1000)) {
				fprintf(stderr, "shiplog-bench repl: bad value '%s'\n", optarg);
				return 2;
			}
			if (ch == 'k') {
				opt_keys = v;
			} else if (ch == 'v') {
				opt_value_size = (size_t)v;
			} else if (ch == 'a') {
				opt_acks_writes = v;
			} else if (ch == 'l') {
				opt_lag_writes = v;
			} else if (ch == 'p') {
				opt_lag_pause_us = v;
			} else if (ch == 'c') {
				opt_load_clients = (int)v;
			} else if (ch == 't') {
				opt_tput_requests = v;
			} else {
				opt_catchup_mb = v;
			}
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (opt_probe_spin && !opt_probe_raw) {
		fprintf(stderr, "shiplog-bench repl: --probe-spin needs --probe raw (the client "
		                "library's receives are nng's)\n");
		return 2;
	}
	static char self[PATH_MAX + 16];
	if (opt_shiplogd == NULL) {
		ssize_t n = readlink("/proc/self/exe", self, PATH_MAX);
		if (n > 0) {
			self[n] = '\0';
			char *s = strrchr(self, '/');
			snprintf(s ? s + 1 : self, 16, "shiplogd");
		}
		opt_shiplogd = self;
	}
	if (access(opt_shiplogd, X_OK) != 0) {
		fprintf(stderr, "shiplog-bench repl: no shiplogd at %s (use --shiplogd)\n",
		        opt_shiplogd);
		return 2;
	}
	if (!strcmp(opt_dir, "/") || !opt_dir[0]) {
		return 2;
	}
	rm_rf(opt_dir);
	mkdir(opt_dir, 0755);
	snprintf(P.dir, sizeof(P.dir), "%s/primary", opt_dir);
	snprintf(F1.dir, sizeof(F1.dir), "%s/follower1", opt_dir);
	snprintf(F2.dir, sizeof(F2.dir), "%s/follower2", opt_dir);
	uint64_t backlog = opt_catchup_mb * 2 * 1000000ull;
	if (backlog < (1ull << 30)) {
		backlog = 1ull << 30;
	}
	snprintf(backlog_flag, sizeof(backlog_flag), "%llu", (unsigned long long)backlog);
	f_flags[1] = opt_batch_us;
	f_flags[3] = opt_sched;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	if (node_start(&P, NULL, p_flags) || node_start(&F1, P.rurl, f_flags) ||
	    node_start(&F2, P.rurl, f_flags)) {
		stop_all();
		return 1;
	}
	note("shiplog-bench repl: primary %s, followers %s %s (%s), values %zu B", P.url, F1.url,
	     F2.url, opt_shiplogd, opt_value_size);
	if (figure_on("resync")) {
		double s = load_seq(P.url, "key:", opt_keys, 4);
		note("loaded %llu keys x %zu B in %.1f s", (unsigned long long)opt_keys,
		     opt_value_size, s);
		converge(300);
		fig_resync();
	}
	if (figure_on("acks")) {
		converge(300);
		fig_acks();
	}
	if (figure_on("lag")) {
		converge(300);
		if (opt_lag_followers == 1) {
			node_stop(&F2, SIGTERM); /* the anchor's shape: one replica */
		}
		fig_lag(0);
		converge(300);
		fig_lag(opt_load_clients);
		if (opt_lag_followers == 1 && node_start(&F2, NULL, f_flags) != 0) {
			fail("follower2 did not restart after the write->visible figures");
		}
	}
	if (figure_on("tput")) {
		converge(300);
		fig_tput();
	}
	if (figure_on("catchup")) {
		fig_catchup();
	}
	stop_all();
	if (!opt_keep) {
		rm_rf(opt_dir);
	}
	return failed;
}
