/*
 * repl.c — the replication object: start/stop, role changes (promote,
 * follow), what the request path asks of replication (may I write? has seq
 * been applied? how many followers have seq durably?) and statistics.
 *
 * Roles:
 *
 *            promote (new history id; (old id, applied) recorded)
 *   follower ----------------------------------------------> primary
 *      ^  \__ follow URL (re-point; same role)                 |
 *      +-------------------------------------------------------+
 *                         follow URL
 *
 * Invariant: the role and history in memory change only after DIR/REPL
 * says so on disk (a crash never brings a node back in a role or history
 * it had not recorded).
 */
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"
#include "repl_int.h"

/* Ends st's history at seq `last` (a link, the oldest dropped when full)
 * and draws a new history id. */
static int history_begin(repl_state *st, uint64_t last)
{
	/* Every ancestor is held only up to `last` from here on: a store that
	 * came back below an older link (a promotion whose tail a power cut
	 * took) or a follower promoted in the middle of a catch-up (it adopted
	 * its primary's links before it had the records under them) must not
	 * let a follower continue on that ancestor above `last`. */
	for (size_t i = 0; i < st->nlinks; i++) {
		if (st->links[i].last_seq > last) {
			st->links[i].last_seq = last;
		}
	}
	if (st->nlinks == SL_MAX_LINKS) {
		memmove(&st->links[0], &st->links[1], (SL_MAX_LINKS - 1) * sizeof(repl_link));
		st->nlinks--;
	}
	memcpy(st->links[st->nlinks].id, st->hid, SL_HID_BYTES);
	st->links[st->nlinks++].last_seq = last;
	return repl_random(st->hid, SL_HID_BYTES);
}

uint64_t repl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void repl_log(sl_repl *r, int level, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (r != NULL && r->o.log_fn != NULL) {
		r->o.log_fn(level, buf);
	} else {
		fprintf(stderr, "replication: %s\n", buf);
	}
}

void repl_set_fstate(sl_repl *r, const char *state)
{
	if (strcmp(state, "streaming") == 0) {
		r->fdown_ms = 0;
	} else if (r->fdown_ms == 0) {
		r->fdown_ms = repl_now_ms();
	}
	r->fstate = state;
}

