"""The one loss routine: next-token log-probabilities read in calls of any length equal the model
called one token at a time (tolerance as in test_eval_scorer.py: ~1e-6 per token in float32), and
the trainer's validation loss is that routine's mean, equal to cross-entropy over the segments."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_models import TEXT, brute_logprobs, byte_rwkv

from rwkvkit.eval.loss import next_token_logprobs
from rwkvkit.tokenizer import ByteTokenizer
from rwkvkit.train.config import TrainConfig
from rwkvkit.train.data import TokenData, prepare
from rwkvkit.train.validate import validation_loss


@pytest.mark.parametrize("tokens_per_call", [1, 3, 7, 100])
def test_logprobs_equal_token_by_token(tokens_per_call: int) -> None:
    model = byte_rwkv()
    rows = [ByteTokenizer().encode(TEXT[:40]), ByteTokenizer().encode(TEXT[40:80])]
    ids = torch.tensor(rows)
    called = []
    lp, greedy, _ = next_token_logprobs(
        model, ids, tokens_per_call, on_call=lambda s, e: called.append((s, e))
    )
    assert lp.shape == greedy.shape == (2, 39) and lp.dtype == torch.float64
    assert called == [(s, min(s + tokens_per_call, 39)) for s in range(0, 39, tokens_per_call)]
    for row, got in zip(rows, lp, strict=True):
        torch.testing.assert_close(
            got, torch.tensor(brute_logprobs(model, row), dtype=torch.float64), atol=1e-5, rtol=0
        )
    with torch.no_grad():
        argmax = model(ids[:, :-1])[0].argmax(-1)
    assert torch.equal(greedy, argmax == ids[:, 1:])


def test_without_carried_state_every_call_starts_afresh() -> None:
    model = byte_rwkv()
    ids = torch.tensor([ByteTokenizer().encode(TEXT[:13])])
    lp, _, _ = next_token_logprobs(model, ids, 4, carry_state=False)
    for s in range(0, 12, 4):
        window = ids[0, s : min(s + 5, 13)].tolist()
        torch.testing.assert_close(
            lp[0, s : s + len(window) - 1],
            torch.tensor(brute_logprobs(model, window), dtype=torch.float64),
            atol=1e-5,
            rtol=0,
        )


def test_validation_loss_is_cross_entropy_over_bptt_segments(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEXT * 20)
    prepare([str(tmp_path / "t.txt")], tmp_path / "d", val_fraction=0.3, progress=False)
    data = TokenData.open(tmp_path / "d")
    cfg = TrainConfig(data="", out="", ctx_len=16, bptt_len=8, eval_windows=5, batch_size=2)
    model = byte_rwkv().train()
    got = validation_loss(model, data, cfg, torch.device("cpu"), nullcontext)
    assert model.training  # validation puts the model back in the mode it found it in
    # The computation the trainer did before it shared the evaluator's routine: summed cross-entropy
    # of each 8-token segment, the state carried from segment to segment.
    n = (len(data.val) - 1) // 16
    starts = np.linspace(0, n - 1, num=5).round().astype(np.int64) * 16
    total, count = 0.0, 0
    with torch.no_grad():
        for o in starts:
            window = torch.from_numpy(np.asarray(data.val[o : o + 17], dtype=np.int64))[None]
            state = None
            for s in range(0, 16, 8):
                logits, state = model(window[:, s : s + 8], state)
                total += F.cross_entropy(logits[0].float(), window[0, s + 1 : s + 9], reduction="sum").item()
                count += 8
    assert got == pytest.approx(total / count, rel=1e-6)
