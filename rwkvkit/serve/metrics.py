"""The server's counters and gauges, written in Prometheus' text format for ``GET /metrics``.

Counters are bumped from the HTTP side (requests by route and status) and from the scheduler's
thread (tokens, first-token times), so they sit behind one lock. The gauges (queue depth,
active rows, cache size) are read from their owners when scraped.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

RATE_WINDOW_S = 10.0  # generated tokens/s is the rate over this many recent seconds


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()  # (route, status)
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.first_token_seconds = 0.0  # sum, over the rows that produced a first token
        self.first_tokens = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens)
        self.read: dict[str, tuple[str, str, Callable[[], float]]] = {}  # name -> (kind, help, read)

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[route, status] += 1

    def prompt(self, tokens: int, cached: int) -> None:
        with self._lock:
            self.prompt_tokens += tokens
            self.cached_tokens += cached

    def generated(self, tokens: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += tokens
            self._recent.append((now, tokens))
            self._trim(now)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.first_token_seconds += seconds
            self.first_tokens += 1

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def watch(self, name: str, kind: str, help: str, read: Callable[[], float]) -> None:
        """Report ``read()`` (a gauge, or a counter its owner keeps) at every scrape."""
        self.read[name] = (kind, help, read)

    def render(self) -> str:
        rate = self.tokens_per_second()
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
            metric(
                "rwkvkit_requests_total",
                "counter",
                "HTTP requests answered, by route and status",
                [(f'{{route="{r}",status="{s}"}}', n) for (r, s), n in requests],
            )
            metric(
                "rwkvkit_prompt_tokens_total", "counter", "prompt tokens received", [("", self.prompt_tokens)]
            )
            metric(
                "rwkvkit_cached_prompt_tokens_total",
                "counter",
                "prompt tokens not read again thanks to the prefix cache",
                [("", self.cached_tokens)],
            )
            metric(
                "rwkvkit_generated_tokens_total", "counter", "tokens generated", [("", self.generated_tokens)]
            )
            metric(
                "rwkvkit_time_to_first_token_seconds",
                "summary",
                "from a row's admission to its first generated token",
                [("_sum", self.first_token_seconds), ("_count", self.first_tokens)],
            )
        metric(
            "rwkvkit_generated_tokens_per_second",
            "gauge",
            f"tokens generated per second over the last {RATE_WINDOW_S:g} s",
            [("", rate)],
        )
        for name, (kind, help, read) in self.read.items():
            metric(name, kind, help, [("", read())])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Integers in full (a byte count printed as 2.68e+08 loses its digits), floats as Python writes them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
