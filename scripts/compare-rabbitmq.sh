#!/usr/bin/env bash
# Side-by-side load runs: ferrymq (release build) against Debian's RabbitMQ on this machine,
# the same client (ferrymq-perf / amqprs) for both, brokers on loopback only. Writes BENCHMARKS.md.
#
# Each scenario runs against both brokers alternately (A B A B ...), each run on a freshly
# started broker with an empty data dir, so one run's heap or backlog never leaks into the next.
# Only one broker runs at a time: the idle one would otherwise steal CPU on a 2-core box.
# Before each scenario, scripts/host-check.py times two fixed workloads, so the report shows
# how fast the machine itself was during each round. Before S6 each round also measures the
# host's latency floor: S6's paced load through a relay that only copies bytes (`--floor`).
# The load tool is built with `--profile perf-tool` (whole-program optimisation; Cargo.toml says
# why): it shares the cores with the broker under test.
#
# Environment (all optional):
#   ROUNDS=3                      rounds of A B per scenario
#   SCENARIOS="s1 s2 ... s8"      which presets
#   DURATION=10 WARMUP=2          measurement window / warm-up of the throughput scenarios
#   S5_MESSAGES=1000000 S7_QUEUES=10000 S8_CONNECTIONS=1000   sizes of s5 / s7 / s8
#   PROFILE=1                     perf-record ferrymq under an extra S1 run (needs linux-perf)
#   FERRYMQ_BIN=path              use this broker binary instead of `cargo build --release`
#   FERRYMQ_PORT=5690 RABBITMQ_PORT=5691   loopback ports
#   OUT=BENCHMARKS.md             report file (a "Notes" section between the notes markers of
#                                 an existing file is kept)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-"s1 s2 s3 s4 s5 s6 s7 s8"}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
S5_MESSAGES=${S5_MESSAGES:-1000000}
S7_QUEUES=${S7_QUEUES:-10000}
S8_CONNECTIONS=${S8_CONNECTIONS:-1000}
PROFILE=${PROFILE:-1}
FERRYMQ_PORT=${FERRYMQ_PORT:-5690}
RABBITMQ_PORT=${RABBITMQ_PORT:-5691}
OUT=${OUT:-$ROOT/BENCHMARKS.md}
RABBIT_NODE=ferrybench@localhost
RABBIT_BIN=/usr/lib/rabbitmq/bin

WORK=$(mktemp -d /tmp/ferrybench.XXXXXX)
RESULTS=$WORK/results.jsonl
COMMANDS=$WORK/commands.txt
: >"$RESULTS"
: >"$COMMANDS"
FERRYMQ_PID=""
RABBIT_UP=""
EPMD_WAS_RUNNING=""

log() { echo "== $*" >&2; }

# ---------------------------------------------------------------------------------------------
# RabbitMQ

install_rabbitmq() {
    if [[ -x $RABBIT_BIN/rabbitmq-server ]]; then
        return
    fi
    log "installing rabbitmq-server (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    # Debian's package may start the system node on 5672; ours runs on its own port and node
    # name, so the two never meet.
}

