#!/usr/bin/env bash
# Runs the same scenarios against pubsub, nats-server, redis-server and the built-in
# relay (`pubsub bench relay-server`, which forwards bytes and does no broker work: the
# floor of this machine), and prints one markdown table with each figure and its ratio to
# pubsub's. pubsub runs twice: with its defaults, and as pubsub-spin50 with
# --spin-before-park 50us, which keeps an idle executor polling for 50 µs before it sleeps.
#
# Like is compared with like: pubsub without acks against core NATS and Redis pub/sub,
# which are at-most-once. Explicit acks and replay exist only in pubsub; their rows show
# n/a for the others.
#
# Usage: scripts/compare.sh [--quick] [--repeat N] [--out DIR]
#   --quick     every scenario for a second or two, once: a smoke test
#   --repeat N  runs of each scenario per system, interleaved; the table shows medians
#               (default 3)
#   --out DIR   result folder instead of bench-results/<UTC time>-compare
#
# Installs nats-server and redis-server with apt-get when they are missing (needs root).
# Every server listens on 127.0.0.1 only, on a free port, with one shard or thread pinned
# to CPU 0; the load generator runs on the other CPUs. Each server is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
repeat=3
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --repeat)
      repeat="${2:?--repeat needs a number}"
      shift
      ;;
    --out)
      out="${2:?--out needs a folder}"
      shift
      ;;
    -h | --help)
      sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "error: unknown option $1; see scripts/compare.sh --help" >&2
      exit 2
      ;;
  esac
  shift
done
case "$repeat" in
  '' | *[!0-9]* | 0)
    echo "error: --repeat is '$repeat'; use a positive number" >&2
    exit 2
    ;;
esac

if [ "$quick" = 1 ]; then
  lat_duration=2s lat_warmup=500ms tp_duration=1s replay_messages=100000 repeat=1
else
  lat_duration=30s lat_warmup=5s tp_duration=10s replay_messages=1000000
fi
lat_rate=50000
out="${out:-bench-results/$(date -u +%Y-%m-%dT%H-%M-%SZ)-compare}"
mkdir -p "$out"

missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== building the release binary"
cargo build --release --quiet
bin=target/release/pubsub

ncpu=$(nproc)
server_cmd=()
generator_cmd=()
broker_pin=()
if command -v taskset >/dev/null 2>&1 && [ "$ncpu" -ge 2 ]; then
  server_cmd=(taskset -c 0)
  generator_cpus=$([ "$ncpu" -eq 2 ] && echo 1 || echo "1-$((ncpu - 1))")
  generator_cmd=(taskset -c "$generator_cpus")
  placement="every server on CPU 0 (taskset; pubsub with --cores 1, pinned, nats-server with GOMAXPROCS=1), generator on CPU(s) $generator_cpus"
else
  placement="servers and generator share the machine's $ncpu CPU(s); no taskset"
fi

free_port() {
  local port tries=0
  while [ $tries -lt 100 ]; do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
    tries=$((tries + 1))
  done
  echo "error: found no free loopback port" >&2
  return 1
}

