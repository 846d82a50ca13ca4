"""``rwkvkit train``: train an RWKV-4 (or the GPT baseline) on a prepared data folder.

Runs as is on one CPU or GPU, and unchanged under ``torchrun --nproc_per_node N`` for
DistributedDataParallel (gloo on CPUs, nccl on GPUs).
"""

from __future__ import annotations

import argparse
import dataclasses

from ..train.loop import TrainConfig, train

_HELP = {
    "data": "folder made by `rwkvkit prepare`",
    "out": "run folder: checkpoints, metrics.jsonl, loss.png, samples.txt",
    "arch": "rwkv4, rwkv7, or gpt for the transformer baseline of the same width, depth and size",
    "head_size": "RWKV-7: channels per head (n_embd must be a multiple)",
    "ctx_len": "tokens per training window",
    "chunk_len": "truncated-BPTT segment: windows are processed in pieces of this many tokens with the state carried (0: whole window)",
    "wkv_chunk": "tokens per chunk inside the parallel WKV (a speed knob)",
    "batch_size": "windows per rank per micro-batch",
    "lr_final": "learning rate at the last step",
    "warmup": "steps of linear warmup",
    "decay": "cosine or exp",
    "precision": "fp32, bf16, or auto (bf16 autocast where the hardware supports it)",
    "save_every": "checkpoint every N steps (and at the end)",
    "eval_every": "validation loss and a text sample every N steps (0: never)",
    "stop_after": "stop after N steps in this invocation (resume later with --resume)",
    "resume": "continue the run in --out from its last complete checkpoint",
    "threads": "torch CPU threads (0: PyTorch's default)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("data", "out"):
            p.add_argument(flag, required=True, help=_HELP[f.name])
        elif f.name == "progress":
            p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        elif f.name == "resume":
            p.add_argument(flag, action="store_true", help=_HELP[f.name])
        elif f.name == "betas":
            p.add_argument(flag, type=float, nargs=2, default=f.default, help="AdamW betas")
        else:
            p.add_argument(
                flag, type=type(f.default), default=f.default, help=_HELP.get(f.name, f"default {f.default}")
            )


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    cfg.betas = tuple(cfg.betas)  # type: ignore[assignment]
    summary = train(cfg)
    print(f"{cfg.out}: step {summary['step']}, loss {summary['loss']:.4f}")
    return 0
