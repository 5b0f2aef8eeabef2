"""The OpenAPI document against the live gateway: schemathesis generates
requests for every operation from /v1/openapi.json and checks that no
answer is a server error and every answer (status, content type, headers,
body) is what the document says."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "tests"))
from gateway import Gateway  # noqa: E402

SECRET = "schemathesis-secret-0123456789"
CONFIG = f"""
[auth]
jwt_secret = "{SECRET}"
[rendezvous]
match_timeout = "300ms"
answer_timeout = "2s"
poll_timeout = "200ms"
"""
# Which checks run, and the one operation allowed a 5xx, are in
# schemathesis.toml beside this file.
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")


def echo_responder(url: str, token: str, stop: threading.Event, ready: threading.Event) -> None:
    """Answer every `echo` request with its body, so a request for the
    documented example service finds a responder (any other service is
    not granted: 403)."""

    async def run() -> None:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token}))
            await ws.recv()
            await ws.send(json.dumps({"type": "serve", "ref": 1, "service": "echo", "concurrency": 64}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "serving":
                    ready.set()
                elif msg.get("type") == "incoming":
                    await ws.send(json.dumps({"type": "answer", "ref": 2, "request": msg["request"], "body": msg["body"]}))
                if stop.is_set():
                    return

    try:
        asyncio.run(run())
    except Exception:  # the gateway stops first at the end of the test
        if not stop.is_set():
            raise


def schemathesis_bin() -> str:
    return str(Path(sys.executable).with_name("schemathesis"))


def test_the_api_keeps_its_document() -> None:
    g = Gateway(CONFIG)
    stop, ready = threading.Event(), threading.Event()
    try:
        g.wait_ready()
        with urllib.request.urlopen(g.base + "/v1/openapi.json") as r:
            doc = json.load(r)
        assert doc["openapi"].startswith("3.1")
        for path in ["/v1/publish", "/v1/history", "/v1/sse", "/v1/rendezvous/{service}", "/v1/peers", "/healthz", "/readyz"]:
            assert path in doc["paths"], path
        token = g.token(
            SECRET, "fuzz",
            "--subscribe", "*=#", "--publish", "*=#", "--serve", "echo", "--request", "echo", "--admin",
        )
        responder = threading.Thread(target=echo_responder, args=(g.ws_url, token, stop, ready), daemon=True)
        responder.start()
        assert ready.wait(10), "the echo responder did not start serving"
        out = subprocess.run(
            [
                schemathesis_bin(), "--config-file", str(CONFIG_FILE), "run", g.base + "/v1/openapi.json",
                "--header", f"Authorization: Bearer {token}",
                # Streams never end by design (tested in crates/herald/tests/e2e/sse.rs).
                "--exclude-path", "/v1/sse",
                "--max-examples", os.environ.get("HERALD_SCHEMATHESIS_EXAMPLES", "40"),
                "--request-timeout", "10",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=g.dir,  # its cache goes with the gateway's directory
        )
        print(out.stdout[-6000:])
        assert out.returncode == 0, out.stdout[-12000:] + out.stderr[-2000:]
        assert "Test cases:" in out.stdout
    finally:
        stop.set()
        g.stop()