rabbit_env() {
    # Running as root: HOME holds the Erlang cookie, so give the node its own.
    export HOME=$WORK/rabbit/home
    export RABBITMQ_NODENAME=$RABBIT_NODE
    export RABBITMQ_NODE_PORT=$RABBITMQ_PORT
    export RABBITMQ_MNESIA_BASE=$WORK/rabbit/mnesia
    export RABBITMQ_LOG_BASE=$WORK/rabbit/log
    export RABBITMQ_CONFIG_FILE=$WORK/rabbit/rabbitmq.conf
    export RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rabbit/enabled_plugins
    export RABBITMQ_PID_FILE=$WORK/rabbit/pid
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start_rabbitmq() {
    rm -rf "$WORK/rabbit/mnesia" "$WORK/rabbit/log"
    mkdir -p "$WORK/rabbit/home" "$WORK/rabbit/mnesia" "$WORK/rabbit/log"
    printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users.guest = true\n' "$RABBITMQ_PORT" \
        >"$WORK/rabbit/rabbitmq.conf"
    echo '[].' >"$WORK/rabbit/enabled_plugins" # management and every other plugin off
    (
        rabbit_env
        ulimit -n "$(ulimit -Hn)"
        exec "$RABBIT_BIN/rabbitmq-server" >>"$WORK/rabbit/stdout" 2>&1
    ) &
    RABBIT_UP=1
    local i
    for i in $(seq 1 90); do
        if (rabbit_env && "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" await_startup -t 1) \
            >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    echo "RabbitMQ did not start; see $WORK/rabbit/stdout" >&2
    tail -20 "$WORK/rabbit/stdout" >&2
    exit 1
}

stop_rabbitmq() {
    [[ -n $RABBIT_UP ]] || return 0
    (rabbit_env && timeout 60 "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" stop) >/dev/null 2>&1 ||
        { [[ -f $WORK/rabbit/pid ]] && kill "$(cat "$WORK/rabbit/pid")" 2>/dev/null; } || true
    RABBIT_UP=""
}

# ---------------------------------------------------------------------------------------------
# ferrymq

build() {
    if [[ -n ${FERRYMQ_BIN:-} ]]; then
        log "using FERRYMQ_BIN=$FERRYMQ_BIN"
    else
        log "cargo build --release"
        cargo build --release -q -p ferrymq
        FERRYMQ_BIN=$ROOT/target/release/ferrymq
    fi
    # The same tool binary drives both brokers (profile perf-tool: see the header).
    log "cargo build --profile perf-tool -p ferrymq-perf"
    cargo build --profile perf-tool -q -p ferrymq-perf
    PERF=$ROOT/target/perf-tool/ferrymq-perf
}

start_ferrymq() {
    rm -rf "$WORK/ferrymq"
    mkdir -p "$WORK/ferrymq"
    (
        ulimit -n "$(ulimit -Hn)"
        exec "$FERRYMQ_BIN" --amqp-listen "127.0.0.1:$FERRYMQ_PORT" \
            --data-dir "$WORK/ferrymq/data" --log-level warn
    ) >>"$WORK/ferrymq.log" 2>&1 &
    FERRYMQ_PID=$!
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$FERRYMQ_PORT") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    echo "ferrymq did not start; see $WORK/ferrymq.log" >&2
    exit 1
}

stop_ferrymq() {
    [[ -n $FERRYMQ_PID ]] || return 0
    kill -TERM "$FERRYMQ_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$FERRYMQ_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$FERRYMQ_PID" 2>/dev/null || true
    wait "$FERRYMQ_PID" 2>/dev/null || true
    FERRYMQ_PID=""
}

cleanup() {
    stop_ferrymq
    stop_rabbitmq
    # epmd is started by the first Erlang node; stop it only if it was ours.
    if [[ -z $EPMD_WAS_RUNNING ]] && command -v epmd >/dev/null; then
        (export ERL_EPMD_ADDRESS=127.0.0.1; epmd -kill >/dev/null 2>&1) || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# runs

broker_uri() { echo "amqp://guest:guest@127.0.0.1:$1/%2f"; }

scenario_args() {
    case $1 in
    s5) echo "--pmessages $S5_MESSAGES" ;;
    s7) echo "--declare-queues $S7_QUEUES" ;;
    s8) echo "--idle-connections $S8_CONNECTIONS" ;;
    *) echo "--duration $DURATION --warmup $WARMUP" ;;
    esac
}

run_one() { # broker scenario round
    local broker=$1 scenario=$2 round=$3 port
    if [[ $broker == ferrymq ]]; then
        port=$FERRYMQ_PORT
        start_ferrymq
    else
        port=$RABBITMQ_PORT
        start_rabbitmq
    fi
    # shellcheck disable=SC2046
    local cmd=(ferrymq-perf --uri "$(broker_uri "$port")" --scenario "$scenario"
        $(scenario_args "$scenario") --broker-port "$port" --label "$broker" --json)
    record "$scenario" "$broker" "$round" "${cmd[@]}"
    stop_ferrymq
    stop_rabbitmq
}

run_floor() { # round; with no broker running
    # shellcheck disable=SC2046
    local cmd=(ferrymq-perf --scenario s6 --floor $(scenario_args s6) --label floor --json)
    record s6 floor "$1" "${cmd[@]}"
}

