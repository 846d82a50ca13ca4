"""A tiny prepared corpus and a tiny training config, shared by the training tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rwkvkit.train.config import TrainConfig
from rwkvkit.train.data import prepare

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(
    f"{name}: {line}\n"
    for name, line in [
        ("ROMEO", "But soft, what light through yonder window breaks?"),
        ("JULIET", "O Romeo, Romeo, wherefore art thou Romeo?"),
        ("HAMLET", "To be, or not to be, that is the question."),
        ("MACBETH", "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace."),
    ]
    * 20
)


def prepare_corpus(src: Path, out: Path) -> Path:
    """A text file and a JSONL file of TEXT in ``src``, prepared (byte tokens) into ``out``."""
    (src / "a.txt").write_text(TEXT)
    (src / "b.jsonl").write_text(
        "".join(json.dumps({"text": TEXT[i : i + 300]}) + "\n" for i in range(0, 3000, 300))
    )
    prepare([str(src)], out, tokenizer="byte", val_fraction=0.2, progress=False)
    return out


def tiny(data_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data_dir), out=str(out), n_layer=2, n_embd=32, n_head=2, ctx_len=32, batch_size=4,
        steps=6, warmup=2, lr=3e-3, lr_final=3e-4, save_every=3, eval_every=3, eval_windows=4,
        log_every=1, sample_len=8, threads=1, progress=False, chunk_len=8,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def train_env() -> dict[str, str]:
    """The environment of a subprocess that runs this checkout's rwkvkit on one thread."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
