"""The server under load, through its HTTP API and the ``openai`` client, on the 169M RWKV-4 shape
(random weights, the 20B tokenizer): two things a user of ``rwkvkit serve`` feels.

1. **Throughput under concurrency**: aggregate generated tokens/s with 1, 2, 4, 8, 16 clients,
   each sending ``--requests`` completions of ``--tokens`` tokens one after another (continuous
   batching puts the clients' rows in one model call per step). Rounds interleave the client
   counts (rotating order); medians.
2. **Time to first token of a chat's turns 1..20**, with the prefix state cache and without it
   (a second server, ``--state-cache-mb 0``): each turn sends the whole conversation, as the
   OpenAI API does. With the cache the next turn starts from the state the last reply left, so its
   first token should not wait longer as the conversation grows; without it, the whole history is
   read again. The two servers' conversations advance turn by turn in alternation; medians over
   ``--conversations``.

Writes ``--json`` (benchmarks/results/serve.json; ``benchmarks/report.py`` turns it, and
``serve_bf16.json`` from a ``--dtype bf16 --skip-turns`` run beside it, into a section of BENCHMARKS.md) and ``--plot`` (benchmarks/plots/serve.png). ``--screenshot PATH`` also
takes a picture of the chat page (the bundled model, headless Chromium) after two turns.

    python benchmarks/serve.py [--threads 1] [--rounds 3] [--conversations 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rwkvkit, not an installed copy

import openai  # noqa: E402

from rwkvkit.bench import WORKDIR  # noqa: E402
from rwkvkit.bench.contenders import random_checkpoint  # noqa: E402
from rwkvkit.bench.machine import machine_info, machine_line  # noqa: E402
from rwkvkit.fileio import write_json  # noqa: E402
from rwkvkit.serve.launch import ServerProcess  # noqa: E402

NO_EOS = {"0": -100}  # random weights would end rows at random on the end-of-text token: ban it
STORY = (
    "the king and the queen walked through the cold hall while the old servant told them of the battle "
    "in the north where many men had fallen and the river ran red with the blood of soldiers"
)
WORDS = STORY.split(" ")


def server(model: Path, args: argparse.Namespace, *extra: str) -> ServerProcess:
    return ServerProcess(
        "--model", str(model), "--port", "0", "--threads", str(args.threads), "--dtype", args.dtype,
        "--max-batch", "16", "--max-queue", "64", "--log-level", "warning", "--model-name", "m", *extra,
        env={"PYTHONPATH": str(REPO)},
    )  # fmt: skip


def client(srv: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=3600)


# --------------------------------------------------------------------------------------------
# 1. Throughput


def throughput_round(api: openai.OpenAI, clients: int, args: argparse.Namespace) -> float:
    """Aggregate generated tokens/s of ``clients`` concurrent clients."""
    counts = [0] * clients

    def one(i: int) -> None:
        for r in range(args.requests):
            out = api.completions.create(
                model="m",
                prompt=f"Client {i} request {r}: " + " ".join(WORDS[i % 7 :][:12]),
                max_tokens=args.tokens,
                temperature=1.0,
                seed=i * 100 + r,
                logit_bias=NO_EOS,
            )
            counts[i] += out.usage.completion_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def throughput(api: openai.OpenAI, args: argparse.Namespace) -> dict[int, list[float]]:
    runs: dict[int, list[float]] = {c: [] for c in args.clients}
    throughput_round(api, max(args.clients), args)  # warm-up: first calls, every batch size
    for r in range(args.rounds):
        order = args.clients[r % len(args.clients) :] + args.clients[: r % len(args.clients)]
        for c in order:
            runs[c].append(throughput_round(api, c, args))
            print(f"  round {r + 1}: {c:2d} clients {runs[c][-1]:7.1f} tokens/s", flush=True)
    return runs


# --------------------------------------------------------------------------------------------
# 2. Chat turns


class Conversation:
    def __init__(self, api: openai.OpenAI, seed: int) -> None:
        self.api, self.seed = api, seed
        self.messages: list[dict[str, str]] = []
        self.tag = uuid.uuid4().hex[:8]  # no two conversations share a prefix

    def turn(self, k: int, args: argparse.Namespace) -> tuple[float, int, int]:
        """(seconds to the first token, prompt tokens, cached tokens) of turn k."""
        words = [WORDS[(k * 7 + i * 3) % len(WORDS)] for i in range(args.user_words)]
        self.messages.append({"role": "user", "content": f"[{self.tag} turn {k}] " + " ".join(words)})
        start, first, reply, usage = time.perf_counter(), None, [], None
        stream = self.api.chat.completions.create(
            model="m",
            messages=self.messages,
            max_tokens=args.reply_tokens,
            temperature=1.0,
            seed=self.seed + k,
            logit_bias=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first if first is not None else time.perf_counter() - start
                reply.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        self.messages.append({"role": "assistant", "content": "".join(reply)})
        assert first is not None and usage is not None
        return first, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def chat_turns(cached: openai.OpenAI, cold: openai.OpenAI, args: argparse.Namespace) -> dict[str, list[list]]:
    """Per server, per turn: [(ttft, prompt tokens, cached tokens) for each conversation]."""
    out: dict[str, list[list]] = {
        "cache": [[] for _ in range(args.turns)],
        "no cache": [[] for _ in range(args.turns)],
    }
    for api in (cached, cold):  # warm-up: each server's first chat call
        api.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "warm-up"}], max_tokens=2
        )
    for c in range(args.conversations):
        talks = {"cache": Conversation(cached, 1000 * c), "no cache": Conversation(cold, 1000 * c)}
        for k in range(args.turns):
            names = list(talks) if (k + c) % 2 == 0 else list(reversed(talks))
            for name in names:
                out[name][k].append(talks[name].turn(k + 1, args))
            row = "  ".join(f"{n}: {out[n][k][-1][0]:6.3f} s ({out[n][k][-1][1]} tok)" for n in talks)
            print(f"  conversation {c + 1} turn {k + 1:2d}: {row}", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# The page's picture, the plot


def screenshot(path: Path) -> None:
    """The chat page after two turns, in headless Chromium (the flags of tests/test_serve_page.py)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    sys.path.insert(0, str(REPO / "tests"))
    from test_serve_page import CHROMEDRIVER, CHROMIUM, chromium_flags, wait

    profile = Path(WORKDIR) / f"chromium-{uuid.uuid4().hex[:8]}"
    with ServerProcess("--port", "0", "--log-level", "warning", env={"PYTHONPATH": str(REPO)}) as srv:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in chromium_flags(profile):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.get(srv.url + "/")
            for n, text in enumerate(["Good morrow, sweet prince. What news?", "Speak on."], 1):
                driver.find_element(By.ID, "input").send_keys(text)
                driver.find_element(By.ID, "send").click()
                wait(lambda n=n: len(driver.find_elements(By.CSS_SELECTOR, ".msg .meta")) == n)
            path.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(path))
        finally:
            driver.quit()
    print(f"wrote {path}")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [k for k in ("throughput", "turns") if k in res]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4.2), squeeze=False)
    panels = dict(zip(parts, axes[0], strict=True))
    if "throughput" in panels:
        a = panels["throughput"]
        clients = [int(c) for c in res["throughput"]]
        tps = [statistics.median(v) for v in res["throughput"].values()]
        a.plot(clients, tps, "o-", label="rwkvkit serve")
        a.plot(clients, [tps[0] * c for c in clients], ":", color="gray", label="linear in clients")
        a.set(
            xscale="log",
            xlabel="concurrent clients",
            ylabel="generated tokens/s (all clients)",
            title="Throughput",
        )
        a.set_xticks(clients, [str(c) for c in clients])
        a.legend()
    if "turns" in panels:
        b = panels["turns"]
        for name, style in (("cache", "o-"), ("no cache", "s--")):
            turns = res["turns"][name]
            b.plot(
                range(1, len(turns) + 1),
                [statistics.median(t[0] for t in turn) for turn in turns],
                style,
                label=name,
            )
        b.set(xlabel="chat turn", ylabel="time to first token (s)", title="Chat turns: time to first token")
        b.xaxis.get_major_locator().set_params(integer=True)
        b.legend()
    fig.suptitle(
        f"rwkvkit serve, RWKV-4 169M shape, {res['args']['dtype']}, {res['args']['threads']} thread(s)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--clients", default="1,2,4,8,16", help="concurrent clients to measure")
    p.add_argument("--tokens", type=int, default=32, help="tokens per completion")
    p.add_argument("--requests", type=int, default=2, help="completions per client per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--conversations", type=int, default=2)
    p.add_argument("--user-words", type=int, default=60, help="words in each user message")
    p.add_argument("--reply-tokens", type=int, default=32, help="max_tokens of each reply")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-turns", action="store_true")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    p.add_argument("--plot", default=str(REPO / "benchmarks" / "plots" / "serve.png"))
    p.add_argument("--screenshot", help="also write a picture of the chat page here")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    model = random_checkpoint("169m", Path(WORKDIR))
    info = machine_info(args.threads)
    print(machine_line(info), flush=True)
    res: dict = {"machine": info, "args": vars(args)}
    with server(model, args) as cached:
        if not args.skip_throughput:
            print("throughput:", flush=True)
            res["throughput"] = {str(c): v for c, v in throughput(client(cached), args).items()}
        if not args.skip_turns:
            print("chat turns:", flush=True)
            with server(model, args, "--state-cache-mb", "0") as cold:
                res["turns"] = chat_turns(client(cached), client(cold), args)
    res["load_average_at_end"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, res, indent=1)
    print(f"wrote {args.json}")
    if "throughput" in res or "turns" in res:
        plot(res, Path(args.plot))
    if args.screenshot:
        screenshot(Path(args.screenshot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
