#!/usr/bin/env bash
# rabbitmq-c command line tools (Debian amqp-tools) against Leveret.
# There is no exchange-declare tool and no confirm/tx/recovery: those scenarios are n/a.
# amqp-consume acks a message only when its command exits 0; a failed command leaves the
# message unacked, so it comes back (redelivered) when the consumer's connection closes.
set -u

HOST=${AMQP_HOST:-127.0.0.1}
PORT=${AMQP_PORT:-5672}
VHOST=${AMQP_VHOST:-/}
PREFIX=${INTEROP_PREFIX:-interop-amqp-tools-$$}
ONLY=${INTEROP_ONLY:-}
C=(-s "$HOST" --port "$PORT" --username "${AMQP_USER:-guest}" --password "${AMQP_PASSWORD:-guest}"
   --vhost "$VHOST")
T=$(mktemp -d)
trap 'jobs -p | xargs -r kill 2>/dev/null; rm -rf "$T"' EXIT

die() { echo "$*" >&2; exit 1; }
expect() {  # expect WHAT GOT WANT
  [ "$2" == "$3" ] || die "$1: got '$2', want '$3'"
}
get() { timeout 10 amqp-get "${C[@]}" -q "$1"; }
publish() { timeout 10 amqp-publish "${C[@]}" "$@"; }
declare_q() { timeout 10 amqp-declare-queue "${C[@]}" "$@"; }
delete_q() { timeout 10 amqp-delete-queue "${C[@]}" "$@"; }
# amqp-consume's option parser takes a "-c" meant for the command (and segfaults on
# "--"), so commands with options go in a script: append FILE adds the body and a newline
cat > "$T/append" <<'SH'
#!/bin/sh
cat >> "$1"; echo >> "$1"
SH
# fail: read the body, then fail (plain `false` can exit before amqp-consume has written
# the body into its stdin, and amqp-consume then dies of SIGPIPE)
cat > "$T/fail" <<'SH'
#!/bin/sh
cat > /dev/null; exit 1
SH
chmod +x "$T/append" "$T/fail"
# consume in the background: $1 = output file, rest = amqp-consume options
consume_bg() {
  local out=$1; shift
  timeout 20 amqp-consume "${C[@]}" "$@" "$T/append" "$out" &
}
wait_lines() {  # wait_lines FILE N
  for _ in $(seq 200); do
    [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ] && return 0
    sleep 0.05
  done
  die "timed out waiting for $2 messages in $(basename "$1")"
}

s_connect() {
  q=$(declare_q -q "") || die "amqp-declare-queue failed"
  [[ $q == amq.gen-* ]] || die "server-named queue '$q'"
}

s_topology() {
  q="$PREFIX.durable"
  got=$(declare_q -q "$q" -d) || die "declare failed"
  expect "declared name" "$got" "$q"
  publish -r "$q" -b one -p -C text/plain -H "k: v" || die "publish failed"
  publish -r "$q" -b two || die "publish failed"
  expect "first" "$(get "$q")" one
  n=$(delete_q -q "$q") || die "delete failed"
  expect "delete-ok message count" "$n" 1
  get "$PREFIX.gone" 2> "$T/err" && die "amqp-get of a deleted queue succeeded"
  grep -q "404" "$T/err" || die "expected 404, got: $(cat "$T/err")"
}

s_consume_prefetch() {
  q="$PREFIX.prefetch"
  declare_q -q "$q" > /dev/null || die "declare failed"
  for i in 1 2 3 4 5; do publish -r "$q" -b "m$i" || die "publish failed"; done
  # prefetch 2 and a command that never finishes: the consumer holds m1, m2 unacked
  timeout 20 amqp-consume "${C[@]}" -q "$q" -p 2 sleep 30 &
  pid=$!
  sleep 0.5
  for i in 3 4 5; do expect "get beyond the prefetch window" "$(get "$q")" "m$i"; done
  get "$q" > /dev/null && die "more than 2 messages were prefetched"
  kill "$pid"; wait "$pid" 2>/dev/null
  sleep 0.2
  expect "requeued after the consumer died" "$(get "$q")" m1
  expect "requeued after the consumer died" "$(get "$q")" m2
  delete_q -q "$q" > /dev/null
}

s_requeue_unacked() {
  q="$PREFIX.requeue"
  declare_q -q "$q" > /dev/null || die "declare failed"
  publish -r "$q" -b job || die "publish failed"
  timeout 10 amqp-consume "${C[@]}" -q "$q" -c 1 "$T/fail" || die "amqp-consume failed ($?)"
  expect "message whose command failed" "$(get "$q")" job
  publish -r "$q" -b job2
  timeout 10 amqp-consume "${C[@]}" -q "$q" -c 1 "$T/append" "$T/job2" || die "consume failed"
  expect "consumed body" "$(cat "$T/job2")" job2
  get "$q" > /dev/null && die "acked message came back"
  delete_q -q "$q" > /dev/null
}

s_fanout() {
  # (-e without -r segfaults amqp-consume: the binding key is ignored by fanout anyway)
  consume_bg "$T/f1" -e amq.fanout -r any -x -c 1 -A
  consume_bg "$T/f2" -e amq.fanout -r any -x -c 1 -A
  sleep 0.5
  publish -e amq.fanout -r ignored -b "to all" || die "publish failed"
  wait_lines "$T/f1" 1
  wait_lines "$T/f2" 1
  expect "consumer 1" "$(cat "$T/f1")" "to all"
  expect "consumer 2" "$(cat "$T/f2")" "to all"
}

s_topic() {
  consume_bg "$T/t1" -e amq.topic -r "$PREFIX.*.error" -x -c 2
  sleep 0.5
  for rk in web.error web.info db.error web.x.error; do
    publish -e amq.topic -r "$PREFIX.$rk" -b "$rk" || die "publish failed"
  done
  wait_lines "$T/t1" 2
  expect "topic matches" "$(tr '\n' ' ' < "$T/t1")" "web.error db.error "
}

s_close() {
  # every tool opens, works and closes its connection cleanly (exit 0, nothing on stderr)
  q=$(declare_q -q "" 2> "$T/err") || die "declare failed"
  publish -r "$q" -b x 2>> "$T/err" || die "publish failed"
  [ -s "$T/err" ] && die "stderr: $(cat "$T/err")"
  return 0
}

run() {
  local name=$1
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  if (set -u; "s_$name") 2> "$T/stderr"; then
    echo "PASS $name"
  else
    cat "$T/stderr" >&2
    echo "FAIL $name: $(tail -n 1 "$T/stderr" | tr -s '[:space:]' ' ' | cut -c1-300)"
  fi
}

for s in connect topology consume_prefetch requeue_unacked fanout topic close; do run "$s"; done
