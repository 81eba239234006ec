/*
 * test_repl_garbage.c — a test-only fake primary (a REP socket in this
 * process) answers a real follower's fetches with garbage, truncated
 * records, a bad checksum, a seq that goes backwards and a malformed
 * message.  The follower must refuse each (counting it), reconnect, resume
 * from the last good record and store nothing bad.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "replutil.h"
#include "shiplog.pb-c.h"

static char *root;
static ru_node F;
static ru_node P; /* test_diverged_follower_is_no_ack's primary */
static nng_socket fake;
static char fake_url[64];
static uint8_t hid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-garbage");
	if (root == NULL || nng_rep0_open(&fake) != 0) {
		return -1;
	}
	snprintf(fake_url, sizeof(fake_url), "tcp://127.0.0.1:%d", nu_free_port());
	if (nng_listen(fake, fake_url, NULL, 0) != 0) {
		return -1;
	}
	nng_socket_set_ms(fake, NNG_OPT_RECVTIMEO, 15000);
	char dir[TU_PATH];
	snprintf(dir, sizeof(dir), "%s/f", root);
	return ru_start(&F, dir, fake_url, NULL);
}

static int teardown(void **state)
{
	(void)state;
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM); /* also when a failed assertion skipped its own stop */
	nng_close(fake);
	ru_rm_root(root);
	return 0;
}

/* A raw record (storage/format.h) appended to b at *len. */
static void rec(uint8_t *b, size_t *len, uint64_t seq, const char *k, const char *v)
{
	uint8_t *h = b + *len;
	size_t kl = strlen(k), vl = strlen(v);
	h[4] = 1;
	h[5] = 0;
	sl_put16(h + 6, (uint16_t)kl);
	sl_put32(h + 8, (uint32_t)vl);
	sl_put64(h + 12, seq);
	sl_put64(h + 20, 0);
	memcpy(h + 28, k, kl);
	memcpy(h + 28 + kl, v, vl);
	sl_put32(h, tu_crc32c(h + 4, 24 + kl + vl));
	*len += 28 + kl + vl;
}

/* Receives the next fetch; returns its from_seq. */
static uint64_t next_fetch(void)
{
	nng_msg *m = NULL;
	assert_int_equal(nng_recvmsg(fake, &m, 0), 0);
	Shiplog__ReplRequest *q =
	    shiplog__repl_request__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
	nng_msg_free(m);
	assert_non_null(q);
	assert_int_equal(q->op_case, SHIPLOG__REPL_REQUEST__OP_FETCH);
	uint64_t from = q->fetch->from_seq;
	shiplog__repl_request__free_unpacked(q, NULL);
	return from;
}

static void reply_records(const uint8_t *b, size_t len)
{
	Shiplog__ReplReply rep = SHIPLOG__REPL_REPLY__INIT;
	Shiplog__FetchReply f = SHIPLOG__FETCH_REPLY__INIT;
	f.has_status = 1;
	f.status = SL_OK;
	f.has_records = 1;
	f.records.data = (uint8_t *)b;
	f.records.len = len;
	f.has_head_seq = 1;
	f.head_seq = 100;
	f.has_history_id = 1;
	f.history_id.data = hid;
	f.history_id.len = 16;
	rep.op_case = SHIPLOG__REPL_REPLY__OP_FETCH;
	rep.fetch = &f;
	nng_msg *m = NULL;
	size_t sz = shiplog__repl_reply__get_packed_size(&rep);
	assert_int_equal(nng_msg_alloc(&m, sz), 0);
	shiplog__repl_reply__pack(&rep, nng_msg_body(m));
	assert_int_equal(nng_sendmsg(fake, m, 0), 0);
}

static void reply_raw(const void *b, size_t len)
{
	nng_msg *m = NULL;
	assert_int_equal(nng_msg_alloc(&m, len), 0);
	memcpy(nng_msg_body(m), b, len);
	assert_int_equal(nng_sendmsg(fake, m, 0), 0);
}