record() { # scenario label round command...: runs the tool, appends its JSON line to RESULTS
    local scenario=$1 label=$2 round=$3
    shift 3
    if [[ $round == 1 ]]; then
        echo "$*" >>"$COMMANDS"
    fi
    log "round $round: $scenario on $label"
    local line
    if line=$("$PERF" "${@:2}" 2>>"$WORK/perf.stderr" | tail -1) && [[ -n $line ]]; then
        echo "$line" | jq -c --argjson round "$round" '. + {round: $round}' >>"$RESULTS"
    else
        echo "   failed (see $WORK/perf.stderr)" >&2
        jq -nc --arg s "$scenario" --arg l "$label" --argjson round "$round" \
            '{scenario: $s, label: $l, round: $round, failed: true}' >>"$RESULTS"
    fi
}

profile_ferrymq() {
    if [[ $PROFILE != 1 ]] || ! command -v perf >/dev/null; then
        return
    fi
    log "profiling ferrymq under S1 (perf record -e cpu-clock)"
    start_ferrymq
    "$PERF" --uri "$(broker_uri "$FERRYMQ_PORT")" --scenario s1 --duration 8 --warmup 1 \
        --label ferrymq >"$WORK/profile-run.txt" 2>&1 &
    local perf_pid=$!
    sleep 2
    # Rust release builds have no frame pointers: unwind with DWARF (debug = 1 in the profile).
    perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$FERRYMQ_PID" \
        -o "$WORK/perf.data" -- sleep 4 >/dev/null 2>&1 || true
    wait "$perf_pid" || true
    stop_ferrymq
    if [[ -s $WORK/perf.data ]]; then
        perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none \
            2>/dev/null | grep '%' | head -6 >"$WORK/profile-dso.txt" || true
        perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none \
            2>/dev/null | grep '%' | head -30 >"$WORK/profile-self.txt" || true
        perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none \
            2>/dev/null | grep '%' | grep -E 'ferrymq' | head -40 \
            >"$WORK/profile-children.txt" || true
    fi
}

# ---------------------------------------------------------------------------------------------
# main

install_rabbitmq
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
(export ERL_EPMD_ADDRESS=127.0.0.1; epmd -names >/dev/null 2>&1) && EPMD_WAS_RUNNING=1
build
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        python3 scripts/host-check.py "$round" "$scenario" >>"$RESULTS"
        if [[ $scenario == s6 ]]; then
            run_floor "$round"
        fi
        run_one ferrymq "$scenario" "$round"
        run_one rabbitmq "$scenario" "$round"
    done
done
profile_ferrymq

export RESULTS COMMANDS OUT ROUNDS SCENARIOS WORK
export META_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
export META_NPROC="$(nproc)"
export META_MEM="$(free -h | awk '/^Mem:/ {print $2}')"
export META_KERNEL="$(uname -r)"
export META_RABBIT="$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)"
export META_ERLANG="$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown)"
export META_FERRYMQ="$("$FERRYMQ_BIN" --version 2>/dev/null || echo ferrymq)"
export META_GIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
export META_RUSTC="$(rustc --version)"
export META_AMQPRS="$(awk '/name = "amqprs"/ {getline; print $3}' Cargo.lock | tr -d '"')"
export META_DATE="$(date -u +%Y-%m-%dT%H:%MZ)"
export META_ENV="ROUNDS=$ROUNDS SCENARIOS=\"$SCENARIOS\" DURATION=$DURATION WARMUP=$WARMUP S5_MESSAGES=$S5_MESSAGES S7_QUEUES=$S7_QUEUES S8_CONNECTIONS=$S8_CONNECTIONS"

python3 - <<'PY'
import json, os, re, statistics

def tidy(perf_line):
    """perf report pads symbols to the terminal width and appends empty columns."""
    line = re.sub(r"\s+-\s+-\s*$", "", perf_line.rstrip())
    return re.sub(r"\]\s{2,}", "] ", line)

results = [json.loads(l) for l in open(os.environ["RESULTS"]) if l.strip()]
work = os.environ["WORK"]
out_path = os.environ["OUT"]
scenarios = os.environ["SCENARIOS"].split()

def runs(scn, label):
    return [r for r in results if r["scenario"] == scn and r["label"] == label and not r.get("failed")]

def failures(scn, label):
    return sum(1 for r in results if r["scenario"] == scn and r["label"] == label and r.get("failed"))

