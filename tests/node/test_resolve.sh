#!/usr/bin/env bash
# test_resolve.sh BUILD_DIR — a primary's name that the resolver never
# answers for: `shiplog --timeout` and a follower's fetch thread give up on
# the lookup within their deadlines (sl_resolve) instead of waiting for the
# resolver's own timeouts (5 s a try, two tries: 10 s).
#
# Runs in a network namespace of its own whose resolv.conf (ip netns exec
# mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf) names a "DNS
# server" on the namespace's 127.0.0.1:53 that reads queries and never
# answers.  Needs root and iproute2 (exit 77: skipped).  Every process it
# starts is stopped by pid, and the namespace and its /etc/netns entry are
# removed, on exit.
set -u
B=$(cd "${1:-$(dirname "$0")/../../build}" && pwd)
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v python3 >/dev/null ||
	! command -v ss >/dev/null; then
	echo "skipped: needs root, iproute2 and python3"
	exit 77
fi
# names must go to resolv.conf's server (nss-resolve would answer .invalid
# itself, at once)
if ! grep -qE '^hosts:.*\bdns\b' /etc/nsswitch.conf 2>/dev/null ||
	grep -qE '^hosts:.*\bresolve\b' /etc/nsswitch.conf; then
	echo "skipped: hosts are not looked up through resolv.conf here"
	exit 77
fi
NS=shiplog-dns-$$
if ! ip netns add "$NS" 2>/dev/null; then
	echo "skipped: cannot create network namespaces here"
	exit 77
fi
D=$B/test-tmp/test_resolve.$$
mkdir -p "$D"
DNS_PID='' SRV_PID=''
# alive PID: running (a zombie not yet reaped is not)
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
cleanup() {
	for p in $SRV_PID $DNS_PID; do
		kill "$p" 2>/dev/null
		for _ in $(seq 100); do alive "$p" || break; sleep 0.05; done
		kill -9 "$p" 2>/dev/null
	done
	wait
	ip netns del "$NS" 2>/dev/null
	rm -rf "/etc/netns/$NS" "$D"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fails=0
ok() { echo "ok   $1"; }
bad() {
	fails=$((fails + 1))
	echo "FAIL $1"
}
inns() { ip netns exec "$NS" "$@"; }
# inns_bg VAR CMD... : CMD in the namespace, in the background, a child of
# this shell (ip netns exec execs it), its pid in VAR
inns_bg() {
	local var=$1
	shift
	ip netns exec "$NS" "$@" >/dev/null &
	printf -v "$var" '%s' "$!"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

mkdir -p "/etc/netns/$NS"
echo "nameserver 127.0.0.1" >"/etc/netns/$NS/resolv.conf"
inns ip link set lo up
inns_bg DNS_PID python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    s.recvfrom(4096)
'
# the silent server is up once its port is bound
for _ in $(seq 100); do
	inns ss -Hlun 'sport = :53' | grep -q . && break
	sleep 0.05
done
inns ss -Hlun 'sport = :53' | grep -q . || {
	bad "the silent resolver did not start"
	exit 1
}

# 1. the CLI: --timeout 500 bounds the lookup
t0=$(now_ms)
inns "$B/shiplog" -a tcp://primary.invalid:7420 --timeout 500 ping >"$D/out" 2>"$D/err"
rc=$? took=$(($(now_ms) - t0))
if [ "$rc" = 2 ] && grep -q "cannot resolve 'primary.invalid': no answer within 500 ms" "$D/err" &&
	[ "$took" -lt 3000 ]; then
	ok "shiplog --timeout 500 against a silent resolver: status 2 in $took ms, says why"
else
	bad "shiplog --timeout 500 against a silent resolver: status $rc in $took ms, stderr: $(cat "$D/err")"
fi

# 2. a follower of that name: says why in its stats, and stops at once
port=$(inns python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# its --repl-listen port the same as the primary's: shiplogd looks the name
# up to see whether it would follow itself (sl_repl_same_endpoint)
rport=$(inns python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t0=$(now_ms)
inns_bg SRV_PID "$B/shiplogd" --dir "$D/f" --listen "tcp://127.0.0.1:$port" \
	--repl-listen "tcp://127.0.0.1:$rport" --follow "tcp://primary.invalid:$rport" \
	--log-level info 2>"$D/log"
for _ in $(seq 300); do
	inns "$B/shiplog" -a "127.0.0.1:$port" --timeout 200 ping >/dev/null 2>&1 && break
	sleep 0.05
done
took=$(($(now_ms) - t0))
if [ "$took" -lt 5000 ]; then
	ok "the follower answers $took ms after its start"
else
	bad "the follower took $took ms to answer"
fi
err=
for _ in $(seq 100); do
	err=$(inns "$B/shiplog" -a "127.0.0.1:$port" --timeout 1000 stats 2>/dev/null | grep '^repl_last_error:')
	case $err in *"cannot resolve 'primary.invalid': no answer within"*) break ;; esac
	sleep 0.1
done
case $err in
*"cannot resolve 'primary.invalid': no answer within"*) ok "the follower's stats say the lookup did not answer" ;;
*) bad "the follower's repl_last_error: '$err'" ;;
esac
sleep 1 # the fetch thread back in a lookup of the name
t0=$(now_ms)
kill "$SRV_PID"
while alive "$SRV_PID" && [ $(($(now_ms) - t0)) -lt 15000 ]; do sleep 0.02; done
took=$(($(now_ms) - t0))
spid=$SRV_PID
SRV_PID=''
wait "$spid" 2>/dev/null
if [ "$took" -lt 2000 ] && grep -q "stopped cleanly" "$D/log" && ! grep -q "did not close" "$D/log" &&
	! grep -q "stopped waiting" "$D/log"; then
	ok "the follower stops cleanly in $took ms"
else
	bad "the follower's stop took $took ms; log: $(tail -3 "$D/log")"
fi

if [ "$fails" -gt 0 ]; then
	echo "test_resolve: $fails failed"
	exit 1
fi
echo "test_resolve: all passed"
