# shellcheck shell=bash
# shellcheck disable=SC2034  # variables set here are read by the scripts
# Shared by the cluster/ scripts (sourced, not run).
#
# A cluster lives in one directory (--dir, default ./cluster-data):
#   DIR/cluster.conf        NODES BASE_PORT SYNC NETNS BIN PRIMARY (+ netns names)
#   DIR/nK/node.conf        NAME IP CLIENT_URL REPL_URL METRICS_URL [NS VETH]
#   DIR/nK/data/            the node's shiplogd --dir
#   DIR/nK/shiplogd.log     its log (appended across restarts)
#   DIR/nK/pid              the pid the scripts started (checked against
#                           /proc/PID/cmdline before any signal)
#   DIR/lock                flock'd while a script changes the cluster
# The one source of truth for roles is PRIMARY in cluster.conf: that node is
# the primary, every other node follows its REPL_URL.

CL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CL_DIR_DEFAULT=./cluster-data
CL_DIR=
CL_BIN_OPT=
CL_CLI_TIMEOUT=${CL_CLI_TIMEOUT:-1500}

cl_say() { printf '%s\n' "$*"; }
cl_warn() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
cl_die() {
	printf '%s: %s\n' "${0##*/}" "$*" >&2
	exit 2
}

# cl_opt ARGS...: handles --dir/--bin at the front of ARGS; sets CL_SHIFT
# (0 when it is not a common option).
cl_opt() {
	CL_SHIFT=0
	case $1 in
	--dir)
		[ $# -ge 2 ] || cl_die "--dir needs a value"
		CL_DIR=$2
		CL_SHIFT=2
		;;
	--dir=*)
		CL_DIR=${1#--dir=}
		CL_SHIFT=1
		;;
	--bin)
		[ $# -ge 2 ] || cl_die "--bin needs a value"
		CL_BIN_OPT=$2
		CL_SHIFT=2
		;;
	--bin=*)
		CL_BIN_OPT=${1#--bin=}
		CL_SHIFT=1
		;;
	esac
}

CL_COMMON_HELP="  --dir DIR     the cluster's directory (default ./cluster-data)
  --bin DIR     where shiplogd and shiplog are (default: the one recorded by
                cluster/up, else REPO/build; env SHIPLOG_BIN)
  -h, --help    this text"

# ---- state -------------------------------------------------------------------

# cl_set_dir create|keep: make CL_DIR absolute (creating the directory with "create")
cl_set_dir() {
	local d=${CL_DIR:-$CL_DIR_DEFAULT}
	if [ "${1:-}" = create ]; then
		mkdir -p "$d" 2>/dev/null || true
		[ -d "$d" ] || cl_die "cannot use directory $d"
	fi
	CL_DIR=$(realpath -m "$d")
}

cl_exists() { [ -f "$CL_DIR/cluster.conf" ]; }

# cl_load: read DIR/cluster.conf (dies when there is no cluster)
cl_load() {
	cl_set_dir keep
	cl_exists || cl_die "no cluster in $CL_DIR (start one with cluster/up --dir $CL_DIR)"
	NODES='' BASE_PORT='' SYNC='' NETNS=0 BIN='' PRIMARY='' NETNS_ID='' BRIDGE='' SUBNET='' HOST_IP=''
	HISTORY=''
	# shellcheck disable=SC1091
	. "$CL_DIR/cluster.conf"
	[ -n "$CL_BIN_OPT" ] && BIN=$(cd "$CL_BIN_OPT" && pwd)
	[ -n "$BIN" ] || BIN=${SHIPLOG_BIN:-$CL_ROOT/build}
}

# cl_kv NAME VALUE: one shell-safe assignment line
cl_kv() { printf '%s=%q\n' "$1" "$2"; }

