"""Start ``rwkvkit serve`` in a child process and wait until it answers: for scripts, notebooks,
benchmarks and tests that need a real server beside them.

    with ServerProcess("--port", "0") as server:      # the bundled model, a free port
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")

The server prints its address (``rwkvkit serve: NAME at http://HOST:PORT ...``) once it listens;
``--port 0`` picks a free port, which is read from that line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from ..errors import RwkvkitError

STARTUP_S = 120.0  # loading torch and a model on a busy machine


class ServerProcess:
    """A running ``python -m rwkvkit serve ARGS``; its stderr lines are kept in ``log``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rwkvkit", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self.log: list[str] = []
        self.url = self._address()
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_healthy()

    def _address(self) -> str:
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
        self.proc.wait()
        raise RwkvkitError("rwkvkit serve did not start:\n" + "".join(self.log))

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
        self.stop()
        raise RwkvkitError("rwkvkit serve never answered /health:\n" + "".join(self.log))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal it and wait for it to exit (killed if it takes longer); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RwkvkitError(f"rwkvkit serve did not exit {timeout} s after signal {sig}") from None
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