void repl_follow_fail(sl_repl *r, int level, const char *fmt, ...)
{
	char buf[sizeof(r->ferr)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (level > 0) {
		repl_log(r, level, "%s", buf);
	}
	pthread_mutex_lock(&r->mu);
	memcpy(r->ferr, buf, sizeof(buf));
	r->ferr_ms = repl_now_ms();
	pthread_mutex_unlock(&r->mu);
}

/* A deadline ms from now for the timed waits on r->cv and r->ack_cv
 * (monotonic: monotime.h). */
static void abs_deadline(struct timespec *ts, uint32_t ms)
{
	sl_mono_after(ts, ms);
}

int sl_repl_start(const sl_repl_opts *o, sl_repl **out, char *err, size_t cap)
{
	err[0] = '\0';
	sl_repl *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		snprintf(err, cap, "out of memory");
		return SL_ENOMEM;
	}
	r->o = *o;
	r->ffd = -1;
	r->fstop_efd = -1;
	/* The store is open, so the directory exists: its real path, for a
	 * full resync's staging beside it and the exchange (`--dir .` made
	 * the staging "..resync" inside the store and an exchange with ".",
	 * which Linux refuses: every resync failed, for ever; a symlink to a
	 * directory was exchanged itself, the old store left behind). */
	char *real = realpath(o->dir, NULL);
	snprintf(r->dir, sizeof(r->dir), "%s",
	         real != NULL && strlen(real) < sizeof(r->dir) ? real : o->dir);
	free(real);
	size_t dl = strlen(r->dir);
	while (dl > 1 && r->dir[dl - 1] == '/') {
		r->dir[--dl] = '\0';
	}
	if (r->o.timeout_ms == 0) {
		r->o.timeout_ms = 5000;
	}
	pthread_mutex_init(&r->admin, NULL);
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->wt_mu, NULL);
	sl_cond_init_mono(&r->cv); /* timed waits on both (monotime.h) */
	sl_cond_init_mono(&r->ack_cv);
	/* A resync that did not finish leaves DIR.resync (or DIR/.resync, for
	 * a DIR that is a mount point, whose finished move-in sl_open already
	 * completed): discard it. */
	char tmp[4200];
	const char *fmt[] = {"%s.resync", "%s/.resync"};
	for (int i = 0; i < 2; i++) {
		snprintf(tmp, sizeof(tmp), fmt[i], r->dir);
		if (repl_rm_rf(tmp) != 0) {
			repl_log(r, 2, "could not remove %s", tmp);
		}
	}
	int bad_line = 0;
	int rc = repl_state_load(r->dir, &r->st, &bad_line);
	int loaded = rc;
	if (rc == SL_ENOTFOUND) {
		uint8_t nid[8];
		memset(&r->st, 0, sizeof(r->st));
		if (repl_random(r->st.hid, SL_HID_BYTES) != SL_OK ||
		    repl_random(nid, sizeof(nid)) != SL_OK) {
			snprintf(err, cap, "getrandom failed");
			free(r);
			return SL_EIO;
		}
		repl_hex(nid, sizeof(nid), r->st.node_id);
		r->st.role = ROLE_PRIMARY;
		rc = SL_OK;
		if (o->follow_url == NULL) {
			rc = repl_state_save(r->dir, &r->st);
		}
	}
	if (rc == SL_ECORRUPT) {
		snprintf(err, cap,
		         "replication state %s/REPL is malformed at line %d (not as shiplogd "
		         "writes it); fix or remove it (removed: this node starts as a new "
		         "primary)",
		         r->dir, bad_line);
		free(r);
		return rc;
	}
	if (rc != SL_OK) {
		snprintf(err, cap, "cannot read replication state %s/REPL: %s", r->dir,
		         sl_strerror(rc));
		free(r);
		return rc;
	}
	uint64_t last = sl_last_seq(*o->dbp);
	if (last < r->st.floor) {
		last = r->st.floor;
	}
	repl_state st = r->st;
	int changed = 0;
	if (o->follow_url != NULL && o->follow_url[0] != '\0') {
		st.role = ROLE_FOLLOWER;
		snprintf(st.primary, sizeof(st.primary), "%s", o->follow_url);
		changed = 1;
	} else if (loaded == SL_OK && st.role == ROLE_PRIMARY) {
		/* A primary that starts again begins a new history from what
		 * its store holds: records it served but lost (a power cut
		 * before their fdatasync) would otherwise be numbered again
		 * with other contents under the same history, and a follower
		 * that applied them would go on from there, never equal
		 * again.  Followers at or below `last` continue on the link;
		 * one above it resyncs fully.  An empty store too (`last` 0:
		 * everything lost, test_primary_lost_everything): only an empty
		 * follower continues. */
		rc = history_begin(&st, last);
		changed = 1;
	}
	if (changed && rc == SL_OK) {
		rc = repl_state_save(r->dir, &st);
	}
	if (rc != SL_OK) {
		snprintf(err, cap, "cannot write replication state %s/REPL: %s", r->dir,
		         sl_strerror(rc));
		free(r);
		return rc;
	}
	r->st_found = r->st;
	r->st_rewrote = changed && loaded == SL_OK;
	r->st = st;
	if (r->o.listen_is_default && st.role == ROLE_FOLLOWER) {
		/* no --repl-listen, no --follow, a follower by its REPL: the
		 * default is a primary's (a follower taking 7520 was found
		 * following itself when its primary came back) */
		r->o.listen_url = NULL;
	}
	atomic_store(&r->head, last);
	atomic_store(&r->applied, last);
	r->durable = 0;
	atomic_store(&r->role, r->st.role);
	/* -1 (no descriptor left): the follower uses nng's socket */
	r->fstop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	rc = repl_primary_start(r, err, cap);
	if (rc != SL_OK) {
		sl_repl_start_failed(r);
		sl_repl_stop(r);
		return rc;
	}
	char hid[33];
	repl_hex(r->st.hid, SL_HID_BYTES, hid);
	repl_log(r, 1, "replication: node %s, %s, history %s, seq %llu%s%s", r->st.node_id,
	         r->st.role == ROLE_FOLLOWER ? "follower" : "primary", hid,
	         (unsigned long long)last, r->st.role == ROLE_FOLLOWER ? ", following " : "",
	         r->st.role == ROLE_FOLLOWER ? r->st.primary : "");
	if (r->st.role == ROLE_FOLLOWER) {
		pthread_mutex_lock(&r->mu);
		repl_follower_start(r);
		pthread_mutex_unlock(&r->mu);
	}
	*out = r;
	return SL_OK;
}

void sl_repl_start_failed(sl_repl *r)
{
	/* A supervisor restarting a primary whose client port another
	 * process held added a link per refused start; after 64 the oldest,
	 * the one its followers were on, went, and each resynced fully. */
	if (r != NULL && r->st_rewrote && repl_state_save(r->dir, &r->st_found) != SL_OK) {
		repl_log(r, 2, "could not restore %s/REPL after the failed start", r->dir);
	}
}

void sl_repl_stop(sl_repl *r)
{
	if (r == NULL) {
		return;
	}
	repl_follower_stop(r, 1);
	repl_primary_stop(r);
	if (r->fstop_efd >= 0) {
		close(r->fstop_efd);
	}
	if (r->ffd >= 0) {
		close(r->ffd);
	}
	free(r->fbuf);
	pthread_cond_destroy(&r->cv);
	pthread_cond_destroy(&r->ack_cv);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->wt_mu);
	pthread_mutex_destroy(&r->admin);
	free(r);
}

int sl_repl_url_dialable(const char *url, char *why, size_t cap)
{
	nng_socket probe;
	if (nng_req0_open(&probe) != 0) {
		return 1; /* cannot tell: let the dial say */
	}
	nng_dialer d;
	int rv = nng_dialer_create(&d, probe, url);
	nng_close(probe);
	nng_url *u = NULL;
	if (rv == 0 && nng_url_parse(&u, url) == 0) {
		/* nng takes any port string at creation, and fails at each dial */
		const char *p = u->u_port != NULL ? u->u_port : "";
		char *end = NULL;
		unsigned long port = strtoul(p, &end, 10);
		if (p[0] != '\0' && (*end != '\0' || port == 0 || port > 65535)) {
			rv = NNG_EADDRINVAL;
		}
		nng_url_free(u);
	}
	if (rv != 0) {
		snprintf(why, cap, "%s", nng_strerror(rv));
	}
	return rv == 0;
}

/* The address part of a socket address (port left out), for comparing. */
static int addr_bytes(const struct sockaddr *sa, const void **p, size_t *n)
{
	if (sa->sa_family == AF_INET) {
		*p = &((const struct sockaddr_in *)sa)->sin_addr;
		*n = sizeof(struct in_addr);
		return 1;
	}
	if (sa->sa_family == AF_INET6) {
		*p = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		*n = sizeof(struct in6_addr);
		return 1;
	}
	return 0;
}

