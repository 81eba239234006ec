/*
 * replutil.h — helpers for the replication tests: start real shiplogd
 * processes on 127.0.0.1 with a replication URL each, read their stats,
 * wait for positions, compare digests.  Everything started is stopped by
 * pid (nodeutil.h); nothing is killed by name.
 */
#ifndef SL_REPLUTIL_H
#define SL_REPLUTIL_H

#include <cmocka.h>

#include "nodeutil.h"

typedef struct ru_node {
	nu_daemon d;
	int rport;
	char rurl[64]; /* its --repl-listen */
	char dir[TU_PATH];
	char follow[64]; /* --follow given at start ("" none) */
	const char *extra[24];
} ru_node;

/* Starts (or restarts, same ports and flags) n.  follow: a primary's
 * replication URL or NULL.  extra: more flags (NULL-terminated, may be
 * NULL); kept for restarts.  0 or -1. */
static inline int ru_start(ru_node *n, const char *dir, const char *follow,
                           const char *const *extra)
{
	if (dir != NULL) {
		snprintf(n->dir, sizeof(n->dir), "%s", dir);
		n->rport = nu_free_port();
		snprintf(n->rurl, sizeof(n->rurl), "tcp://127.0.0.1:%d", n->rport);
		size_t k = 0;
		for (; extra != NULL && extra[k] != NULL && k < 23; k++) {
			n->extra[k] = extra[k];
		}
		n->extra[k] = NULL;
	}
	if (follow != NULL) {
		snprintf(n->follow, sizeof(n->follow), "%s", follow);
	}
	const char *args[40];
	size_t a = 0;
	args[a++] = "--repl-listen";
	args[a++] = n->rurl;
	args[a++] = "--log-level";
	args[a++] = "info";
	if (n->follow[0]) {
		args[a++] = "--follow";
		args[a++] = n->follow;
	}
	for (size_t k = 0; n->extra[k] != NULL && a < 38; k++) {
		args[a++] = n->extra[k];
	}
	args[a] = NULL;
	/* nu_start picks a fresh client port each time; keep the old log. */
	return nu_start(&n->d, n->dir, args);
}

/* ru_start with the data directory root/name. */
static inline int ru_start_in(ru_node *n, const char *root, const char *name, const char *follow,
                              const char *const *extra)
{
	char dir[TU_PATH];
	if (snprintf(dir, sizeof(dir), "%s/%s", root, name) >= (int)sizeof(dir)) {
		return -1;
	}
	return ru_start(n, dir, follow, extra);
}

/* A test's teardown after its nodes are stopped: removes its root (kept
 * with SL_TEST_KEEP) and frees the name. */
static inline void ru_rm_root(char *root)
{
	if (root != NULL && getenv("SL_TEST_KEEP") == NULL) {
		tu_rm_rf(root);
	}
	free(root);
}

static inline sl_client *ru_client(const ru_node *n)
{
	return nu_client(&n->d);
}

/* A numeric stat (UINT64_MAX when unavailable) or, with text, a copy of a
 * text stat into text (cap bytes). */
static inline uint64_t ru_stat(const ru_node *n, const char *name, char *text, size_t cap)
{
	sl_client *c = ru_client(n);
	uint64_t v = UINT64_MAX;
	if (text != NULL && cap > 0) {
		text[0] = '\0';
	}
	if (c == NULL) {
		return v;
	}
	sl_client_stats *st = NULL;
	if (sl_client_stats_get(c, &st) == SL_OK) {
		const sl_client_stat *s = sl_client_stats_find(st, name);
		if (s != NULL) {
			v = s->value;
			if (s->text != NULL && text != NULL) {
				snprintf(text, cap, "%s", s->text);
			}
		}
		sl_client_stats_free(st);
	}
	sl_client_close(c);
	return v;
}

/* Waits up to ms for n's applied_seq to reach seq.  0 or -1. */
static inline int ru_wait_applied(const ru_node *n, uint64_t seq, int ms)
{
	for (int waited = 0; waited <= ms; waited += 50) {
		uint64_t a = ru_stat(n, "applied_seq", NULL, 0);
		if (a != UINT64_MAX && a >= seq) {
			return 0;
		}
		nu_sleep_ms(50);
	}
	return -1;
}

/* `shiplog promote` on n (asserted to succeed). */
static inline void ru_promote(const ru_node *n)
{
	sl_client *c = ru_client(n);
	assert_non_null(c);
	char hid[33];
	assert_int_equal(sl_client_promote(c, hid), SL_OK);
	sl_client_close(c);
}

