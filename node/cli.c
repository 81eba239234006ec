/*
 * cli.c — `shiplog`, the command-line client (redis-cli's role for shiplogd).
 *
 * It exists so that people and shell scripts can use a node without writing C:
 * every command is one client-library call (node/client.h), its output is
 * either plain (the value's exact bytes for `get`, one line per item
 * otherwise) or one JSON object (--json, jansson), and the exit status says
 * what happened: 0 ok, 1 not found, 2 error (message on stderr).
 *
 * Binary safety: `get` writes the value's bytes unchanged (a newline is added
 * only when stdout is a terminal) and `put K -` stores stdin unchanged.  JSON
 * cannot hold arbitrary bytes, so a key or value that is valid UTF-8 goes in
 * "key"/"value" as a JSON string, and any other goes in "key_base64" /
 * "value_base64" (RFC 4648 base64, with padding) instead — exactly one of
 * the two fields is present.  Multi-item plain output (mget, scan --values)
 * escapes bytes that would break its one-item-per-line shape.
 *
 * The interactive prompt is in cli_repl.c.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STDIN_MAX          (1ull << 30) /* the engine's upper bound on a value */
#define COMPACT_TIMEOUT_MS 600000
#define SCAN_PAGE          1000
#define BIG_VALUE          (1u << 20) /* larger put messages check the server's limit first */

/* ---- output helpers ---------------------------------------------------- */

static int out_failed; /* a write to stdout failed (EPIPE, ENOSPC …) */
static int out_errno;  /* its errno, kept: later calls (isatty) overwrite errno */

/* Notes a failed output; the first failure's errno is the one told. */
static void out_fail(int err)
{
	if (!out_failed) {
		out_errno = err;
	}
	out_failed = 1;
}

static void out_bytes(const void *p, size_t n)
{
	if (n && fwrite(p, 1, n, stdout) != n) {
		out_fail(errno);
	}
}

static void out_str(const char *s)
{
	out_bytes(s, strlen(s));
}

/* Writes b escaped for one-line display: backslash, control bytes and DEL
 * as C escapes; everything else (UTF-8 included) unchanged, so the output
 * can be decoded back unambiguously. */
static void out_escaped(const void *b, size_t n)
{
	const unsigned char *p = b;
	char e[8];
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = p[i];
		if (ch == '\\') {
			out_str("\\\\");
		} else if (ch == '\n') {
			out_str("\\n");
		} else if (ch == '\r') {
			out_str("\\r");
		} else if (ch == '\t') {
			out_str("\\t");
		} else if (ch < 0x20 || ch == 0x7f) {
			snprintf(e, sizeof e, "\\x%02x", ch);
			out_str(e);
		} else {
			out_bytes(&ch, 1);
		}
	}
}

static char *base64(const void *data, size_t n)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = data;
	char *s = malloc((n + 2) / 3 * 4 + 1), *o = s;
	if (!s) {
		return NULL;
	}
	size_t i = 0;
	for (; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = tab[(v >> 6) & 63];
		*o++ = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	*o = 0;
	return s;
}

/* Sets obj[name] to b as a JSON string when b is valid UTF-8, otherwise
 * obj[name + "_base64"] to its base64.  NULL b sets obj[name] to null. */
static void json_set_bytes(json_t *obj, const char *name, const void *b, size_t n)
{
	if (!b) {
		json_object_set_new(obj, name, json_null());
		return;
	}
	json_t *s = json_stringn(b, n); /* NULL when not valid UTF-8 */
	if (s) {
		json_object_set_new(obj, name, s);
		return;
	}
	char field[64], *enc = base64(b, n);
	snprintf(field, sizeof field, "%s_base64", name);
	json_object_set_new(obj, field, enc ? json_string(enc) : json_null());
	free(enc);
}

/* Prints obj on one line and releases it. */
/* What the command now running said on stderr, for --json: a command that
 * fails without printing its object prints {"error": "..."} instead
 * (cli_command), so a script reads one object a command either way. */
static char err_said[1024];
static size_t err_len;
static int json_printed;

static void out_json(json_t *obj)
{
	json_printed = 1;
	char *s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(obj);
	if (!s) {
		out_fail(ENOMEM);
		return;
	}
	out_str(s);
	out_str("\n");
	free(s);
}

/* ---- errors ------------------------------------------------------------ */

static void errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errf(const char *fmt, ...)
{
	va_list ap, copy;
	va_start(ap, fmt);
	va_copy(copy, ap);
	vfprintf(stderr, fmt, ap); /* whole, however long */
	va_end(ap);
	if (err_len + 1 < sizeof err_said) {
		int k = vsnprintf(err_said + err_len, sizeof err_said - err_len, fmt, copy);
		if (k > 0) {
			err_len += (size_t)k < sizeof err_said - err_len
			               ? (size_t)k
			               : sizeof err_said - 1 - err_len;
		}
	}
	va_end(copy);
}

/* Replaces in place every byte of s[0..n) that is not part of a valid UTF-8
 * sequence with '?' (a message quoting a binary key, or cut mid-character:
 * jansson refuses such a string, and the object came out as {}). */
static void utf8_clean(char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		size_t len = c < 0x80                 ? 1
		             : c >= 0xC2 && c <= 0xDF ? 2
		             : c >= 0xE0 && c <= 0xEF ? 3
		             : c >= 0xF0 && c <= 0xF4 ? 4
		                                      : 0;
		int ok = len > 0 && i + len <= n;
		for (size_t k = 1; ok && k < len; k++) {
			unsigned char d = (unsigned char)s[i + k];
			unsigned lo = 0x80, hi = 0xBF;
			if (k == 1) {
				lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
				hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
			}
			ok = d >= lo && d <= hi;
		}
		if (!ok) {
			s[i] = '?';
			len = 1;
		}
		i += len;
	}
}

