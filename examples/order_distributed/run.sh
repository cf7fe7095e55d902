#!/usr/bin/env bash
# Runs the order saga across processes: orchestrator, catalog, payment and shipping services,
# each with its own sled store, on RabbitMQ (default) or NATS (`run.sh nats`). Pushes orders,
# kills the payment service mid-run with SIGKILL, restarts it, waits until every order is
# terminal, stops everything and prints the summary. Exits non-zero if the books do not balance.
set -euo pipefail
cd "$(dirname "$0")/../.."
broker=${1:-rabbitmq}
orders=${ORDERS:-300}
dir=$(mktemp -d)
features=rabbitmq
[ "$broker" = nats ] && features=rabbitmq,nats
cargo build -q --example order_distributed --features "$features"
bin=target/debug/examples/order_distributed
pids=()
start() { "$bin" --bus "$broker" "$@" >>"$dir/$2.log" 2>&1 & echo $!; }
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

# A fresh demo topology each run.
if [ "$broker" = rabbitmq ]; then
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep '^order-demo\.' || true); do rabbitmqctl -q delete_queue "$q" >/dev/null || true; done
fi

pids+=("$(start orchestrator --dir "$dir")")
for s in catalog shipping; do pids+=("$(start service "$s" --dir "$dir")"); done
payment=$(start service payment --dir "$dir")
sleep 2
# Kill the payment service while orders are still being pushed and handled.
"$bin" --bus "$broker" push --orders "$orders" &
push=$!
sleep 0.5
echo "killing the payment service mid-run; at the kill: $(cat "$dir/orchestrator.status" 2>/dev/null)"
kill -9 "$payment"
wait "$push"
echo "pushed $orders orders"
sleep 2
payment=$(start service payment --dir "$dir")
pids+=("$payment")
echo "payment service restarted"
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
"$bin" summary --dir "$dir" --orders "$orders"
