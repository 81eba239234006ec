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

#define sl_log_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_log_info(...)  sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_log_warn(...)  sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_log_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

#endif
