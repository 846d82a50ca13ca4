"""``rwkvkit train``: train an RWKV-4, an RWKV-7 or the GPT baseline on a prepared data folder.

Runs as is on one CPU or GPU, and unchanged under ``torchrun --nproc_per_node N`` for
DistributedDataParallel (gloo on CPUs, nccl on GPUs). The flags are TrainConfig's fields, each
turned into a flag here and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Collection
from typing import Any

from ..train.arch import ARCHITECTURES
from ..train.config import DECAYS, METHODS, PRECISIONS, TrainConfig, config_from_flags
from ..train.loop import train
from .flags import add_device_flag, add_progress_flag, path_text, text

# fields whose flag takes one of a few words
CHOICES = {"arch": tuple(ARCHITECTURES), "decay": DECAYS, "precision": PRECISIONS, "method": METHODS}

HELP = {
    "data": "folder made by `rwkvkit prepare`",
    "out": "run folder: checkpoints, metrics.jsonl, loss.png, samples.txt",
    "arch": "rwkv4, rwkv7, or gpt for the transformer baseline of the same width, depth and size",
    "n_layer": "blocks",
    "n_embd": "width of the residual stream",
    "ffn_mult": "channel-mixing (MLP) width as a multiple of --n-embd",
    "n_head": "GPT only: attention heads",
    "head_size": "RWKV-7: channels per head (n_embd must be a multiple)",
    "ctx_len": "tokens per training window",
    "bptt_len": "truncated-BPTT segment: windows are processed in pieces of this many tokens with the "
    "state carried (0: the whole window at once)",
    "chunk_len": "tokens per chunk inside the parallel WKV (a speed knob; the numbers do not change)",
    "batch_size": "windows per rank per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate (after warmup)",
    "lr_final": "learning rate at the last step",
    "warmup": "steps of linear warmup",
    "decay": "cosine or exp",
    "steps": "optimizer steps in the whole run",
    "weight_decay": "AdamW weight decay on the weight matrices",
    "betas": "AdamW betas",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "seed": "seed of the initial weights and of the data order",
    "precision": "fp32, bf16, or auto (bf16 autocast where the hardware supports it)",
    "save_every": "checkpoint every N steps (and at the end)",
    "keep": "checkpoints kept (0: all)",
    "eval_every": "validation loss and a text sample every N steps (0: never)",
    "eval_windows": "validation windows per evaluation",
    "log_every": "a metrics.jsonl row every N steps",
    "sample_len": "tokens in each text sample",
    "sample_prompt": "the text each sample continues (default: a newline; for chat or prompt/completion "
    "data, the first validation example's prompt)",
    "stop_after": "stop after N steps in this invocation, to resume later with --resume (0: run to --steps)",
    "resume": "continue the run in --out from its last complete checkpoint, with its saved settings "
    "(flags that would change the model or the data stream are refused)",
    "overwrite": "start again in an --out that holds a run: its checkpoints, metrics and samples are deleted",
    "threads": "torch CPU threads (0: PyTorch's default)",
}


class _DeprecatedAlias(argparse.Action):
    """A renamed flag's old spelling: still works, says what to write instead."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def flag_type(hint: Any) -> Any:
    """The argparse type of a config field's annotation (``float | None`` takes floats)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_config_flags(
    p: argparse.ArgumentParser, cls: type, helps: dict[str, str], skip: Collection[str] = ()
) -> None:
    """One flag per field of a config dataclass (TrainConfig, FinetuneConfig), except ``skip``:
    ``--n-layer`` for ``n_layer``, typed by the field. Defaults are left out of the parsed
    arguments (and written into the help), so that ``run`` knows which flags were given: on
    --resume a given flag must agree with the saved run, and an absent one takes the saved value."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else repr(f.default)
        words = helps.get(f.name, "")
        if "default:" not in words:  # a help that explains its default (finetune's --lr) keeps it
            words += f" (default: {shown})"
        given_only = {"default": argparse.SUPPRESS, "help": words}
        if f.name == "out":
            p.add_argument(flag, required=True, type=path_text, help=helps[f.name])
        elif f.name == "data":
            p.add_argument(
                flag,
                default=argparse.SUPPRESS,
                type=path_text,
                help=helps[f.name] + " (default: the run's own with --resume; required otherwise)",
            )
        elif f.name == "progress":
            add_progress_flag(p)
        elif f.name == "device":
            add_device_flag(p, default=f.default)
        elif f.name in ("resume", "overwrite"):
            p.add_argument(flag, action="store_true", help=helps[f.name])
        elif f.name == "betas":
            p.add_argument(flag, type=float, nargs=2, metavar="B", **given_only)
        elif f.name == "method":
            p.add_argument(flag, required=True, choices=CHOICES[f.name], help=helps[f.name])
        elif f.name in CHOICES:
            p.add_argument(flag, choices=CHOICES[f.name], **given_only)
        elif f.name in ("sample_prompt", "model"):
            p.add_argument(flag, type=text if f.name == "sample_prompt" else path_text, **given_only)
        else:
            p.add_argument(flag, type=flag_type(hints[f.name]), **given_only)


def given_flags(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The config fields whose flags were given (absent ones take the defaults or the saved run's)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, TrainConfig, HELP)
    # Before the BPTT segment was named --bptt-len, the WKV chunk was --wkv-chunk.
    p.add_argument(
        "--wkv-chunk",
        dest="chunk_len",
        type=int,
        default=argparse.SUPPRESS,
        action=_DeprecatedAlias,
        new="--chunk-len",
        help=argparse.SUPPRESS,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_flags(given_flags(TrainConfig, args))
    summary = train(cfg)
    print(f"{cfg.out}: step {summary['step']}, loss {summary['loss']:.4f}")
    return 0
