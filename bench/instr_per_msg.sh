#!/usr/bin/env bash
# Instructions the broker executes per message, counted by valgrind's callgrind: the same
# on a quiet or a loaded machine, so small hot-path costs show that throughput runs here
# (spreads of 10-50 %) cannot.  Under valgrind the broker is the bottleneck, so its reads
# are large, as at saturation.
#
#   bash bench/instr_per_msg.sh TREE [N]     # TREE: a `git archive` checkout; N: messages (30000)
#   SIZE=16 bash bench/instr_per_msg.sh ...  # body size (default 1024); autoack, open loop
#
# Counters are zeroed once the broker accepts connections (`callgrind_control -z`) and
# dumped after one leveret-perf producer and autoack consumer have moved N messages, so
# startup and shutdown are not counted; connection setup is (amortized over N).
set -euo pipefail
T=$(cd "$1" && pwd); N=${2:-30000}; SIZE=${SIZE:-1024}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
OUT=$(mktemp -d)
EXTRA=()
OFF=0  # older trees: 0 turned them off
grep -q port_arg "$T/broker/cli.py" && OFF=off
grep -q -- --http-port "$T/broker/cli.py" && EXTRA=(--http-port $OFF --prometheus-port $OFF)
(cd "$T" && PYTHONPATH="$T" exec valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
    "$PY" -m leveret --port "$PORT" --in-memory --host 127.0.0.1 "${EXTRA[@]}" > "$OUT/log" 2>&1) &
VP=$!
trap 'kill $VP 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null && break; sleep 0.5; done
callgrind_control -z "$VP" > /dev/null
(cd "$HERE" && PYTHONPATH="$HERE" timeout 900 "$PY" -m leveret.perf --uri "amqp://guest:guest@127.0.0.1:$PORT/" \
    --quiet -x 1 -y 1 -a -s "$SIZE" -C "$N" > /dev/null)
callgrind_control -d "$VP" > /dev/null
sleep 1
TOT=$(callgrind_annotate "$(ls "$OUT"/cg.*.1)" 2> /dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$T: $N messages of $SIZE B, $TOT instructions, $((TOT / N)) per message"