def values(scn, label, field):
    return [r[field] for r in runs(scn, label) if r.get(field) is not None]

def med(scn, label, field):
    v = values(scn, label, field)
    return statistics.median(v) if v else None

def fmt(v, unit):
    if v is None:
        return "–"
    if unit == "msg/s":
        return f"{v/1000:,.1f}k"
    if unit == "bytes":
        return f"{v/1048576:,.1f} MiB" if v >= 1048576 else f"{v/1024:,.1f} KiB"
    if unit == "µs":
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if unit == "s":
        return f"{v:,.2f}"
    return f"{v:,.2f}"

def cell(scn, label, field, unit):
    v = values(scn, label, field)
    if not v:
        return "–" + (f" ({failures(scn, label)} failed)" if failures(scn, label) else "")
    m = statistics.median(v)
    if len(v) == 1:
        return f"{fmt(m, unit)}"
    return f"{fmt(m, unit)} [{fmt(min(v), unit)} – {fmt(max(v), unit)}]"

def ratio(scn, field, higher_better):
    a, b = med(scn, "ferrymq", field), med(scn, "rabbitmq", field)
    if a is None or b is None or a == 0 or b == 0:
        return "–"
    r = a / b
    better = r >= 1 if higher_better else r <= 1
    if higher_better:
        return f"{r:.2f}×" + (" ✓" if better else "")
    return f"{r:.2f}× ({b/a:.1f}× less)" if better else f"{r:.2f}×"

# metric rows per scenario: (label, field, unit, higher_is_better)
THROUGHPUT = [
    ("consume rate (msg/s)", "consume_rate", "msg/s", True),
    ("publish rate (msg/s)", "publish_rate", "msg/s", True),
    ("broker CPU µs/msg", "broker_cpu_us_per_msg", "µs", False),
    ("broker RSS at end", "broker_rss_bytes", "bytes", False),
    ("latency p50 (µs)", "latency_p50_us", "µs", False),
    ("latency p99 (µs)", "latency_p99_us", "µs", False),
    ("latency p99.9 (µs)", "latency_p999_us", "µs", False),
]
METRICS = {
    "s5": [
        ("publish rate (msg/s)", "publish_rate", "msg/s", True),
        ("drain rate (msg/s)", "consume_rate", "msg/s", True),
        ("broker RSS at full backlog", "backlog_rss_bytes", "bytes", False),
        ("broker CPU µs/msg, publish", "publish_cpu_us_per_msg", "µs", False),
        ("broker CPU µs/msg, drain", "broker_cpu_us_per_msg", "µs", False),
    ],
    "s7": [
        ("time to declare (s)", "objects_s", "s", False),
        ("broker RSS per queue", "rss_bytes_per_object", "bytes", False),
        ("broker CPU µs per queue", "cpu_us_per_object", "µs", False),
    ],
    "s8": [
        ("broker RSS per connection", "rss_bytes_per_object", "bytes", False),
        ("time to open all (s)", "objects_s", "s", False),
        ("broker CPU µs per connection", "cpu_us_per_object", "µs", False),
    ],
}
TITLES = {
    "s1": "S1 — 1 producer → 1 queue → 1 consumer, 16 B, transient, auto-ack",
    "s2": "S2 — as S1 with manual acks, prefetch 1000, ack each",
    "s3": "S3 — durable queue, persistent 1 KiB, confirms (window 1000), consumer acking",
    "s4": "S4 — fanout → 4 queues → 4 consumers, 16 B (rates and CPU per delivery)",
    "s5": "S5 — publish a backlog of 16 B messages with no consumer, then drain",
    "s6": "S6 — fixed 10,000 msg/s, latency",
    "s7": "S7 — declare durable queues one by one",
    "s8": "S8 — idle connections with one channel each",
}
S3_NOTE = ("both brokers write persistent messages to disk and send each publisher confirm only after "
           "the fdatasync that covers it (ferrymq: group commit across queues, see ARCHITECTURE.md).")

def headline(scn):
    return {"s5": ("drain rate", "consume_rate", "msg/s", True),
            "s6": ("latency p99 (µs)", "latency_p99_us", "µs", False),
            "s7": ("declare time (s)", "objects_s", "s", False),
            "s8": ("RSS per connection", "rss_bytes_per_object", "bytes", False)}.get(
        scn, ("consume rate", "consume_rate", "msg/s", True))

