"""Make a LAMBADA-format JSONL file (``{"text": ...}`` per line) from any plain text.

LAMBADA itself cannot be downloaded here, so the report's LAMBADA-format run uses passages cut
from a held-out text, chosen the way LAMBADA's passages were filtered for: the last word is a
word of at least four letters that already occurs earlier in the passage, so a model that
follows the context can predict it. The text's line breaks are kept (a model trained on plays
has seen them). Deterministic: the same text gives the same file.

    python scripts/make_lambada.py ../shared/corpora/shakespeare/winters_tale_gut.txt lambada.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def passages(text: str, words: int, stride: int) -> list[str]:
    """Spans of about ``words`` words, line breaks kept, whose last word repeats an earlier one and
    follows a space (LAMBADA's target is what follows the last space)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    out = []
    for start in range(0, len(spans) - words + 1, stride):
        window = spans[start : start + words]
        seen = [text[a:b] for a, b in window]
        for end in range(len(window), words // 2, -1):  # the latest usable target in the window
            a, b = window[end - 1]
            last = text[a:b]
            if re.fullmatch(r"[A-Za-z]{4,}", last) and text[a - 1] == " " and last in seen[: end - 1]:
                out.append(text[window[0][0] : b])
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--words", type=int, default=80, help="passage length in words (default 80)")
    p.add_argument("--stride", type=int, default=160, help="words between passage starts (default 160)")
    args = p.parse_args()
    rows = passages(args.text.read_text(encoding="utf-8"), args.words, args.stride)
    args.out.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} passages to {args.out}")


if __name__ == "__main__":
    main()
