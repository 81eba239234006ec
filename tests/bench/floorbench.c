/*
 * floorbench.c — `shiplog-bench floor`: what this machine gives before
 * shiplog adds anything, so the server and replication figures can be read
 * against it (docs/performance.md):
 *
 *   floor_nng_rtt    one nng REQ/REP round trip on 127.0.0.1 (a bare echo
 *                    server: nng_recvmsg, nng_sendmsg), the transport every
 *                    shiplog request and fetch pays
 *   floor_tcp_rtt    the same echo over a plain TCP socket (what Redis pays)
 *   floor_fdatasync  a 128-byte write then fdatasync into a preallocated
 *                    file under --dir (what --sync always and --acks pay)
 *
 * Client and server run as two threads of this process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int sl_floorbench_main(int argc, char **argv);

#define MSG_BYTES 40

static uint64_t opt_n = 20000;
static const char *opt_dir = "/tmp/shiplog-floorbench";
static int opt_json;

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of n sorted values. */
static double pct(const double *v, size_t n, double p)
{
	size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
	return v[k == 0 ? 0 : (k > n ? n - 1 : k - 1)];
}

static void emit(const char *name, double *v, size_t n, const char *what)
{
	qsort(v, n, sizeof(*v), cmp_double);
	if (opt_json) {
		printf("{\"benchmark\": \"%s\", \"n\": %zu, \"p50_us\": %.1f, \"p99_us\": %.1f, "
		       "\"max_us\": %.1f}\n",
		       name, n, pct(v, n, 50), pct(v, n, 99), v[n - 1]);
	} else {
		printf("%-16s p50 %9.1f us   p99 %9.1f us   max %9.1f us   (n %zu, %s)\n", name,
		       pct(v, n, 50), pct(v, n, 99), v[n - 1], n, what);
	}
	fflush(stdout);
}

/* ---- nng REQ/REP echo --------------------------------------------------- */

static void *nng_echo(void *arg)
{
	nng_socket s = *(nng_socket *)arg;
	for (;;) {
		nng_msg *m;
		if (nng_recvmsg(s, &m, 0) != 0) {
			return NULL;
		}
		if (nng_sendmsg(s, m, 0) != 0) {
			nng_msg_free(m);
		}
	}
}

static int nng_rtt(double *lat)
{
	nng_socket rep, req;
	nng_listener l;
	char url[64];
	int rv;
	if ((rv = nng_rep0_open(&rep)) != 0 ||
	    (rv = nng_listen(rep, "tcp://127.0.0.1:0", &l, 0)) != 0) {
		fprintf(stderr, "shiplog-bench floor: nng listen: %s\n", nng_strerror(rv));
		return -1;
	}
	int port = 0;
	nng_sockaddr sa;
	if (nng_listener_get_addr(l, NNG_OPT_LOCADDR, &sa) == 0) {
		port = ntohs(sa.s_in.sa_port);
	}
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	pthread_t t;
	if (pthread_create(&t, NULL, nng_echo, &rep) != 0) {
		nng_close(rep);
		return -1;
	}
	if ((rv = nng_req0_open(&req)) != 0 || (rv = nng_dial(req, url, NULL, 0)) != 0) {
		fprintf(stderr, "shiplog-bench floor: nng dial %s: %s\n", url, nng_strerror(rv));
		nng_close(rep);
		pthread_join(t, NULL);
		return -1;
	}
	nng_socket_set_ms(req, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	int err = 0;
	for (uint64_t i = 0; i < opt_n && !err; i++) {
		nng_msg *m;
		if (nng_msg_alloc(&m, MSG_BYTES) != 0) {
			err = 1;
			break;
		}
		double t0 = now_us();
		if (nng_sendmsg(req, m, 0) != 0) {
			nng_msg_free(m);
			err = 1;
			break;
		}
		if (nng_recvmsg(req, &m, 0) != 0) {
			err = 1;
			break;
		}
		lat[i] = now_us() - t0;
		nng_msg_free(m);
	}
	nng_close(req);
	nng_close(rep); /* ends the echo thread's receive */
	pthread_join(t, NULL);
	return err ? -1 : 0;
}

/* ---- plain TCP echo ------------------------------------------------------- */

static void *tcp_echo(void *arg)
{
	int l = *(int *)arg;
	int c = accept(l, NULL, NULL);
	if (c < 0) {
		return NULL;
	}
	int one = 1;
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	char b[MSG_BYTES];
	for (;;) {
		size_t got = 0;
		while (got < sizeof(b)) {
			ssize_t r = read(c, b + got, sizeof(b) - got);
			if (r <= 0) {
				close(c);
				return NULL;
			}
			got += (size_t)r;
		}
		if (write(c, b, sizeof(b)) != (ssize_t)sizeof(b)) {
			close(c);
			return NULL;
		}
	}
}

static int tcp_rtt(double *lat)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 1) != 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) != 0) {
		fprintf(stderr, "shiplog-bench floor: tcp listen: %s\n", strerror(errno));
		if (l >= 0) {
			close(l);
		}
		return -1;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, tcp_echo, &l) != 0) {
		close(l);
		return -1;
	}
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int err = c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) != 0;
	int one = 1;
	if (!err) {
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	char b[MSG_BYTES] = {0};
	for (uint64_t i = 0; i < opt_n && !err; i++) {
		double t0 = now_us();
		if (write(c, b, sizeof(b)) != (ssize_t)sizeof(b)) {
			err = 1;
			break;
		}
		size_t got = 0;
		while (got < sizeof(b)) {
			ssize_t r = read(c, b + got, sizeof(b) - got);
			if (r <= 0) {
				err = 1;
				break;
			}
			got += (size_t)r;
		}
		lat[i] = now_us() - t0;
	}
	if (c >= 0) {
		close(c); /* the echo thread reads EOF */
	}
	shutdown(l, SHUT_RDWR); /* or leaves accept, if nothing connected */
	pthread_join(t, NULL);
	close(l);
	return err ? -1 : 0;
}

