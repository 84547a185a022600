#!/usr/bin/env bash
# Builds the release binary, starts brokers on loopback and runs every `pubsub bench`
# scenario against them. Results go to one folder: bench-results/<UTC time>/ contains each
# run's console output (.txt), JSON summary (.json), latency distribution (.hgrm), the
# latency plot (latency.svg), a markdown table (summary.md) and the broker logs.
#
# Usage: scripts/bench.sh [--quick] [--cores N] [--out DIR]
#   --quick    every scenario for a second or two: a smoke test, not a measurement
#   --cores N  shards of the broker for the latency, throughput and replay runs (default 1);
#              the spread scenario always runs with 1 shard and with max(N, 2) shards
#   --out DIR  result folder instead of bench-results/<UTC time>
#
# Exits non-zero when any scenario fails, for example when messages are lost in a run
# without acks at a load the broker should sustain.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
cores=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --cores)
      cores="${2:?--cores needs a number}"
      shift
      ;;
    --out)
      out="${2:?--out needs a folder}"
      shift
      ;;
    -h | --help)
      sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "error: unknown option $1; see scripts/bench.sh --help" >&2
      exit 2
      ;;
  esac
  shift
done
case "$cores" in
  '' | *[!0-9]* | 0)
    echo "error: --cores is '$cores'; use a positive number" >&2
    exit 2
    ;;
esac

out="${out:-bench-results/$(date -u +%Y-%m-%dT%H-%M-%SZ)}"
mkdir -p "$out"

if [ "$quick" = 1 ]; then
  lat_duration=2s lat_warmup=500ms tp_duration=1s replay_messages=100000
else
  lat_duration=30s lat_warmup=5s tp_duration=10s replay_messages=1000000
fi
lat_rate=50000

echo "== building the release binary"
cargo build --release --quiet
bin=target/release/pubsub

# CPU placement. On a machine with more CPUs than broker shards, the broker gets the
# first CPUs and the load generator the rest, so that neither steals the other's time.
# The broker pins its executors within the taskset mask it is started under.
ncpu=$(nproc)
have_taskset=0
command -v taskset >/dev/null 2>&1 && have_taskset=1

# Sets broker_cmd, broker_pin_flag, generator_cmd and placement for a broker of $1 shards.
plan_cpus() {
  local shards=$1
  broker_cmd=()
  generator_cmd=()
  broker_pin_flag=()
  if [ "$have_taskset" = 1 ] && [ "$shards" -lt "$ncpu" ]; then
    local broker_cpus="0-$((shards - 1))" generator_cpus="$shards-$((ncpu - 1))"
    [ "$shards" -eq 1 ] && broker_cpus=0
    [ "$shards" -eq $((ncpu - 1)) ] && generator_cpus=$shards
    broker_cmd=(taskset -c "$broker_cpus")
    generator_cmd=(taskset -c "$generator_cpus")
    placement="broker pinned on CPU(s) $broker_cpus (taskset), generator on CPU(s) $generator_cpus (taskset)"
  elif [ "$shards" -le "$ncpu" ]; then
    placement="broker pinned one executor per CPU; generator shares the broker's $ncpu CPUs (no CPU left to separate them)"
  else
    broker_pin_flag=(--no-pin)
    placement="broker has $shards unpinned executors on $ncpu CPUs; generator shares them"
  fi
}

# Prints a loopback port that nothing listens on.
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

# Waits until 127.0.0.1:$1 accepts connections while process $2 lives.
wait_for_port() {
  local port=$1 pid=$2 tries=0
  while [ $tries -lt 200 ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
    tries=$((tries + 1))
  done
  return 1
}

broker_pid=""
stop_broker() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
  fi
}
trap stop_broker EXIT

# Starts a broker of $1 shards with log file $2 and any further serve flags; sets
# broker_addr and broker_pid.
start_broker() {
  local shards=$1 log=$2
  shift 2
  stop_broker
  plan_cpus "$shards"
  local port
  port=$(free_port)
  broker_addr="127.0.0.1:$port"
  "${broker_cmd[@]}" "$bin" serve --listen "$broker_addr" --cores "$shards" \
    "${broker_pin_flag[@]}" "$@" >"$out/$log" 2>&1 &
  broker_pid=$!
  if ! wait_for_port "$port" "$broker_pid"; then
    echo "error: the broker did not start; its log, $out/$log, ends with:" >&2
    tail -5 "$out/$log" >&2
    exit 1
  fi
  echo "== broker: $shards shard(s) on $broker_addr, pid $broker_pid; $placement"
}