cl_save() {
	local tmp="$CL_DIR/cluster.conf.tmp"
	{
		echo "# shiplog cluster state, written by cluster/ scripts"
		cl_kv NODES "$NODES"
		cl_kv BASE_PORT "$BASE_PORT"
		cl_kv SYNC "$SYNC"
		cl_kv NETNS "$NETNS"
		cl_kv BIN "$BIN"
		cl_kv PRIMARY "$PRIMARY"
		cl_kv NETNS_ID "$NETNS_ID"
		cl_kv BRIDGE "$BRIDGE"
		cl_kv SUBNET "$SUBNET"
		cl_kv HOST_IP "$HOST_IP"
		cl_kv HISTORY "$HISTORY"
	} >"$tmp"
	mv -f "$tmp" "$CL_DIR/cluster.conf"
}

cl_names() {
	local i
	for ((i = 1; i <= NODES; i++)); do echo "n$i"; done
}

cl_valid_node() {
	local n=$1
	[[ $n =~ ^n[0-9]+$ ]] && [ -f "$CL_DIR/$n/node.conf" ] && return 0
	cl_die "no node '$n' in $CL_DIR (nodes: $(cl_names | paste -sd ' '))"
}

# cl_node NAME: sets N_NAME N_IP N_CLIENT N_REPL N_METRICS N_NS N_VETH N_DATA N_LOG N_DIR
cl_node() {
	N_NAME='' N_IP='' N_CLIENT='' N_REPL='' N_METRICS='' N_NS='' N_VETH=''
	local NAME IP CLIENT_URL REPL_URL METRICS_URL NS VETH
	NS='' VETH=''
	# shellcheck disable=SC1090,SC1091
	. "$CL_DIR/$1/node.conf"
	N_NAME=$NAME N_IP=$IP N_CLIENT=$CLIENT_URL N_REPL=$REPL_URL N_METRICS=$METRICS_URL
	N_NS=$NS N_VETH=$VETH
	N_DIR="$CL_DIR/$1"
	N_DATA="$N_DIR/data"
	N_LOG="$N_DIR/shiplogd.log"
}

cl_node_role() { if [ "$1" = "$PRIMARY" ]; then echo primary; else echo follower; fi; }

# cl_lock: serialise scripts that change the cluster (fd 9, closed for nodes)
cl_lock() {
	exec 9>"$CL_DIR/lock"
	flock -w 120 9 || cl_die "another cluster script holds $CL_DIR/lock"
}

# ---- processes -----------------------------------------------------------------