/* ---- fdatasync ------------------------------------------------------------- */

static int fsync_lat(double *lat, size_t n)
{
	char path[4096];
	if (mkdir(opt_dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "shiplog-bench floor: mkdir %s: %s\n", opt_dir, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/floor.dat", opt_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "shiplog-bench floor: %s: %s\n", path, strerror(errno));
		return -1;
	}
	char b[128];
	memset(b, 'x', sizeof(b));
	int err = posix_fallocate(fd, 0, (off_t)(n * sizeof(b))) != 0 || fsync(fd) != 0;
	for (size_t i = 0; i < n && !err; i++) {
		if (pwrite(fd, b, sizeof(b), (off_t)(i * sizeof(b))) != (ssize_t)sizeof(b)) {
			err = 1;
			break;
		}
		double t0 = now_us();
		if (fdatasync(fd) != 0) {
			err = 1;
			break;
		}
		lat[i] = now_us() - t0;
	}
	if (err) {
		fprintf(stderr, "shiplog-bench floor: %s: %s\n", path, strerror(errno));
	}
	close(fd);
	unlink(path);
	rmdir(opt_dir); /* only if this run created it empty */
	return err ? -1 : 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: shiplog-bench floor [options]   (this machine's floors: an nng\n"
	           "       REQ/REP round trip, a TCP round trip, an fdatasync)\n"
	           "  -n, --requests N    round trips per transport (default 20000; fdatasyncs:\n"
	           "                      a tenth of it, at least 100)\n"
	           "  --dir D             where the fdatasync file goes (default\n"
	           "                      /tmp/shiplog-floorbench; put it on the data disk)\n"
	           "  --json              one JSON object per figure\n"
	           "  --help              this text\n");
}

int sl_floorbench_main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"requests", required_argument, NULL, 'n'},
	    {"dir", required_argument, NULL, 'd'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "n:", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-' || v < 1 ||
			    v > 10000000) {
				fprintf(stderr, "shiplog-bench floor: bad -n '%s' (1..10000000)\n",
				        optarg);
				return 2;
			}
			opt_n = v;
			break;
		}
		case 'd':
			opt_dir = optarg;
			break;
		case 'j':
			opt_json = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "shiplog-bench floor: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	size_t nf = opt_n / 10 < 100 ? 100 : opt_n / 10;
	double *lat = malloc((opt_n > nf ? opt_n : nf) * sizeof(double));
	if (lat == NULL) {
		fprintf(stderr, "shiplog-bench floor: out of memory\n");
		return 2;
	}
	int rc = 0;
	if (!opt_json) {
		printf(
		    "# shiplog-bench floor: %d-byte messages on 127.0.0.1, 128-byte writes in %s\n",
		    MSG_BYTES, opt_dir);
	}
	if (nng_rtt(lat) == 0) {
		emit("floor_nng_rtt", lat, opt_n, "nng REQ/REP echo");
	} else {
		rc = 1;
	}
	if (tcp_rtt(lat) == 0) {
		emit("floor_tcp_rtt", lat, opt_n, "plain TCP echo");
	} else {
		rc = 1;
	}
	if (fsync_lat(lat, nf) == 0) {
		emit("floor_fdatasync", lat, nf, "128 B pwrite + fdatasync, preallocated file");
	} else {
		rc = 1;
	}
	free(lat);
	return rc;
}
