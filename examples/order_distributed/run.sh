#!/usr/bin/env bash
# Runs the order saga across processes and prints the summary; exits non-zero if the books do
# not balance. Modes:
#   rabbitmq (default), nats: the orchestrator, catalog, payment and shipping services, each
#     with its own sled store, on the broker; the payment service is SIGKILLed mid-run and
#     restarted.
#   postgres, postgres-rabbitmq: every process on one PostgreSQL database (DATABASE_URL, default
#     postgres://postgres@127.0.0.1:5432/order_demo, recreated), three replicas of the
#     orchestrator and two of each service, over queues in the database or over RabbitMQ; one
#     orchestrator replica is SIGKILLed while orders are in flight and never comes back.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-rabbitmq}
orders=${ORDERS:-300}
dir=$(mktemp -d)
case "$mode" in
  rabbitmq) bus=rabbitmq store=sled features=rabbitmq ;;
  nats) bus=nats store=sled features=rabbitmq,nats ;;
  postgres) bus=postgres store=postgres features=rabbitmq,postgres ;;
  postgres-rabbitmq) bus=rabbitmq store=postgres features=rabbitmq,postgres ;;
  *) echo "unknown mode $mode: rabbitmq, nats, postgres or postgres-rabbitmq" >&2; exit 2 ;;
esac
# SAGA_EXAMPLE_BUILD_ARGS replaces the features (CI: the arguments of its test build, whose
# library the example then reuses).
read -ra build_args <<<"${SAGA_EXAMPLE_BUILD_ARGS:---features $features}"
cargo build -q --example order_distributed "${build_args[@]}"
bin=target/debug/examples/order_distributed
pids=()
# Logs go to DIR/orchestrator.log, DIR/catalog.log, …; replicas of a service share one.
start() {
  local log=$1
  [ "$1" = service ] && log=$2
  "$bin" --bus "$bus" --store "$store" "$@" >>"$dir/$log.log" 2>&1 &
  echo $!
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The services shut down gracefully on SIGTERM; wait until they have released their stores.
  for _ in $(seq 1 60); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return
    sleep 0.25
  done
}
trap cleanup EXIT

# A fresh demo topology (and database) each run.
if [ "$bus" = rabbitmq ]; then
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep '^order-demo\.' || true); do rabbitmqctl -q delete_queue "$q" >/dev/null || true; done
fi
if [ "$store" = postgres ]; then
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/order_demo}
  db=${DATABASE_URL##*/}
  psql "${DATABASE_URL%/*}/postgres" -qc "drop database if exists $db with (force)" -c "create database $db"
fi

if [ "$store" = sled ]; then
  pids+=("$(start orchestrator --dir "$dir")")
  for s in catalog shipping; do pids+=("$(start service "$s" --dir "$dir")"); done
  victim=$(start service payment --dir "$dir")
  victim_name="the payment service"
else
  # The schema is created by the first process to connect; the others wait on its lock.
  pids+=("$(start orchestrator --dir "$dir" --replica 0)")
  victim=$(start orchestrator --dir "$dir" --replica 1)
  victim_name="orchestrator replica 1 of 3"
  pids+=("$(start orchestrator --dir "$dir" --replica 2)")
  for s in catalog payment shipping; do
    for _ in 1 2; do pids+=("$(start service "$s" --dir "$dir")"); done
  done
fi
sleep 2
"$bin" --bus "$bus" --store "$store" push --orders "$orders" &
push=$!
sleep 0.5
echo "killing $victim_name mid-run; at the kill: $(cat "$dir/orchestrator.status" 2>/dev/null)"
kill -9 "$victim"
wait "$push"
echo "pushed $orders orders"
if [ "$store" = sled ]; then
  sleep 2
  pids+=("$(start service payment --dir "$dir")")
  echo "payment service restarted"
fi
for _ in $(seq 1 240); do
  status=$(cat "$dir/orchestrator.status" 2>/dev/null || true)
  case "$status" in
    *open=0*) done=$(echo "$status" | sed -E 's/completed=([0-9]+) compensated=([0-9]+) failed=([0-9]+).*/\1+\2+\3/' | bc)
              [ "$done" -ge "$orders" ] && break ;;
  esac
  sleep 0.5
done
echo "orchestrator: $status"
cleanup
pids=()
"$bin" --store "$store" summary --dir "$dir" --orders "$orders"