failures=()
summaries=()
# Runs one `pubsub bench` scenario named $1 with the remaining arguments, keeping its
# output in $out/$1.txt and its summary in $out/$1.json.
run() {
  local name=$1 scenario=$2
  shift 2
  echo "-- $name"
  if "${generator_cmd[@]}" "$bin" bench "$scenario" --server "$broker_addr" --name "$name" \
    --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.txt"; then
    summaries+=("$out/$name.json")
    return 0
  fi
  failures+=("$name")
  echo "!! $name failed"
}

{
  echo "command: scripts/bench.sh $([ "$quick" = 1 ] && echo --quick) --cores $cores"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cpus: $ncpu CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
} | tee "$out/environment.txt"

# The machine's own noise floor, on the CPUs the broker and the generator will use.
plan_cpus "$cores"
jitter_time=$([ "$quick" = 1 ] && echo 1s || echo 10s)
"${broker_cmd[@]}" "$bin" bench jitter --duration "$jitter_time" --json "$out/jitter-broker-cpus.json" |
  tee "$out/jitter-broker-cpus.txt"
"${generator_cmd[@]}" "$bin" bench jitter --duration "$jitter_time" --json "$out/jitter-generator-cpus.json" |
  tee "$out/jitter-generator-cpus.txt"

# Latency and throughput, one broker.
start_broker "$cores" broker.log
echo "placement: $placement" >>"$out/environment.txt"
lat=(--rate "$lat_rate" --payload 64 --duration "$lat_duration" --warmup "$lat_warmup")
run latency-64B-50k latency "${lat[@]}" --hgrm "$out/latency-64B-50k.hgrm"
run latency-64B-50k-ack latency "${lat[@]}" --ack explicit --hgrm "$out/latency-64B-50k-ack.hgrm"
tp=(--payload 16 --duration "$tp_duration")
run throughput-16B throughput "${tp[@]}"
run throughput-16B-ack throughput "${tp[@]}" --ack explicit
run throughput-16B-ack100 throughput "${tp[@]}" --ack explicit --ack-every 100
run fanout-64B-1x4 throughput --payload 64 --duration "$tp_duration" --subscribers 4

# Replay needs a broker that retains every prefilled message; a fresh one also gives a
# clean memory baseline.
start_broker "$cores" broker-replay.log --retain-messages "$replay_messages" \
  --retain-bytes $((replay_messages * 64 * 2))
run replay-64B replay --payload 64 --messages "$replay_messages" --broker-pid "$broker_pid"
stop_broker

# Spread: many topics over every shard, with one shard and with several.
spread_cores=$((cores > 2 ? cores : 2))
start_broker 1 broker-spread-1.log
run spread-16B-1-shard spread --payload 16 --duration "$tp_duration"
if [ "$spread_cores" -le "$ncpu" ]; then
  start_broker "$spread_cores" "broker-spread-$spread_cores.log"
  run "spread-16B-$spread_cores-shards" spread --payload 16 --duration "$tp_duration"
else
  echo "-- spread with $spread_cores shards skipped: this machine has $ncpu CPU(s)"
fi
stop_broker

"$bin" bench plot --out "$out/latency.svg" --title "pubsub latency at $lat_rate msg/s, 64-byte payload" \
  "ack none=$out/latency-64B-50k.hgrm" "ack explicit=$out/latency-64B-50k-ack.hgrm" ||
  failures+=(plot)
if [ ${#summaries[@]} -gt 0 ]; then
  "$bin" bench table "${summaries[@]}" >"$out/summary.md" || failures+=(table)
fi
echo "== results in $out"
[ -f "$out/summary.md" ] && cat "$out/summary.md"

if [ ${#failures[@]} -gt 0 ]; then
  echo "error: ${#failures[@]} scenario(s) failed: ${failures[*]}" >&2
  exit 1
fi
