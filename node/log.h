/*
 * log.h — shiplogd's logger: one line per event on stderr,
 * "2024-11-26T13:15:00.123Z 12345 info  message".  Thread-safe (each line is
 * built in a buffer and written with one write(2)).
 */
#ifndef SL_NODE_LOG_H
#define SL_NODE_LOG_H

enum { SL_LOG_DEBUG, SL_LOG_INFO, SL_LOG_WARN, SL_LOG_ERROR, SL_LOG_OFF };

/* Lines below level are dropped.  Default SL_LOG_INFO. */
void sl_log_set_level(int level);
int sl_log_get_level(void);

/* "debug", "info", "warn"/"warning", "error", "off" → level; -1 if unknown. */
int sl_log_parse_level(const char *s);
const char *sl_log_level_name(int level);

void sl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A log line that may repeat once per request (a full disk): the first
 * is written, then at most one per 10 s, saying how many were held back.
 * One static sl_log_limit per call site. */
typedef struct sl_log_limit {
	_Atomic unsigned long long last_ns; /* 0: never logged */
	_Atomic unsigned long long held;    /* held back since the last line */
} sl_log_limit;
void sl_log_limited(sl_log_limit *lim, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sl_log_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_log_info(...)  sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_log_warn(...)  sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_log_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

#endif
