# shellcheck shell=bash
# Shared by the cluster tests (sourced). Usage: test_*.sh SOURCE_DIR BUILD_DIR
SRC=$(cd "${1:?source dir}" && pwd)
BLD=$(cd "${2:?build dir}" && pwd)
CLI=$BLD/shiplog
T=$(mktemp -d "${TMPDIR:-/tmp}/shiplog-cluster-test.XXXXXX")
D=$T/cluster
FAILS=0
PIDS_SEEN=()

say() { printf '== [%ss] %s\n' "$SECONDS" "$*"; }
fail() {
	printf 'FAIL: %s\n' "$*" >&2
	FAILS=$((FAILS + 1))
}
die() {
	printf 'FATAL: %s\n' "$*" >&2
	exit 1
}
# cl SCRIPT ARGS...: run a cluster script on the test's cluster
cl() {
	local s=$1
	shift
	"$SRC/cluster/$s" --dir "$D" "$@"
}
cleanup() {
	local rc=$? j
	touch "$T/stop"
	for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
	wait 2>/dev/null || true
	"$SRC/cluster/down" --dir "$D" --wipe >/dev/null 2>&1 || true
	if [ "$rc" != 0 ] || [ "$FAILS" != 0 ]; then
		for f in "$D"/n*/shiplogd.log; do
			[ -f "$f" ] || continue
			echo "---- last lines of $f"
			tail -n 15 "$f"
		done
	fi
	rm -rf "$T"
}
trap cleanup EXIT
trap "exit 143" TERM INT HUP

# free_base N: a base port with PORT..PORT+N-1, +100, +200 all free, all
# below the kernel's ephemeral range: there a port can be the local end of
# another test's connection, which `ss -l` does not show but bind() refuses.
# A port with a socket in any state counts as busy: a closed connection's
# TIME_WAIT end keeps a plain bind() (one without SO_REUSEADDR) refused for a
# minute: a CI run picked, for its second cluster, the first cluster's base
# again, and its port holder failed to bind over that cluster's closed
# connections. Each call also seeds RANDOM from the clock and its own pid.
free_base() {
	local n=$1 tries base i p busy lo
	RANDOM=$((10#$(date +%N) % 32768 + BASHPID))
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	((lo > 21000)) || lo=50000 # a low ephemeral range: no way around it
	for ((tries = 0; tries < 200; tries++)); do
		base=$((20000 + (RANDOM * 7 + $$) % (lo - 20000 - 200 - n)))
		busy=0
		for ((i = 0; i < n; i++)); do
			for p in $((base + i)) $((base + 100 + i)) $((base + 200 + i)); do
				if ss -Htan "sport = :$p" | grep -q .; then busy=1; fi
			done
		done
		[ "$busy" = 0 ] && {
			echo "$base"
			return 0
		}
	done
	die "no free ports"
}

# status_json: cluster/status --json
status_json() { cl status --json; }
# jq_py EXPR: evaluate a python expression on the status JSON (as j)
jq_py() { status_json | python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
node_url() { jq_py "[n['url'] for n in j['nodes'] if n['name']=='$1'][0]"; }
primary_name() { jq_py "[n['name'] for n in j['nodes'] if n['role']=='primary' and n['configured_role']=='primary'][0]"; }

# writer URL PREFIX OUT: put PREFIX1, PREFIX2, ... with --acks 1 until the
# file $T/stop exists or 5 writes in a row fail; the keys acknowledged go to OUT
writer() {
	local url=$1 prefix=$2 out=$3 i=0 fails=0
	: >"$out"
	while [ ! -e "$T/stop" ] && [ "$fails" -lt 5 ]; do
		i=$((i + 1))
		if "$CLI" -a "$url" --timeout 2000 --acks 1 put "$prefix$i" "value-$prefix$i" >/dev/null 2>&1; then
			echo "$prefix$i" >>"$out"
			fails=0
			# keep the machine (2 cores, shared) usable: ~100 writes/s
			sleep 0.01
		else
			fails=$((fails + 1))
		fi
	done
}

# check_acked URL FILE: every key in FILE reads back on URL with its value
# (mget in batches of 500)
check_acked() {
	local url=$1 file=$2 n lost
	n=$(wc -l <"$file")
	# shellcheck disable=SC2094 # both only read FILE
	lost=$(
		xargs -n 500 "$CLI" -a "$url" mget <"$file" 2>&1 |
			paste -d ' ' "$file" - | awk '$2 != "value-" $1 { print }' || true
	)
	if [ -z "$lost" ]; then
		echo "  all $n acknowledged writes present on $url"
	else
		head -n 5 <<<"$lost" | sed 's/^/  lost: /' >&2
		fail "$(wc -l <<<"$lost") of $n writes acknowledged with --acks 1 are lost on $url"
	fi
}

# digests_equal NAME...: the nodes' digests are all equal (after waiting for
# them to converge, up to 60 s)
digests_equal() {
	local n d first end=$((SECONDS + 60)) same
	while :; do
		same=1 first=''
		for n in "$@"; do
			d=$(timeout 5 "$CLI" -a "$(node_url "$n")" digest 2>/dev/null) || d="unreachable"
			[ -z "$first" ] && first=$d
			[ "$d" = "$first" ] || same=0
		done
		if [ "$same" = 1 ] && [ "$first" != unreachable ]; then
			echo "  digests equal on $*: $first"
			return 0
		fi
		[ "$SECONDS" -ge "$end" ] && break
		sleep 0.5
	done
	for n in "$@"; do
		echo "  $n: $(timeout 5 "$CLI" -a "$(node_url "$n")" digest 2>&1)" >&2
	done
	fail "digests differ on $*"
}

remember_pids() {
	local p
	for p in $(jq_py "' '.join(str(n['pid']) for n in j['nodes'] if n['pid'])"); do
		PIDS_SEEN+=("$p")
	done
}

# no_leftovers PORTS...: no process we saw, no listener on PORTS
no_leftovers() {
	local p
	for p in "${PIDS_SEEN[@]}"; do
		if [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "$D"; then
			fail "pid $p still runs after down"
		fi
	done
	for p in "$@"; do
		[ -n "$p" ] || continue
		if ss -Htln "sport = :$p" | grep -q .; then fail "port $p still listening after down"; fi
	done
}
