"""``rwkvkit finetune``: adapt a trained model to new data, whole, with LoRA, or through its state.

The loop's flags are ``rwkvkit train``'s (declared once, by :func:`.train.add_config_flags`), less
the architecture, which the base model fixes; FinetuneConfig adds the base, the method and LoRA's
settings. Runs unchanged under ``torchrun`` like ``train``.
"""

from __future__ import annotations

import argparse

from ..train.config import ARCH_FIELDS, METHOD_LR, FinetuneConfig, config_from_flags
from ..train.finetune import finetune
from .train import HELP as TRAIN_HELP
from .train import add_config_flags, given_flags

HELP = {
    **TRAIN_HELP,
    "data": "folder made by `rwkvkit prepare`: plain text, or chat / prompt-completion JSONL (loss on "
    "the replies only)",
    "out": "run folder: checkpoints, metrics.jsonl, loss.png, samples.txt, and adapter/ (lora) or "
    "state.safetensors and state.pth (state)",
    "model": "the base: BlinkDL .pth or .safetensors, Hugging Face folder, rwkv.cpp .bin or run folder "
    "(default: the bundled model)",
    "method": "lora: low-rank adapters on the projections; state: only the initial state (RWKV-PEFT's "
    "state tuning); full: every weight",
    "lora_rank": "LoRA: rank of each adapter",
    "lora_alpha": "LoRA: the update is scaled by alpha / rank",
    "lora_dropout": "LoRA: dropout on the adapters' input while training",
    "lora_targets": "LoRA: comma-separated names of the linear layers to adapt (a layer matches when its "
    "module name is or ends with .NAME)",
    "lr": "peak learning rate (default: "
    + ", ".join(f"{m} {lr:g}" for m, (lr, _) in METHOD_LR.items())
    + ")",
    "lr_final": "learning rate at the last step (default: "
    + ", ".join(f"{m} lr x {final / lr:g}" for m, (lr, final) in METHOD_LR.items())
    + ")",
    "weight_decay": "AdamW weight decay on the trained weight matrices",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, FinetuneConfig, HELP, skip=ARCH_FIELDS)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_flags(given_flags(FinetuneConfig, args), FinetuneConfig)
    summary = finetune(cfg)
    print(f"{cfg.out}: step {summary['step']}, loss {summary['loss']:.4f}")
    return 0