static void test_fake_primary_garbage(void **state)
{
	(void)state;
	uint8_t b[4096];
	size_t len;

	/* 1. random bytes as records */
	assert_int_equal(next_fetch(), 1);
	tu_rng rng;
	tu_rng_seed(&rng, 42);
	tu_rng_fill(&rng, b, 300);
	reply_records(b, 300);

	/* 2. a truncated record */
	assert_int_equal(next_fetch(), 1);
	len = 0;
	rec(b, &len, 1, "trunc", "0123456789abcdef");
	reply_records(b, len - 5);

	/* 3. a checksum mismatch */
	assert_int_equal(next_fetch(), 1);
	len = 0;
	rec(b, &len, 1, "badcrc", "value");
	b[len - 1] ^= 0x40;
	reply_records(b, len);

	/* 4. not a ReplReply at all */
	assert_int_equal(next_fetch(), 1);
	/* three refusals in a row: the stats say so, and the link is down
	 * since the start (the state was "streaming" between refusals, the
	 * link never down for more than one backoff) */
	char st[32];
	ru_stat(&F, "repl_state", st, sizeof(st));
	assert_string_equal(st, "refusing");
	assert_true(ru_stat(&F, "repl_link_down_ms", NULL, 0) >= 100);
	ru_stat(&F, "repl_last_error", st, sizeof(st));
	assert_memory_equal(st, "refused records", 15);
	reply_raw("\xff\xff\xff\xff garbage", 13);

	/* 5. one good record, then one whose seq goes backwards */
	assert_int_equal(next_fetch(), 1);
	len = 0;
	rec(b, &len, 5, "good", "yes");
	rec(b, &len, 3, "back", "no");
	reply_records(b, len);

	/* 6. the follower resumes after the good record */
	assert_int_equal(next_fetch(), 6);
	len = 0;
	rec(b, &len, 6, "good2", "yes2");
	reply_records(b, len);
	assert_int_equal(next_fetch(), 7);
	reply_records(b, 0);

	assert_int_equal(ru_wait_applied(&F, 6, 10000), 0);
	ru_stat(&F, "repl_state", st, sizeof(st));
	assert_string_equal(st, "streaming");
	assert_int_equal(ru_stat(&F, "repl_link_down_ms", NULL, 0), 0);
	sl_client *c = ru_client(&F);
	assert_non_null(c);
	void *v = NULL;
	size_t vl = 0;
	assert_int_equal(sl_client_get(c, "good", 4, &v, &vl, NULL), SL_OK);
	assert_int_equal(vl, 3);
	assert_memory_equal(v, "yes", 3);
	free(v);
	assert_int_equal(sl_client_get(c, "good2", 5, &v, &vl, NULL), SL_OK);
	free(v);
	const char *bad[] = {"trunc", "badcrc", "back"};
	for (int i = 0; i < 3; i++) {
		assert_int_equal(sl_client_get(c, bad[i], strlen(bad[i]), &v, &vl, NULL),
		                 SL_ENOTFOUND);
	}
	sl_client_close(c);
	assert_int_equal(ru_stat(&F, "keys", NULL, 0), 2);
	assert_true(ru_stat(&F, "repl_refused_batches", NULL, 0) >= 4);
	assert_int_equal(ru_stat(&F, "corrupt_records", NULL, 0), 0);
	/* a clean stop, its fetch to the fake primary unanswered (F is
	 * started again by a later test: stopped here, by its pid) */
	assert_int_equal(nu_stop(&F.d, SIGTERM), 0);
}

/* A raw replication REQ socket dialed to n's --repl-listen. */
static nng_socket repl_dial(const ru_node *n)
{
	nng_socket req;
	assert_int_equal(nng_req0_open(&req), 0);
	nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 5000);
	assert_int_equal(nng_dial(req, n->rurl, NULL, 0), 0);
	return req;
}