/* err_said as one line: "shiplog: " prefixes dropped, lines joined by "; " */
static json_t *err_json(void)
{
	char msg[sizeof err_said];
	size_t m = 0;
	const char *p = err_said;
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		if (len >= 9 && strncmp(p, "shiplog: ", 9) == 0) {
			p += 9;
			len -= 9;
		}
		if (len > 0) {
			if (m > 0 && m + 2 < sizeof msg) {
				memcpy(msg + m, "; ", 2);
				m += 2;
			}
			if (m + len >= sizeof msg) {
				len = sizeof msg - 1 - m;
			}
			memcpy(msg + m, p, len);
			m += len;
		}
		p += (nl ? (size_t)(nl - p) + 1 : strlen(p));
	}
	msg[m] = '\0';
	utf8_clean(msg, m);
	json_t *j = json_object();
	json_t *e = json_stringn(msg, m);
	json_object_set_new(j, "error", e != NULL ? e : json_string("error"));
	return j;
}

/* For the prompt's pipe mode: a line refused before it became a command
 * (an unterminated quote, a NUL byte) says so on stderr, and with --json
 * as an object too, so that each line still gets one. */
void cli_line_error(cli *c, const char *fmt, ...)
{
	char buf[sizeof err_said];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	err_len = 0;
	err_said[0] = '\0';
	errf("shiplog: %s\n", buf);
	if (c->json) {
		out_json(err_json());
		fflush(stdout);
	}
}

/* Reports rc from command cmd on stderr (naming the server for transport
 * errors) and returns the matching exit status. */
static int fail(cli *c, const char *cmd, int rc)
{
	if (rc == SL_ENOTFOUND) {
		return CLI_NOTFOUND;
	}
	const char *msg = c->client ? sl_client_errmsg(c->client) : "";
	/* The server's message often names the command and the status
	 * already ("put: no space left on device"): say each once. */
	size_t cl = strlen(cmd);
	if (strncmp(msg, cmd, cl) == 0 && msg[cl] == ':' && msg[cl + 1] == ' ') {
		msg += cl + 2;
	}
	const char *se = sl_client_strerror(rc);
	size_t sl = strlen(se);
	if (strcmp(msg, se) == 0) {
		msg = "";
	} else if (strncmp(msg, se, sl) == 0 && (msg[sl] == ';' || msg[sl] == ':') &&
	           msg[sl + 1] == ' ') {
		msg += sl + 2; /* "server is shutting down: server is shutting down; ..." */
	}
	if (rc == SL_ECONN || rc == SL_ETIMEDOUT || rc == SL_ESHUTDOWN) {
		errf("shiplog: %s: server %s: %s%s%s\n", cmd, c->url, sl_client_strerror(rc),
		     *msg ? ": " : "", msg);
	} else {
		errf("shiplog: %s: %s%s%s\n", cmd, sl_client_strerror(rc), *msg ? ": " : "", msg);
	}
	return CLI_ERROR;
}

static int usage_error(const char *fmt, const char *arg)
{
	char msg[512];
	snprintf(msg, sizeof msg, fmt, arg);
	errf("shiplog: %s (see shiplog help)\n", msg);
	return CLI_ERROR;
}

/* Opens the connection on first use (a prompt retries after a failure). */
static int connect_server(cli *c, const char *cmd)
{
	if (c->client) {
		return SL_OK;
	}
	char why[256];
	int rc = sl_client_open_why(c->url, c->timeout_ms, &c->client, why, sizeof(why));
	if (rc != SL_OK) {
		c->client = NULL;
		errf("shiplog: %s: cannot connect to %s: %s\n", cmd, c->url,
		     why[0] ? why : sl_client_strerror(rc));
		return rc;
	}
	if (c->min_seq) {
		sl_client_set_min_seq(c->client, c->min_seq);
		sl_client_set_min_seq_wait(c->client, (int)c->timeout_ms);
	}
	if (c->acks) {
		sl_client_set_acks(c->client, c->acks, (uint32_t)c->timeout_ms);
	}
	return SL_OK;
}

/* ---- per-command options ----------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || s[0] == '+' || s[0] == ' ') {
		return -1;
	}
	*out = v;
	return 0;
}

/* Options a command accepts anywhere among its arguments (until "--"). */
typedef struct cmd_opts {
	uint64_t limit; /* scan --limit */
	int has_limit;
	uint64_t ttl; /* put --ttl */
	int values;   /* scan --values */
} cmd_opts;

enum { OPT_LIMIT = 1, OPT_TTL = 2, OPT_VALUES = 4 };

/* Moves a's positional arguments (after the command name) into pos and the
 * options allowed by mask into o.  Returns 0, or CLI_ERROR after a message. */
static int split_opts(const cli_args *a, unsigned mask, cli_args *pos, cmd_opts *o)
{
	memset(o, 0, sizeof *o);
	pos->n = 0;
	int dashdash = 0;
	for (int i = 1; i < a->n; i++) {
		const char *s = a->v[i];
		if (!dashdash && s[0] == '-' && s[1] == '-' && a->len[i] == strlen(s)) {
			if (!s[2]) {
				dashdash = 1;
				continue;
			}
			if ((mask & OPT_VALUES) && !strcmp(s, "--values")) {
				o->values = 1;
				continue;
			}
			int is_limit = (mask & OPT_LIMIT) && !strcmp(s, "--limit");
			int is_ttl = (mask & OPT_TTL) && !strcmp(s, "--ttl");
			if (!is_limit && !is_ttl) {
				return usage_error(
				    "%s: unknown option (put \"--\" before an argument "
				    "that starts with --)",
				    s);
			}
			uint64_t v;
			if (i + 1 >= a->n || parse_u64(a->v[i + 1], &v)) {
				return usage_error("%s needs a number", s);
			}
			i++;
			if (is_limit && v == 0) {
				/* 0 on the wire means the server's default page: as a
				 * count of keys it printed nothing, silently */
				return usage_error("%s must be at least 1", s);
			} else if (is_limit) {
				o->limit = v;
				o->has_limit = 1;
			} else if (v == 0) {
				/* 0 means "no TTL" on the wire: the key never expired */
				return usage_error("%s must be at least 1 ms", s);
			} else {
				o->ttl = v;
			}
			continue;
		}
		pos->v[pos->n] = a->v[i];
		pos->len[pos->n] = a->len[i];
		pos->n++;
	}
	return 0;
}

