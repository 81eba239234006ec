/*
 * log.c — timestamped, levelled log lines on stderr for shiplogd.  Exists so
 * that every module (and the engine, through sl_options.log_fn) writes the
 * same format, and so that concurrent threads never interleave half lines.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = SL_LOG_INFO;

static const char *const names[] = {"debug", "info", "warn", "error", "off"};

void sl_log_set_level(int level)
{
	atomic_store(&log_level, level);
}

int sl_log_get_level(void)
{
	return atomic_load(&log_level);
}

int sl_log_parse_level(const char *s)
{
	if (s == NULL) {
		return -1;
	}
	for (int i = 0; i <= SL_LOG_OFF; i++) {
		if (strcasecmp(s, names[i]) == 0) {
			return i;
		}
	}
	if (strcasecmp(s, "warning") == 0) {
		return SL_LOG_WARN;
	}
	return -1;
}

const char *sl_log_level_name(int level)
{
	if (level < 0 || level > SL_LOG_OFF) {
		return "?";
	}
	return names[level];
}

void sl_log(int level, const char *fmt, ...)
{
	if (level < atomic_load(&log_level) || level >= SL_LOG_OFF) {
		return;
	}
	char line[2048];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %d %-5s ", ts.tv_nsec / 1000000,
	                      (int)getpid(), names[level]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0) {
		m = 0;
	}
	n += (size_t)m;
	if (n > sizeof(line) - 2) {
		n = sizeof(line) - 2; /* truncated */
	}
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
}

void sl_log_limited(sl_log_limit *lim, int level, const char *fmt, ...)
{
	if (level < atomic_load(&log_level) || level >= SL_LOG_OFF) {
		return;
	}
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	unsigned long long now =
	    (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
	unsigned long long last = atomic_load(&lim->last_ns);
	if ((last != 0 && now - last < 10000000000ull) ||
	    !atomic_compare_exchange_strong(&lim->last_ns, &last, now)) {
		atomic_fetch_add(&lim->held, 1);
		return;
	}
	char msg[1536];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	unsigned long long held = atomic_exchange(&lim->held, 0);
	if (held > 0) {
		sl_log(level, "%s (and %llu more like it since the last such line)", msg, held);
	} else {
		sl_log(level, "%s", msg);
	}
}