def rss_field(scn):
    return {"s5": "backlog_rss_bytes", "s7": "rss_bytes_per_object", "s8": "rss_bytes_per_object"}.get(scn, "broker_rss_bytes")

def cpu_field(scn):
    return {"s7": "cpu_us_per_object", "s8": "cpu_us_per_object"}.get(scn, "broker_cpu_us_per_msg")

# ----- targets
def check(cond_parts):
    ok = all(c for c, _ in cond_parts if c is not None) and all(c is not None for c, _ in cond_parts)
    return ("met" if ok else "**missed**"), "; ".join(t for _, t in cond_parts)

def target_rows():
    rows = []
    F, R = "ferrymq", "rabbitmq"
    def le(v, limit, unit, what, limit_text=None):
        if v is None:
            return (None, f"{what}: no data")
        by = "" if v <= limit else f", {v/limit:.1f}× over"
        shown = fmt(v, unit) + ("" if unit == "bytes" else f" {unit}")
        return (v <= limit, f"{what} {shown} (target ≤ {limit_text or fmt(limit, unit) + ' ' + unit}{by})")
    def ge_ratio(scn, field, want, what):
        a, b = med(scn, F, field), med(scn, R, field)
        if a is None or b is None or b == 0:
            return (None, f"{what}: no data")
        r = a / b
        return (r >= want, f"{what} {r:.2f}× RabbitMQ (target ≥ {want}×)")
    if "s1" in scenarios:
        rows.append(("S1", *check([le(med("s1", F, "broker_cpu_us_per_msg"), 2.0, "µs", "CPU/msg"),
                                   ge_ratio("s1", "consume_rate", 3, "throughput")])))
    if "s2" in scenarios:
        rows.append(("S2", *check([le(med("s2", F, "broker_cpu_us_per_msg"), 3.0, "µs", "CPU/msg")])))
    if "s3" in scenarios:
        st, text = check([le(med("s3", F, "broker_cpu_us_per_msg"), 8.0, "µs", "CPU/msg"),
                          ge_ratio("s3", "consume_rate", 5, "throughput")])
        rows.append(("S3", st, text))
    if "s4" in scenarios:
        rows.append(("S4", *check([le(med("s4", F, "broker_cpu_us_per_msg"), 1.0, "µs", "CPU/delivery")])))
    if "s5" in scenarios:
        rows.append(("S5", *check([le(med("s5", F, "backlog_rss_bytes"), 64e6, "bytes", "RSS at backlog", "64 MB"),
                                   ge_ratio("s5", "consume_rate", 4, "drain")])))
    if "s6" in scenarios:
        st, text = check([le(med("s6", F, "latency_p99_us"), 300, "µs", "p99"),
                          le(med("s6", F, "latency_p999_us"), 1000, "µs", "p99.9")])
        floor_p99, floor_p999 = med("s6", "floor", "latency_p99_us"), med("s6", "floor", "latency_p999_us")
        if floor_p999 is not None:
            text += (f"; host floor, no broker (relay): p99 {fmt(floor_p99, 'µs')} µs, "
                     f"p99.9 {fmt(floor_p999, 'µs')} µs")
        rows.append(("S6", st, text))
    if "s7" in scenarios:
        rows.append(("S7", *check([le(med("s7", F, "objects_s"), 2.0, "s", "time"),
                                   le(med("s7", F, "rss_bytes_per_object"), 8000, "bytes", "RSS/queue", "8 KB")])))
    if "s8" in scenarios:
        rows.append(("S8", *check([le(med("s8", F, "rss_bytes_per_object"), 24 * 1024, "bytes", "RSS/connection", "24 KiB")])))
    return rows

# ----- keep the hand-written notes of an existing report
START, END = "<!-- notes:start -->", "<!-- notes:end -->"
notes = f"{START}\n_(no notes yet)_\n{END}"
if os.path.exists(out_path):
    old = open(out_path).read()
    if START in old and END in old:
        notes = old[old.index(START):old.index(END) + len(END)]

env = os.environ
L = []
L.append("# Benchmarks: ferrymq vs RabbitMQ\n")
L.append("Generated by `scripts/compare-rabbitmq.sh`; do not edit by hand except between the notes "
         "markers (kept across runs).\n")