/* ---- commands ----------------------------------------------------------- */

static int cmd_get(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)o;
	void *val = NULL;
	size_t vlen = 0;
	uint64_t seq = 0;
	int rc = sl_client_get(c->client, p->v[0], p->len[0], &val, &vlen, &seq);
	if (rc != SL_OK && rc != SL_ENOTFOUND) {
		return fail(c, "get", rc);
	}
	if (c->json) {
		json_t *j = json_object();
		json_set_bytes(j, "key", p->v[0], p->len[0]);
		json_set_bytes(j, "value", rc == SL_OK ? val : NULL, vlen);
		if (rc == SL_OK) {
			json_object_set_new(j, "seq", json_integer((json_int_t)seq));
		}
		out_json(j);
	} else if (rc == SL_OK) {
		/* exact bytes from a one-shot get; at the prompt (piped too),
		 * one reply a line, as every other command's */
		out_bytes(val, vlen);
		if (c->interactive || isatty(STDOUT_FILENO)) {
			out_str("\n");
		}
	} else if (c->interactive || isatty(STDOUT_FILENO)) {
		out_str("(nil)\n");
	}
	free(val);
	return rc == SL_OK ? CLI_OK : CLI_NOTFOUND;
}

/* Reads all of stdin (binary) into a malloc'd buffer. */
static int read_stdin(void **out, size_t *len)
{
	size_t cap = 65536, n = 0;
	char *b = malloc(cap);
	if (!b) {
		return -1;
	}
	for (;;) {
		if (n == cap) {
			if (n > STDIN_MAX) {
				errf("shiplog: put: the value on stdin is over %llu bytes\n",
				     STDIN_MAX);
				free(b);
				return -1;
			}
			/* one byte past the limit at most: enough to see the
			 * end of a value of exactly STDIN_MAX (it took 2 GiB) */
			size_t ncap = cap * 2 > STDIN_MAX + 1 ? (size_t)STDIN_MAX + 1 : cap * 2;
			char *nb = realloc(b, ncap);
			if (!nb) {
				free(b);
				errf("shiplog: put: out of memory reading stdin\n");
				return -1;
			}
			b = nb;
			cap = ncap;
		}
		ssize_t r = read(STDIN_FILENO, b + n, cap - n);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0) {
			errf("shiplog: put: reading stdin: %s\n", strerror(errno));
			free(b);
			return -1;
		}
		if (r == 0) {
			break;
		}
		n += (size_t)r;
	}
	*out = b;
	*len = n;
	return 0;
}

static void out_seq(cli *c, int rc, uint64_t seq)
{
	int acks = c->acks ? sl_client_last_acks(c->client) : -1;
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "seq", json_integer((json_int_t)seq));
		if (acks >= 0) {
			json_object_set_new(j, "acks", json_integer(acks));
		}
		out_json(j);
	} else {
		char line[96];
		if (acks >= 0) {
			snprintf(line, sizeof line, "OK (seq %llu, acks %d)\n",
			         (unsigned long long)seq, acks);
		} else {
			snprintf(line, sizeof line, "OK (seq %llu)\n", (unsigned long long)seq);
		}
		(void)rc;
		out_str(line);
	}
}

/* A put or del that failed.  With --acks, a write made but not acked by
 * enough followers in time comes back SL_ETIMEDOUT with its seq: --json
 * still prints its object ({"seq": N, "acks": M}, M short of --acks), so a
 * script has the seq; the message goes to stderr and the exit is 2. */
static int write_failed(cli *c, const char *cmd, int rc, uint64_t seq)
{
	if (rc == SL_ETIMEDOUT && seq > 0 && c->json) {
		out_seq(c, rc, seq);
	}
	return fail(c, cmd, rc);
}

/* The server drops the connection on a message over its size limit rather
 * than answering, which would read as "connection lost"; so before sending a
 * large value ask for the limit and refuse with a clear message.  Returns 0
 * when the value fits (or the limit is unknown). */
static int check_value_limit(cli *c, size_t vlen)
{
	sl_client_stats *st = NULL;
	if (sl_client_stats_get(c->client, &st) != SL_OK) {
		return 0; /* the put itself will report what is wrong */
	}
	const sl_client_stat *m = sl_client_stats_find(st, "max_value_bytes");
	int over = m && !m->text && vlen > m->value;
	if (over) {
		errf("shiplog: put: %s: value is %zu bytes, the server's limit is %llu\n",
		     sl_client_strerror(SL_ETOOBIG), vlen, (unsigned long long)m->value);
	}
	sl_client_stats_free(st);
	return over;
}

static int cmd_put(cli *c, const cli_args *p, const cmd_opts *o)
{
	void *val = p->v[1], *owned = NULL;
	size_t vlen = p->len[1];
	if (p->len[1] == 1 && p->v[1][0] == '-') {
		if (c->interactive) {
			errf("shiplog: put: '-' (value from stdin) is not available at the "
			     "prompt\n");
			return CLI_ERROR;
		}
		if (read_stdin(&owned, &vlen)) {
			return CLI_ERROR;
		}
		val = owned;
	}
	/* A message of at most BIG_VALUE always gets an answer (the server
	 * takes its value limit plus 1 MiB); the key and framing count too. */
	if (vlen + p->len[0] + 64 > BIG_VALUE && check_value_limit(c, vlen)) {
		free(owned);
		return CLI_ERROR;
	}
	uint64_t seq = 0;
	int rc = o->ttl ? sl_client_put_ttl(c->client, p->v[0], p->len[0], val, vlen, o->ttl, &seq)
	                : sl_client_put(c->client, p->v[0], p->len[0], val, vlen, &seq);
	free(owned);
	if (rc != SL_OK) {
		return write_failed(c, "put", rc, seq);
	}
	out_seq(c, rc, seq);
	return CLI_OK;
}