/* Whether sa is a loopback address or one of this host's interfaces'. */
static int addr_is_local(const struct sockaddr *sa)
{
	const void *p;
	size_t n;
	if (!addr_bytes(sa, &p, &n)) {
		return 0;
	}
	if (sa->sa_family == AF_INET && ((const uint8_t *)p)[0] == 127) {
		return 1;
	}
	if (sa->sa_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)p)) {
		return 1;
	}
	struct ifaddrs *ifs = NULL;
	int local = 0;
	if (getifaddrs(&ifs) != 0) {
		return 0;
	}
	for (struct ifaddrs *i = ifs; i != NULL && !local; i = i->ifa_next) {
		const void *q;
		size_t m;
		local = i->ifa_addr != NULL && i->ifa_addr->sa_family == sa->sa_family &&
		        addr_bytes(i->ifa_addr, &q, &m) && m == n && memcmp(p, q, n) == 0;
	}
	freeifaddrs(ifs);
	return local;
}

/* each of sl_repl_same_endpoint's name lookups */
#define SAME_LOOKUP_MS 1000

int sl_repl_same_endpoint(const char *dial, const char *listen)
{
	if (dial == NULL || listen == NULL) {
		return 0;
	}
	if (strcmp(dial, listen) == 0) {
		return 1;
	}
	nng_url *d = NULL, *l = NULL;
	int same = 0;
	if (nng_url_parse(&d, dial) != 0 || nng_url_parse(&l, listen) != 0) {
		goto out;
	}
	if (strncmp(d->u_scheme, "tcp", 3) != 0 || strncmp(l->u_scheme, "tcp", 3) != 0) {
		/* ipc:// and the like: the same path is the same endpoint */
		same = strcmp(d->u_scheme, l->u_scheme) == 0 && strcmp(d->u_path, l->u_path) == 0;
		goto out;
	}
	if (d->u_port == NULL || l->u_port == NULL || atoi(d->u_port) != atoi(l->u_port)) {
		goto out;
	}
	const char *lh = l->u_hostname != NULL ? l->u_hostname : "";
	int wild = lh[0] == '\0' || strcmp(lh, "*") == 0 || strcmp(lh, "0.0.0.0") == 0 ||
	           strcmp(lh, "::") == 0;
	struct addrinfo hints, *da = NULL, *la = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	/* Bounded lookups (sl_resolve): a resolver that does not answer
	 * leaves the two taken as different, as a name that does not resolve. */
	char why[160];
	if (sl_resolve(d->u_hostname, d->u_port, &hints, SAME_LOOKUP_MS, -1, &da, why,
	               sizeof(why)) != SL_OK) {
		goto out;
	}
	if (!wild &&
	    sl_resolve(lh, l->u_port, &hints, SAME_LOOKUP_MS, -1, &la, why, sizeof(why)) != SL_OK) {
		freeaddrinfo(da);
		goto out;
	}
	for (struct addrinfo *x = da; x != NULL && !same; x = x->ai_next) {
		if (wild) {
			/* listening on every address: any of this host's */
			same = addr_is_local(x->ai_addr);
			continue;
		}
		for (struct addrinfo *y = la; y != NULL && !same; y = y->ai_next) {
			const void *p, *q;
			size_t n, m;
			same = x->ai_family == y->ai_family && addr_bytes(x->ai_addr, &p, &n) &&
			       addr_bytes(y->ai_addr, &q, &m) && n == m && memcmp(p, q, n) == 0;
		}
	}
	freeaddrinfo(da);
	if (la != NULL) {
		freeaddrinfo(la);
	}
out:
	if (d != NULL) {
		nng_url_free(d);
	}
	if (l != NULL) {
		nng_url_free(l);
	}
	return same;
}

/* The counter fields of sl_stats, for carrying them across a store swap. */
#define CARRIED_FIELDS(X)                                                                          \
	X(fsyncs)                                                                                  \
	X(puts)                                                                                    \
	X(gets)                                                                                    \
	X(deletes)                                                                                 \
	X(corrupt_records)                                                                         \
	X(compactions)                                                                             \
	X(compact_bytes_reclaimed)                                                                 \
	X(compact_bytes_written)                                                                   \
	X(compact_bytes_read)                                                                      \
	X(compact_errors)

void repl_carry_counters(sl_repl *r, sl_db *old)
{
	sl_stats s;
	if (old == NULL || sl_stats_get(old, &s) != SL_OK) {
		return;
	}
	pthread_mutex_lock(&r->mu);
#define CARRY(f) r->carried.f += s.f;
	CARRIED_FIELDS(CARRY)
#undef CARRY
	pthread_mutex_unlock(&r->mu);
}

void sl_repl_add_carried(sl_repl *r, sl_stats *s)
{
	if (r == NULL || s == NULL) {
		return;
	}
	pthread_mutex_lock(&r->mu);
#define ADD(f) s->f += r->carried.f;
	CARRIED_FIELDS(ADD)
#undef ADD
	pthread_mutex_unlock(&r->mu);
}

const char *sl_repl_listen_url(sl_repl *r)
{
	return r != NULL ? r->o.listen_url : NULL;
}

const char *sl_repl_role(sl_repl *r)
{
	return r != NULL && atomic_load(&r->role) == ROLE_FOLLOWER ? "follower" : "primary";
}