/* One round trip of q on req (a raw replication REQ socket). */
static Shiplog__ReplReply *repl_call(nng_socket req, const Shiplog__ReplRequest *q)
{
	size_t n = shiplog__repl_request__get_packed_size(q);
	nng_msg *m;
	assert_int_equal(nng_msg_alloc(&m, n), 0);
	shiplog__repl_request__pack(q, nng_msg_body(m));
	assert_int_equal(nng_sendmsg(req, m, 0), 0);
	assert_int_equal(nng_recvmsg(req, &m, 0), 0);
	Shiplog__ReplReply *rep =
	    shiplog__repl_reply__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
	nng_msg_free(m);
	assert_non_null(rep);
	return rep;
}

/* A fake follower off the primary's history (an old primary that came
 * back ahead, say) claims a high durable seq: the primary answers
 * SL_ESTALE and must not count it as an ack for its own writes. */
static void test_diverged_follower_is_no_ack(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&P, root, "p", NULL, NULL), 0);
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(sl_client_put(c, "k", 1, "v", 1, NULL), SL_OK);
	}
	nng_socket req = repl_dial(&P);
	Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
	Shiplog__Fetch f = SHIPLOG__FETCH__INIT;
	f.has_history_id = 1;
	f.history_id.data = hid; /* not the primary's history */
	f.history_id.len = 16;
	f.has_from_seq = 1;
	f.from_seq = 1000;
	f.has_durable_seq = 1;
	f.durable_seq = 999;
	f.node_id = "diverged";
	q.op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
	q.fetch = &f;
	Shiplog__ReplReply *rep = repl_call(req, &q);
	assert_int_equal(rep->op_case, SHIPLOG__REPL_REPLY__OP_FETCH);
	assert_int_equal(rep->fetch->status, SL_ESTALE);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	/* No real follower exists: an --acks 1 write must time out. */
	sl_client_set_acks(c, 1, 300);
	uint64_t seq = 0;
	assert_int_equal(sl_client_put(c, "k", 1, "w", 1, &seq), SL_ETIMEDOUT);
	assert_true(seq > 10);
	assert_int_equal(sl_client_last_acks(c), 0);
	sl_client_close(c);
	nng_close(req);
	nu_stop(&P.d, SIGTERM);
}

/* One round trip of a SnapFetch on req. */
static Shiplog__ReplReply *snap_call(nng_socket req, uint64_t id, uint64_t chunk, const char *node)
{
	Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
	Shiplog__SnapFetch sf = SHIPLOG__SNAP_FETCH__INIT;
	sf.has_snap_id = 1;
	sf.snap_id = id;
	sf.has_chunk = 1;
	sf.chunk = chunk;
	sf.has_max_bytes = 1;
	sf.max_bytes = 4096;
	sf.node_id = (char *)node;
	q.op_case = SHIPLOG__REPL_REQUEST__OP_SNAP;
	q.snap = &sf;
	Shiplog__ReplReply *rep = repl_call(req, &q);
	assert_int_equal(rep->op_case, SHIPLOG__REPL_REPLY__OP_SNAP);
	return rep;
}

/* A snapshot's chunks go only to the follower that opened it, and its id
 * is not a small count: ids restarted at 1 with every primary process and
 * were looked up by number alone, so a chunk request left over from before
 * a restart could be served from another follower's snapshot. */
static void test_snapshot_is_its_followers(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&P, root, "ps", NULL, NULL), 0);
	ru_load(&P, "s", 300, 0);
	nng_socket req = repl_dial(&P);
	Shiplog__ReplReply *rep = snap_call(req, 0, 0, "node-a");
	assert_int_equal(rep->snap->status, SL_OK);
	uint64_t id = rep->snap->snap_id;
	int done = rep->snap->done;
	shiplog__repl_reply__free_unpacked(rep, NULL);
	assert_true(id > 1000000); /* random, not 1, 2, ... */
	assert_false(done);
	rep = snap_call(req, id, 1, "node-b"); /* another follower's request */
	assert_int_not_equal(rep->snap->status, SL_OK);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	rep = snap_call(req, id, 1, "node-a"); /* its own follower goes on */
	assert_int_equal(rep->snap->status, SL_OK);
	assert_int_equal(rep->snap->snap_id, id);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	nng_close(req);
	nu_stop(&P.d, SIGTERM);
}

