"""One bench run: the named contenders built, timed in interleaved rounds, with the machine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checkpoint import read_checkpoint
from ..device import set_cpu_threads
from ..errors import RwkvkitError
from .contenders import build_contenders
from .machine import machine_info
from .table import check_reference
from .timing import decode_task, interleaved, prefill_task, summarize


def run_bench(
    path: Path,
    names: list[str],
    *,
    threads: int,
    rounds: int,
    decode_tokens: int,
    prefill_len: int,
    batch8: bool,
    workdir: Path,
    reference: str | None = None,
    llama_cpp: Path | None = None,
) -> dict[str, Any]:
    """Every named contender timed in interleaved rounds; ``reference`` (a contender's name) must
    name one of them, checked before any timing. ``llama_cpp``: where llama.cpp's converter is."""
    set_cpu_threads(threads)
    contenders, notes = build_contenders(path, names, workdir, threads, llama_cpp)
    if not contenders:  # every one named is missing here: nothing to time
        raise RwkvkitError(f"no contender can run on this machine: {'; '.join(notes)}")
    try:
        check_reference(reference, [c.name for c in contenders])
        vocab = read_checkpoint(path).state_dict["emb.weight"].shape[0]
        decode: dict[str, Callable[[], float]] = {}
        for c in contenders:
            decode[f"{c.name}, B=1"] = decode_task(c.make_step(1), decode_tokens, 1)
            if batch8 and 8 in c.batches:
                decode[f"{c.name}, B=8"] = decode_task(c.make_step(8), max(1, decode_tokens // 2), 8)
        prefill = {
            c.name: prefill_task(c.prefill, prefill_len, vocab) for c in contenders if c.prefill is not None
        }
        return {
            "machine": machine_info(threads),
            "checkpoint": str(path),
            "decode_tok_s": summarize(interleaved(decode, rounds)),
            "prefill_tok_s": summarize(interleaved(prefill, rounds)) if prefill_len else {},
            "prefill_len": prefill_len,
            "decode_tokens_per_round": decode_tokens,
            "notes": notes,
        }
    finally:
        for c in contenders:
            if c.close is not None:
                c.close()
