"""A real Herald process for tests: started on a free port with its own
data directory, stopped (and its directory removed) afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[3]


def herald_bin() -> str:
    """The binary under test: $HERALD_BIN, else the debug build."""
    return os.environ.get("HERALD_BIN") or str(REPO / "target" / "debug" / "herald")


class Gateway:
    """`herald serve` with the given TOML configuration."""

    def __init__(self, config: str = "", env: Optional[dict] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="herald-py-")
        path = Path(self.dir) / "herald.toml"
        path.write_text(config)
        child_env = dict(os.environ, HERALD_LOG="warn")
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [herald_bin(), "serve", "--listen", "127.0.0.1:0", "--config", str(path), "--data", str(Path(self.dir) / "data")],
            stdout=subprocess.PIPE,
            env=child_env,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first.startswith("herald listening on "):
            self.stop()
            raise RuntimeError(f"herald did not start: {first!r}")
        self.base = first.removeprefix("herald listening on ").strip()
        self.ws_url = self.base.replace("http://", "ws://") + "/v1/ws"

    def token(self, secret: str, sub: str = "test", *args: str) -> str:
        """Mint a token with `herald token` (`--all` unless grants are given)."""
        grants = list(args) or ["--all"]
        out = subprocess.run(
            [herald_bin(), "token", "--secret", secret, "--sub", sub, *grants],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("herald never became ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