/* Made-up node ids on the unauthenticated replication port take no real
 * follower's place:
 *  - 8 SnapFetches under made-up ids took every snapshot slot, and a real
 *    follower's full resync was refused for 35 s (until the idle sweep);
 *    now a slot idle for 5 s goes to the next full resync;
 *  - fetches under 64 made-up ids pushed a connected follower out of the
 *    64-entry table (its acks, the log kept for it); now a table full of
 *    connected followers serves a newcomer without tracking it. */
static void test_made_up_ids_take_no_followers_place(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&P, root, "pm", NULL, NULL), 0);
	ru_load(&P, "m", 300, 0);
	nng_socket req = repl_dial(&P);
	uint64_t ids[8];
	for (int i = 0; i < 8; i++) {
		char node[16];
		snprintf(node, sizeof(node), "fake-%d", i);
		Shiplog__ReplReply *rep = snap_call(req, 0, 0, node);
		assert_int_equal(rep->snap->status, SL_OK);
		assert_false(rep->snap->done);
		ids[i] = rep->snap->snap_id;
		shiplog__repl_reply__free_unpacked(rep, NULL);
		nu_sleep_ms(20); /* fake-0 is idle the longest */
	}
	Shiplog__ReplReply *rep = snap_call(req, 0, 0, "real");
	assert_int_equal(rep->snap->status, SL_EBUSY); /* every slot busy a moment ago */
	shiplog__repl_reply__free_unpacked(rep, NULL);
	nu_sleep_ms(5300);
	rep = snap_call(req, 0, 0, "real");
	if (rep->snap->status != SL_OK) {
		nu_dump_log(&P.d);
		fail_msg("a full resync was refused while made-up ids held every slot for 5 s: %d",
		         (int)rep->snap->status);
	}
	uint64_t real = rep->snap->snap_id;
	shiplog__repl_reply__free_unpacked(rep, NULL);
	rep = snap_call(req, real, 1, "real");
	assert_int_equal(rep->snap->status, SL_OK);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	rep = snap_call(req, ids[0], 1, "fake-0"); /* its slot went to "real" */
	assert_int_not_equal(rep->snap->status, SL_OK);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	rep = snap_call(req, ids[1], 1, "fake-1"); /* the others are kept */
	assert_int_equal(rep->snap->status, SL_OK);
	shiplog__repl_reply__free_unpacked(rep, NULL);

	/* an id longer than the table keeps (39 characters), fetching three
	 * times: one entry (compared whole against the cut one, each fetch
	 * took a new slot: the same series three times in /metrics) */
	char longid[51];
	memset(longid, 'L', 50);
	longid[50] = '\0';
	for (int i = 0; i < 3; i++) {
		Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
		Shiplog__Fetch f = SHIPLOG__FETCH__INIT;
		f.has_from_seq = 1;
		f.from_seq = 1;
		f.has_max_bytes = 1;
		f.max_bytes = 4096;
		f.node_id = longid;
		q.op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
		q.fetch = &f;
		rep = repl_call(req, &q);
		assert_int_equal(rep->op_case, SHIPLOG__REPL_REPLY__OP_FETCH);
		shiplog__repl_reply__free_unpacked(rep, NULL);
	}
	int same = 0;
	for (int i = 0; i < 8; i++) {
		char name[64], got[64];
		snprintf(name, sizeof(name), "follower.%d.id", i);
		got[0] = '\0';
		ru_stat(&P, name, got, sizeof(got));
		same += strncmp(got, longid, 39) == 0;
	}
	if (same != 1) {
		fail_msg("a 50-character node id fetching 3 times has %d table entries", same);
	}

	/* a real follower, then 70 made-up ones */
	assert_int_equal(ru_start_in(&F, root, "fm", P.rurl, NULL), 0);
	assert_int_equal(ru_wait_applied(&F, ru_last_seq(&P), 15000), 0);
	int at = -1;
	for (int waited = 0; at < 0 && waited < 5000; waited += 50) {
		at = ru_follower_index(&P, &F);
		nu_sleep_ms(at < 0 ? 50 : 0);
	}
	assert_true(at >= 0);
	for (int i = 0; i < 70; i++) {
		Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
		Shiplog__Fetch f = SHIPLOG__FETCH__INIT;
		char node[24];
		snprintf(node, sizeof(node), "made-up-%d", i);
		f.has_from_seq = 1;
		f.from_seq = 1;
		f.has_max_bytes = 1;
		f.max_bytes = 4096;
		f.node_id = node;
		q.op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
		q.fetch = &f;
		rep = repl_call(req, &q);
		assert_int_equal(rep->op_case, SHIPLOG__REPL_REPLY__OP_FETCH);
		assert_int_equal(rep->fetch->status, SL_OK); /* served all the same */
		shiplog__repl_reply__free_unpacked(rep, NULL);
	}
	if (ru_follower_index(&P, &F) != at) {
		nu_dump_log(&P.d);
		fail_msg("made-up node ids pushed a connected follower out of the primary's table");
	}
	assert_true(nu_log_contains(&P.d, "the follower table is full"));
	/* and it still acknowledges */
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	sl_client_set_acks(c, 1, 5000);
	assert_int_equal(sl_client_put(c, "acked", 5, "v", 1, NULL), SL_OK);
	assert_int_equal(sl_client_last_acks(c), 1);
	sl_client_close(c);
	nng_close(req);
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
}