static int cmd_del(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)o;
	uint64_t seq = 0;
	int rc = sl_client_del(c->client, p->v[0], p->len[0], &seq);
	if (rc == SL_ENOTFOUND) {
		if (c->json) {
			json_t *j = json_object();
			json_object_set_new(j, "seq", json_null());
			out_json(j);
		} else if (c->interactive || isatty(STDOUT_FILENO)) {
			out_str("(not found)\n"); /* at the prompt every reply is a line */
		}
		return CLI_NOTFOUND;
	}
	if (rc != SL_OK) {
		return write_failed(c, "del", rc, seq);
	}
	out_seq(c, rc, seq);
	return CLI_OK;
}

static int cmd_mget(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)o;
	sl_client_item *items = NULL;
	int rc = sl_client_mget(c->client, (size_t)p->n, (const void *const *)p->v, p->len, &items);
	if (rc != SL_OK) {
		return fail(c, "mget", rc);
	}
	/* A value that did not fit in the response beside the others is
	 * asked for alone (it fits unless it is over the limit by itself). */
	for (int i = 0; i < p->n; i++) {
		sl_client_item *it = &items[i];
		if (it->status == SL_ETOOBIG) {
			void *v = NULL;
			size_t vl = 0;
			uint64_t seq = 0;
			int grc = sl_client_get(c->client, p->v[i], p->len[i], &v, &vl, &seq);
			if (grc == SL_OK || grc == SL_ENOTFOUND || grc == SL_ETOOBIG) {
				free(it->val);
				it->status = grc;
				it->val = v;
				it->vlen = vl;
				it->seq = seq;
			} else {
				free(v);
				sl_client_items_free(items, (size_t)p->n);
				return fail(c, "mget", grc);
			}
		}
	}
	int missing = 0, errors = 0;
	json_t *arr = c->json ? json_array() : NULL;
	for (int i = 0; i < p->n; i++) {
		const sl_client_item *it = &items[i];
		int found = it->status == SL_OK;
		/* A key the server could not read (an empty or oversized key, a
		 * damaged record, an I/O error) is an error, not a miss. */
		int err = !found && it->status != SL_ENOTFOUND;
		missing += !found && !err;
		errors += err;
		if (err) {
			errf("shiplog: mget: key %d (%.*s): %s\n", i + 1,
			     (int)(p->len[i] > 64 ? 64 : p->len[i]), p->v[i],
			     sl_client_strerror(it->status));
		}
		if (arr) {
			json_t *e = json_object();
			json_set_bytes(e, "key", p->v[i], p->len[i]);
			json_set_bytes(e, "value", found ? it->val : NULL, it->vlen);
			if (found) {
				json_object_set_new(e, "seq", json_integer((json_int_t)it->seq));
			}
			if (err) {
				json_object_set_new(e, "error",
				                    json_string(sl_client_strerror(it->status)));
			}
			json_array_append_new(arr, e);
		} else if (found) {
			out_escaped(it->val, it->vlen);
			out_str("\n");
		} else if (err) {
			out_str("(error)\n");
		} else {
			out_str("(nil)\n");
		}
	}
	if (arr) {
		json_t *j = json_object();
		json_object_set_new(j, "items", arr);
		json_object_set_new(j, "found", json_integer(p->n - missing - errors));
		json_object_set_new(j, "missing", json_integer(missing));
		json_object_set_new(j, "errors", json_integer(errors));
		out_json(j);
	}
	sl_client_items_free(items, (size_t)p->n);
	return errors ? CLI_ERROR : missing ? CLI_NOTFOUND : CLI_OK;
}

static int cmd_scan(cli *c, const cli_args *p, const cmd_opts *o)
{
	const void *prefix = p->n ? p->v[0] : NULL;
	size_t plen = p->n ? p->len[0] : 0;
	void *cursor = NULL;
	size_t curlen = 0;
	uint64_t left = o->has_limit ? o->limit : UINT64_MAX, count = 0, errors = 0;
	json_t *arr = c->json ? json_array() : NULL;
	int rc = SL_OK;
	while (left > 0) {
		sl_client_item *items = NULL;
		size_t n = 0;
		void *next = NULL;
		size_t nextlen = 0;
		uint32_t page = left < SCAN_PAGE ? (uint32_t)left : SCAN_PAGE;
		rc = sl_client_scan(c->client, prefix, plen, page, cursor, curlen, !o->values,
		                    &items, &n, &next, &nextlen);
		free(cursor);
		cursor = NULL;
		if (rc != SL_OK) {
			break;
		}
		for (size_t i = 0; i < n && left > 0; i++, left--, count++) {
			const sl_client_item *it = &items[i];
			/* A value the server cannot send (over its message limit,
			 * stored under a larger --max-value-bytes): the key comes
			 * with SL_ETOOBIG, as a get of it would fail. */
			int err = o->values && it->status != SL_OK;
			errors += err;
			if (err) {
				errf("shiplog: scan: key %.*s: %s\n",
				     (int)(it->klen > 64 ? 64 : it->klen), (const char *)it->key,
				     sl_client_strerror(it->status));
			}
			if (arr) {
				json_t *e = json_object();
				json_set_bytes(e, "key", it->key, it->klen);
				if (err) {
					json_object_set_new(
					    e, "error",
					    json_string(sl_client_strerror(it->status)));
				} else if (o->values) {
					json_set_bytes(e, "value", it->val ? it->val : "",
					               it->vlen);
				}
				json_array_append_new(arr, e);
			} else {
				out_escaped(it->key, it->klen);
				if (err) {
					out_str("\t(error)");
				} else if (o->values) {
					out_str("\t");
					out_escaped(it->val, it->vlen);
				}
				out_str("\n");
			}
		}
		sl_client_items_free(items, n);
		if (!next) {
			break;
		}
		cursor = next;
		curlen = nextlen;
	}
	free(cursor);
	if (rc != SL_OK) {
		json_decref(arr);
		return fail(c, "scan", rc);
	}
	if (arr) {
		json_t *j = json_object();
		json_object_set_new(j, "items", arr);
		json_object_set_new(j, "count", json_integer((json_int_t)count));
		if (errors) {
			json_object_set_new(j, "errors", json_integer((json_int_t)errors));
		}
		out_json(j);
	}
	return errors ? CLI_ERROR : CLI_OK;
}

