#!/usr/bin/env bash
# `herald bench` against one Herald node on a three-server NATS JetStream
# cluster (sync_interval: always), then against three nodes (load spread
# over them), then against the embedded log, in one run on this machine. Needs the release binary and scripts/services.sh's
# nats-server; prints both reports.
#   scripts/bench-cluster.sh [herald bench options...]
set -euo pipefail
cd "$(dirname "$0")/.."
HERALD=${HERALD_BIN:-target/release/herald}
NATS=$(ls -d target/nats-server-*/bin/nats-server | head -n1)
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
routes="nats-route://127.0.0.1:$((base + 10)), nats-route://127.0.0.1:$((base + 11)), nats-route://127.0.0.1:$((base + 12))"
for i in 0 1 2; do
  cat > "$dir/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((base + i))
http: 127.0.0.1:$((base + 20 + i))
jetstream { store_dir: "$dir/n$i", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:$((base + 10 + i)), routes: [$routes] }
CONF
  "$NATS" -c "$dir/n$i.conf" >/dev/null 2>&1 & pids+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((base + 20 + i))/healthz" >/dev/null && break; sleep 0.2; done
done
start_node() { # name -> prints "url pid"
  cat > "$dir/$1.toml" <<CONF
[cluster]
nats_urls = ["nats://127.0.0.1:$base", "nats://127.0.0.1:$((base + 1))", "nats://127.0.0.1:$((base + 2))"]
node = "$1"
# As herald bench's own gateway: no per-address, per-command or total limits in the way.
[limits]
max_connections = 1000000
max_connections_per_ip = 0
commands_per_second = 0
http_publishes_per_second = 0
CONF
  "$HERALD" serve --listen 127.0.0.1:0 --data "$dir/data-$1" --config "$dir/$1.toml" > "$dir/$1.out" 2>"$dir/$1.err" &
  local pid=$!
  for _ in $(seq 150); do grep -q "listening on" "$dir/$1.out" 2>/dev/null && break; sleep 0.2; done
  if ! grep -q "listening on" "$dir/$1.out"; then echo "node $1 did not start:" >&2; cat "$dir/$1.err" >&2; exit 1; fi
  echo "$(sed -n 's/^herald listening on //p' "$dir/$1.out") $pid"
}
read -r url_a pid_a < <(start_node a); pids+=("$pid_a")
echo "== cluster: one Herald node on 3 NATS servers (R3, sync always)"
"$HERALD" bench --target "$url_a" --target-pid "$pid_a" "$@"
read -r url_b pid_b < <(start_node b); pids+=("$pid_b")
read -r url_c pid_c < <(start_node c); pids+=("$pid_c")
echo "== cluster: three Herald nodes (publishers and subscribers spread over them; the fan-out publisher on a)"
"$HERALD" bench --target "$url_a" --target-pid "$pid_a" --also-target "$url_b" --also-target-pid "$pid_b" \
  --also-target "$url_c" --also-target-pid "$pid_c" "$@"
echo "== embedded log"
"$HERALD" bench "$@"
