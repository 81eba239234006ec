#!/usr/bin/env bash
# test_fdlimit.sh BUILD_DIR — clients that open more connections than the
# server's descriptor limit allows do not starve its store: shiplogd under
# `ulimit -n 256` (soft and hard: it cannot raise it) takes at most half
# of them as connections, refuses the rest with a log line, and every
# write meanwhile (4 KiB segments: a new segment file every other put)
# succeeds.  Before, 400 connections took every descriptor and 17 of 20
# such puts failed with "I/O error" (the segment's open got EMFILE).
# Needs python3 (exit 77: skipped).  Every process it starts is stopped by
# pid.
set -u
B=$(cd "${1:-$(dirname "$0")/../../build}" && pwd)
command -v python3 >/dev/null || { echo "skipped: needs python3"; exit 77; }
D=$B/test-tmp/test_fdlimit.$$
mkdir -p "$D"
SRV_PID='' HOG_PID=''
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
cleanup() {
	for p in $HOG_PID $SRV_PID; do
		kill "$p" 2>/dev/null
		for _ in $(seq 100); do alive "$p" || break; sleep 0.05; done
		kill -9 "$p" 2>/dev/null
	done
	wait
	rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fails=0
ok() { echo "ok   $1"; }
bad() { fails=$((fails + 1)); echo "FAIL $1"; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=tcp://127.0.0.1:$PORT
(ulimit -n 256 && exec "$B/shiplogd" --dir "$D/data" --listen "$URL" --repl-listen none \
	--segment-bytes 4k --log-level info) 2>"$D/log" &
SRV_PID=$!
for _ in $(seq 200); do "$B/shiplog" -a "$URL" --timeout 500 ping >/dev/null 2>&1 && break; sleep 0.05; done
"$B/shiplog" -a "$URL" ping >/dev/null || { bad "the server did not start"; cat "$D/log"; exit 1; }

# one client connected before: the CLI reading commands from a fifo
mkfifo "$D/in"
"$B/shiplog" -a "$URL" --timeout 3000 <"$D/in" >"$D/cli.out" 2>&1 &
CLI_PID=$!
exec 3>"$D/in"
echo ping >&3
for _ in $(seq 100); do grep -q PONG "$D/cli.out" && break; sleep 0.05; done

# 400 connections, each past the handshake, held open
python3 - "$PORT" >"$D/hog.out" 2>&1 3>&- <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
socks = []
for i in range(400):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(bytes([0, ord('S'), ord('P'), 0, 0, 0x30, 0, 0]))
        socks.append(s)
    except OSError:
        pass
print("open", len(socks), flush=True)
time.sleep(60)
PY
HOG_PID=$!
for _ in $(seq 100); do grep -q open "$D/hog.out" && break; sleep 0.1; done
sleep 0.5
val=$(head -c 2048 /dev/zero | tr '\0' v)
for i in $(seq 20); do
	echo "put k$i $val" >&3
done
exec 3>&-
wait "$CLI_PID"
if grep -qi "error" "$D/cli.out" || [ "$(grep -c . "$D/cli.out")" != 21 ]; then
	bad "puts failed beside 400 connections: $(grep -i error "$D/cli.out" | head -3)"
else
	ok "20 puts beside 400 connections, each starting a segment ($(wc -l <"$D/cli.out") lines)"
fi
grep -q "refusing connections" "$D/log" && ok "the refused connections are logged" ||
	bad "no log line for the refused connections"
grep -q "I/O error" "$D/log" && bad "the store logged an I/O error" || ok "the store logged no I/O error"
kill "$HOG_PID"; wait "$HOG_PID" 2>/dev/null; HOG_PID=''
sleep 0.3
[ "$("$B/shiplog" -a "$URL" get k20)" = "$val" ] && ok "served again once they closed" ||
	bad "k20 not read back after the connections closed"
[ "$fails" = 0 ] && echo "test_fdlimit: all passed"
exit $((fails > 0))