/* `shiplog follow` on n, pointing it at primary (asserted to succeed). */
static inline void ru_follow(const ru_node *n, const ru_node *primary)
{
	sl_client *c = ru_client(n);
	assert_non_null(c);
	assert_int_equal(sl_client_follow(c, primary->rurl, NULL), SL_OK);
	sl_client_close(c);
}

/* The node's digest into out (33 bytes).  0 or -1. */
static inline int ru_digest(const ru_node *n, char out[33], uint64_t *keys)
{
	sl_client *c = ru_client(n);
	if (c == NULL) {
		return -1;
	}
	int rc = sl_client_digest(c, out, keys);
	sl_client_close(c);
	return rc == SL_OK ? 0 : -1;
}

/* Compacts n now (sl_client_compact, a minute's timeout); asserts it worked. */
static inline void ru_compact(const ru_node *n)
{
	sl_client *c = ru_client(n);
	assert_non_null(c);
	sl_client_set_timeout(c, 60000);
	assert_int_equal(sl_client_compact(c), SL_OK);
	sl_client_close(c);
}

/* Waits up to ms for n's numeric stat `name` to be readable and above 0;
 * returns it (0 when it never was). */
static inline uint64_t ru_wait_stat_positive(const ru_node *n, const char *name, int ms)
{
	for (int waited = 0; waited <= ms; waited += 100) {
		uint64_t v = ru_stat(n, name, NULL, 0);
		if (v != UINT64_MAX && v > 0) {
			return v;
		}
		nu_sleep_ms(100);
	}
	return 0;
}

/* The primary's last seq. */
/* The index i of f's group of follower.i.* stats on primary p (-1). */
static inline int ru_follower_index(const ru_node *p, const ru_node *f)
{
	char id[64], got[64], name[64];
	ru_stat(f, "node_id", id, sizeof(id));
	for (int i = 0; i < 8 && id[0]; i++) {
		snprintf(name, sizeof(name), "follower.%d.id", i);
		ru_stat(p, name, got, sizeof(got));
		if (strcmp(got, id) == 0) {
			return i;
		}
	}
	return -1;
}

static inline uint64_t ru_last_seq(const ru_node *n)
{
	return ru_stat(n, "last_seq", NULL, 0);
}

/* Waits until every follower has applied the primary's last seq, then
 * asserts that their digests equal the primary's. */
static inline void ru_assert_converged(ru_node *p, ru_node **f, int nf)
{
	uint64_t head = ru_last_seq(p);
	char dp[33], df[33];
	uint64_t kp = 0, kf = 0;
	assert_int_equal(ru_digest(p, dp, &kp), 0);
	for (int i = 0; i < nf; i++) {
		if (ru_wait_applied(f[i], head, 30000) != 0) {
			nu_dump_log(&f[i]->d);
			nu_dump_log(&p->d);
			fail_msg("follower %d did not reach seq %llu", i, (unsigned long long)head);
		}
		assert_int_equal(ru_digest(f[i], df, &kf), 0);
		if (strcmp(dp, df) != 0) {
			nu_dump_log(&f[i]->d);
		}
		assert_string_equal(dp, df);
		assert_int_equal(kp, kf);
	}
}

/* Writes count keys "prefix%05d" (value: prefix + i + round) through a
 * pipeline to n, with a delete every 7th and a TTL every 11th.  Returns
 * the last seq written. */
static inline uint64_t ru_load(const ru_node *n, const char *prefix, int count, int round)
{
	sl_client *c = ru_client(n);
	assert_non_null(c);
	sl_pipeline *p = NULL;
	assert_int_equal(sl_pipeline_new(c, &p), SL_OK);
	uint64_t last = 0;
	char k[64], v[128];
	for (int i = 0; i < count; i++) {
		snprintf(k, sizeof(k), "%s%05d", prefix, i);
		snprintf(v, sizeof(v), "%s-%d-%d-value", prefix, i, round);
		if (i % 7 == 3) {
			sl_pipeline_del(p, k, strlen(k));
		} else {
			sl_pipeline_put(p, k, strlen(k), v, strlen(v), i % 11 == 5 ? 3600000 : 0);
		}
		if (sl_pipeline_len(p) == 200 || i == count - 1) {
			const sl_client_item *it = NULL;
			size_t nit = 0;
			assert_int_equal(sl_pipeline_exec(p, &it, &nit), SL_OK);
			for (size_t j = 0; j < nit; j++) {
				if (it[j].seq > last) {
					last = it[j].seq;
				}
			}
		}
	}
	sl_pipeline_free(p);
	sl_client_close(c);
	return last;
}

#endif