static int cmd_stats(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)p;
	(void)o;
	sl_client_stats *st = NULL;
	int rc = sl_client_stats_get(c->client, &st);
	if (rc != SL_OK) {
		return fail(c, "stats", rc);
	}
	json_t *j = c->json ? json_object() : NULL;
	for (size_t i = 0; i < st->n; i++) {
		const sl_client_stat *s = &st->items[i];
		char num[32];
		snprintf(num, sizeof num, "%llu", (unsigned long long)s->value);
		if (j) {
			json_object_set_new(j, s->name,
			                    s->text ? json_string(s->text)
			                            : json_integer((json_int_t)s->value));
		} else {
			out_str(s->name);
			out_str(": ");
			out_str(s->text ? s->text : num);
			out_str("\n");
		}
	}
	sl_client_stats_free(st);
	if (j) {
		out_json(j);
	}
	return CLI_OK;
}

static int cmd_compact(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)p;
	(void)o;
	if (!c->timeout_set) {
		sl_client_set_timeout(c->client, COMPACT_TIMEOUT_MS);
	}
	sl_client_stats *st = NULL;
	int rc = sl_client_compact_stats(c->client, &st);
	if (!c->timeout_set) {
		sl_client_set_timeout(c->client, c->timeout_ms);
	}
	if (rc != SL_OK) {
		return fail(c, "compact", rc);
	}
	const sl_client_stat *rec = sl_client_stats_find(st, "reclaimed_bytes");
	const sl_client_stat *sb = sl_client_stats_find(st, "segments_before");
	const sl_client_stat *sa = sl_client_stats_find(st, "segments_after");
	const sl_client_stat *dl = sl_client_stats_find(st, "dead_bytes_left");
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "ok", json_true());
		const sl_client_stat *all[] = {rec, sb, sa, dl};
		for (size_t i = 0; i < 4; i++) {
			if (all[i] != NULL) {
				json_object_set_new(j, all[i]->name,
				                    json_integer((json_int_t)all[i]->value));
			}
		}
		out_json(j);
	} else if (rec == NULL || sb == NULL || sa == NULL || dl == NULL) {
		out_str("OK\n"); /* an older server */
	} else {
		char line[256];
		int k =
		    snprintf(line, sizeof(line), "OK: reclaimed %llu bytes, segments %llu -> %llu",
		             (unsigned long long)rec->value, (unsigned long long)sb->value,
		             (unsigned long long)sa->value);
		if (dl->value > 0 && k > 0 && (size_t)k < sizeof(line)) {
			snprintf(line + k, sizeof(line) - (size_t)k,
			         "; %llu dead bytes left (in the active segment, segments held "
			         "for the followers' backlog or a resync, or segments with a "
			         "damaged record, left alone: the server's log names them)",
			         (unsigned long long)dl->value);
		}
		out_str(line);
		out_str("\n");
	}
	sl_client_stats_free(st);
	return CLI_OK;
}

static int cmd_ping(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)p;
	(void)o;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int rc = sl_client_ping(c->client);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (rc != SL_OK) {
		return fail(c, "ping", rc);
	}
	long long us = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "pong", json_true());
		json_object_set_new(j, "latency_us", json_integer(us));
		out_json(j);
	} else {
		out_str("PONG\n");
	}
	return CLI_OK;
}

static int cmd_digest(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)p;
	(void)o;
	char d[33];
	uint64_t keys = 0;
	int rc = sl_client_digest(c->client, d, &keys);
	if (rc != SL_OK) {
		return fail(c, "digest", rc);
	}
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "digest", json_string(d));
		json_object_set_new(j, "keys", json_integer((json_int_t)keys));
		out_json(j);
	} else {
		out_str(d);
		out_str("\n");
	}
	return CLI_OK;
}

/* note: NULL, or what the command found ("already the primary") */
static void out_hid(cli *c, const char *hid, const char *note)
{
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "ok", json_true());
		json_object_set_new(j, "history_id", json_string(hid));
		if (note != NULL) {
			json_object_set_new(j, "note", json_string(note));
		}
		out_json(j);
	} else {
		out_str("OK (");
		if (note != NULL) {
			out_str(note);
			out_str("; ");
		}
		out_str("history ");
		out_str(hid);
		out_str(")\n");
	}
}

/* Whether the connected node says it is a primary (0 when it cannot tell);
 * *serves: whether it serves fetches (repl_listen is not "none"; servers
 * without the stat are taken to). */
static int is_primary(cli *c, int *serves)
{
	sl_client_stats *st = NULL;
	int yes = 0;
	*serves = 1;
	if (sl_client_stats_get(c->client, &st) == SL_OK) {
		const sl_client_stat *r = sl_client_stats_find(st, "role");
		yes = r != NULL && r->text != NULL && strcmp(r->text, "primary") == 0;
		const sl_client_stat *l = sl_client_stats_find(st, "repl_listen");
		*serves = l == NULL || l->text == NULL || strcmp(l->text, "none") != 0;
	}
	sl_client_stats_free(st);
	return yes;
}

static int cmd_promote(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)p;
	(void)o;
	char hid[33];
	/* promote of a primary changes nothing (and answers OK, so that
	 * scripts may repeat it): say so */
	int serves;
	int already = is_primary(c, &serves);
	int rc = sl_client_promote(c->client, hid);
	if (rc != SL_OK) {
		return fail(c, "promote", rc);
	}
	/* a primary nobody can follow: said, not only logged by the node */
	out_hid(c, hid,
	        already   ? "already the primary, nothing changed"
	        : !serves ? "it serves no fetches (started without --repl-listen): no follower "
	                    "can follow it until it is restarted with --repl-listen URL"
	                  : NULL);
	return CLI_OK;
}

