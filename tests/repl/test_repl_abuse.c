/*
 * test_repl_abuse.c — clients of a primary that pipeline requests whose
 * replies are made away from the event loop and never read them, and
 * WAITs that hold on for a long time:
 *  - 64 fetches of the whole log sent at once on the replication port and
 *    never read made 64 replies of up to 64 MiB each: 4 GB of server
 *    memory per connection, and other clients stalled for seconds while
 *    the loop copied them.  Now at most 2 such requests are away per
 *    connection (server_ep.c, AWAY_MAX).
 *  - WAITs with a long timeout each held a worker thread: with every
 *    worker in one, the requests that need one (stats, scan, a write that
 *    starts a segment) got no answer, even after their client had gone.
 *    Now a WAIT is parked like an --acks write, holding no thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include "replutil.h"
#include "shiplog.pb-c.h"

static char *root;
static ru_node P;

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-abuse");
	if (root == NULL) {
		return -1;
	}
	const char *ex[] = {"--workers", "4", NULL};
	return ru_start_in(&P, root, "p", NULL, ex);
}

static int teardown(void **state)
{
	(void)state;
	nu_stop(&P.d, SIGTERM);
	ru_rm_root(root);
	return 0;
}

/* A raw SP REQ connection to port: the handshake sent and read; a small
 * receive buffer, never read from again. */
static int raw_connect(int port)
{
	int fd = nu_tcp_connect(port);
	assert_true(fd >= 0);
	int small = 4096;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	uint8_t hello[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0}, peer[8];
	assert_int_equal(write(fd, hello, 8), 8);
	assert_int_equal(read(fd, peer, 8), 8);
	return fd;
}

/* Sends one SP frame: request id `id`, body b of n bytes. */
static void raw_send(int fd, uint32_t id, const uint8_t *b, size_t n)
{
	uint8_t *f = malloc(12 + n);
	assert_non_null(f);
	uint64_t len = 4 + n;
	for (int k = 0; k < 8; k++) {
		f[k] = (uint8_t)(len >> (56 - 8 * k));
	}
	id |= 0x80000000u;
	f[8] = (uint8_t)(id >> 24);
	f[9] = (uint8_t)(id >> 16);
	f[10] = (uint8_t)(id >> 8);
	f[11] = (uint8_t)id;
	memcpy(f + 12, b, n);
	assert_int_equal(write(fd, f, 12 + n), (ssize_t)(12 + n));
	free(f);
}

/* Every other client is answered within a second, stats (a worker's) too. */
static void assert_others_served(const char *beside)
{
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	sl_client_set_timeout(c, 2000);
	for (int i = 0; i < 5; i++) {
		int rc = sl_client_ping(c);
		if (rc != SL_OK) {
			fail_msg("ping beside %s: %s", beside, sl_client_strerror(rc));
		}
		sl_client_stats *st = NULL;
		rc = sl_client_stats_get(c, &st);
		if (rc != SL_OK) {
			nu_dump_log(&P.d);
			fail_msg("stats beside %s: %s", beside, sl_client_strerror(rc));
		}
		sl_client_stats_free(st);
	}
	sl_client_close(c);
}

static void test_pipelined_fetches_never_read(void **state)
{
	(void)state;
	/* 32 MB of log */
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	static char v[1 << 20];
	memset(v, 'f', sizeof(v));
	for (int i = 0; i < 32; i++) {
		char k[16];
		snprintf(k, sizeof(k), "f%02d", i);
		assert_int_equal(sl_client_put(c, k, strlen(k), v, sizeof(v), NULL), SL_OK);
	}
	sl_client_close(c);
	long rss0 = nu_status_kb(P.d.pid, "VmRSS");
	int fd[2];
	for (int j = 0; j < 2; j++) {
		fd[j] = raw_connect(P.rport);
		Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
		Shiplog__Fetch f = SHIPLOG__FETCH__INIT;
		f.has_from_seq = 1;
		f.from_seq = 1;
		f.has_max_bytes = 1;
		f.max_bytes = UINT32_MAX;
		f.node_id = "abuser";
		q.op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
		q.fetch = &f;
		uint8_t b[256];
		size_t n = shiplog__repl_request__pack(&q, b);
		for (uint32_t i = 0; i < 64; i++) {
			raw_send(fd[j], i + 1, b, n);
		}
	}
	nu_sleep_ms(1500);
	long rss1 = nu_status_kb(P.d.pid, "VmRSS");
	assert_others_served("pipelined fetches never read");
	/* each connection: its backlog and 2 replies of 32 MB (it was 64) */
	long grew_mb = (rss1 - rss0) / 1024;
	if (grew_mb > 400) {
		fail_msg("the server grew by %ld MB for 2 connections' unread fetches", grew_mb);
	}
	close(fd[0]);
	close(fd[1]);
}

static void test_waits_hold_no_worker(void **state)
{
	(void)state;
	/* 4 workers; 6 connections x 2 WAITs for a follower that never comes,
	 * for ten minutes */
	Shiplog__Request q = SHIPLOG__REQUEST__INIT;
	Shiplog__Wait w = SHIPLOG__WAIT__INIT;
	w.has_replicas = 1;
	w.replicas = 1;
	w.has_timeout_ms = 1;
	w.timeout_ms = 600000;
	q.op_case = SHIPLOG__REQUEST__OP_WAIT;
	q.wait = &w;
	q.has_id = 1;
	int fd[6];
	for (int j = 0; j < 6; j++) {
		fd[j] = raw_connect(P.d.port);
		for (uint32_t i = 0; i < 2; i++) {
			q.id = i + 1;
			uint8_t b[64];
			size_t n = shiplog__request__pack(&q, b);
			raw_send(fd[j], i + 1, b, n);
		}
	}
	nu_sleep_ms(300);
	assert_others_served("12 long WAITs");
	/* a WAIT that can be met still answers at once, with its count */
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	uint32_t acks = 99;
	assert_int_equal(sl_client_wait(c, 0, 0, 1000, &acks), SL_OK);
	assert_int_equal(acks, 0);
	/* and a parked one ends at its deadline, answered with the count */
	uint64_t t0 = tu_mono_ms();
	acks = 99;
	assert_int_equal(sl_client_wait(c, 1, 0, 300, &acks), SL_OK);
	assert_int_equal(acks, 0);
	uint64_t took = tu_mono_ms() - t0;
	assert_true(took >= 250 && took < 3000);
	sl_client_close(c);
	for (int j = 0; j < 6; j++) {
		close(fd[j]);
	}
	/* and after their clients went */
	assert_others_served("12 long WAITs whose clients left");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pipelined_fetches_never_read),
	    cmocka_unit_test(test_waits_hold_no_worker),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
