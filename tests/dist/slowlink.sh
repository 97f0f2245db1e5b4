#!/usr/bin/env bash
# slowlink.sh: run a 2-rank MPI program over an emulated slow network link.
#
#   tests/dist/slowlink.sh [--delay-ms D] [--rate-mbit R] [--no-shape]
#                          [--delaylink PATH] [--env VAR[=VALUE]]... -- CMD ARGS...
#   tests/dist/slowlink.sh --cleanup-stale
#
# Two network namespaces (fy-a-PID, fy-b-PID) are joined by a veth pair on a
# private /24; rank 0 runs in namespace A, rank 1 in namespace B, so every
# byte between the ranks crosses the veth and its qdisc.  The link is shaped
# on BOTH veth ends (each end shapes what it sends, so both directions are
# slow):
#   - netem "delay D ms rate R mbit" when the kernel has the netem qdisc;
#   - otherwise, given the delaylink program (--delaylink PATH or
#     $FERRY_DELAYLINK; tests/dist/delaylink.c), the two namespaces are
#     joined by two TUN devices instead of the veth pair, and delaylink
#     forwards the packets between them with the delay and the rate;
#   - otherwise tbf "rate R mbit" (a bandwidth cap only) and one NOTE line on
#     stderr saying the delay was not applied.
# --no-shape keeps the same two namespaces but adds no qdisc, so a benchmark
# can compare normal and slowed links with the very same topology.
# Defaults: --delay-ms 20 --rate-mbit 100.  0 turns that part off.
#
# Environment: mpirun runs locally, so ranks inherit this script's
# environment anyway; still, OMP_NUM_THREADS and every --env VAR are handed
# to mpirun as "-x VAR" so they are explicitly forwarded the way they would
# have to be on real hosts.  --env VAR=VALUE sets a value for the ranks only.
#
# Exit status: CMD's (as reported by mpirun); 77 with a "SKIP: reason" line
# when the namespaces cannot be made (not root, no CAP_NET_ADMIN, no ip, no
# veth, no mpirun); 2 on a usage error.  The namespaces and the veth pair are
# removed on every exit path (EXIT trap; INT/TERM/HUP are turned into exits).
#
# --cleanup-stale removes fy-a-N/fy-b-N namespaces whose slowlink.sh (PID N)
# no longer runs: only a SIGKILLed run leaves them behind.
#
# CMD's stdin is /dev/null.  Needs: root (or CAP_SYS_ADMIN + CAP_NET_ADMIN),
# iproute2 (ip, tc), Open MPI's mpirun.  Tested with Open MPI 4.1.4.
set -uo pipefail

usage() {
    echo "usage: $0 [--delay-ms D] [--rate-mbit R] [--no-shape] [--env VAR[=VALUE]]... -- CMD ARGS..." >&2
    echo "       $0 --cleanup-stale" >&2
    exit 2
}
say() { echo "slowlink: $*" >&2; }
skip() {
    echo "SKIP: $*"
    exit 77
}

