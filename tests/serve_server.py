"""``rwkvkit serve`` as a user starts it, in a subprocess on 127.0.0.1 at a free port, for the
server's tests; and plain HTTP calls to it (for what the ``openai`` client would not send)."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest

from rwkvkit.serve import launch

REPO = Path(__file__).resolve().parents[1]


class ServerProcess(launch.ServerProcess):
    """``rwkvkit serve --port 0 --threads 1 ...`` from this checkout, with ways to call it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.api_key = args[args.index("--api-key") + 1] if "--api-key" in args else None
        super().__init__(
            "--port", "0", "--threads", "1", "--log-level", "warning", *args,
            env={"PYTHONPATH": str(REPO), **(env or {})},
            cwd=cwd,
        )  # fmt: skip

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
