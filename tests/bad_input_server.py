"""Runs many ``rwkvkit`` invocations fast, each in its own process, for tests/test_bad_input.py.

A fresh interpreter costs ~2 s here (torch's import), too much for a table of a hundred rows.
This script imports the command once, without computing anything (so no thread pool exists yet),
then forks one child per row. The child does what ``python -m rwkvkit`` does after startup: its
standard streams are files opened as Python opens them (UTF-8, strict; stderr backslashreplace),
``sys.argv`` is the row's (strings as Python decodes argv, lone surrogates included), and it ends
with ``sys.exit(main())``'s status. Each child runs under an address-space cap (RLIMIT_AS), an
optional file-size cap (RLIMIT_FSIZE with SIGXFSZ ignored: a write fails with EFBIG, as on a full
disk) and a wall-clock timeout, optionally as an unprivileged user (permission rows run as root
would otherwise read anything).

Usage: ``python bad_input_server.py JOBS.json RESULTS.json``. A job is
``{"id", "argv", "cwd", "stdin", "as_mb", "fsize", "user", "timeout"}`` (``stdin``: a file or
null); a result is ``{"id", "code", "stdout", "stderr", "seconds", "timed_out"}``. The child's
stdout and stderr are pipes, read by threads here: a file-size cap must not cut its messages.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback

WORKERS = 2


def _child(job: dict, out_fd: int, err_fd: int) -> int:
    os.chdir(job["cwd"])
    stdin = os.open(job["stdin"], os.O_RDONLY) if job["stdin"] else os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    cap = job["as_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if job.get("fsize") is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], job["fsize"]))
    if job.get("user") is not None and os.getuid() == 0:
        import pwd

        entry = pwd.getpwnam(job["user"])
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    import torch

    torch.set_num_threads(1)
    from rwkvkit.cli import main

    sys.argv = ["rwkvkit", *job["argv"]]
    try:
        code = main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    return code


def _drain(fd: int, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with os.fdopen(fd, "rb") as f:
            into.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def run_jobs(jobs: list[dict]) -> list[dict]:
    results: dict[str, dict] = {}
    pending = list(jobs)
    running: dict[int, tuple[dict, float, list, list, list]] = {}
    while pending or running:
        while pending and len(running) < WORKERS:
            job = pending.pop(0)
            (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(out_r)
                    os.close(err_r)
                    code = _child(job, out_w, err_w)
                except BaseException:
                    traceback.print_exc()
                finally:
                    try:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code if isinstance(code, int) else 1)
            os.close(out_w)
            os.close(err_w)
            out, err = [], []
            readers = [_drain(out_r, out), _drain(err_r, err)]
            running[pid] = (job, time.monotonic(), out, err, readers)
        time.sleep(0.01)
        for pid, (job, started, out_parts, err_parts, readers) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            timed_out = False
            if not done:
                if time.monotonic() - started < job["timeout"]:
                    continue
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                timed_out, status = True, -1
            del running[pid]
            code = os.waitstatus_to_exitcode(status) if status != -1 else None
            for t in readers:
                t.join(timeout=10)
            out = b"".join(out_parts).decode("utf-8", "backslashreplace")
            err = b"".join(err_parts).decode("utf-8", "backslashreplace")
            results[job["id"]] = {
                "id": job["id"],
                "code": code,
                "stdout": out,
                "stderr": err,
                "seconds": round(time.monotonic() - started, 3),
                "timed_out": timed_out,
            }
    return [results[j["id"]] for j in jobs]


def main() -> None:
    jobs_path, results_path = sys.argv[1:3]
    with open(jobs_path, encoding="utf-8") as f:
        jobs = json.load(f)
    import rwkvkit.cli as cli  # the verbs' modules import torch and everything they need, once
    from rwkvkit.cli import VERBS

    for name in VERBS:
        cli.verb_parser(name)
    results = run_jobs(jobs)
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
