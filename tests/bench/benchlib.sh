# shellcheck shell=bash
# benchlib.sh — sourced by the benchmark scripts beside it: their scratch
# directory, the servers they start (stopped by pid on exit) and free ports.
#
# bench_init NAME: T, a new directory under ${TMPDIR:-/var/tmp}; PIDS, the
# servers to stop (append each one's pid).  On exit every pid in PIDS is
# continued (it may have been SIGSTOPped), killed and waited for, and T is
# removed.
bench_init() {
	T=$(mktemp -d "${TMPDIR:-/var/tmp}/$1.XXXXXX")
	PIDS=()
	trap bench_cleanup EXIT
}

bench_cleanup() {
	for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$T"
}

# free_port: a TCP port on 127.0.0.1 that nothing holds now
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_wait_up WHAT LOG PORT: waits up to 10 s for redis-server (PORT
# given) or, with PORT -, for the shiplogd at $SURL (shiplog ping in $B) to
# answer; else prints "WHAT did not start" and LOG, and exits 1.
bench_wait_up() {
	for _ in $(seq 100); do
		if [ "$3" = - ]; then
			"$B/shiplog" -a "$SURL" --timeout 200 ping >/dev/null 2>&1 && return 0
		else
			redis-cli -p "$3" ping >/dev/null 2>&1 && return 0
		fi
		sleep 0.1
	done
	echo "$1 did not start"
	cat "$2" 2>/dev/null || true
	exit 1
}