L.append("Both brokers run on this machine on loopback, one at a time, each run on a freshly started "
         "broker with an empty data directory; the load comes from the same client (`ferrymq-perf`, "
         "amqprs) on the same 2 cores. Absolute rates are noisy and partly client-bound; compare the "
         "**ratio** and the **broker CPU µs per message** (utime+stime of the broker process over the "
         "window ÷ messages consumed in it), which stays meaningful on a busy machine. Cells show the "
         f"median of {env['ROUNDS']} round(s) and [min – max].\n")
L.append("## Summary\n")
L.append("| scenario | headline metric | ferrymq | RabbitMQ | ferrymq ÷ RabbitMQ | ferrymq CPU µs/msg | RabbitMQ CPU µs/msg | ferrymq RSS | RabbitMQ RSS |")
L.append("|---|---|---|---|---|---|---|---|---|")
for scn in scenarios:
    name, field, unit, hb = headline(scn)
    cpu = cpu_field(scn)
    rss = rss_field(scn)
    label = scn.upper()
    cpu_name = " (per queue/conn)" if scn in ("s7", "s8") else ""
    L.append(f"| {label} | {name} | {fmt(med(scn,'ferrymq',field), unit)} | {fmt(med(scn,'rabbitmq',field), unit)} "
             f"| {ratio(scn, field, hb)} | {fmt(med(scn,'ferrymq',cpu), 'µs')}{cpu_name} | {fmt(med(scn,'rabbitmq',cpu), 'µs')} "
             f"| {fmt(med(scn,'ferrymq',rss), 'bytes')} | {fmt(med(scn,'rabbitmq',rss), 'bytes')} |")
L.append("")
L.append("RSS column: at the end of the window (S1–S4, S6), at full backlog (S5), per queue (S7), per connection (S8).\n")
if "s3" in scenarios:
    L.append(f"S3: {S3_NOTE}\n")

