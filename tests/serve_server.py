"""``rwkvkit serve`` as a user starts it, in a subprocess on 127.0.0.1 at a free port, for the
server's tests; and plain HTTP calls to it (for what the ``openai`` client would not send)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 120  # loading torch and the model on a busy 2-core machine


class ServerProcess:
    """A running ``rwkvkit serve --port 0 ...``; its stderr is collected in ``log``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.api_key = args[args.index("--api-key") + 1] if "--api-key" in args else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rwkvkit",
                "serve",
                "--port",
                "0",
                "--threads",
                "1",
                "--log-level",
                "warning",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        self.log: list[str] = []
        self.url = self._wait_for_address()
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_healthy()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + STARTUP_S
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            found = re.search(r" at (http://\S+) ", line)
            if found:
                return found.group(1)
        self.proc.kill()
        raise AssertionError("the server did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the server never answered /health:\n" + "".join(self.log))

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, **kw: Any) -> Any:
        import openai

        kw.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=self.base_url, max_retries=0, timeout=120, **kw)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One plain HTTP request: (status, headers, body)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        data = (
            json.dumps(body).encode()
            if isinstance(body, dict)
            else body.encode()
            if isinstance(body, str)
            else body
        )
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self.api_key and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        status, _, body = self.call("GET", "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_metric(self, name: str, value: float, timeout: float = 10.0) -> float:
        """Poll /metrics until ``name`` equals ``value`` (or the time is up); its last value."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.metrics().get(name)
            if got == value or time.monotonic() > deadline:
                return got  # type: ignore[return-value]
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not exit {timeout} s after signal {sig}") from None
        return self.proc.returncode


def serve(*args: str, **kw: Any) -> Any:
    """A module fixture's body: yield a started server, stop it afterwards (it must exit cleanly)."""
    pytest.importorskip("openai", reason="the server's tests use the openai client (pip install '.[test]')")
    server = ServerProcess(*args, **kw)
    try:
        yield server
    finally:
        rc = server.stop()
        log = "".join(server.log)
        assert rc == 0 and "Traceback" not in log, f"exit {rc}; server log:\n{log}"