wait_for_port() {
  local port=$1 pid=$2 tries=0
  while [ $tries -lt 200 ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
    tries=$((tries + 1))
  done
  return 1
}

declare -A addr pid
# The protocol each system speaks.
declare -A protocol_of=([pubsub]=pubsub [pubsub-spin50]=pubsub [nats]=nats [redis]=redis [relay]=relay)
stop_all() {
  local name
  for name in "${!pid[@]}"; do
    kill "${pid[$name]}" 2>/dev/null || true
    wait "${pid[$name]}" 2>/dev/null || true
  done
}
trap stop_all EXIT

# Starts server $1 with the command that follows, on port $port; records its pid.
start() {
  local name=$1
  shift
  "${server_cmd[@]}" "$@" >"$out/server-$name.log" 2>&1 &
  pid[$name]=$!
  addr[$name]="127.0.0.1:$port"
  if ! wait_for_port "$port" "${pid[$name]}"; then
    echo "error: $name did not start; its log, $out/server-$name.log, ends with:" >&2
    tail -5 "$out/server-$name.log" >&2
    exit 1
  fi
  echo "== $name on ${addr[$name]}, pid ${pid[$name]}"
}

port=$(free_port)
start pubsub "$bin" serve --listen "127.0.0.1:$port" --cores 1 "${broker_pin[@]}"
port=$(free_port)
start pubsub-spin50 "$bin" serve --listen "127.0.0.1:$port" --cores 1 "${broker_pin[@]}" \
  --spin-before-park 50us
port=$(free_port)
start nats env GOMAXPROCS=1 nats-server -a 127.0.0.1 -p "$port"
port=$(free_port)
start redis redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no
port=$(free_port)
start relay "$bin" bench relay-server --listen "127.0.0.1:$port"

{
  echo "command: scripts/compare.sh $([ "$quick" = 1 ] && echo --quick) --repeat $repeat"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cpus: $ncpu CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "nats-server: $(nats-server --version 2>&1 | head -1 | sed 's/^nats-server: //')"
  echo "redis-server: $(redis-server --version 2>&1 | head -1)"
  echo "placement: $placement"
} | tee "$out/environment.txt"

# The machine's own noise floor on the servers' CPU and on the generator's.
jitter_time=$([ "$quick" = 1 ] && echo 1s || echo 10s)
"${server_cmd[@]}" "$bin" bench jitter --duration "$jitter_time" --json "$out/jitter-server-cpu.json" |
  tee "$out/jitter-server-cpu.txt"
"${generator_cmd[@]}" "$bin" bench jitter --duration "$jitter_time" --json "$out/jitter-generator-cpu.json" |
  tee "$out/jitter-generator-cpu.txt"

failures=()
summaries=()
# Runs scenario $2 against system $1 as run $3 of run name $4, with the remaining flags.
run() {
  local system=$1 scenario=$2 round=$3 name=$4
  shift 4
  local file="$out/$name-$system-$round"
  local protocol=${protocol_of[$system]}
  echo "-- $name, $system, round $round"
  if "${generator_cmd[@]}" "$bin" bench "$scenario" --server "${addr[$system]}" \
    --protocol "$protocol" --label "$system" --name "$name" --json "$file.json" "$@" \
    >"$file.txt" 2>&1; then
    grep -E '^  (p50|p99 |delivered|lost|replay) ' "$file.txt" | sed 's/^/   /' || true
  else
    failures+=("$name-$system-$round")
    echo "!! $name against $system failed; see $file.txt"
    tail -3 "$file.txt" | sed 's/^/   /'
  fi
  [ -f "$file.json" ] && summaries+=("$file.json")
  return 0
}

systems=(pubsub pubsub-spin50 nats redis relay)
lat=(--rate "$lat_rate" --payload 64 --duration "$lat_duration" --warmup "$lat_warmup")
for round in $(seq 1 "$repeat"); do
  for system in "${systems[@]}"; do
    run "$system" latency "$round" latency-64B-50k "${lat[@]}" --hgrm "$out/latency-$system-$round.hgrm"
  done
  for system in "${systems[@]}"; do
    run "$system" throughput "$round" throughput-16B-1to1 --payload 16 --duration "$tp_duration"
  done
  for system in "${systems[@]}"; do
    run "$system" throughput "$round" fanout-64B-1to4 --payload 64 --duration "$tp_duration" --subscribers 4
  done
  run pubsub throughput "$round" throughput-16B-1to1-ack --payload 16 --duration "$tp_duration" --ack explicit
  run pubsub latency "$round" latency-64B-50k-ack "${lat[@]}" --ack explicit
done

# Replay and memory need a broker that retains every prefilled message.
kill "${pid[pubsub]}" && wait "${pid[pubsub]}" 2>/dev/null || true
port=$(free_port)
start pubsub "$bin" serve --listen "127.0.0.1:$port" --cores 1 "${broker_pin[@]}" \
  --retain-messages "$replay_messages" --retain-bytes $((replay_messages * 64 * 2))
run pubsub replay 1 replay-64B --payload 64 --messages "$replay_messages" --broker-pid "${pid[pubsub]}"

curves=()
for system in "${systems[@]}"; do
  [ -f "$out/latency-$system-1.hgrm" ] && curves+=("$system=$out/latency-$system-1.hgrm")
done
"$bin" bench plot --out "$out/latency.svg" \
  --title "Latency at $lat_rate msg/s, 64-byte payload, 1 publisher, 1 subscriber (round 1)" \
  "${curves[@]}" || failures+=(plot)

{
  echo "Command: \`scripts/compare.sh$([ "$quick" = 1 ] && echo ' --quick') --repeat $repeat\`, $(date -u +%Y-%m-%d)."
  echo "Machine: $(sed -n 's/^cpu: //p' "$out/environment.txt"), $(sed -n 's/^cpus: //p' "$out/environment.txt"); $placement."
  echo "Peers: nats-server $(sed -n 's/^nats-server: //p' "$out/environment.txt"), redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')."
  echo "Noise floor (\`pubsub bench jitter\`, $jitter_time per CPU): the server CPU was not running a spinning thread for $(sed -n 's/.*"stalled_percent": \([0-9.]*\).*/\1/p' "$out/jitter-server-cpu.json" | cut -c1-4)% of the time (max gap $(sed -n 's/.*"max_gap_us": \([0-9]*\).*/\1/p' "$out/jitter-server-cpu.json") µs), the generator CPU for $(sed -n 's/.*"stalled_percent": \([0-9.]*\).*/\1/p' "$out/jitter-generator-cpu.json" | cut -c1-4)% (max gap $(sed -n 's/.*"max_gap_us": \([0-9]*\).*/\1/p' "$out/jitter-generator-cpu.json") µs)."
  echo
  "$bin" bench table --baseline pubsub "${summaries[@]}"
  echo
  echo "Ratios are each figure divided by pubsub's: above 1 is faster for rates and slower for latencies."
  echo "nats-server (core NATS) and redis-server (pub/sub) deliver at most once and keep no"
  echo "messages: they have no acks and no replay, so those rows are pubsub's alone. The relay"
  echo "routes no topics and keeps nothing; it is the floor of the sockets and the generator."
  echo "pubsub-spin50 is pubsub with --spin-before-park 50us: an idle executor polls for 50 µs"
  echo "before it sleeps, which shortens its wake-up and costs CPU time while idle."
} | tee "$out/compare.md"

if [ ${#failures[@]} -gt 0 ]; then
  echo "error: ${#failures[@]} run(s) failed: ${failures[*]}" >&2
  exit 1
fi
