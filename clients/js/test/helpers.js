// Test helpers: a real `herald serve` process, tokens from `herald token`,
// HTTP publishing, and a TCP proxy that cuts connections on demand.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { createInterface } from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../..');

/** The `herald` binary under test: $HERALD_BIN or the workspace's debug build. */
export function heraldBin() {
  const bin = process.env.HERALD_BIN ?? join(repoRoot, 'target/debug/herald');
  if (!existsSync(bin)) throw new Error(`${bin} does not exist: run \`cargo build -p herald\` or set HERALD_BIN`);
  return bin;
}

export const SECRET = 'js-client-tests-secret-0123456789';

/** Starts `herald serve` on a free port with `[auth] jwt_secret` and `extraToml`. */
export async function startHerald({ extraToml = '', args = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-js-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, `heartbeat = "30s"\n[auth]\njwt_secret = "${SECRET}"\n${extraToml}\n`);
  let stderr = '';
  const output = [];
  let child;
  const spawnOn = async (listen) => {
    child = spawn(heraldBin(), ['serve', '--listen', listen, '--data', join(dir, 'data'), '--config', config, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, HERALD_LOG: process.env.HERALD_LOG ?? 'warn' },
    });
    child.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > 65536) stderr = stderr.slice(-32768);
    });
    const lines = createInterface({ input: child.stdout });
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`herald did not start in 20 s:\n${stderr}`)), 20000);
      child.on('exit', (code) => fail(new Error(`herald exited with ${code}:\n${stderr}`)));
      lines.on('line', (line) => {
        output.push(line);
        const m = /^herald listening on (\S+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          ok(m[1]);
        }
      });
    });
  };
  const killed = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
  };
  const httpUrl = await spawnOn('127.0.0.1:0');
  const addr = new URL(httpUrl);
  return {
    httpUrl,
    port: Number(addr.port),
    output,
    stderr: () => stderr,
    /** SIGKILL, and stay down. */
    async kill9() {
      await killed();
    },
    /** SIGKILL, then start again on the same port and data directory. */
    async kill9AndRestart() {
      await killed();
      await spawnOn(`127.0.0.1:${addr.port}`);
    },
    async stop() {
      await killed();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** nats-server 2.15 as scripts/services.sh installs it (target/nats-server-*). */
function natsServerBin() {
  if (process.env.HERALD_NATS_SERVER) return process.env.HERALD_NATS_SERVER;
  const target = join(repoRoot, 'target');
  const dir = readdirSync(target).find((d) => d.startsWith('nats-server-'));
  if (!dir) throw new Error('nats-server 2.15 is installed by scripts/services.sh into target/nats-server-*');
  return join(target, dir, 'bin/nats-server');
}

async function freePorts(n) {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise((ok) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => ok(s));
    })),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((ok) => s.close(ok))));
  return ports;
}

/**
 * Three nats-server nodes in one cluster on free ports (JetStream, syncing
 * every write); `heraldToml(node)` is the `[cluster]` section of a Herald node.
 */
export async function startNatsCluster() {
  const dir = mkdtempSync(join(tmpdir(), 'herald-js-nats-'));
  const ports = await freePorts(9);
  const nodes = [0, 1, 2].map((i) => ({ port: ports[3 * i], cluster: ports[3 * i + 1], monitor: ports[3 * i + 2] }));
  const routes = nodes.map((n) => `nats-route://127.0.0.1:${n.cluster}`).join(', ');
  const children = nodes.map((n, i) => {
    const conf = join(dir, `n${i}.conf`);
    writeFileSync(conf, `server_name: n${i}\nlisten: 127.0.0.1:${n.port}\nhttp: 127.0.0.1:${n.monitor}\njetstream {\n  store_dir: "${join(dir, `n${i}`)}"\n  sync_interval: always\n}\ncluster {\n  name: herald-js\n  listen: 127.0.0.1:${n.cluster}\n  routes: [${routes}]\n}\n`);
    return spawn(natsServerBin(), ['-c', conf], { stdio: 'ignore' });
  });
  for (const n of nodes) {
    await until(async () => {
      try {
        return (await fetch(`http://127.0.0.1:${n.monitor}/healthz`)).ok;
      } catch {
        return false;
      }
    }, 'nats-server ready', 30000);
  }
  const urls = nodes.map((n) => `"nats://127.0.0.1:${n.port}"`).join(', ');
  return {
    heraldToml: (node) => `[cluster]\nnats_urls = [${urls}]\nnode = "${node}"\n`,
    async stop() {
      for (const c of children) c.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A token from `herald token`; `grants` are its flags, e.g. `['--subscribe', 'orders=#']`. */
export function mint(sub, grants = ['--all'], ttl = '1h') {
  return execFileSync(heraldBin(), ['token', '--sub', sub, '--ttl', ttl, ...grants], {
    env: { ...process.env, HERALD_JWT_SECRET: SECRET },
  })
    .toString()
    .trim();
}

/** POST /v1/publish; returns the parsed answer (throws on an HTTP error). */
export async function publish(httpUrl, token, events) {
  const res = await fetch(`${httpUrl}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(events),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`publish: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

/**
 * A TCP proxy to `port` whose `cut()` destroys every connection through it
 * at once, without a WebSocket close frame: what a network failure does.
 */
export async function startProxy(port) {
  const pairs = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    url: `http://127.0.0.1:${server.address().port}`,
    /** Number of connections cut so far. */
    cuts: 0,
    cut() {
      for (const { client, upstream } of [...pairs]) {
        this.cuts++;
        client.resetAndDestroy?.() ?? client.destroy();
        upstream.destroy();
      }
      pairs.clear();
    },
    /** While true, new connections are closed at once (the network is down). */
    refuse(on) {
      refusing = on;
    },
    open() {
      return pairs.size;
    },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

/** Resolves when `predicate()` holds, polling; rejects after `ms` with `what`. */
export async function until(predicate, what, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