/* Waits up to ms for the peer to close fd (read 0 or an error): 1 if it
 * did, 0 if fd is still open. */
static int closed_within(int fd, int ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	uint8_t b[256];
	for (;;) {
		ssize_t n = recv(fd, b, sizeof(b), 0);
		if (n == 0 ||
		    (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			return 1;
		}
		if (n < 0 && errno != EINTR) {
			return 0; /* timed out */
		}
	}
}

/* The primary's replication port (epoll front by default, the nng socket
 * under SL_TEST_TRANSPORT=nng) against bad input: bytes that are no
 * handshake, a frame over the request limit, a request that is not a
 * ReplRequest.  Each is closed or answered SL_EPROTO; the primary keeps
 * serving, and a follower started after all that converges. */
static void test_repl_port_bad_input(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&P, root, "pb", NULL, NULL), 0);
	ru_load(&P, "b", 200, 0);

	/* 1. not an SP handshake */
	int fd = nu_tcp_connect(P.rport);
	assert_true(fd >= 0);
	uint8_t junk[1024];
	tu_rng rng;
	tu_rng_seed(&rng, 7);
	tu_rng_fill(&rng, junk, sizeof(junk));
	junk[1] = 'X'; /* never "SP" */
	assert_int_equal(send(fd, junk, sizeof(junk), MSG_NOSIGNAL), (ssize_t)sizeof(junk));
	assert_true(closed_within(fd, 5000));
	close(fd);

	/* 2. a REQ handshake, then a frame of 1 MiB (the limit is 64 KiB) */
	fd = nu_tcp_connect(P.rport);
	assert_true(fd >= 0);
	uint8_t big[8 + 8 + 4] = {0, 'S', 'P', 0,    0, 0x30, 0,    0, 0, 0,
	                          0, 0,   0,   0x10, 0, 0,    0x80, 0, 0, 1};
	assert_int_equal(send(fd, big, sizeof(big), MSG_NOSIGNAL), (ssize_t)sizeof(big));
	assert_true(closed_within(fd, 5000));
	close(fd);

	/* 3. a request that is not a ReplRequest: answered, not dropped */
	nng_socket req = repl_dial(&P);
	nng_msg *m;
	assert_int_equal(nng_msg_alloc(&m, 13), 0);
	memcpy(nng_msg_body(m), "\xff\xff\xff\xff garbage", 13);
	assert_int_equal(nng_sendmsg(req, m, 0), 0);
	assert_int_equal(nng_recvmsg(req, &m, 0), 0);
	Shiplog__ReplReply *rep =
	    shiplog__repl_reply__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
	nng_msg_free(m);
	assert_non_null(rep);
	assert_int_equal(rep->op_case, SHIPLOG__REPL_REPLY__OP_FETCH);
	assert_int_equal(rep->fetch->status, SL_EPROTO);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	nng_close(req);

	/* the primary still serves: a follower catches up with it */
	ru_node F2 = {0};
	assert_int_equal(ru_start_in(&F2, root, "fb", P.rurl, NULL), 0);
	ru_load(&P, "c", 100, 1);
	ru_node *fs[] = {&F2};
	ru_assert_converged(&P, fs, 1);
	assert_int_equal(nu_stop(&F2.d, SIGTERM), 0);
	assert_int_equal(nu_stop(&P.d, SIGTERM), 0);
}

