#!/usr/bin/env bash
# redis_repl_tput.sh — what two replicas cost a Redis primary's SET
# throughput on this machine: the shape of `shiplog-bench repl --figures
# tput`, for Redis, to quote beside it (the Redis anchor measures no such
# figure).
#
# A primary and two replicas, all `--appendonly yes --appendfsync everysec`
# (as the anchor's primary and replica), on free ports in a temporary
# directory; 1M SETs first (the keyspace filled), then ROUNDS (default 3)
# rounds of `redis-benchmark -t set -c 50 -d 100 -r 1000000 -n N` (default
# 300000) with the replicas streaming and with them stopped by SIGSTOP, in
# alternating order, as shiplog-bench does with its followers.  Prints each
# round and the medians.  Servers are stopped by pid.
set -eu
N=${N:-300000}
ROUNDS=${ROUNDS:-3}
# shellcheck source-path=SCRIPTDIR source=benchlib.sh
. "$(dirname "$0")/benchlib.sh"
bench_init redisrepl

# start_redis NAME [ARGS…] → sets RPORT, RPID
start_redis() {
	local name=$1
	shift
	RPORT=$(free_port)
	mkdir -p "$T/$name"
	redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$T/$name" --save '' \
		--daemonize no --appendonly yes --appendfsync everysec "$@" >"$T/$name.log" 2>&1 &
	RPID=$!
	PIDS+=("$RPID")
	bench_wait_up "redis-server $name" "$T/$name.log" "$RPORT"
}

start_redis primary
P=$RPORT
start_redis replica1 --replicaof 127.0.0.1 "$P"
R1=$RPID
start_redis replica2 --replicaof 127.0.0.1 "$P"
R2=$RPID

# online: both replicas linked and at the primary's offset
in_sync() {
	local info
	info=$(redis-cli -p "$P" info replication | tr -d '\r')
	[ "$(grep -c 'state=online' <<<"$info")" = 2 ] || return 1
	local off
	off=$(sed -n 's/^master_repl_offset://p' <<<"$info")
	[ "$(grep -o 'offset=[0-9]*' <<<"$info" | sort -u)" = "offset=$off" ]
}
wait_sync() {
	for _ in $(seq 600); do
		in_sync && return 0
		sleep 0.1
	done
	echo "replicas did not catch up"
	exit 1
}

set_rate() {
	redis-benchmark -p "$P" -t set -c 50 -n "$1" -d 100 -r 1000000 --csv |
		awk -F'"' '/^"SET"/ {print $4}'
}

wait_sync
set_rate 1000000 >/dev/null
wait_sync
with=()
without=()
cost=()
for ((i = 0; i < ROUNDS; i++)); do
	for k in 0 1; do
		if (((i + k) % 2 == 0)); then
			w=$(set_rate "$N")
			wait_sync
		else
			kill -STOP "$R1" "$R2"
			wo=$(set_rate "$N")
			kill -CONT "$R1" "$R2"
			wait_sync
		fi
	done
	with+=("$w")
	without+=("$wo")
	c=$(python3 -c "print(f'{100 * (1 - $w / $wo):.1f}')")
	cost+=("$c")
	echo "round $((i + 1)): SET $w/s with 2 replicas, $wo/s without: replication costs $c%"
done
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "redis $(redis-server --version | grep -o 'v=[0-9.]*'): SET $(med "${with[@]}")/s with 2 replicas, $(med "${without[@]}")/s without (medians of $ROUNDS rounds): replication costs $(med "${cost[@]}")% (median of the rounds' costs)   (50 clients, -P 1, 100 B, 1M keyspace)"
