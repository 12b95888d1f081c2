#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md: every mode of the load tool (tools/load) RUNS times
# (default 3) against freshly spawned release servers on loopback, then prints the median with
# min–max of every figure.
#
#   scripts/bench.sh              # everything (about 12 minutes plus the build; at most BENCH_BUDGET_SECS)
#   scripts/bench.sh pingpong     # only the named benchmarks (hold10k hold-max storm storm-slow churn
#                                 # pingpong pingpong-t2 outage jobs-c1 jobs-c10 jobs-c50 jobs-ceiling jobs-ceiling-c4)
#
# The jobs-* rows (the queue consumer) need moto's server: `moto_server` on PATH, or MOTO_SERVER.
#
# Environment: RUNS (3), BENCH_BUDGET_SECS (1500: no run starts that could end past it),
# LOAD_WAIT_MAX (15: seconds to wait before each run for the 1-minute load average to drop below
# LOAD_BELOW, 0.7; the load at the start of each run is recorded in its result), BENCH_OUT
# (target/bench: logs and JSON lines).
#
# The load tool starts and stops each server itself (SIGTERM, then SIGKILL); each run is also
# under `timeout`, which signals the whole process group, and the server pid of each run (for the
# jobs-* rows: the worker's and moto's) is checked afterwards, so no server is left running.
set -uo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
BUDGET=${BENCH_BUDGET_SECS:-1500}
LOAD_WAIT_MAX=${LOAD_WAIT_MAX:-15}
LOAD_BELOW=${LOAD_BELOW:-0.7}
OUT=${BENCH_OUT:-target/bench}
LOAD=target/release/load
started=$(date +%s)
deadline=$((started + BUDGET))

# Both processes hold one descriptor per connection: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
if [ "$FDS" = unlimited ]; then FDS=1048576; fi
MAX_HOLD=$((FDS - 1000))
if [ "$MAX_HOLD" -gt 19000 ]; then MAX_HOLD=19000; fi

echo "== tree: $(git rev-parse --short HEAD 2>/dev/null) with $(git status --porcelain -- src Cargo.toml 2>/dev/null | wc -l) changed file(s) under src/ and Cargo.toml"
echo "== build (release)"
cargo build --release -p load -p websocket-server -p queue-consumer --bin load --bin websocket --bin queue-consumer || exit 1

mkdir -p "$OUT"
wanted=("$@")
want() {
    [ ${#wanted[@]} -eq 0 ] && return 0
    local w
    for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
    return 1
}

wait_for_quiet() {
    local waited=0
    while [ "$waited" -lt "$LOAD_WAIT_MAX" ]; do
        local one
        one=$(cut -d' ' -f1 /proc/loadavg)
        if awk -v l="$one" -v b="$LOAD_BELOW" 'BEGIN { exit !(l < b) }'; then return 0; fi
        sleep 5
        waited=$((waited + 5))
    done
    echo "   (load average still $(cut -d' ' -f1-3 /proc/loadavg) after ${LOAD_WAIT_MAX}s; running anyway)"
}

ensure_server_gone() {
    local pidfile=$1
    [ -s "$pidfile" ] || return 0
    local pid pids
    pids=$(cat "$pidfile")
    rm -f "$pidfile"
    # One pid per line (the jobs-* rows write the worker's and moto's).
    for pid in $pids; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "   server $pid still running: SIGTERM"
            kill -TERM "$pid" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        fi
    done
    return 0
}

# bench NAME LIMIT_SECS load-tool-arguments...
bench() {
    local name=$1 limit=$2
    shift 2
    want "$name" || return 0
    : >"$OUT/$name.jsonl"
    local i
    for i in $(seq 1 "$RUNS"); do
        if [ $(($(date +%s) + limit + LOAD_WAIT_MAX)) -gt "$deadline" ]; then
            echo "== $name run $i skipped: it might not end within the ${BUDGET}s budget"
            continue
        fi
        wait_for_quiet
        echo "== $name run $i/$RUNS (load $(cut -d' ' -f1-3 /proc/loadavg)): $LOAD $*"
        timeout -k 10 "$limit" "$LOAD" "$@" --deadline-secs $((limit - 15)) \
            --server-pid-file "$OUT/$name.pid" >"$OUT/$name.$i.log" 2>"$OUT/$name.$i.err"
        local rc=$?
        ensure_server_gone "$OUT/$name.pid"
        grep -v '^{"mode"' "$OUT/$name.$i.log" | sed 's/^/   /'
        grep '^{"mode"' "$OUT/$name.$i.log" >>"$OUT/$name.jsonl"
        if [ $rc -ne 0 ]; then
            echo "   exit $rc; last lines of $OUT/$name.$i.err:"
            tail -5 "$OUT/$name.$i.err" | sed 's/^/   /'
        fi
    done
}

bench hold10k 90 hold --clients 10000
bench hold-max 120 hold --clients "$MAX_HOLD"
bench storm 90 storm --clients 1000
# The same storm against an agent that takes 200 ms per answer (most clients arrive mid-call).
bench storm-slow 90 storm --clients 1000 --agent-delay-ms 200
bench churn 90 churn --cycles 200
bench pingpong 90 pingpong --clients 1000 --seconds 10
# The same with two load-generator threads (more throughput, a longer tail: 3 busy threads on 2 cores).
bench pingpong-t2 90 pingpong --clients 1000 --seconds 10 --threads 2
bench outage 160 outage --clients 20 --seconds 30
# The queue consumer against moto's SQS server: 300 jobs of 0 ms, taken by the release worker at
# concurrency 1, 10 and 50, and by plain receive+delete loops in the load tool (the ceiling: the most
# a consumer can get from this moto). moto's every call costs time in proportion to the messages in
# the queue (filling 2,000 took 84 s), so every row uses the same 300.
bench jobs-c1 90 jobs --jobs 300 --concurrency 1
bench jobs-c10 90 jobs --jobs 300 --concurrency 10
bench jobs-c50 90 jobs --jobs 300 --concurrency 50
bench jobs-ceiling 90 jobs --jobs 300 --ceiling
# The ceiling with 4 loops at once (moto is one Python process: parallel calls do not help).
bench jobs-ceiling-c4 90 jobs --jobs 300 --ceiling --concurrency 4

echo
echo "== summary: median (min–max) of $RUNS runs; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), fd limit $FDS"
files=()
for n in hold10k hold-max storm storm-slow churn pingpong pingpong-t2 outage \
    jobs-c1 jobs-c10 jobs-c50 jobs-ceiling jobs-ceiling-c4; do
    [ -s "$OUT/$n.jsonl" ] && files+=("$OUT/$n.jsonl")
done
[ ${#files[@]} -gt 0 ] && "$LOAD" summarize "${files[@]}"
echo "== total $(($(date +%s) - started)) s"
