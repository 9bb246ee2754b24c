#!/usr/bin/env bash
# Instructions per message on the broker's hot path (bench/hotpath.py under callgrind):
# deterministic, so a change of 1 % shows on a noisy machine.
#
#   bash bench/hotpath_instr.sh TREE [hotpath.py args]    # TREE: a source tree (git archive)
#   bash bench/hotpath_instr.sh . --autoack --messages 20000
set -euo pipefail
T=$(cd "$1" && pwd); shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
N=20000
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do [[ ${ARGS[i]} == --messages ]] && N=${ARGS[i + 1]}; done
OUT=$(mktemp -d)
[[ -n ${KEEP:-} ]] && echo "callgrind output in $OUT" >&2 || trap 'rm -rf "$OUT"' EXIT
HOTPATH_CALLGRIND=1 PYTHONPATH="$T" valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
    "$PY" "$HERE/bench/hotpath.py" --count --messages "$N" "${ARGS[@]}" > "$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
F=$(ls "$OUT"/cg.*.1 2> /dev/null | head -1)
[[ -n $F ]] || { echo "no callgrind dump"; cat "$OUT/log"; exit 1; }
TOT=$(callgrind_annotate "$F" 2> /dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$T ${ARGS[*]}: $N messages, $((TOT / N)) instructions per message"