/* A listener of this test's on a free port (blocking accept): its fd. */
static int raw_listener(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = nu_loopback(0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 8), 0);
	socklen_t al = sizeof(a);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	*port = ntohs(a.sin_port);
	struct timeval tv = {10, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)); /* bounds accept */
	return fd;
}

/* Accepts the follower's connection and reads its 8-byte handshake, which
 * must be an SP REQ socket's.  Connections closed before a handshake (the
 * follower's probes, sl_probe_tcp) are skipped. */
static int accept_follower(int lfd)
{
	for (int tries = 0; tries < 20; tries++) {
		int c = accept(lfd, NULL, NULL);
		assert_true(c >= 0);
		struct timeval tv = {10, 0};
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		uint8_t h[8];
		size_t got = 0;
		while (got < sizeof(h)) {
			ssize_t k = recv(c, h + got, sizeof(h) - got, 0);
			if (k <= 0) {
				break;
			}
			got += (size_t)k;
		}
		if (got < sizeof(h)) {
			close(c); /* a probe */
			continue;
		}
		static const uint8_t req_hello[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
		assert_memory_equal(h, req_hello, 8);
		return c;
	}
	fail_msg("no handshake from the follower");
	return -1;
}

/* A follower pointed at something that is not a replication listener (an
 * HTTP server, say) drops the connection and tries again, serving reads
 * all the while; and one whose primary shook hands but never answers
 * stops at once when told to (no wait for the fetch's timeout). */
static void test_follower_of_a_non_sp_peer(void **state)
{
	(void)state;
	int port;
	int lfd = raw_listener(&port);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	ru_node F3 = {0};
	assert_int_equal(ru_start_in(&F3, root, "fn", url, NULL), 0);

	/* 1. an HTTP answer instead of the SP handshake: closed, retried */
	int c = accept_follower(lfd);
	const char *http = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
	assert_int_equal(send(c, http, strlen(http), MSG_NOSIGNAL), (ssize_t)strlen(http));
	assert_true(closed_within(c, 5000));
	close(c);
	c = accept_follower(lfd); /* it came back */
	char st[64];
	ru_stat(&F3, "repl_state", st, sizeof(st));
	assert_string_not_equal(st, "streaming");
	assert_int_equal(ru_stat(&F3, "keys", NULL, 0), 0); /* reads are served */

	/* 2. the SP handshake, then silence: a stop is not held up */
	static const uint8_t rep_hello[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0};
	assert_int_equal(send(c, rep_hello, 8, MSG_NOSIGNAL), 8);
	nu_sleep_ms(300); /* its fetch is out, waiting for a reply */
	uint64_t t0 = tu_mono_ms();
	assert_int_equal(nu_stop(&F3.d, SIGTERM), 0);
	uint64_t took = tu_mono_ms() - t0;
	assert_true(took < 3000);
	close(c);
	close(lfd);
}

typedef struct acks_writer {
	pthread_t t;
	char url[64];
	int rc;
	uint32_t acks;
} acks_writer;

static void *acks_writer_main(void *arg)
{
	acks_writer *w = arg;
	sl_client *c = NULL;
	w->rc = sl_client_open(w->url, 10000, &c);
	if (w->rc != SL_OK) {
		return NULL;
	}
	sl_client_set_acks(c, 1, 8000);
	w->rc = sl_client_put(c, "late", 4, "v", 1, NULL);
	w->acks = sl_client_last_acks(c);
	sl_client_close(c);
	return NULL;
}

/* One fetch of follower "late": its history (any while it holds
 * nothing), from_seq, and the seq it reports durable. */
static Shiplog__ReplReply *late_fetch(nng_socket req, const uint8_t *history, uint64_t from,
                                      uint64_t durable)
{
	Shiplog__ReplRequest q = SHIPLOG__REPL_REQUEST__INIT;
	Shiplog__Fetch f = SHIPLOG__FETCH__INIT;
	f.has_history_id = 1;
	f.history_id.data = (uint8_t *)history;
	f.history_id.len = 16;
	f.has_from_seq = 1;
	f.from_seq = from;
	f.has_durable_seq = 1;
	f.durable_seq = durable;
	f.node_id = "late";
	q.op_case = SHIPLOG__REPL_REQUEST__OP_FETCH;
	q.fetch = &f;
	return repl_call(req, &q);
}

/* A primary told to stop still accepts followers while it drains: an
 * --acks 1 write in flight at the SIGTERM is acknowledged by a follower
 * that connects after it (the epoll front refused every connection once
 * stopping, its followers' too, and such a write could only time out). */
static void test_follower_joins_a_draining_primary(void **state)
{
	(void)state;
	assert_int_equal(ru_start_in(&P, root, "pd", NULL, NULL), 0);
	acks_writer w = {0};
	snprintf(w.url, sizeof(w.url), "%s", P.d.url);
	assert_int_equal(pthread_create(&w.t, NULL, acks_writer_main, &w), 0);
	nu_sleep_ms(300); /* the write is parked for its ack */
	assert_int_equal(kill(P.d.pid, SIGTERM), 0);
	nu_sleep_ms(100); /* draining now */
	nng_socket req = repl_dial(&P);
	Shiplog__ReplReply *rep = late_fetch(req, hid, 1, 0);
	assert_int_equal(rep->op_case, SHIPLOG__REPL_REPLY__OP_FETCH);
	assert_int_equal(rep->fetch->status, SL_OK);
	assert_true(rep->fetch->has_next_seq);
	assert_int_equal(rep->fetch->history_id.len, 16);
	uint64_t next = rep->fetch->next_seq;
	uint8_t phid[16];
	memcpy(phid, rep->fetch->history_id.data, 16);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	/* the next fetch, on the primary's history, reports it all durable:
	 * the write's ack */
	rep = late_fetch(req, phid, next, next - 1);
	shiplog__repl_reply__free_unpacked(rep, NULL);
	pthread_join(w.t, NULL);
	nng_close(req);
	assert_int_equal(w.rc, SL_OK);
	assert_int_equal(w.acks, 1);
	assert_int_equal(nu_stop(&P.d, SIGTERM), 0); /* it exits 0 */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fake_primary_garbage),
	    cmocka_unit_test(test_snapshot_is_its_followers),
	    cmocka_unit_test(test_made_up_ids_take_no_followers_place),
	    cmocka_unit_test(test_diverged_follower_is_no_ack),
	    cmocka_unit_test(test_repl_port_bad_input),
	    cmocka_unit_test(test_follower_of_a_non_sp_peer),
	    cmocka_unit_test(test_follower_joins_a_draining_primary),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