delay_ms=20
rate_mbit=100
shape=1
envs=()
delaylink=${FERRY_DELAYLINK:-}
while [[ $# -gt 0 ]]; do
    case $1 in
    --delay-ms) [[ $# -ge 2 ]] || usage; delay_ms=$2; shift 2 ;;
    --rate-mbit) [[ $# -ge 2 ]] || usage; rate_mbit=$2; shift 2 ;;
    --no-shape) shape=0; shift ;;
    --delaylink) [[ $# -ge 2 ]] || usage; delaylink=$2; shift 2 ;;
    --env)
        [[ $# -ge 2 ]] || usage
        [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*(=.*)?$ ]] || {
            echo "slowlink: --env '$2': not a variable name" >&2
            exit 2
        }
        envs+=("$2")
        shift 2
        ;;
    --cleanup-stale)
        # A namespace is stale when the PID in its name is gone.  Deleting
        # it also destroys the veth end inside it.
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^fy-[ab]-[0-9]+$'); do
            if [[ ! -e /proc/${ns##*-} ]]; then
                ip netns del "$ns" && say "removed stale namespace $ns"
            fi
        done
        exit 0
        ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) echo "slowlink: unknown option '$1'" >&2; usage ;;
    esac
done
[[ $# -gt 0 ]] || usage
[[ $delay_ms =~ ^[0-9]+$ && $rate_mbit =~ ^[0-9]+$ ]] || {
    echo "slowlink: --delay-ms and --rate-mbit take whole numbers" >&2
    exit 2
}
if [[ $delay_ms -eq 0 && $rate_mbit -eq 0 ]]; then shape=0; fi

# --- can we do this at all?  Anything missing is a SKIP, not a failure. ---
command -v ip >/dev/null || skip "no 'ip' command (iproute2) to create network namespaces"
[[ $shape -eq 0 ]] || command -v tc >/dev/null || skip "no 'tc' command (iproute2) to shape the link"
command -v mpirun >/dev/null || skip "no mpirun in PATH"
# The launch below relies on Open MPI's rsh launcher and MCA options.
mpirun --version 2>/dev/null | grep -q 'Open MPI' || skip "mpirun is not Open MPI's"

# Names carry our PID so concurrent runs do not collide.  Interface names
# must stay within 15 characters: "fy-va-" + a PID of up to 7 digits fits.
ns_a=fy-a-$$
ns_b=fy-b-$$
veth_a=fy-va-$$
veth_b=fy-vb-$$
# The two namespaces see only this subnet (plus their own lo), so it can be
# fixed: it never meets the host's routes and concurrent runs are separate.
subnet=10.231.77.0/24
ip_a=10.231.77.1
ip_b=10.231.77.2

tun_a=fy-ta-$$
tun_b=fy-tb-$$
tmpdir=
mpi_pid=
dl_pid=
created_a=0
created_b=0

# shellcheck disable=SC2317,SC2086  # called from the trap; $pids is a list
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # A still-running mpirun (we were interrupted) goes first, then anything
    # it left inside the namespaces (the orted in B, ranks).  These are all
    # processes this script started; "ip netns pids" names exactly them.
    if [[ -n $mpi_pid ]] && kill -0 "$mpi_pid" 2>/dev/null; then
        kill -TERM "$mpi_pid" 2>/dev/null
        wait "$mpi_pid" 2>/dev/null
    fi
    # delaylink holds the TUN devices: they go with it.
    if [[ -n $dl_pid ]]; then
        kill -TERM "$dl_pid" 2>/dev/null
        wait "$dl_pid" 2>/dev/null
    fi
    local ns pids
    for ns in "$ns_a" "$ns_b"; do
        [[ $ns == "$ns_a" && $created_a -eq 1 || $ns == "$ns_b" && $created_b -eq 1 ]] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null)
        if [[ -n $pids ]]; then
            kill -TERM $pids 2>/dev/null
            sleep 0.5
            pids=$(ip netns pids "$ns" 2>/dev/null)
            [[ -z $pids ]] || kill -KILL $pids 2>/dev/null
        fi
        # Deleting a namespace destroys the veth end inside it, and with it
        # the peer end.
        ip netns del "$ns" 2>/dev/null
    done
    # In case we died between "ip link add" and moving the ends away.
    ip link del "$veth_a" 2>/dev/null
    [[ -z $tmpdir ]] || rm -rf "$tmpdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# The first "ip netns add" is the real permission test: it needs
# CAP_SYS_ADMIN (unshare, bind mount under /run/netns); the veth pair then
# needs CAP_NET_ADMIN.
if ! err=$(ip netns add "$ns_a" 2>&1); then
    why="cannot create a network namespace ($err)"
    [[ $EUID -eq 0 ]] || why="not root: $why"
    skip "$why; slowlink needs root or CAP_NET_ADMIN+CAP_SYS_ADMIN"
fi
created_a=1
err=$(ip netns add "$ns_b" 2>&1) || skip "cannot create a second network namespace ($err)"
created_b=1
# Does the kernel have netem? Asked on A's loopback before the link is made,
# so a kernel without it can get the user-space link instead of the veth.
use_tun=0
if [[ $shape -eq 1 && $delay_ms -gt 0 ]] &&
    ! out=$(ip netns exec "$ns_a" tc qdisc add dev lo root netem delay 1ms 2>&1); then
    if [[ -n $delaylink && -x $delaylink ]]; then
        use_tun=1
    fi
else
    ip netns exec "$ns_a" tc qdisc del dev lo root 2>/dev/null
fi
if [[ $use_tun -eq 1 ]]; then
    # delaylink creates both TUN devices, says "ready", then forwards.
    tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/slowlink.XXXXXX")
    mkfifo "$tmpdir/ready"
    "$delaylink" "$tun_a" "$tun_b" "$delay_ms" "$rate_mbit" >"$tmpdir/ready" &
    dl_pid=$!
    read -r -t 10 line <"$tmpdir/ready" || line=
    [[ $line == ready ]] || { say "delaylink did not start"; exit 1; }
    veth_a=$tun_a
    veth_b=$tun_b
else
    err=$(ip link add "$veth_a" type veth peer name "$veth_b" 2>&1) ||
        skip "cannot create a veth pair ($err)"
fi
setup() {
    ip link set "$veth_a" netns "$ns_a" &&
        ip link set "$veth_b" netns "$ns_b" &&
        ip -n "$ns_a" addr add "$ip_a/24" dev "$veth_a" &&
        ip -n "$ns_b" addr add "$ip_b/24" dev "$veth_b" &&
        ip -n "$ns_a" link set lo up &&
        ip -n "$ns_b" link set lo up &&
        ip -n "$ns_a" link set "$veth_a" up &&
        ip -n "$ns_b" link set "$veth_b" up
}
err=$(setup 2>&1) || skip "cannot configure the veth pair ($err)"

# --- shaping ---
# shape_end NS DEV: shape what DEV sends.  Sets $shaping to a description.
shaping="none (--no-shape)"
netem_missing=
shape_end() {
    local ns=$1 dev=$2 args=() out
    [[ $delay_ms -eq 0 ]] || args+=(delay "${delay_ms}ms")
    [[ $rate_mbit -eq 0 ]] || args+=(rate "${rate_mbit}mbit")
    # netem's default queue of 1000 packets can overflow at high rate x delay.
    if [[ -z $netem_missing ]] &&
        out=$(ip netns exec "$ns" tc qdisc add dev "$dev" root netem "${args[@]}" limit 100000 2>&1); then
        shaping="netem ${args[*]}"
        return 0
    fi
    netem_missing=${netem_missing:-$out}
    if [[ $rate_mbit -gt 0 ]]; then
        # tbf needs a bucket of at least one timer tick's worth of bytes to
        # reach its rate: take 10 ms at the rate, and no less than 32 KiB.
        # "latency 200ms" bounds the queue; a smaller one drops packets and
        # measures TCP retransmission instead of the link rate.
        local burst=$((rate_mbit * 1250))
        [[ $burst -ge 32768 ]] || burst=32768
        out=$(ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "${rate_mbit}mbit" \
            burst "$burst" latency 200ms 2>&1) || {
            say "cannot add a tbf qdisc either ($out)"
            exit 1
        }
        shaping="tbf rate ${rate_mbit}mbit (no delay)"
    else
        shaping="none"
    fi
}
if [[ $use_tun -eq 1 ]]; then
    shaping="delaylink (user space, no netem in this kernel): delay ${delay_ms}ms rate ${rate_mbit}mbit"
elif [[ $shape -eq 1 ]]; then
    shape_end "$ns_a" "$veth_a"
    shape_end "$ns_b" "$veth_b"
    if [[ -n $netem_missing && $delay_ms -gt 0 ]]; then
        if [[ $netem_missing == *"qdisc kind is unknown"* ]]; then
            why="this kernel has no netem qdisc"
        else
            why="netem failed: $netem_missing"
        fi
        if [[ $rate_mbit -gt 0 ]]; then
            left="only the ${rate_mbit} Mbit/s bandwidth cap (tbf) is in effect"
        else
            left="the link is not shaped at all"
        fi
        say "NOTE: delay of ${delay_ms} ms NOT applied ($why); $left"
    fi
fi

# --- the ssh stand-in for Open MPI's rsh launcher ---
# mpirun runs in namespace A and treats the two IPs as two hosts: A's IP is
# one of its own addresses, so rank 0 is started locally; for B it calls the
# "rsh agent" like ssh (AGENT HOST CMD...) to start an orted there, and the
# agent simply runs that command inside namespace B.  IPs as host names need
# no /etc/hosts entries.
[[ -n $tmpdir ]] || tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/slowlink.XXXXXX")
agent=$tmpdir/agent
cat >"$agent" <<EOF
#!/bin/sh
# Generated by slowlink.sh: Open MPI calls this as "agent HOST COMMAND...".
while [ \$# -gt 0 ] && [ "\${1#-}" != "\$1" ]; do shift; done  # ssh-style options
host=\$1; shift
case \$host in
$ip_a) ns=$ns_a ;;
$ip_b) ns=$ns_b ;;
*) echo "slowlink agent: unknown host '\$host'" >&2; exit 255 ;;
esac
exec ip netns exec "\$ns" sh -c "\$*"
EOF
chmod +x "$agent"

# Open MPI refuses root without these; they reach the orted via the agent.
if [[ $EUID -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

hosts=$ip_a,$ip_b
mpi_args=(
    -np 2 --host "$hosts"
    --mca plm_rsh_agent "$agent"
    # Keep the control channel and the MPI traffic on the veth, and force
    # the plain TCP path (ob1 + tcp btl): UCX/OFI/shared-memory transports
    # could otherwise carry the bytes around the shaped link.
    --mca oob_tcp_if_include "$subnet"
    --mca pml ob1 --mca btl "tcp,self" --mca btl_tcp_if_include "$subnet"
)
# CPU placement.  Both "hosts" are this one machine, and the ranks busy-poll
# while they wait.  By default Open MPI binds each host's single rank to core
# 0, so both ranks share one core and every round trip waits for a scheduler
# time slice (8 ms here instead of ~15 us).  --bind-to none fixes that only
# while the machine is idle: under other load the scheduler still stacks the
# two ranks on one core now and then.  So pin rank r to core r with a
# rankfile (rank 0 -> "slot" 0, rank 1 -> slot 1; logical core numbers).
# With a single core there is nothing to spread: leave binding off and let
# idle ranks yield the core to each other.
if [[ $(nproc 2>/dev/null || echo 1) -ge 2 ]]; then
    printf 'rank 0=%s slot=0\nrank 1=%s slot=1\n' "$ip_a" "$ip_b" >"$tmpdir/rankfile"
    mpi_args+=(--rankfile "$tmpdir/rankfile")
else
    mpi_args+=(--bind-to none --mca mpi_yield_when_idle 1)
fi
for v in OMP_NUM_THREADS ${envs[@]+"${envs[@]}"}; do
    if [[ $v == *=* ]]; then
        mpi_args+=(-x "$v")
    elif [[ -n ${!v+set} ]]; then
        mpi_args+=(-x "$v")
    elif [[ $v != OMP_NUM_THREADS ]]; then
        say "warning: --env $v: not set, not forwarded"
    fi
done

say "rank 0 in $ns_a ($ip_a) <-> rank 1 in $ns_b ($ip_b); shaping: $shaping"
# Run in the background and wait, so a TERM/INT reaches our trap at once
# instead of after mpirun returns (the trap then stops mpirun).  A background
# job's stdin is /dev/null, which is also what mpirun hands to rank 0.
ip netns exec "$ns_a" mpirun "${mpi_args[@]}" "$@" &
mpi_pid=$!
wait "$mpi_pid"
rc=$?
mpi_pid=
exit "$rc"
