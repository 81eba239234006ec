/*
 * test_node_lifecycle.c — how shiplogd starts and stops: refusals with exit
 * status 1 (data directory in use, address in use, bad flags), --help,
 * SIGTERM/SIGINT → exit 0 with the data kept and the pidfile removed, and
 * the metrics endpoint scraped over HTTP and checked by `promtool check
 * metrics`.
 */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/syscall.h>

#include <cmocka.h>

#include "nodeutil.h"
#include "shiplog.pb-c.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

static char *root;

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("node-life");
	return root == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rm_rf(root);
	free(root);
	return 0;
}

static void subdir(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", root, name);
}

static void test_bad_flags_exit_1(void **state)
{
	(void)state;
	const char *a1[] = {"--no-such-flag", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad1", a1), 1);
	assert_true(nu_out_contains(root, "bad1", "unknown option"));
	const char *a2[] = {"--sync", "sometimes", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad2", a2), 1);
	assert_true(nu_out_contains(root, "bad2", "--sync"));
	const char *a3[] = {"--segment-bytes", "12q", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad3", a3), 1);
	const char *a4[] = {"--compact-dead-ratio", "1.5", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad4", a4), 1);
	const char *a5[] = {"--dir", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad5", a5), 1);
	assert_true(nu_out_contains(root, "bad5", "needs a value"));
	const char *a6[] = {"stray-argument", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad6", a6), 1);
	const char *a7[] = {"--max-value-bytes", "2g", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad7", a7), 1);
	const char *a8[] = {"--log-level", "loud", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad8", a8), 1);
	/* a --follow URL with whitespace (REPL is line-based: a newline in it
	 * once let a URL rewrite the node's role) */
	/* a URL typo is refused with the flags, before the data directory is
	 * made (it was found at listen, a fresh directory and REPL left) */
	char nodir[TU_PATH];
	snprintf(nodir, sizeof(nodir), "%s/never-made", root);
	const char *const badurl[][4] = {{"--listen", "tcpp://127.0.0.1:18200"},
	                                 {"--metrics-listen", "127.0.0.1:18400"},
	                                 {"--repl-listen", "127.0.0.1:18500"}};
	for (size_t i = 0; i < 3; i++) {
		const char *ab[] = {"--dir", nodir, badurl[i][0], badurl[i][1], NULL};
		assert_int_equal(nu_run_to_exit(root, "badurl", ab), 1);
		assert_true(nu_out_contains(root, "badurl", badurl[i][0]));
		assert_int_equal(access(nodir, F_OK), -1);
	}
	/* a data directory that cannot be made: which path, and why (it was
	 * "I/O error" alone) */
	char afile[TU_PATH], under[TU_PATH];
	snprintf(afile, sizeof(afile), "%s/a-file", root);
	snprintf(under, sizeof(under), "%s/a-file/data", root);
	FILE *af = fopen(afile, "w");
	assert_non_null(af);
	fclose(af);
	const char *amk[] = {"--dir", under, "--listen", "tcp://127.0.0.1:1", NULL};
	assert_int_equal(nu_run_to_exit(root, "mkdir", amk), 1);
	char want[TU_PATH + 64];
	snprintf(want, sizeof(want), "cannot create directory %s: Not a directory", under);
	assert_true(nu_out_contains(root, "mkdir", want));
	const char *a9[] = {"--follow", "tcp://127.0.0.1:1\nrole primary", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad9", a9), 1);
	assert_true(nu_out_contains(root, "bad9", "--follow"));
	/* one nng can never dial: the follower would only ever retry it */
	const char *a10[] = {"--follow", "foo://bar", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad10", a10), 1);
	assert_true(nu_out_contains(root, "bad10", "--follow"));
	const char *a11[] = {"--follow", "tcp://127.0.0.1:99999", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad11", a11), 1);
	/* its own --repl-listen, under another name: it started, and stayed a
	 * read-only follower of itself for good */
	const char *a12[] = {"--repl-listen", "tcp://127.0.0.1:23470", "--follow",
	                     "tcp://localhost:23470", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad12", a12), 1);
	assert_true(nu_out_contains(root, "bad12", "cannot follow itself"));
	const char *a13[] = {"--repl-listen", "tcp://*:23470", "--follow", "tcp://127.0.0.1:23470",
	                     NULL};
	assert_int_equal(nu_run_to_exit(root, "bad13", a13), 1);
	assert_true(nu_out_contains(root, "bad13", "cannot follow itself"));
	const char *a14[] = {"--segment-bytes", "3g", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad14", a14), 1);
	assert_true(nu_out_contains(root, "bad14", "3070m"));
	const char *a15[] = {"--io-slice-us", "50", NULL}; /* Linux takes 100 us and up */
	assert_int_equal(nu_run_to_exit(root, "bad15", a15), 1);
	assert_true(nu_out_contains(root, "bad15", "--io-slice-us"));
	const char *a16[] = {"--repl-sched", "fast", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad16", a16), 1);
	assert_true(nu_out_contains(root, "bad16", "--repl-sched"));
	/* strtoull skips blanks and negates: " -1" was 2^64-1 bytes of
	 * backlog, so the primary never compacted */
	const char *a17[] = {"--repl-backlog-bytes", " -1", NULL};
	assert_int_equal(nu_run_to_exit(root, "bad17", a17), 1);
	assert_true(nu_out_contains(root, "bad17", "--repl-backlog-bytes"));
	const char *h[] = {"--help", NULL};
	assert_int_equal(nu_run_to_exit(root, "help", h), 0);
	assert_true(nu_out_contains(root, "help", "--metrics-listen"));
	assert_true(nu_out_contains(root, "help", "default tcp://127.0.0.1:7420"));
}

/* Whether this kernel takes a thread's own slice (EEVDF custom slices,
 * Linux 6.12+): a thread of the test's asks for 100 us and reads it back
 * (it exits after: nothing the test starts inherits it). */
static void *slice_probe(void *arg)
{
	struct {
		uint32_t size, policy;
		uint64_t flags;
		int32_t nice;
		uint32_t prio;
		uint64_t runtime, deadline, period;
		uint32_t umin, umax;
	} a;
	memset(&a, 0, sizeof(a));
	int *ok = arg;
	*ok = 0;
	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) != 0) {
		return NULL;
	}
	a.size = sizeof(a);
	a.flags = 0;
	a.runtime = 100000;
	if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) {
		return NULL;
	}
	*ok = nu_threads_with_slice(getpid(), 100000) > 0;
	return NULL;
}

/* nu_threads_with_slice(pid, ns) once it is `want`, polled for up to 2 s (a
 * loop may not have started when the daemon first answers). */
static int wait_threads_with_slice(pid_t pid, unsigned long long ns, int want)
{
	int n = -1;
	for (int t = 0; t < 100; t++) {
		if ((n = nu_threads_with_slice(pid, ns)) == want) {
			break;
		}
		nu_sleep_ms(20);
	}
	return n;
}

/* --io-slice-us: the event loop asks the scheduler for that slice
 * (100 us by default); 0 leaves every thread with the kernel's own.  The
 * epoll front's (the default on tcp://). */
static void test_io_slice_of_the_loop(void **state)
{
	(void)state;
	const char *tr = getenv("SL_TEST_TRANSPORT");
	if (tr != NULL && strcmp(tr, "nng") == 0) {
		skip(); /* nng's REP socket: its threads are nng's, no loop of ours */
	}
	int takes = 0;
	pthread_t pt;
	assert_int_equal(pthread_create(&pt, NULL, slice_probe, &takes), 0);
	pthread_join(pt, NULL);
	if (!takes) {
		skip(); /* no custom slices here (or no se.slice to read them) */
	}
	char dir[TU_PATH];
	subdir(dir, sizeof(dir), "slice");
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	int n = wait_threads_with_slice(d.pid, 100000, 1);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	assert_int_equal(n, 1); /* --io-threads 1: one loop */
	const char *two[] = {"--io-slice-us", "500", "--io-threads", "2", NULL};
	assert_int_equal(nu_start(&d, dir, two), 0);
	n = wait_threads_with_slice(d.pid, 500000, 2);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	assert_int_equal(n, 2);
	const char *off[] = {"--io-slice-us", "0", NULL};
	assert_int_equal(nu_start(&d, dir, off), 0);
	n = nu_threads_with_slice(d.pid, 100000) + nu_threads_with_slice(d.pid, 500000);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	assert_int_equal(n, 0);
}

static void test_dir_in_use_exit_1(void **state)
{
	(void)state;
	char dir[TU_PATH];
	subdir(dir, sizeof(dir), "busy");
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", nu_free_port());
	const char *a[] = {"--dir", dir, "--listen", url, NULL};
	assert_int_equal(nu_run_to_exit(root, "busy2", a), 1);
	assert_true(nu_out_contains(root, "busy2", "in use"));
	/* the first one is unharmed */
	sl_client *c = nu_client(&d);
	assert_non_null(c);
	assert_int_equal(sl_client_ping(c), SL_OK);
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
}

/* A DIR/REPL that does not read exactly as shiplogd writes it is refused
 * with its line named: a typo in `role` once brought a follower up as a
 * writable primary (and the new history it then began made it stick). */
static void test_malformed_repl_exit_1(void **state)
{
	(void)state;
	char dir[TU_PATH], repl[TU_PATH + 8], url[64];
	subdir(dir, sizeof(dir), "replfile");
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	snprintf(repl, sizeof(repl), "%s/REPL", dir);
	uint8_t *buf = NULL;
	size_t len = 0;
	assert_int_equal(tu_read_file(repl, &buf, &len), 0);
	buf[len] = '\0';
	char *role = strstr((char *)buf, "role primary\n");
	assert_non_null(role);
	memcpy(role, "role Primary", 12);
	assert_int_equal(tu_write_file(repl, buf, len), 0);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", nu_free_port());
	const char *a[] = {"--dir", dir, "--listen", url, NULL};
	assert_int_equal(nu_run_to_exit(root, "repl1", a), 1);
	assert_true(nu_out_contains(root, "repl1", "REPL is malformed at line 4"));
	memcpy(role, "role primary", 12); /* as written: starts again */
	assert_int_equal(tu_write_file(repl, buf, len), 0);
	free(buf);
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
}

static void test_address_in_use_exit_1(void **state)
{
	(void)state;
	char dir[TU_PATH], dir2[TU_PATH];
	subdir(dir, sizeof(dir), "addr1");
	subdir(dir2, sizeof(dir2), "addr2");
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	const char *a[] = {"--dir", dir2, "--listen", d.url, NULL};
	assert_int_equal(nu_run_to_exit(root, "addr", a), 1);
	assert_true(nu_out_contains(root, "addr", "in use"));
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
}

/* A primary's start that fails after the replication state was read (its
 * client port held by another process) leaves REPL as it was: each refused
 * start added a link to the history, and after 64 of them the one its
 * followers were on was gone (every follower resynced fully). */
static void test_refused_start_keeps_repl(void **state)
{
	(void)state;
	char dir[TU_PATH], dir2[TU_PATH], repl[TU_PATH + 8];
	subdir(dir, sizeof(dir), "keeprepl");
	subdir(dir2, sizeof(dir2), "keeprepl2");
	nu_daemon d, d2;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	snprintf(repl, sizeof(repl), "%s/REPL", dir);
	uint8_t *before = NULL, *after = NULL;
	size_t lb = 0, la = 0;
	assert_int_equal(tu_read_file(repl, &before, &lb), 0);
	assert_int_equal(nu_start(&d2, dir2, NULL), 0);
	const char *a[] = {"--dir", dir, "--listen", d2.url, NULL};
	for (int i = 0; i < 2; i++) {
		assert_int_equal(nu_run_to_exit(root, "keeprepl", a), 1);
		assert_true(nu_out_contains(root, "keeprepl", "in use"));
	}
	assert_int_equal(nu_stop(&d2, SIGTERM), 0);
	assert_int_equal(tu_read_file(repl, &after, &la), 0);
	if (la != lb || memcmp(before, after, lb) != 0) {
		fail_msg("two refused starts changed %s (%zu -> %zu bytes)", repl, lb, la);
	}
	free(before);
	free(after);
}

static void test_sigterm_sigint_exit_0_keep_data(void **state)
{
	(void)state;
	char dir[TU_PATH], pidfile[TU_PATH];
	subdir(dir, sizeof(dir), "term");
	subdir(pidfile, sizeof(pidfile), "term.pid");
	const char *extra[] = {"--pidfile", pidfile, "--sync", "no", NULL};
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, extra), 0);
	uint8_t *buf = NULL;
	size_t len = 0;
	assert_int_equal(tu_read_file(pidfile, &buf, &len), 0);
	buf[len] = '\0';
	assert_int_equal(atoi((char *)buf), d.pid);
	free(buf);
	sl_client *c = nu_client(&d);
	char k[32];
	for (int i = 0; i < 500; i++) {
		snprintf(k, sizeof(k), "term%d", i);
		assert_int_equal(sl_client_put(c, k, strlen(k), k, strlen(k), NULL), SL_OK);
	}
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	assert_false(tu_exists(pidfile));

	assert_int_equal(nu_start(&d, dir, extra), 0);
	c = nu_client(&d);
	for (int i = 0; i < 500; i++) {
		snprintf(k, sizeof(k), "term%d", i);
		void *v;
		size_t vl;
		assert_int_equal(sl_client_get(c, k, strlen(k), &v, &vl, NULL), SL_OK);
		assert_memory_equal(v, k, vl);
		free(v);
	}
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGINT), 0);
}

/* Requests in flight when SIGTERM arrives are answered (or refused with
 * SL_ESHUTDOWN); every acknowledged write survives.  (Threads, not fork:
 * nng is not fork-safe.) */

/* A key stored under a larger --max-key-bytes, the server restarted with a
 * smaller one: a scan page ending on that key handed it out as the cursor,
 * and the next page refused it ("cursor longer than 100 bytes"): the keys
 * after it could not be reached by paging. */
static void test_scan_pages_past_a_key_over_a_lowered_limit(void **state)
{
	(void)state;
	char dir[TU_PATH];
	subdir(dir, sizeof(dir), "keylimit");
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	sl_client *c = nu_client(&d);
	char longk[203];
	memset(longk, 'x', sizeof(longk));
	memcpy(longk, "p2", 2);
	assert_int_equal(sl_client_put(c, "p1", 2, "a", 1, NULL), SL_OK);
	assert_int_equal(sl_client_put(c, longk, sizeof(longk), "b", 1, NULL), SL_OK);
	assert_int_equal(sl_client_put(c, "p3", 2, "c", 1, NULL), SL_OK);
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	const char *lower[] = {"--max-key-bytes", "100", NULL};
	assert_int_equal(nu_start(&d, dir, lower), 0);
	c = nu_client(&d);
	void *cur = NULL;
	size_t curlen = 0, seen = 0;
	for (int page = 0; page < 10; page++) {
		sl_client_item *it = NULL;
		size_t n = 0;
		void *next = NULL;
		size_t nextlen = 0;
		int rc = sl_client_scan(c, "p", 1, 1, cur, curlen, 1, &it, &n, &next, &nextlen);
		if (rc != SL_OK) {
			fail_msg("scan page %d: %s (%s)", page, sl_client_strerror(rc),
			         sl_client_errmsg(c));
		}
		seen += n;
		sl_client_items_free(it, n);
		free(cur);
		cur = next;
		curlen = nextlen;
		if (cur == NULL) {
			break;
		}
	}
	free(cur);
	assert_int_equal(seen, 3);
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
}

static void test_sigterm_under_load(void **state)
{
	(void)state;
	char dir[TU_PATH];
	subdir(dir, sizeof(dir), "load");
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	enum { W = 4 };
	pthread_t th[W];
	nu_load_arg la[W];
	for (int i = 0; i < W; i++) {
		la[i] = (nu_load_arg){.url = d.url, .id = i};
		assert_int_equal(pthread_create(&th[i], NULL, nu_load_writer, &la[i]), 0);
	}
	nu_sleep_ms(400);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
	for (int i = 0; i < W; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(la[i].bad_rc, 0);
		assert_true(la[i].acked > 0);
	}
	assert_int_equal(nu_start(&d, dir, NULL), 0);
	sl_client *c = nu_client(&d);
	char k[32];
	for (int w = 0; w < W; w++) {
		for (int i = 0; i < la[w].acked; i++) {
			snprintf(k, sizeof(k), "load%d-%d", w, i);
			void *v;
			size_t vl;
			assert_int_equal(sl_client_get(c, k, strlen(k), &v, &vl, NULL), SL_OK);
			free(v);
		}
	}
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);
}

/* GET path over plain TCP; returns the malloc'd body or NULL. */
static char *http_get(int port, const char *path, int *status)
{
	int fd = nu_tcp_connect(port);
	if (fd < 0) {
		return NULL;
	}
	char req[256];
	int n = snprintf(req, sizeof(req),
	                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
	if (write(fd, req, (size_t)n) != n) {
		close(fd);
		return NULL;
	}
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (len + 1 >= cap) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r <= 0) {
			break;
		}
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	*status = 0;
	sscanf(buf, "HTTP/1.%*d %d", status);
	char *body = strstr(buf, "\r\n\r\n");
	if (body == NULL) {
		free(buf);
		return NULL;
	}
	char *out = strdup(body + 4);
	free(buf);
	return out;
}

static void test_metrics_promtool(void **state)
{
	(void)state;
	char dir[TU_PATH], murl[64];
	subdir(dir, sizeof(dir), "metrics");
	int mport = nu_free_port();
	snprintf(murl, sizeof(murl), "http://127.0.0.1:%d", mport);
	char rurl[64];
	snprintf(rurl, sizeof(rurl), "tcp://127.0.0.1:%d", nu_free_port());
	const char *extra[] = {"--metrics-listen", murl, "--repl-listen", rurl, NULL};
	nu_daemon d;
	assert_int_equal(nu_start(&d, dir, extra), 0);
	sl_client *c = nu_client(&d);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(sl_client_put(c, "mk", 2, "v", 1, NULL), SL_OK);
	}
	/* A follower's node id is whatever its fetches say: one with a quote,
	 * a backslash and a newline must not break the text format (it made
	 * every scrape unparseable until the entry was dropped). */
	nng_socket req;
	assert_int_equal(nng_req0_open(&req), 0);
	nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 5000);
	assert_int_equal(nng_dial(req, rurl, NULL, 0), 0);
	Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
	Shiplog__Fetch f = SHIPLOG__FETCH__INIT;
	f.has_from_seq = 1;
	f.from_seq = 1;
	f.node_id = "ev\"il\\id\nx";
	q.op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
	q.fetch = &f;
	nng_msg *m;
	assert_int_equal(nng_msg_alloc(&m, shiplog__repl_request__get_packed_size(&q)), 0);
	shiplog__repl_request__pack(&q, nng_msg_body(m));
	assert_int_equal(nng_sendmsg(req, m, 0), 0);
	assert_int_equal(nng_recvmsg(req, &m, 0), 0);
	nng_msg_free(m);
	nng_close(req);
	void *v;
	size_t vl;
	assert_int_equal(sl_client_get(c, "mk", 2, &v, &vl, NULL), SL_OK);
	free(v);
	assert_int_equal(sl_client_get(c, "missing", 7, &v, &vl, NULL), SL_ENOTFOUND);
	assert_int_equal(sl_client_put(c, "", 0, "v", 1, NULL), SL_EINVAL);
	assert_int_equal(sl_client_ping(c), SL_OK);
	sl_client_close(c);

	int status = 0;
	char *body = http_get(mport, "/metrics", &status);
	assert_non_null(body);
	assert_int_equal(status, 200);
	assert_non_null(strstr(body, "shiplog_requests_total{op=\"put\",status=\"ok\"} 50"));
	assert_non_null(strstr(body, "shiplog_requests_total{op=\"get\",status=\"not_found\"} 1"));
	assert_non_null(strstr(body, "shiplog_requests_total{op=\"put\",status=\"invalid\"} 1"));
	assert_non_null(strstr(body, "shiplog_requests_total{op=\"ping\",status=\"ok\"}"));
	assert_non_null(
	    strstr(body, "shiplog_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"} 51"));
	assert_non_null(strstr(body, "shiplog_keys 1\n"));
	assert_non_null(strstr(body, "shiplog_last_seq 50\n"));
	assert_non_null(strstr(body, "shiplog_role{role=\"primary\"} 1"));
	assert_non_null(strstr(body, "shiplog_uptime_seconds"));
	assert_non_null(strstr(body, "shiplog_fsyncs_total"));
	assert_non_null(strstr(body, "shiplog_segments"));
	assert_non_null(strstr(body, "shiplog_compactions_total"));
	assert_non_null(strstr(body, "follower=\"ev\\\"il\\\\id\\nx\"}"));
	char path[TU_PATH];
	snprintf(path, sizeof(path), "%s/metrics.txt", root);
	assert_int_equal(tu_write_file(path, body, strlen(body)), 0);
	free(body);
	if (system("command -v promtool >/dev/null 2>&1") == 0) {
		char cmd[TU_PATH + 64];
		snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s'", path);
		assert_int_equal(system(cmd), 0);
	} else {
		fprintf(stderr, "promtool not installed: format not checked\n");
	}
	body = http_get(mport, "/other", &status);
	free(body);
	assert_int_equal(status, 404);
	assert_int_equal(nu_stop(&d, SIGTERM), 0);

	/* the metrics port in use is a refusal too */
	int busy = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)mport);
	int one = 1;
	setsockopt(busy, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	assert_int_equal(bind(busy, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(busy, 1), 0);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", nu_free_port());
	const char *args[] = {"--dir", dir, "--listen", url, "--metrics-listen", murl, NULL};
	assert_int_equal(nu_run_to_exit(root, "mbusy", args), 1);
	close(busy);
}

/* A store whose fsync failed refuses writes until restarted; stats says so
 * as 0/1 with the error as text (the engine's negative code went out as a
 * uint64: "failed: 18446744073709551612"). */
static void test_failed_store_stats(void **state)
{
	(void)state;
	char dir[TU_PATH];
	subdir(dir, sizeof(dir), "failedstats");
	const char *extra[] = {"--sync", "always", "--repl-listen", "none", NULL};
	setenv("SHIPLOGD_TEST_FSYNC_EIO_AFTER", "1", 1);
	nu_daemon d;
	int started = nu_start(&d, dir, extra);
	unsetenv("SHIPLOGD_TEST_FSYNC_EIO_AFTER");
	assert_int_equal(started, 0);
	sl_client *c = nu_client(&d);
	assert_non_null(c);
	sl_client_stats *st = NULL;
	assert_int_equal(sl_client_stats_get(c, &st), SL_OK);
	const sl_client_stat *f = sl_client_stats_find(st, "failed");
	assert_non_null(f);
	assert_int_equal(f->value, 0);
	assert_null(sl_client_stats_find(st, "failed_error"));
	sl_client_stats_free(st);
	int rc = SL_OK;
	for (int i = 0; i < 5 && rc == SL_OK; i++) {
		rc = sl_client_put(c, "fk", 2, "v", 1, NULL);
	}
	assert_int_not_equal(rc, SL_OK);
	assert_int_equal(sl_client_stats_get(c, &st), SL_OK);
	f = sl_client_stats_find(st, "failed");
	assert_non_null(f);
	assert_int_equal(f->value, 1);
	const sl_client_stat *e = sl_client_stats_find(st, "failed_error");
	assert_non_null(e);
	assert_non_null(e->text);
	assert_true(strlen(e->text) > 0);
	sl_client_stats_free(st);
	sl_client_close(c);
	assert_int_equal(nu_stop(&d, SIGTERM), 1); /* its final sync fails too: exit 1 */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bad_flags_exit_1),
	    cmocka_unit_test(test_io_slice_of_the_loop),
	    cmocka_unit_test(test_scan_pages_past_a_key_over_a_lowered_limit),
	    cmocka_unit_test(test_dir_in_use_exit_1),
	    cmocka_unit_test(test_malformed_repl_exit_1),
	    cmocka_unit_test(test_address_in_use_exit_1),
	    cmocka_unit_test(test_refused_start_keeps_repl),
	    cmocka_unit_test(test_sigterm_sigint_exit_0_keep_data),
	    cmocka_unit_test(test_sigterm_under_load),
	    cmocka_unit_test(test_metrics_promtool),
	    cmocka_unit_test(test_failed_store_stats),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
