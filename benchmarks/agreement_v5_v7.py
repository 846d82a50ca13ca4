"""How closely rwkvkit's RWKV-5/6/7 match each oracle: the official ``rwkv`` package on random
checkpoints of several shapes (fp32, max abs logit difference over a prompt fed as 15 + 1 + 7
tokens with the state carried), and rwkv.cpp's expected logits for its tiny trained models.

    python benchmarks/agreement_v5_v7.py

Prints a table; the test suite asserts the same comparisons against fixed bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rwkvkit
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rwkvkit  # noqa: E402
from rwkvkit.models.rwkv5 import RWKV5Config  # noqa: E402
from rwkvkit.models.rwkv6 import RWKV6Config  # noqa: E402
from rwkvkit.models.rwkv7 import RWKV7Config  # noqa: E402
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict, random_rwkv7_state_dict  # noqa: E402

CASES = [
    ("5.0 L2 C48 N16", RWKV5Config(vocab_size=97, n_layer=2, n_embd=48, ffn_dim=80, head_size=16, gate=False,
                                   per_channel_decay=False, log_bonus=True), random_rwkv5_state_dict),
    ("5.1 L3 C32 N8", RWKV5Config(vocab_size=97, n_layer=3, n_embd=32, ffn_dim=112, head_size=8,
                                  per_channel_decay=False, log_bonus=True), random_rwkv5_state_dict),
    ("5.2 L2 C128 N64", RWKV5Config(vocab_size=256, n_layer=2, n_embd=128, ffn_dim=448), random_rwkv5_state_dict),
    ("5.2 L4 C256 N64", RWKV5Config(vocab_size=1000, n_layer=4, n_embd=256, ffn_dim=896), random_rwkv5_state_dict),
    ("6 L3 C64 N16", RWKV6Config(vocab_size=97, n_layer=3, n_embd=64, ffn_dim=224, head_size=16, mix_lora=8,
                                 decay_lora=12), random_rwkv6_state_dict),
    ("6 L4 C256 N64", RWKV6Config(vocab_size=1000, n_layer=4, n_embd=256, ffn_dim=896), random_rwkv6_state_dict),
    ("7 L3 C48 N16", RWKV7Config(vocab_size=97, n_layer=3, n_embd=48, ffn_dim=80, head_size=16, decay_lora=8,
                                 iclr_lora=12, value_lora=4, gate_lora=20), random_rwkv7_state_dict),
    ("7 L4 C256 N64", RWKV7Config(vocab_size=1000, n_layer=4, n_embd=256, ffn_dim=1024), random_rwkv7_state_dict),
]  # fmt: skip
CHUNKS = [list(range(3, 18)), [7], [9, 3, 2, 3, 8, 4, 1]]
FIXTURES = Path(os.environ.get("RWKVKIT_FIXTURES", REPO.parent / "shared" / "fixtures" / "rwkv-cpp-tiny"))


def ours_logits(path: Path) -> list[torch.Tensor]:
    model, state, outs = rwkvkit.load_model(path), None, []
    with torch.no_grad():
        for chunk in CHUNKS:
            logits, state = model(chunk, state)
            outs.append(logits[0])
    return outs


def main() -> None:
    print("| oracle | model | max abs logit diff | max abs logit |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for name, config, make in CASES:
            path = Path(tmp) / f"{len(jobs)}.pth"
            torch.save(make(config, seed=5), path)
            if name.startswith("7"):
                jobs.append({"model": str(path), "chunks": CHUNKS, "out": str(path) + ".out", "name": name})
                continue
            from rwkv.model import RWKV

            official, state, refs = RWKV(model=str(path), strategy="cpu fp32", verbose=False), None, []
            for chunk in CHUNKS:
                ref, state = official.forward(chunk, state, full_output=True)
                refs.append(ref.reshape(len(chunk), -1))
            diff = max((a - b).abs().max().item() for a, b in zip(ours_logits(path), refs, strict=True))
            print(
                f"| rwkv {official.version:.1f} | {name} | {diff:.2e} | {max(r.abs().max().item() for r in refs):.1f} |"
            )
        (Path(tmp) / "jobs.json").write_text(json.dumps(jobs))
        runner = REPO / "tests" / "official_rwkv7_runner.py"
        subprocess.run(
            [sys.executable, str(runner), str(Path(tmp) / "jobs.json")], check=True, capture_output=True
        )
        for job in jobs:
            refs = torch.load(job["out"], weights_only=True)
            diff = max(
                (a - b).abs().max().item() for a, b in zip(ours_logits(Path(job["model"])), refs, strict=True)
            )
            print(
                f"| rwkv 7 (RWKV_V7_ON=1) | {job['name']} | {diff:.2e} | {max(r.abs().max().item() for r in refs):.1f} |"
            )
    for stem in ("5v1-730K", "5v2-730K", "6v0-3m", "7v0-834K"):
        expected = torch.from_numpy(np.fromfile(FIXTURES / f"expected-logits-{stem}.bin", dtype="<f4"))
        for fmt in ("FP32", "FP16", "Q5_0", "Q5_1"):
            path = FIXTURES / f"tiny-rwkv-{stem}-{fmt}.bin"
            if not path.exists():
                continue
            model = rwkvkit.load_model(path)
            with torch.no_grad():
                whole = model([34, 105, 110])[0][0, -1]
                state = None
                for t in (34, 105, 110):
                    last, state = model([t], state)
            diff = max((whole - expected).abs().max().item(), (last[0, -1] - expected).abs().max().item())
            print(
                f"| rwkv.cpp expected logits | {stem} {fmt} | {diff:.2e} | {expected.abs().max().item():.1f} |"
            )


if __name__ == "__main__":
    main()
