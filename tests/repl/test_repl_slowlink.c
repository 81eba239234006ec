/*
 * test_repl_slowlink.c — a follower behind a slow link.  A relay on
 * 127.0.0.1 passes the follower's replication connection to the primary
 * and sends the primary's bytes back at about 1 MiB/s.  A 10 MiB value
 * makes a reply of 10 MiB: 10 s on that link.  The follower's wait for a
 * reply was fixed when it sent the fetch (6 s), so such a reply timed out
 * at every try and the follower never went past the record; now the wait
 * is extended while the reply's bytes keep coming.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "replutil.h"

#define RATE_CHUNK    (64 * 1024) /* bytes, then a pause of RATE_PAUSE_MS */
#define RATE_PAUSE_MS 62

static char *root;
static ru_node P, F;
static int relay_lfd = -1, relay_port;
static _Atomic int relay_stop;
static pthread_t relay_th;

typedef struct pump {
	int from, to, slow;
} pump;

static void *pump_main(void *arg)
{
	pump *p = arg;
	static __thread uint8_t buf[RATE_CHUNK];
	while (!atomic_load(&relay_stop)) {
		ssize_t k = recv(p->from, buf, sizeof(buf), 0);
		if (k <= 0) {
			break;
		}
		for (ssize_t off = 0; off < k;) {
			ssize_t w = send(p->to, buf + off, (size_t)(k - off), MSG_NOSIGNAL);
			if (w <= 0) {
				goto out;
			}
			off += w;
		}
		if (p->slow) {
			nu_sleep_ms(RATE_PAUSE_MS * (int)k / RATE_CHUNK + 1);
		}
	}
out:
	shutdown(p->from, SHUT_RDWR);
	shutdown(p->to, SHUT_RDWR);
	free(p);
	return NULL;
}

/* Accepts the follower's connections; each gets its own to the primary. */
static void *relay_main(void *arg)
{
	(void)arg;
	while (!atomic_load(&relay_stop)) {
		int c = accept(relay_lfd, NULL, NULL);
		if (c < 0) {
			continue;
		}
		int u = nu_tcp_connect(P.rport);
		if (u < 0) {
			close(c);
			continue;
		}
		pump *up = malloc(sizeof(*up)), *down = malloc(sizeof(*down));
		assert_non_null(up);
		assert_non_null(down);
		*up = (pump){.from = c, .to = u, .slow = 0};
		*down = (pump){.from = u, .to = c, .slow = 1};
		pthread_t t1, t2;
		pthread_create(&t1, NULL, pump_main, up);
		pthread_create(&t2, NULL, pump_main, down);
		pthread_detach(t1);
		pthread_detach(t2);
	}
	return NULL;
}

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp("repl-slowlink");
	if (root == NULL) {
		return -1;
	}
	const char *ex[] = {"--max-value-bytes", "16m", NULL};
	if (ru_start_in(&P, root, "p", NULL, ex) != 0) {
		return -1;
	}
	relay_lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (relay_lfd < 0 || bind(relay_lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    listen(relay_lfd, 8) != 0 || getsockname(relay_lfd, (struct sockaddr *)&a, &al) != 0) {
		return -1;
	}
	relay_port = ntohs(a.sin_port);
	return pthread_create(&relay_th, NULL, relay_main, NULL);
}

static int teardown(void **state)
{
	(void)state;
	nu_stop(&F.d, SIGTERM);
	nu_stop(&P.d, SIGTERM);
	atomic_store(&relay_stop, 1);
	shutdown(relay_lfd, SHUT_RDWR);
	close(relay_lfd);
	pthread_join(relay_th, NULL);
	ru_rm_root(root);
	return 0;
}

static void test_big_reply_over_a_slow_link(void **state)
{
	(void)state;
	sl_client *c = ru_client(&P);
	assert_non_null(c);
	size_t big = 10u << 20;
	char *v = malloc(big);
	assert_non_null(v);
	memset(v, 'b', big);
	assert_int_equal(sl_client_put(c, "big", 3, v, big, NULL), SL_OK);
	assert_int_equal(sl_client_put(c, "after", 5, "x", 1, NULL), SL_OK);
	free(v);
	sl_client_close(c);
	uint64_t head = ru_last_seq(&P);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", relay_port);
	assert_int_equal(ru_start_in(&F, root, "f", url, NULL), 0);
	uint64_t t0 = tu_mono_ms();
	if (ru_wait_applied(&F, head, 45000) != 0) {
		char err[256];
		ru_stat(&F, "repl_last_error", err, sizeof(err));
		fail_msg("the follower did not apply seq %llu in 45 s over a 1 MiB/s link "
		         "(applied %llu; last error: %s)",
		         (unsigned long long)head,
		         (unsigned long long)ru_stat(&F, "applied_seq", NULL, 0), err);
	}
	/* it went over the slow link: 10 MiB at about 1 MiB/s */
	assert_true(tu_mono_ms() - t0 >= 6000);
	sl_client *fc = ru_client(&F);
	assert_non_null(fc);
	void *got = NULL;
	size_t gl = 0;
	assert_int_equal(sl_client_get(fc, "big", 3, &got, &gl, NULL), SL_OK);
	assert_int_equal(gl, big);
	free(got);
	sl_client_close(fc);
	assert_int_equal(nu_stop(&F.d, SIGTERM), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_big_reply_over_a_slow_link),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