static int cmd_follow(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)o;
	char hid[33], url[1024];
	snprintf(url, sizeof url, "%s%s", strstr(p->v[0], "://") ? "" : "tcp://", p->v[0]);
	int rc = sl_client_follow(c->client, url, hid);
	if (rc != SL_OK) {
		return fail(c, "follow", rc);
	}
	out_hid(c, hid, NULL);
	return CLI_OK;
}

static int cmd_wait(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)o;
	uint64_t n, tmo;
	if (parse_u64(p->v[0], &n) || n > 1000 || parse_u64(p->v[1], &tmo) || tmo > 86400000) {
		return usage_error("usage: %s", "wait REPLICAS TIMEOUT_MS");
	}
	uint32_t acks = 0;
	int rc = sl_client_wait(c->client, (uint32_t)n, 0, (uint32_t)tmo, &acks);
	if (rc != SL_OK) {
		return fail(c, "wait", rc);
	}
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "acks", json_integer(acks));
		out_json(j);
	} else {
		char line[32];
		snprintf(line, sizeof line, "%u\n", acks);
		out_str(line);
	}
	if (acks < n) {
		errf("shiplog: wait: only %u of %llu followers within %llu ms\n", acks,
		     (unsigned long long)n, (unsigned long long)tmo);
		return CLI_ERROR;
	}
	return CLI_OK;
}

static int cmd_pause_writes(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)o;
	uint64_t ms;
	if (parse_u64(p->v[0], &ms) || ms > 86400000) {
		return usage_error("usage: %s", "pause-writes MS (0 to 86400000; 0 resumes)");
	}
	uint64_t seq = 0;
	int rc = sl_client_pause_writes(c->client, (uint32_t)ms, &seq);
	if (rc != SL_OK) {
		return fail(c, "pause-writes", rc);
	}
	if (c->json) {
		json_t *j = json_object();
		json_object_set_new(j, "seq", json_integer((json_int_t)seq));
		json_object_set_new(j, "paused_ms", json_integer((json_int_t)ms));
		out_json(j);
	} else {
		char line[128];
		if (ms > 0) {
			snprintf(line, sizeof line,
			         "OK (writes paused for %llu ms; last seq %llu)\n",
			         (unsigned long long)ms, (unsigned long long)seq);
		} else {
			snprintf(line, sizeof line, "OK (writes resumed; last seq %llu)\n",
			         (unsigned long long)seq);
		}
		out_str(line);
	}
	return CLI_OK;
}

static json_t *help_json(void);

static int cmd_help(cli *c, const cli_args *p, const cmd_opts *o)
{
	(void)p;
	(void)o;
	if (c->json) {
		/* one object a command, as every other command under --json */
		out_json(help_json());
	} else {
		cli_help_commands(stdout);
	}
	return CLI_OK;
}

/* ---- the command table -------------------------------------------------- */

typedef struct command {
	const char *name;
	int min, max; /* positional arguments; max -1: any number */
	unsigned opts;
	int needs_server;
	int (*fn)(cli *c, const cli_args *p, const cmd_opts *o);
	const char *usage;
	const char *what;
} command;