hosts = [r for r in results if r["scenario"] == "host"]
if hosts:
    L.append("## Host check\n")
    L.append("This virtual machine is not equally fast from hour to hour, with its steal time near "
             "zero, so the cause is not visible from inside; the drift moves every absolute figure, "
             "RabbitMQ's as much as ferrymq's. Before each scenario of each round, with both brokers stopped, "
             "`scripts/host-check.py` times a fixed loop of integer arithmetic (CPU ms) and a byte "
             "sent back and forth between two processes over pipes (µs per round trip, each trip "
             "waking a sleeping process). Lower is faster; medians of the round's checks and "
             "[min – max].\n")
    L.append("The S1 columns are the S1 runs of the same round, for comparison. The S6 columns give "
             "that round's p99.9 latency at 10,000 msg/s: first the host's floor, measured just "
             "before the brokers' S6 runs with the same paced producer and consumer joined by a "
             "relay process that only copies bytes (`ferrymq-perf --floor`; each message wakes the "
             "same three sleeping threads as through a broker), then each broker's.\n")
    L.append("| round | from | compute (ms) | ping-pong (µs per round trip) | ferrymq S1 CPU µs/msg | RabbitMQ S1 CPU µs/msg "
             "| S6 p99.9 floor (µs) | ferrymq S6 p99.9 | RabbitMQ S6 p99.9 |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for rnd in sorted({r["round"] for r in hosts}):
        rs = [r for r in hosts if r["round"] == rnd]
        def span(field, rs=rs):
            v = [r[field] for r in rs]
            return f"{statistics.median(v):,.1f} [{min(v):,.1f} – {max(v):,.1f}]"
        def of_round(scn, label, field, rnd=rnd):
            v = [r.get(field) for r in runs(scn, label) if r["round"] == rnd]
            return fmt(v[0], "µs") if v and v[0] is not None else "–"
        s1, s6 = "broker_cpu_us_per_msg", "latency_p999_us"
        L.append(f"| {rnd} | {rs[0]['at']} UTC | {span('host_compute_ms')} | {span('host_pingpong_us')} "
                 f"| {of_round('s1', 'ferrymq', s1)} | {of_round('s1', 'rabbitmq', s1)} "
                 f"| {of_round('s6', 'floor', s6)} | {of_round('s6', 'ferrymq', s6)} | {of_round('s6', 'rabbitmq', s6)} |")
    L.append("")

L.append("## Findings: ferrymq against the issue's targets\n")
L.append("| scenario | status | measured (median) |")
L.append("|---|---|---|")
for scn, status, text in target_rows():
    L.append(f"| {scn} | {status} | {text} |")
L.append("")
L.append(notes + "\n")

L.append("## Per scenario\n")
for scn in scenarios:
    L.append(f"### {TITLES.get(scn, scn)}\n")
    if scn == "s3":
        L.append(f"{S3_NOTE}\n")
    floor = bool(runs(scn, "floor")) or failures(scn, "floor") > 0
    if floor:
        L.append("The last column is the host's floor: the same load through a relay process that only "
                 "copies bytes; its broker rows are the relay's CPU and RSS (see Host check).\n")
    L.append("| metric | ferrymq | RabbitMQ | ferrymq ÷ RabbitMQ |" + (" floor: relay, no broker |" if floor else ""))
    L.append("|---|---|---|---|" + ("---|" if floor else ""))
    for name, field, unit, hb in METRICS.get(scn, THROUGHPUT):
        extra = f" {cell(scn,'floor',field,unit)} |" if floor else ""
        L.append(f"| {name} | {cell(scn,'ferrymq',field,unit)} | {cell(scn,'rabbitmq',field,unit)} | {ratio(scn, field, hb)} |{extra}")
    L.append("")

prof_self = os.path.join(work, "profile-self.txt")
if os.path.exists(prof_self) and os.path.getsize(prof_self) > 0:
    L.append("## Profile: ferrymq under S1\n")
    L.append("`perf record -e cpu-clock -F 499 --call-graph dwarf -p <ferrymq pid> -- sleep 4` during an "
             "8 s S1 run (hardware counters are not available in this VM, so the software clock samples). "
             "Split by binary (`--sort dso`):\n")
    L.append("```")
    dso = os.path.join(work, "profile-dso.txt")
    if os.path.exists(dso):
        L.extend(tidy(l) for l in open(dso))
    L.append("```\n")
    L.append("Top symbols by self time (`perf report --no-children --sort symbol`):\n")
    L.append("```")
    L.extend(tidy(l) for l in open(prof_self))
    L.append("```\n")
    prof_children = os.path.join(work, "profile-children.txt")
    if os.path.exists(prof_children) and os.path.getsize(prof_children) > 0:
        L.append("Inclusive time of ferrymq functions (`--children`; total, then self):\n")
        L.append("```")
        L.extend(tidy(l) for l in open(prof_children))
        L.append("```\n")

L.append("## Machine and versions\n")
L.append(f"- date: {env['META_DATE']}")
L.append(f"- CPU: {env['META_CPU']}, `nproc` = {env['META_NPROC']}; memory {env['META_MEM']}; kernel {env['META_KERNEL']}")
L.append(f"- ferrymq: {env['META_FERRYMQ']} (git {env['META_GIT']}), release build, {env['META_RUSTC']}")
L.append(f"- RabbitMQ: Debian rabbitmq-server {env['META_RABBIT']}, Erlang {env['META_ERLANG']}, default configuration, no plugins")
L.append(f"- client: ferrymq-perf with amqprs {env['META_AMQPRS']} (built with `--profile perf-tool`: fat LTO), in the same machine\n")
L.append("## Commands\n")
L.append("```sh")
L.append(f"{env['META_ENV']} scripts/compare-rabbitmq.sh")
L.append("```\n")
L.append("Per run (round 1 shown; each broker freshly started before each run):\n")
L.append("```sh")
L.extend(l.rstrip() for l in open(env["COMMANDS"]))
L.append("```")
fails = [r for r in results if r.get("failed")]
if fails:
    L.append(f"\n{len(fails)} run(s) failed: " + ", ".join(f"{r['scenario']}/{r['label']}#{r['round']}" for r in fails))
open(out_path, "w").write("\n".join(L) + "\n")
print(f"wrote {out_path}")
PY
cp "$RESULTS" "$ROOT/target/compare-results.jsonl" 2>/dev/null || true
log "raw results: $RESULTS (copy in target/compare-results.jsonl)"