void sl_repl_history_id(sl_repl *r, char hid[33])
{
	if (r == NULL) {
		hid[0] = '\0';
		return;
	}
	pthread_mutex_lock(&r->mu);
	repl_hex(r->st.hid, SL_HID_BYTES, hid);
	pthread_mutex_unlock(&r->mu);
}

/* Whether e counts as connected: seen within the timeout, or waiting in a
 * long poll here (which can outlast a short --repl-timeout-ms: a parked
 * poll refreshed last_seen only at the next 1 s tick, and --min-replicas
 * refused writes with an idle, healthy follower).  mu held. */
static int follower_connected(sl_repl *r, const follower_ent *e, uint64_t now)
{
	return e->used && (repl_ms_since(now, e->last_seen_ms) <= r->o.timeout_ms ||
	                   repl_parked_has(r, e->node_id));
}

/* Followers connected (follower_connected).  mu held. */
static uint32_t connected_followers(sl_repl *r, uint64_t now)
{
	uint32_t n = 0;
	for (int i = 0; i < SL_MAX_FOLLOW; i++) {
		n += follower_connected(r, &r->followers[i], now) ? 1 : 0;
	}
	return n;
}

int sl_repl_write_check(sl_repl *r, char *msg, size_t cap, char *primary, size_t pcap)
{
	if (primary != NULL && pcap > 0) {
		primary[0] = '\0';
	}
	if (r == NULL) {
		return SL_OK;
	}
	int rc = SL_OK;
	pthread_mutex_lock(&r->mu);
	if (atomic_load(&r->role) == ROLE_FOLLOWER) {
		/* Clients need the primary's client URL, which the first fetch
		 * reply brings.  Until then only the replication URL followed is
		 * known: named as such, never as where writes go (a client
		 * sent there gets no shiplog answer). */
		if (r->primary_client[0]) {
			snprintf(msg, cap,
			         "this node is a read-only follower; write to the primary at %s",
			         r->primary_client);
			if (primary != NULL) {
				snprintf(primary, pcap, "%s", r->primary_client);
			}
		} else if (r->st.primary[0]) {
			snprintf(
			    msg, cap,
			    "this node is a read-only follower; write to its primary, whose "
			    "client address it has not learnt yet (it has not reached it since "
			    "it started; its replication address is %s)",
			    r->st.primary);
		} else {
			snprintf(msg, cap,
			         "this node is a read-only follower and knows no primary; write "
			         "to the primary");
		}
		rc = SL_EREADONLY;
	} else if (r->pause_until_ms != 0 && repl_now_ms() < r->pause_until_ms) {
		snprintf(msg, cap,
		         "writes are paused on this primary for %llu ms more (pause-writes: a "
		         "failover may be under way); retry, at the new primary if there is one",
		         (unsigned long long)(r->pause_until_ms - repl_now_ms()));
		rc = SL_EREADONLY;
	} else if (r->o.min_replicas > 0) {
		uint32_t n = connected_followers(r, repl_now_ms());
		if (n < r->o.min_replicas) {
			snprintf(msg, cap,
			         "not enough followers: %u connected, --min-replicas %u; writes "
			         "refused",
			         n, r->o.min_replicas);
			rc = SL_EREADONLY;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

#define WT_SLOTS (sizeof(((sl_repl *)0)->wt) / sizeof(((sl_repl *)0)->wt[0]))

/* Notes that the write of seq `first` (and maybe later ones) happened now:
 * the first write in each millisecond takes the lock, the others one
 * clock read and one atomic load. */
static void note_write_time(sl_repl *r, uint64_t first)
{
	uint64_t now = repl_now_ms();
	if (atomic_load_explicit(&r->wt_last_ms, memory_order_relaxed) == now) {
		return;
	}
	pthread_mutex_lock(&r->wt_mu);
	now = repl_now_ms();
	uint64_t last = r->wt_n ? r->wt[(r->wt_n - 1) % WT_SLOTS].seq : 0;
	if (now != atomic_load(&r->wt_last_ms) && first > last) {
		/* (a write that raced past a later one is left out: seqs in
		 * the ring only rise) */
		r->wt[r->wt_n % WT_SLOTS].seq = first;
		r->wt[r->wt_n % WT_SLOTS].ms = now;
		r->wt_n++;
		atomic_store(&r->wt_last_ms, now);
	}
	pthread_mutex_unlock(&r->wt_mu);
}

/* When the write of seq `seq` happened (the millisecond noted for the
 * first write of its run), or 0 when it is older than the ring holds. */
static uint64_t write_time(sl_repl *r, uint64_t seq)
{
	uint64_t ms = 0;
	pthread_mutex_lock(&r->wt_mu);
	uint64_t n = r->wt_n, oldest = n > WT_SLOTS ? n - WT_SLOTS : 0;
	for (uint64_t i = n; i > oldest; i--) {
		if (r->wt[(i - 1) % WT_SLOTS].seq <= seq) {
			ms = r->wt[(i - 1) % WT_SLOTS].ms; /* its run: that millisecond */
			break;
		}
	}
	pthread_mutex_unlock(&r->wt_mu);
	return ms;
}

void sl_repl_advance_head(sl_repl *r, uint64_t seq)
{
	if (r == NULL) {
		return;
	}
	uint64_t h = atomic_load(&r->head);
	while (h < seq && !atomic_compare_exchange_weak(&r->head, &h, seq)) {
	}
	if (h < seq && atomic_load(&r->role) == ROLE_PRIMARY) {
		note_write_time(r, h + 1);
	}
}

/* sl_repl_defer_wakes: this thread's wakes wait for sl_repl_wake_deferred. */
static _Thread_local int tl_defer;
static _Thread_local sl_repl *tl_deferred;

void sl_repl_defer_wakes(void)
{
	tl_defer = 1;
}

void sl_repl_wake_deferred(void)
{
	sl_repl *r = tl_deferred;
	tl_defer = 0;
	tl_deferred = NULL;
	if (r != NULL) {
		sl_repl_wake_fetches(r);
	}
}

void sl_repl_wake_fetches(sl_repl *r)
{
	if (tl_defer && r != NULL) {
		tl_deferred = r;
		return;
	}
	/* Racy peek, and enough: a fetch parking right now reads the head
	 * after it sets parked_any, and is answered at once if the head is
	 * past its from_seq (primary.c, invariant 2). */
	if (r == NULL || !atomic_load(&r->parked_any)) {
		return;
	}
	repl_release_parked(r);
}

void sl_repl_notify_write(sl_repl *r, uint64_t seq)
{
	sl_repl_advance_head(r, seq);
	sl_repl_wake_fetches(r);
}

uint64_t sl_repl_applied_seq(sl_repl *r)
{
	if (r == NULL) {
		return 0;
	}
	return atomic_load(&r->role) == ROLE_PRIMARY ? atomic_load(&r->head)
	                                             : atomic_load(&r->applied);
}

/* Whether r has applied seq (a primary: has it), mu held or not. */
static int applied_ok(sl_repl *r, uint64_t seq)
{
	if (atomic_load(&r->role) == ROLE_PRIMARY) {
		return atomic_load(&r->head) >= seq;
	}
	return atomic_load(&r->applied) >= seq && atomic_load(&r->head) >= seq;
}

int sl_repl_wait_applied(sl_repl *r, uint64_t seq, uint32_t timeout_ms, uint64_t *applied)
{
	if (r == NULL || applied_ok(r, seq)) {
		return SL_OK;
	}
	if (atomic_load(&r->role) == ROLE_PRIMARY) {
		/* A primary has applied everything it has: waiting cannot help. */
		if (applied != NULL) {
			*applied = atomic_load(&r->head);
		}
		return SL_EBEHIND;
	}
	struct timespec ts;
	abs_deadline(&ts, timeout_ms);
	pthread_mutex_lock(&r->mu);
	atomic_fetch_add(&r->applied_waiters, 1);
	while (atomic_load(&r->applied) < seq) {
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0) {
			break;
		}
	}
	atomic_fetch_sub(&r->applied_waiters, 1);
	pthread_mutex_unlock(&r->mu);
	uint64_t a = atomic_load(&r->applied);
	if (applied != NULL) {
		*applied = a;
	}
	return a >= seq ? SL_OK : SL_EBEHIND;
}

void sl_repl_ack_begin(sl_repl *r)
{
	if (r != NULL) {
		atomic_fetch_add(&r->ack_waiters, 1);
	}
}

void sl_repl_ack_end(sl_repl *r)
{
	if (r != NULL) {
		atomic_fetch_sub(&r->ack_waiters, 1);
	}
}

uint32_t repl_acks_count(sl_repl *r, uint64_t seq)
{
	uint32_t k = 0;
	for (int i = 0; i < SL_MAX_FOLLOW; i++) {
		if (r->followers[i].used && r->followers[i].durable >= seq) {
			k++;
		}
	}
	return k;
}

uint64_t repl_ack_take(sl_repl *r, uint64_t now, sl_repl_ack_wait **out)
{
	uint64_t next = UINT64_MAX;
	sl_repl_ack_wait **pp = &r->ack_parked;
	while (*pp != NULL) {
		sl_repl_ack_wait *w = *pp;
		uint32_t k = repl_acks_count(r, w->seq);
		if (k >= w->n || (now > 0 && now >= w->deadline_ms)) {
			*pp = w->next;
			w->acked = k;
			w->next = *out;
			*out = w;
			continue;
		}
		if (w->deadline_ms < next) {
			next = w->deadline_ms;
		}
		pp = &w->next;
	}
	return next;
}

void repl_ack_run(sl_repl_ack_wait *list)
{
	while (list != NULL) {
		sl_repl_ack_wait *w = list;
		list = w->next;
		w->next = NULL;
		w->fn(w, w->acked); /* may free or reuse w */
	}
}

void sl_repl_ack_park(sl_repl *r, sl_repl_ack_wait *w, uint64_t seq, uint32_t n,
                      uint32_t timeout_ms, void (*fn)(sl_repl_ack_wait *w, uint32_t acked))
{
	w->next = NULL;
	w->seq = seq;
	w->n = n;
	w->fn = fn;
	if (r == NULL) {
		fn(w, 0);
		return;
	}
	uint64_t now = repl_now_ms();
	w->deadline_ms = now + timeout_ms;
	pthread_mutex_lock(&r->mu);
	uint32_t k = repl_acks_count(r, seq);
	if (k >= n || timeout_ms == 0 || r->stopping || r->acks_flushed) {
		pthread_mutex_unlock(&r->mu);
		fn(w, k);
		return;
	}
	w->next = r->ack_parked;
	r->ack_parked = w;
	/* The waker sleeps until its next deadline (at most a second): wake
	 * it only when this one comes sooner. */
	if (r->waker_wake_ms == 0 || w->deadline_ms < r->waker_wake_ms) {
		pthread_cond_broadcast(&r->cv);
	}
	pthread_mutex_unlock(&r->mu);
}

uint64_t repl_applied_take(sl_repl *r, uint64_t now, sl_repl_applied_wait **out)
{
	uint64_t next = UINT64_MAX;
	int primary = atomic_load(&r->role) == ROLE_PRIMARY;
	sl_repl_applied_wait **pp = &r->applied_parked;
	while (*pp != NULL) {
		sl_repl_applied_wait *w = *pp;
		int ok = applied_ok(r, w->seq);
		if (ok || primary || (now > 0 && now >= w->deadline_ms)) {
			*pp = w->next;
			w->ok = ok;
			w->next = *out;
			*out = w;
			atomic_fetch_sub(&r->applied_waiters, 1);
			continue;
		}
		if (w->deadline_ms < next) {
			next = w->deadline_ms;
		}
		pp = &w->next;
	}
	return next;
}

void repl_applied_run(sl_repl_applied_wait *list)
{
	while (list != NULL) {
		sl_repl_applied_wait *w = list;
		list = w->next;
		w->next = NULL;
		w->fn(w, w->ok); /* may free or reuse w */
	}
}

int sl_repl_applied_park(sl_repl *r, sl_repl_applied_wait *w, uint64_t seq, uint32_t timeout_ms,
                         void (*fn)(sl_repl_applied_wait *w, int ok))
{
	w->next = NULL;
	w->seq = seq;
	w->fn = fn;
	if (r == NULL) {
		fn(w, 1);
		return 0;
	}
	uint64_t now = repl_now_ms();
	w->deadline_ms = now + timeout_ms;
	pthread_mutex_lock(&r->mu);
	/* Checked under mu: the thread that applies moves r->applied, then
	 * takes the waits under mu, so a wait is either seen applied here
	 * or taken there. */
	int ok = applied_ok(r, seq);
	if (ok || timeout_ms == 0 || r->stopping || r->acks_flushed ||
	    atomic_load(&r->role) == ROLE_PRIMARY) {
		pthread_mutex_unlock(&r->mu);
		fn(w, ok);
		return 0;
	}
	w->next = r->applied_parked;
	r->applied_parked = w;
	atomic_fetch_add(&r->applied_waiters, 1);
	atomic_fetch_add(&r->min_seq_waits, 1);
	if (r->waker_wake_ms == 0 || w->deadline_ms < r->waker_wake_ms) {
		pthread_cond_broadcast(&r->cv); /* the waker: a sooner deadline */
	}
	pthread_mutex_unlock(&r->mu);
	return 1;
}

void sl_repl_ack_flush(sl_repl *r)
{
	if (r == NULL) {
		return;
	}
	sl_repl_ack_wait *done = NULL;
	sl_repl_applied_wait *adone = NULL;
	pthread_mutex_lock(&r->mu);
	repl_ack_take(r, UINT64_MAX, &done);
	repl_applied_take(r, UINT64_MAX, &adone);
	/* and the waits that block a thread (WAIT, a write's acks without a
	 * parking caller): answered now with their count, as are later ones */
	r->acks_flushed = 1;
	pthread_cond_broadcast(&r->ack_cv);
	pthread_mutex_unlock(&r->mu);
	repl_ack_run(done);
	repl_applied_run(adone);
}

int sl_repl_wait_acks(sl_repl *r, uint64_t seq, uint32_t n, uint32_t timeout_ms, uint32_t *acked)
{
	*acked = 0;
	if (r == NULL) {
		return n == 0 ? SL_OK : SL_ETIMEDOUT;
	}
	struct timespec ts;
	abs_deadline(&ts, timeout_ms);
	pthread_mutex_lock(&r->mu);
	/* Wake parked fetches so the followers hear "sync now". */
	pthread_cond_broadcast(&r->cv);
	uint64_t gen = r->ack_gen;
	for (;;) {
		if (r->ack_gen != gen) {
			break; /* the role changed: the count so far (table_clear) */
		}
		uint32_t k = repl_acks_count(r, seq);
		*acked = k;
		if (k >= n || r->acks_flushed) {
			break;
		}
		/* its own condition: the fetches that park and the waker's
		 * wakeups on cv would wake it for nothing */
		if (pthread_cond_timedwait(&r->ack_cv, &r->mu, &ts) != 0) {
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return *acked >= n ? SL_OK : SL_ETIMEDOUT;
}

/* Empties the follower table (mu held) when this node's role changes: the
 * positions followers reported to it before (another history, another
 * stint as primary) must not count as acks for the writes it takes now.
 * Writes waiting for acks are answered with the count they have (into
 * *done, for repl_ack_run once mu is released), and blocking waits end
 * with theirs: their seqs mean nothing under the next role either.  A
 * write parked on a primary that was re-pointed, resynced (its write
 * replaced) and promoted again was answered "acknowledged" by the first
 * follower to report that seq afterwards. */
static void table_clear(sl_repl *r, sl_repl_ack_wait **done)
{
	repl_ack_take(r, UINT64_MAX, done);
	r->ack_gen++;
	r->pause_until_ms = 0; /* a pause is a primary's, for this stint */
	pthread_cond_broadcast(&r->ack_cv);
	memset(r->followers, 0, sizeof(r->followers));
	/* and the write times, which a history's seqs index: a node back to
	 * a lower seq (a full resync) took its new writes' times for the old
	 * ones' and showed tens of seconds of lag */
	pthread_mutex_lock(&r->wt_mu);
	r->wt_n = 0;
	atomic_store(&r->wt_last_ms, 0);
	pthread_mutex_unlock(&r->wt_mu);
}

int sl_repl_promote(sl_repl *r, char hid[33], char *msg, size_t cap)
{
	msg[0] = '\0';
	if (r == NULL) {
		hid[0] = '\0';
		return SL_OK;
	}
	pthread_mutex_lock(&r->admin);
	if (atomic_load(&r->role) == ROLE_PRIMARY) {
		pthread_mutex_unlock(&r->admin);
		sl_repl_history_id(r, hid);
		snprintf(msg, cap, "already the primary");
		return SL_OK;
	}
	repl_follower_stop(r, 0);
	pthread_mutex_lock(&r->mu);
	repl_state st = r->st;
	uint64_t last = atomic_load(&r->applied);
	int rc = history_begin(&st, last);
	st.role = ROLE_PRIMARY;
	st.primary[0] = '\0';
	if (rc == SL_OK) {
		rc = repl_state_save(r->dir, &st);
	}
	if (rc != SL_OK) {
		snprintf(msg, cap, "cannot record the promotion: %s", sl_strerror(rc));
		repl_follower_start(r);
		pthread_mutex_unlock(&r->mu);
		pthread_mutex_unlock(&r->admin);
		return rc;
	}
	r->st = st;
	sl_repl_ack_wait *done = NULL;
	table_clear(r, &done);
	atomic_store(&r->role, ROLE_PRIMARY);
	atomic_store(&r->head, last);
	repl_hex(st.hid, SL_HID_BYTES, hid);
	/* reads parked for a --min-seq: a primary answers them now (those
	 * past its head: behind) */
	sl_repl_applied_wait *parked = NULL;
	repl_applied_take(r, 0, &parked);
	pthread_mutex_unlock(&r->mu);
	pthread_mutex_unlock(&r->admin);
	repl_ack_run(done);
	repl_applied_run(parked);
	repl_log(r, 1, "promoted to primary: history %s from seq %llu", hid,
	         (unsigned long long)last);
	if (r->o.listen_url == NULL) {
		repl_log(r, 2,
		         "this primary serves no fetches (started without --repl-listen): no "
		         "follower can follow it until it is restarted with --repl-listen URL");
	}
	return SL_OK;
}

int sl_repl_follow(sl_repl *r, const char *url, char *msg, size_t cap)
{
	msg[0] = '\0';
	if (r == NULL) {
		snprintf(msg, cap, "replication is not available on this server");
		return SL_ENOTSUP;
	}
	if (!sl_repl_url_ok(url)) {
		snprintf(msg, cap,
		         "follow needs the primary's replication URL (tcp://HOST:PORT: under 256 "
		         "bytes, no spaces or control characters)");
		return SL_EINVAL;
	}
	char why[64];
	if (!sl_repl_url_dialable(url, why, sizeof(why))) {
		snprintf(msg, cap, "cannot follow %.200s: %s", url, why);
		return SL_EINVAL;
	}
	if (sl_repl_same_endpoint(url, r->o.listen_url)) {
		snprintf(msg, cap, "%.200s is this node's own replication URL (%.200s)", url,
		         r->o.listen_url);
		return SL_EINVAL;
	}
	if (sl_repl_same_endpoint(url, r->o.self_url)) {
		snprintf(msg, cap,
		         "%.200s is this node's own client URL; follow takes the primary's "
		         "replication URL (its --repl-listen)",
		         url);
		return SL_EINVAL;
	}
	pthread_mutex_lock(&r->admin);
	repl_follower_stop(r, 0);
	/* The store's write lock: writes check the role under its read lock,
	 * so every write either lands before the switch (and is in the
	 * applied seq below) or sees this node a follower. */
	pthread_rwlock_wrlock(r->o.db_lock);
	pthread_mutex_lock(&r->mu);
	repl_state st = r->st;
	st.role = ROLE_FOLLOWER;
	snprintf(st.primary, sizeof(st.primary), "%s", url);
	int rc = repl_state_save(r->dir, &st);
	if (rc != SL_OK) {
		snprintf(msg, cap, "cannot record the new primary: %s", sl_strerror(rc));
		if (atomic_load(&r->role) == ROLE_FOLLOWER) {
			repl_follower_start(r);
		}
		pthread_mutex_unlock(&r->mu);
		pthread_rwlock_unlock(r->o.db_lock);
		pthread_mutex_unlock(&r->admin);
		return rc;
	}
	r->st = st;
	r->primary_client[0] = '\0'; /* learnt again from the new primary's replies */
	sl_repl_ack_wait *done = NULL;
	if (atomic_load(&r->role) == ROLE_PRIMARY) {
		table_clear(r, &done); /* its followers' positions mean nothing now */
	}
	atomic_store(&r->role, ROLE_FOLLOWER);
	/* head lags a write that released the store lock and has not
	 * advanced it yet: the store's own last seq counts that one too. */
	uint64_t last = sl_last_seq(*r->o.dbp), head = atomic_load(&r->head);
	atomic_store(&r->applied, last > head ? last : head);
	repl_follower_start(r);
	pthread_mutex_unlock(&r->mu);
	pthread_rwlock_unlock(r->o.db_lock);
	pthread_mutex_unlock(&r->admin);
	repl_ack_run(done);
	repl_log(r, 1, "now following %s", url);
	return SL_OK;
}

int sl_repl_pause_writes(sl_repl *r, uint32_t ms, uint64_t *last, char *msg, size_t cap)
{
	msg[0] = '\0';
	*last = 0;
	if (r == NULL) {
		snprintf(msg, cap, "replication is not available on this server");
		return SL_ENOTSUP;
	}
	/* The store's write lock, as follow takes it: writes check the pause
	 * under its read lock, so each one either lands before (at or below
	 * *last) or is refused. */
	pthread_rwlock_wrlock(r->o.db_lock);
	pthread_mutex_lock(&r->mu);
	int rc = SL_OK;
	if (atomic_load(&r->role) != ROLE_PRIMARY) {
		snprintf(msg, cap, "this node is a follower: it takes no writes to pause");
		rc = SL_EREADONLY;
	} else {
		r->pause_until_ms = ms ? repl_now_ms() + ms : 0;
		*last = sl_last_seq(*r->o.dbp);
	}
	pthread_mutex_unlock(&r->mu);
	pthread_rwlock_unlock(r->o.db_lock);
	if (rc == SL_OK) {
		repl_log(r, 1,
		         ms ? "writes paused for %u ms at seq %llu"
		            : "writes resumed%.0u at seq %llu",
		         ms, (unsigned long long)*last);
	}
	return rc;
}

int sl_repl_stats_get(sl_repl *r, sl_repl_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->role = sl_repl_role(r);
	out->state = "";
	if (r == NULL) {
		return SL_OK;
	}
	uint64_t now = repl_now_ms();
	pthread_mutex_lock(&r->mu);
	repl_hex(r->st.hid, SL_HID_BYTES, out->history_id);
	snprintf(out->node_id, sizeof(out->node_id), "%s", r->st.node_id);
	if (atomic_load(&r->role) == ROLE_FOLLOWER) {
		snprintf(out->primary, sizeof(out->primary), "%s", r->st.primary);
		out->state = r->fstate ? r->fstate : "";
		out->link_down_ms = r->fdown_ms != 0 && now > r->fdown_ms ? now - r->fdown_ms : 0;
		if (r->ferr[0]) {
			snprintf(out->last_error, sizeof(out->last_error), "%s", r->ferr);
			out->last_error_ago_ms = now > r->ferr_ms ? now - r->ferr_ms : 0;
		}
	}
	out->applied_seq = atomic_load(&r->applied);
	if (atomic_load(&r->role) == ROLE_PRIMARY) {
		out->applied_seq = atomic_load(&r->head);
	}
	out->log_floor = r->st.floor;
	out->resyncs_full = atomic_load(&r->resyncs_full);
	out->resyncs_partial = atomic_load(&r->resyncs_partial);
	out->bytes_fetched = atomic_load(&r->bytes_fetched);
	out->records_fetched = atomic_load(&r->records_fetched);
	out->fetches = atomic_load(&r->fetches);
	out->bytes_served = atomic_load(&r->bytes_served);
	out->records_served = atomic_load(&r->records_served);
	out->refused_batches = atomic_load(&r->refused);
	out->apply_errors = atomic_load(&r->apply_errors);
	out->min_seq_waits = atomic_load(&r->min_seq_waits);
	out->read_buffer_bytes = atomic_load(&r->fbuf_bytes);
	uint64_t pnow = repl_now_ms();
	out->writes_paused_ms = r->pause_until_ms > pnow ? r->pause_until_ms - pnow : 0;
	out->backlog_bytes = r->o.backlog_bytes;
	out->protect_seq = r->protect_seq;
	size_t n = 0;
	for (int i = 0; i < SL_MAX_FOLLOW; i++) {
		n += r->followers[i].used;
	}
	out->followers = n ? calloc(n, sizeof(*out->followers)) : NULL;
	uint64_t head = atomic_load(&r->head);
	for (int i = 0; out->followers != NULL && i < SL_MAX_FOLLOW; i++) {
		const follower_ent *e = &r->followers[i];
		if (!e->used) {
			continue;
		}
		sl_repl_follower_stat *f = &out->followers[out->n_followers++];
		snprintf(f->node_id, sizeof(f->node_id), "%s", e->node_id);
		snprintf(f->address, sizeof(f->address), "%s", e->address);
		f->applied_seq = e->applied;
		f->durable_seq = e->durable;
		f->lag_records = head > e->applied ? head - e->applied : 0;
		f->lag_ms = 0;
		if (f->lag_records) {
			/* the age of the oldest write it lacks; past the write
			 * times kept, the time since it was last caught up */
			uint64_t t = write_time(r, e->applied + 1);
			f->lag_ms = repl_ms_since(now, t ? t : e->caught_up_ms);
		}
		f->last_seen_ms_ago = repl_ms_since(now, e->last_seen_ms);
		f->connected = follower_connected(r, e, now);
		f->stalled = follower_stalled(e, head, r->o.timeout_ms, now);
	}
	pthread_mutex_unlock(&r->mu);
	/* The caller holds the store read lock (see repl.h). */
	for (size_t i = 0; i < out->n_followers && *r->o.dbp != NULL; i++) {
		sl_repl_follower_stat *f = &out->followers[i];
		uint64_t b = 0;
		if (f->lag_records > 0 &&
		    sl_log_bytes_from(*r->o.dbp, f->applied_seq + 1, &b) != SL_OK) {
			b = 0; /* fell off the backlog: a full resync sends a snapshot */
		}
		f->lag_bytes = b;
	}
	return SL_OK;
}

void sl_repl_stats_free(sl_repl_stats *s)
{
	if (s != NULL) {
		free(s->followers);
		s->followers = NULL;
		s->n_followers = 0;
	}
}