static const command commands[] = {
    {"get", 1, 1, 0, 1, cmd_get, "get KEY",
     "print KEY's value: its exact bytes (a newline is added only on a terminal)"},
    {"put", 2, 2, OPT_TTL, 1, cmd_put, "put [--ttl MS] KEY VALUE|-",
     "store VALUE under KEY ('-': read the value from stdin, binary-safe); --ttl: expire "
     "after MS ms; prints the write's seq"},
    {"del", 1, 1, 0, 1, cmd_del, "del KEY", "delete KEY; prints the tombstone's seq"},
    {"mget", 1, -1, 0, 1, cmd_mget, "mget KEY...",
     "print each KEY's value on its own line (escaped; (nil) when absent, (error) when "
     "the server could not read it); exit 1 if any is absent, 2 if any gave an error"},
    {"scan", 0, 1, OPT_LIMIT | OPT_VALUES, 1, cmd_scan, "scan [PREFIX] [--limit N] [--values]",
     "list keys starting with PREFIX (all keys without one) in byte order, one per line "
     "(escaped); --values: KEY<TAB>VALUE"},
    {"stats", 0, 0, 0, 1, cmd_stats, "stats", "the server's statistics, one 'name: value' a line"},
    {"compact", 0, 0, 0, 1, cmd_compact, "compact",
     "run a full compaction and wait for it (timeout 10 min unless --timeout); "
     "print what it reclaimed and any dead bytes it had to leave"},
    {"ping", 0, 0, 0, 1, cmd_ping, "ping", "round trip that touches no storage: prints PONG"},
    {"digest", 0, 0, 0, 1, cmd_digest, "digest",
     "the node's content digest over its live keys and values (32 hex digits): equal on "
     "nodes with equal contents"},
    {"promote", 0, 0, 0, 1, cmd_promote, "promote",
     "turn this follower into a primary with a new history id"},
    {"follow", 1, 1, 0, 1, cmd_follow, "follow URL",
     "make this node a follower of the primary whose replication URL is URL"},
    {"wait", 2, 2, 0, 1, cmd_wait, "wait REPLICAS TIMEOUT_MS",
     "like Redis WAIT: print how many followers have every write so far durably, waiting "
     "up to TIMEOUT_MS for REPLICAS of them (exit 2 when fewer)"},
    {"pause-writes", 1, 1, 0, 1, cmd_pause_writes, "pause-writes MS",
     "on a primary: refuse writes for MS milliseconds (0: resume now), serving reads and "
     "its followers' fetches; prints the last seq, at or above every write made before "
     "(a failover's fence: cluster/failover uses it)"},
    {"help", 0, 1, 0, 0, cmd_help, "help", "this list"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

const char *const cli_command_names[] = {
    "get",     "put",    "del",  "mget",         "scan", "stats", "compact", "ping", "digest",
    "promote", "follow", "wait", "pause-writes", "help", "quit",  "exit",    NULL};

/* Writes text word-wrapped to 78 columns, each line indented by indent. */
static void wrap(FILE *f, const char *text, int indent)
{
	const char *p = text;
	while (*p) {
		int room = 78 - indent, n = (int)strlen(p);
		if (n > room) {
			n = room;
			while (n > 0 && p[n] != ' ') {
				n--;
			}
			if (n == 0) {
				n = room;
			}
		}
		fprintf(f, "%*s%.*s\n", indent, "", n, p);
		p += n;
		while (*p == ' ') {
			p++;
		}
	}
}

/* quit and exit are the prompt's own, not in the table: listed by both
 * helps from here */
static const command quit_cmd = {
    "quit", 0, 0, 0, 0, NULL, "quit, exit", "(at the prompt) leave it; so does EOF"};

void cli_help_commands(FILE *f)
{
	fprintf(f, "commands:\n");
	for (size_t i = 0; i <= NCOMMANDS; i++) {
		const command *k = i < NCOMMANDS ? &commands[i] : &quit_cmd;
		fprintf(f, "  %s\n", k->usage);
		wrap(f, k->what, 6);
	}
	fprintf(f, "Options after the command name may come anywhere among its arguments;\n"
	           "\"--\" ends them (shiplog put -- KEY --value-starting-with-dashes).\n");
}

/* help under --json: {"commands": [{"name", "usage", "what"} ...]} */
static json_t *help_json(void)
{
	json_t *list = json_array();
	for (size_t i = 0; i <= NCOMMANDS; i++) {
		const command *k = i < NCOMMANDS ? &commands[i] : &quit_cmd;
		json_array_append_new(list, json_pack("{s:s, s:s, s:s}", "name", k->name, "usage",
		                                      k->usage, "what", k->what));
	}
	return json_pack("{s:o}", "commands", list);
}

static int run_command(cli *c, const cli_args *a);

int cli_command(cli *c, const cli_args *a)
{
	err_len = 0;
	err_said[0] = '\0';
	json_printed = 0;
	int rc = run_command(c, a);
	if (c->json && rc != CLI_OK && !json_printed && err_len > 0) {
		out_json(err_json());
		fflush(stdout);
	}
	return rc;
}

static int run_command(cli *c, const cli_args *a)
{
	const command *cmd = NULL;
	for (size_t i = 0; i < NCOMMANDS; i++) {
		if (!strcmp(a->v[0], commands[i].name)) {
			cmd = &commands[i];
		}
	}
	if (!cmd) {
		return usage_error("unknown command '%s'", a->v[0]);
	}
	char *pv[a->n > 0 ? a->n : 1];
	size_t pl[a->n > 0 ? a->n : 1];
	cli_args pos = {0, pv, pl};
	cmd_opts o;
	if (split_opts(a, cmd->opts, &pos, &o)) {
		return CLI_ERROR;
	}
	if (pos.n < cmd->min || (cmd->max >= 0 && pos.n > cmd->max)) {
		return usage_error("usage: %s", cmd->usage);
	}
	if (cmd->needs_server && connect_server(c, cmd->name) != SL_OK) {
		return CLI_ERROR;
	}
	out_failed = 0;
	out_errno = 0;
	int rc = cmd->fn(c, &pos, &o);
	if (fflush(stdout) != 0) {
		out_fail(errno);
	}
	if (out_failed) {
		/* at the prompt too: a piped prompt ended with status 2 and no word
		 * of why */
		errf("shiplog: %s: writing to stdout: %s\n", cmd->name,
		     strerror(out_errno ? out_errno : EIO));
		clearerr(stdout);
		return CLI_ERROR;
	}
	return rc;
}

/* ---- main --------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: shiplog [-a URL] [--json] [--timeout MS] [--acks N] [--min-seq S] "
	        "[COMMAND ARGS...]\n"
	        "\n"
	        "The command-line client of a shiplogd node.  Without a command: an interactive\n"
	        "prompt (history, tab completion of commands, \"a b\" / 'a b' quoting; quit or\n"
	        "EOF leaves); with stdin not a terminal it reads one command a line instead.\n"
	        "\n"
	        "global options (before the command):\n"
	        "  -a, --url URL     the server (default " SL_CLIENT_DEFAULT_URL "); HOST:PORT\n"
	        "                    means tcp://HOST:PORT\n"
	        "  --json            print one JSON object per command (see below)\n"
	        "  --timeout MS      per-request timeout (default %d; compact: 10 min unless "
	        "given)\n"
	        "  --acks N          writes: wait (up to the timeout) until N followers have\n"
	        "                    the write durably; fewer: exit 2 (the write WAS made)\n"
	        "  --min-seq S       reads: answer only once the node has applied seq S (asked\n"
	        "                    again while it is behind; an error when it has not\n"
	        "                    within the timeout)\n"
	        "  -h, --help        this text\n"
	        "\n",
	        SL_CLIENT_DEFAULT_TIMEOUT_MS);
	cli_help_commands(f);
	fprintf(
	    f,
	    "\n"
	    "JSON output: put/del {\"seq\": N} (del of an absent key: {\"seq\": null}; with\n"
	    "--acks also \"acks\": N); get {\"key\": K, \"value\": V, \"seq\": N} (value null "
	    "when\n"
	    "absent); mget {\"items\": [{\"key\", \"value\", \"seq\"[, \"error\"]}...], \"found\": "
	    "N,\n"
	    "\"missing\": M, \"errors\": E}; digest {\"digest\", \"keys\"}; promote/follow\n"
	    "{\"ok\": true, \"history_id\"}; wait {\"acks\": N};\n"
	    "scan {\"items\": [{\"key\"[, \"value\" | \"error\"]}...], \"count\": N[, \"errors\": "
	    "E]};\n"
	    "stats {name: value...}; ping {\"pong\": true, \"latency_us\": N};\n"
	    "compact {\"ok\": true, \"reclaimed_bytes\": N, \"segments_before\": N,\n"
	    "  \"segments_after\": N, \"dead_bytes_left\": N}; a command that fails without\n"
	    "an object of its own (and a piped line refused): {\"error\": MESSAGE}.\n"
	    "Keys and values that are valid UTF-8 are JSON strings; any other is given\n"
	    "instead as \"key_base64\" / \"value_base64\" (RFC 4648 base64 with padding).\n"
	    "\n"
	    "exit status: 0 ok, 1 not found (get, del, or any key of mget), 2 error\n"
	    "(message on stderr; connection errors name the server's URL).\n");
}

/* A bad global option: the message on stderr, and with --json an error
 * object on stdout as for any command that fails. */
static int opt_error(const cli *c, const char *fmt, const char *arg)
{
	char msg[512];
	snprintf(msg, sizeof msg, fmt, arg);
	err_len = 0;
	err_said[0] = '\0';
	errf("shiplog: %s (see shiplog --help)\n", msg);
	if (c->json) {
		out_json(err_json());
	}
	return CLI_ERROR;
}

static int parse_num_opt(const char *s, uint64_t max, uint64_t *out)
{
	return parse_u64(s, out) || *out > max ? -1 : 0;
}

/* Whether --json is among the global options (before the command), so
 * that an error in one before it is an object too. */
static int wants_json(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		if (!strcmp(s, "--json")) {
			return 1;
		}
		if (!strcmp(s, "--")) {
			return 0;
		}
		/* the options that take a value, as getopt_long takes them:
		 * abbreviated too (--time), unless given as --opt=value */
		static const char *const valued[] = {"--url", "--timeout", "--acks", "--min-seq"};
		int takes = !strcmp(s, "-a");
		for (size_t v = 0; v < sizeof valued / sizeof valued[0] && !takes; v++) {
			size_t n = strlen(s);
			takes = n > 2 && strchr(s, '=') == NULL && strncmp(valued[v], s, n) == 0;
		}
		if (takes) {
			i++;
		} else if (s[0] != '-') {
			return 0; /* the command */
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"url", required_argument, NULL, 'a'},
	    {"json", no_argument, NULL, 'j'},
	    {"timeout", required_argument, NULL, 't'},
	    {"acks", required_argument, NULL, 'A'},
	    {"min-seq", required_argument, NULL, 'm'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static char url_buf[1024];
	cli c = {.url = SL_CLIENT_DEFAULT_URL, .timeout_ms = SL_CLIENT_DEFAULT_TIMEOUT_MS};
	/* A closed stdout (`shiplog scan | head -1`) is a failed write, exit
	 * 2 with a message, not a silent death by SIGPIPE (exit 141). */
	signal(SIGPIPE, SIG_IGN);
	c.json = wants_json(argc, argv);
	opterr = 0; /* its messages are ours (opt_error), for --json */
	uint64_t v;
	int ch;
	/* "+": stop at the command name; its arguments are not ours.  ":": a
	 * missing argument is told from an unknown option. */
	while ((ch = getopt_long(argc, argv, "+:a:h", longopts, NULL)) != -1) {
		/* the option at fault: a short one inside a cluster (-jx) by
		 * its letter */
		char shortopt[3] = {'-', (char)optopt, '\0'};
		/* glibc: an unknown short option sets optopt to its letter, an
		 * unknown long one to 0; a missing value leaves optind past the
		 * option, long or short */
		const char *bad = (ch == '?' && optopt != 0) ||
		                          (ch == ':' && strncmp(argv[optind - 1], "--", 2) != 0)
		                      ? shortopt
		                      : argv[optind - 1];
		switch (ch) {
		case 'a':
			if (!optarg[0]) {
				return opt_error(&c, "-a needs a URL%s", "");
			}
			c.url = optarg;
			if (!strstr(optarg, "://")) { /* HOST:PORT means tcp:// */
				if (!strchr(optarg, ':')) {
					return opt_error(
					    &c,
					    "-a '%s': no port (HOST:PORT, or a URL such "
					    "as tcp://127.0.0.1:7420)",
					    optarg);
				}
				snprintf(url_buf, sizeof url_buf, "tcp://%s", optarg);
				c.url = url_buf;
			}
			break;
		case 'j':
			c.json = 1;
			break;
		case 't':
			if (parse_num_opt(optarg, 86400000, &v)) {
				return opt_error(&c, "bad value for --timeout: '%s'", optarg);
			}
			if (v == 0) {
				return opt_error(&c, "--timeout must be at least 1 ms%s", "");
			}
			c.timeout_ms = (int)v;
			c.timeout_set = 1;
			break;
		case 'A':
			if (parse_num_opt(optarg, 1000, &v)) {
				return opt_error(&c, "bad value for --acks: '%s'", optarg);
			}
			c.acks = (uint32_t)v;
			break;
		case 'm':
			if (parse_num_opt(optarg, UINT64_MAX, &v)) {
				return opt_error(&c, "bad value for --min-seq: '%s'", optarg);
			}
			c.min_seq = v;
			break;
		case 'h':
			usage(stdout);
			return CLI_OK;
		case ':':
			return opt_error(&c, "option '%s' needs a value", bad);
		default:
			return opt_error(&c, "unknown option '%s'", bad);
		}
	}
	int rc;
	if (optind >= argc) {
		rc = cli_repl(&c);
	} else {
		int n = argc - optind;
		size_t len[n];
		for (int i = 0; i < n; i++) {
			len[i] = strlen(argv[optind + i]);
		}
		cli_args a = {n, argv + optind, len};
		rc = cli_command(&c, &a);
	}
	sl_client_close(c.client);
	return rc;
}