# cl_is_ours PID NAME: PID is a live shiplogd started on NAME's data directory
cl_is_ours() {
	local pid=$1 data="$CL_DIR/$2/data" args
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[ -r "/proc/$pid/cmdline" ] || return 1
	mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
	[ ${#args[@]} -gt 0 ] || return 1 # a zombie
	[ "${args[0]##*/}" = shiplogd ] || return 1
	local i
	for ((i = 1; i + 1 < ${#args[@]}; i++)); do
		[ "${args[i]}" = --dir ] && [ "${args[i + 1]}" = "$data" ] && return 0
	done
	return 1
}

# cl_pid NAME: print the node's pid when it runs (nothing otherwise)
cl_pid() {
	local f pid
	for f in "$CL_DIR/$1/pid" "$CL_DIR/$1/shiplogd.pid"; do
		[ -f "$f" ] || continue
		pid=$(cat "$f" 2>/dev/null || true)
		if cl_is_ours "$pid" "$1"; then
			echo "$pid"
			return 0
		fi
	done
	return 0
}

# cl_cli ARGS...: the CLI with a bound on the whole run. `timeout` too, because
# the client's connect is not bounded by --timeout: to an address whose link
# is down it blocks for the kernel's TCP SYN retries (about 2 minutes).
cl_cli() {
	timeout -k 1 $((CL_CLI_TIMEOUT / 1000 + 2)) "$BIN/shiplog" --timeout "$CL_CLI_TIMEOUT" "$@"
}

# cl_stats NAME: the node's `shiplog stats` text (fails when unreachable)
cl_stats() {
	cl_node "$1"
	cl_cli -a "$N_CLIENT" stats 2>/dev/null
}
# cl_get STATS_TEXT NAME: one field of a stats text
# cl_note_history: records the primary's history id in cluster.conf
# (HISTORY) when it answers: cluster/failover only promotes a follower on
# that history.
cl_note_history() {
	local st h
	st=$(cl_stats "$PRIMARY") || return 0
	h=$(cl_get "$st" history_id)
	if [ -n "$h" ] && [ "$h" != "$HISTORY" ]; then
		HISTORY=$h
		cl_save
	fi
}
cl_get() { awk -v k="$2" -F': ' '$1 == k { sub(/^[^:]*: /, ""); print; exit }' <<<"$1"; }

# cl_start_node NAME: start shiplogd for NAME in the role cluster.conf gives it
cl_start_node() {
	local name=$1 pid
	cl_node "$name"
	pid=$(cl_pid "$name")
	if [ -n "$pid" ]; then
		cl_say "$name: running (pid $pid)"
		return 0
	fi
	[ -x "$BIN/shiplogd" ] || cl_die "no $BIN/shiplogd (build it, or give --bin)"
	mkdir -p "$N_DATA"
	local cmd=()
	[ "$NETNS" = 1 ] && cmd+=(ip netns exec "$N_NS")
	cmd+=("$BIN/shiplogd" --dir "$N_DATA" --listen "$N_CLIENT"
		--repl-listen "$N_REPL" --metrics-listen "$N_METRICS"
		--sync "$SYNC" --pidfile "$N_DIR/shiplogd.pid")
	if [ "$name" != "$PRIMARY" ]; then
		local p_repl
		p_repl=$(
			cl_node "$PRIMARY"
			echo "$N_REPL"
		)
		cmd+=(--follow "$p_repl")
	fi
	rm -f "$N_DIR/shiplogd.pid"
	echo "---- $(date -u +%FT%TZ) cluster: starting ${cmd[*]}" >>"$N_LOG"
	# setsid: the node outlives this script and the terminal's Ctrl-C
	setsid "${cmd[@]}" </dev/null >>"$N_LOG" 2>&1 9>&- &
	pid=$!
	echo "$pid" >"$N_DIR/pid"
	# wait until it answers
	local i partitioned=0
	if cl_partitioned; then
		partitioned=1
		cl_warn "$name: its link is down (cluster/partition): not reachable until cluster/heal $name"
	fi
	for ((i = 0; i < 150; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid" 2>/dev/null || true
			cl_warn "$name: shiplogd exited at start; last lines of $N_LOG:"
			tail -n 5 "$N_LOG" >&2
			return 1
		fi
		# started once it answers AND wrote its pidfile (after its
		# listens succeeded): an answer alone may come from another
		# server on the same address, while this one fails to bind.
		# A partitioned node (cluster/partition: its link down) cannot
		# answer; its pidfile says it listens.
		if [ -f "$N_DIR/shiplogd.pid" ] && { [ "$partitioned" = 1 ] ||
			CL_CLI_TIMEOUT=300 cl_cli -a "$N_CLIENT" ping >/dev/null 2>&1; }; then
			local p2
			p2=$(cat "$N_DIR/shiplogd.pid")
			if cl_is_ours "$p2" "$name"; then
				echo "$p2" >"$N_DIR/pid"
				return 0
			fi
		fi
		sleep 0.1
	done
	# not left running behind a failure report
	kill "$pid" 2>/dev/null || true
	cl_warn "$name: shiplogd (pid $pid) did not answer on $N_CLIENT within 15 s; stopped it (see $N_LOG)"
	return 1
}

# cl_signal_node NAME SIG WAIT_S: signal the node's process (if ours) and wait
# up to WAIT_S seconds for it to be gone. Returns 1 when it was not running.
cl_signal_node() {
	local name=$1 sig=$2 wait_s=$3 pid i
	pid=$(cl_pid "$name")
	[ -n "$pid" ] || return 1
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < wait_s * 10; i++)); do
		cl_is_ours "$pid" "$name" || return 0
		sleep 0.1
	done
	cl_warn "$name: pid $pid still running ${wait_s}s after SIG$sig"
	return 2
}

# ---- convergence ----------------------------------------------------------------

# cl_wait_caught_up TIMEOUT_S [NAMES...]: wait until every named running
# follower (default: every running follower that answers) has the primary's
# history id, is streaming and has applied the seq the primary had when the
# wait began. Prints progress on failure; returns 1 on
# timeout.
cl_wait_caught_up() {
	local timeout=$1
	shift
	local names=("$@") deadline pst phist pseq='' n st ok why strict=1
	if [ ${#names[@]} -eq 0 ]; then
		mapfile -t names < <(cl_names)
		strict=0
	fi
	deadline=$((SECONDS + timeout))
	while :; do
		ok=1 why=
		if pst=$(cl_stats "$PRIMARY"); then
			phist=$(cl_get "$pst" history_id)
			if [ -z "$pseq" ]; then
				# the target: where the primary was when the wait began (it
				# may go on taking writes meanwhile)
				pseq=$(cl_get "$pst" applied_seq)
				[ -n "$pseq" ] || pseq=$(cl_get "$pst" last_seq)
			fi
			for n in "${names[@]}"; do
				[ "$n" = "$PRIMARY" ] && continue
				[ -n "$(cl_pid "$n")" ] || continue
				if ! st=$(cl_stats "$n"); then
					[ "$strict" = 0 ] && continue # running but cut off: not waited for
					ok=0 why="$n unreachable"
					break
				fi
				local h s r
				h=$(cl_get "$st" history_id)
				s=$(cl_get "$st" applied_seq)
				r=$(cl_get "$st" repl_state)
				if [ "$(cl_get "$st" role)" != follower ] || [ "$h" != "$phist" ] ||
					! [[ $s =~ ^[0-9]+$ ]] || [ "$s" -lt "$pseq" ] || { [ -n "$r" ] && [ "$r" != streaming ]; }; then
					ok=0 why="$n at seq ${s:-?} ($r), primary $PRIMARY at $pseq"
					break
				fi
			done
		else
			ok=0 why="primary $PRIMARY unreachable"
		fi
		[ "$ok" = 1 ] && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			cl_warn "not caught up after ${timeout}s: $why"
			return 1
		fi
		sleep 0.2
	done
}

# cl_reconcile: make every running, reachable node's role match cluster.conf
# (a follower following another primary, or a node still primary that should
# follow, is re-pointed with `shiplog follow`). Prints what it did; sets
# CL_RECONCILE_LEFT to the nodes it could not reach or re-point.
cl_reconcile() {
	local n st role prim p_repl
	CL_RECONCILE_LEFT=
	p_repl=$(
		cl_node "$PRIMARY"
		echo "$N_REPL"
	)
	for n in $(cl_names); do
		[ "$n" = "$PRIMARY" ] && continue
		[ -n "$(cl_pid "$n")" ] || continue
		st=$(cl_stats "$n") || {
			if [ "$NETNS" = 1 ]; then
				cl_say "$n: unreachable; once it answers, cluster/start $n (or cluster/heal $n, if partitioned) re-points it"
			else
				cl_say "$n: unreachable; once it answers, cluster/start $n re-points it"
			fi
			CL_RECONCILE_LEFT+=" $n"
			continue
		}
		role=$(cl_get "$st" role)
		prim=$(cl_get "$st" primary)
		if [ "$role" != follower ] || [ "$prim" != "$p_repl" ]; then
			cl_node "$n"
			if cl_cli -a "$N_CLIENT" follow "$p_repl" >/dev/null; then
				cl_say "$n: was $role${prim:+ of $prim}; now follows $PRIMARY ($p_repl)"
			else
				cl_warn "$n: follow $p_repl failed"
				CL_RECONCILE_LEFT+=" $n"
			fi
		fi
	done
}

# ---- ports and network namespaces -------------------------------------------------

cl_port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# cl_netns_names: set NETNS_ID BRIDGE from the directory (stable, unlikely to clash)
cl_netns_names() {
	local h
	h=$(printf '%s' "$CL_DIR" | cksum | cut -d' ' -f1)
	NETNS_ID=$(printf '%04x' $((h % 65536)))
	BRIDGE="slbr$NETNS_ID"
}
cl_ns_name() { echo "shiplog-$NETNS_ID-$1"; }
cl_veth_name() { echo "slv$NETNS_ID$1"; }

# cl_pick_subnet: the first 10.77.X.0/24 no interface or route on the host
# uses (status 1: none is free)
cl_pick_subnet() {
	local x used
	used=$(
		ip -4 -o addr show 2>/dev/null
		ip -4 route show 2>/dev/null
	)
	for ((x = 0; x < 256; x++)); do
		if ! grep -q "10\.77\.$x\." <<<"$used"; then
			SUBNET="10.77.$x"
			HOST_IP="$SUBNET.1"
			return 0
		fi
	done
	return 1
}

cl_link_exists() { ip link show "$1" >/dev/null 2>&1; }
# cl_link_del: delete a link if it is there. The kernel removes a veth by itself
# when its peer's namespace goes away, asynchronously, so the link may vanish
# between a check and the delete: that counts as deleted, any other failure
# (the link still there) does not.
cl_link_del() { ip link del "$1" 2>/dev/null || ! cl_link_exists "$1"; }
cl_ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
# cl_partitioned: the node cl_node last set has its link down (cluster/partition)
cl_partitioned() {
	[ "$NETNS" = 1 ] && ! ip -o link show "$N_VETH" 2>/dev/null | grep -q '[<,]UP[,>]'
}

# cl_netns_up: create (what is missing of) the bridge, namespaces and veths.
# A node's link that exists is left as it is: cluster/partition took it down
# on purpose, and starting another node must not heal that.
cl_netns_up() {
	local n ns veth new_bridge=0 new_link
	if ! cl_link_exists "$BRIDGE"; then
		# restarting: the subnet was free when the cluster was made, but
		# another cluster (or anything) may hold it now; two bridges on one
		# subnet would send this cluster's traffic to the other one's nodes
		local used # (a variable: grep -q on a pipe fails it under pipefail)
		used=$({ ip -4 -o addr show; ip -4 route show; } 2>/dev/null)
		if grep -qE "(^|[^0-9])${SUBNET//./\\.}\\." <<<"$used"; then
			cl_die "$SUBNET.0/24, this cluster's subnet, is in use by another interface now (another cluster's bridge?): stop that one, or cluster/down --wipe --dir $CL_DIR and up again"
		fi
		ip link add "$BRIDGE" type bridge
		ip addr add "$HOST_IP/24" dev "$BRIDGE"
		new_bridge=1
	fi
	ip link set "$BRIDGE" up
	for n in $(cl_names); do
		cl_node "$n"
		ns=$N_NS veth=$N_VETH new_link=0
		cl_ns_exists "$ns" || ip netns add "$ns"
		ip -n "$ns" link set lo up
		if ! ip -n "$ns" link show eth0 >/dev/null 2>&1 || ! cl_link_exists "$veth"; then
			cl_link_del "$veth"
			ip -n "$ns" link del eth0 2>/dev/null || true
			ip link add "$veth" type veth peer name "${veth}p"
			ip link set "${veth}p" netns "$ns"
			ip -n "$ns" link set "${veth}p" name eth0
			ip -n "$ns" addr add "$N_IP/24" dev eth0
			new_link=1
		fi
		ip -n "$ns" link set eth0 up
		ip link set "$veth" master "$BRIDGE"
		if [ "$new_link" = 1 ] || [ "$new_bridge" = 1 ]; then
			ip link set "$veth" up
		fi
	done
}

# cl_netns_down: remove every namespace, veth and the bridge this cluster made
cl_netns_down() {
	local n
	for n in $(cl_names); do
		cl_node "$n"
		# the host end first: deleting it removes its peer (eth0 inside
		# the namespace) at once, so the namespace is empty when it goes
		cl_link_del "$N_VETH"
		if cl_ns_exists "$N_NS"; then ip netns del "$N_NS"; fi
	done
	cl_link_del "$BRIDGE"
}
