"""``rwkvkit eval``: perplexity, LAMBADA and multiple-choice scores for one or more models, side by side."""

from __future__ import annotations

import argparse
import json

from ..checkpoint import tokenizer_for_model
from ..eval.table import column_names, format_table
from ..eval.tasks import TASKS, evaluate
from ..fileio import atomic_write_bytes, check_writable
from .flags import (
    add_json_flag,
    add_model_flags,
    add_progress_flag,
    default_model,
    integer,
    load_with_flags,
    path_text,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, several=True)
    parser.add_argument("--task", required=True, choices=TASKS, help="what to measure")
    parser.add_argument(
        "--data",
        required=True,
        type=path_text,
        metavar="FILE",
        help="perplexity: .txt or JSONL {text}; lambada: JSONL {text}; "
        "multiple-choice: JSONL {goal,sol1,sol2,label} or {context,choices,label}",
    )
    parser.add_argument(
        "--limit",
        type=integer(1),
        default=None,
        metavar="N",
        help="only the first N examples or documents (default: all)",
    )
    parser.add_argument("--batch-size", type=integer(1), default=8, metavar="B", help="rows per forward call")
    parser.add_argument(
        "--ctx-len",
        type=integer(1),
        default=None,
        metavar="N",
        help="read in windows of N tokens, as a transformer with an N-token context does "
        "(default: one stream for RNNs, the model's own context for transformers)",
    )
    add_json_flag(parser)
    add_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json file")
    paths = args.model or [str(default_model())]
    results = []
    for path, name in zip(paths, column_names(paths), strict=True):
        model = load_with_flags(path, args)
        result = evaluate(
            model,
            tokenizer_for_model(model, args.tokenizer),
            args.task,
            args.data,
            limit=args.limit,
            batch_size=args.batch_size,
            ctx_len=args.ctx_len,
            model_name=name,
            progress=args.progress,
        )
        results.append(result)
        del model
    print(format_table(results))
    if args.json:
        payload = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
        atomic_write_bytes(args.json, payload.encode("utf-8"))
    return 0
