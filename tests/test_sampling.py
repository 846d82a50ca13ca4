"""Sampling semantics: each step on its own, the official penalty rule, and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.errors import RwkvkitError
from rwkvkit.sampling import (
    Penalties,
    SamplingParams,
    apply_logit_bias,
    greedy,
    logits_to_probs,
    make_generator,
    next_token,
    next_token_rows,
    sample,
)


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def test_greedy_is_argmax_and_first_on_ties() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 1.0, 1.0, 0.0]])
    assert greedy(logits).tolist() == [1, 0]
    assert next_token(logits, SamplingParams(temperature=0)).tolist() == [1, 0]


def test_temperature_one_is_softmax_and_temperature_scales_logits() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits_to_probs(logits), torch.softmax(logits, -1))
    torch.testing.assert_close(logits_to_probs(logits, temperature=0.5), torch.softmax(logits * 2, -1))
    hot, cold = logits_to_probs(logits, temperature=2.0), logits_to_probs(logits, temperature=0.5)
    entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    assert (entropy(hot) > entropy(torch.softmax(logits, -1))).all()
    assert (entropy(cold) < entropy(torch.softmax(logits, -1))).all()


def test_top_k() -> None:
    logits = logits_of([0.1, 0.4, 0.2, 0.3])
    torch.testing.assert_close(logits_to_probs(logits, top_k=1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(logits_to_probs(logits, top_k=2), torch.tensor([[0.0, 4 / 7, 0.0, 3 / 7]]))
    # k >= V and k = 0 keep everything; a tie at the k-th place keeps both tied tokens
    torch.testing.assert_close(logits_to_probs(logits, top_k=9), logits.exp())
    tied = logits_to_probs(logits_of([0.3, 0.3, 0.3, 0.1]), top_k=2)
    torch.testing.assert_close(tied, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]))


def test_top_p() -> None:
    logits = logits_of([0.05, 0.5, 0.15, 0.3])
    # smallest set reaching p: {0.5} for p <= 0.5, {0.5, 0.3} up to 0.8, then {0.5, 0.3, 0.15}
    torch.testing.assert_close(logits_to_probs(logits, top_p=0.4), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(logits_to_probs(logits, top_p=0.7), torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    torch.testing.assert_close(
        logits_to_probs(logits, top_p=0.9), torch.tensor([[0.0, 0.5, 0.15, 0.3]]) / 0.95, rtol=1e-5, atol=1e-6
    )
    # p = 0 keeps only the top token; p = 1 keeps all, even when the float sum falls short of 1
    torch.testing.assert_close(logits_to_probs(logits, top_p=0.0), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(logits_to_probs(logits, top_p=1.0), logits.exp(), rtol=1e-5, atol=1e-6)
    many = torch.zeros(1, 1000)  # uniform: the running sum reaches 0.999999 only at the very end
    assert (logits_to_probs(many, top_p=0.999999) > 0).sum() >= 999


def test_top_p_keeps_the_shortest_prefix_of_the_sorted_distribution() -> None:
    # 3000 near-equal tokens: the nucleus for p = 0.5 holds ~1500 of them
    logits = torch.randn(2, 3000, generator=torch.Generator().manual_seed(3)) * 0.01
    probs = torch.softmax(logits, -1)
    kept = logits_to_probs(logits, top_p=0.5) > 0
    for row in range(2):
        sorted_probs, order = torch.sort(probs[row], descending=True)
        n = int((torch.cumsum(sorted_probs, 0) < 0.5).sum()) + 1  # the shortest prefix reaching 0.5
        assert kept[row].sum() == n and kept[row, order[:n]].all()


def test_min_p() -> None:
    logits = logits_of([0.5, 0.26, 0.24])
    torch.testing.assert_close(logits_to_probs(logits, min_p=0.5), torch.tensor([[0.5, 0.26, 0.0]]) / 0.76)
    torch.testing.assert_close(logits_to_probs(logits, min_p=1.0), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(logits_to_probs(logits, min_p=0.0), logits.exp())


def test_filters_act_on_the_tempered_distribution() -> None:
    logits = logits_of([0.6, 0.3, 0.1])
    # At T = 1, top_p = 0.65 keeps two tokens; at T = 0.25 the top token alone is above 0.65.
    assert (logits_to_probs(logits, top_p=0.65) > 0).sum() == 2
    assert (logits_to_probs(logits, temperature=0.25, top_p=0.65) > 0).sum() == 1


def official_penalised_logits(
    logits: torch.Tensor, history: list[int], presence: float, frequency: float, decay: float
) -> torch.Tensor:
    """The ``rwkv`` package's PIPELINE.generate rule, written as its loop (without its
    whitespace/digit exemption, which depends on the tokenizer): after each token, every count
    decays, then the new token's count grows by 1; a seen token loses presence + count * frequency."""
    occurrence: dict[int, float] = {}
    for token in history:
        for t in occurrence:
            occurrence[t] *= decay
        occurrence[token] = occurrence.get(token, 0.0) + 1.0
    out = logits.clone()
    for t, count in occurrence.items():
        out[t] -= presence + count * frequency
    return out


def test_penalties_follow_the_official_rule() -> None:
    gen = torch.Generator().manual_seed(1)
    V = 12
    history = [*torch.randint(0, 5, (40,), generator=gen).tolist(), 7]
    params = SamplingParams(presence_penalty=0.4, frequency_penalty=0.3, penalty_decay=0.9)
    pen = Penalties(1, V, params)
    logits = torch.randn(V, generator=gen)
    for i, token in enumerate(history):
        pen.update(torch.tensor([token]))
        expected = official_penalised_logits(logits, history[: i + 1], 0.4, 0.3, 0.9)
        torch.testing.assert_close(pen.apply(logits[None])[0], expected, rtol=0, atol=1e-5)
    # never-seen tokens are untouched; presence stays even when a count has decayed to almost 0
    assert pen.apply(logits[None])[0, 11] == logits[11]
    for _ in range(300):
        pen.update(torch.tensor([11]))
    assert pen.apply(logits[None])[0, 7] == pytest.approx(float(logits[7]) - 0.4, abs=1e-6)


def test_penalties_change_the_distribution_as_specified() -> None:
    # presence alone: every seen token's probability shrinks by the same factor e^-presence relative
    # to the unseen ones
    V = 6
    logits = torch.zeros(1, V)
    pen = Penalties(1, V, SamplingParams(presence_penalty=1.0))
    pen.update(torch.tensor([2]))
    pen.update(torch.tensor([2]))
    probs = logits_to_probs(pen.apply(logits))[0]
    assert probs[2] / probs[0] == pytest.approx(torch.e**-1.0, rel=1e-5)
    # frequency alone: proportional to the (decayed) count
    pen = Penalties(1, V, SamplingParams(frequency_penalty=0.5, penalty_decay=1.0))
    for t in (1, 3, 3, 3):
        pen.update(torch.tensor([t]))
    probs = logits_to_probs(pen.apply(logits))[0]
    assert probs[1] / probs[0] == pytest.approx(torch.e**-0.5, rel=1e-5)
    assert probs[3] / probs[0] == pytest.approx(torch.e**-1.5, rel=1e-5)


def test_logit_bias_and_banned_tokens() -> None:
    logits = torch.zeros(2, 5)
    out = apply_logit_bias(logits, {1: 2.0, 4: -1.0}, banned_tokens=[0])
    assert out[:, 1].tolist() == [2.0, 2.0] and out[:, 4].tolist() == [-1.0, -1.0]
    assert torch.isinf(out[:, 0]).all() and logits.abs().sum() == 0  # input untouched
    params = SamplingParams(banned_tokens=[2], logit_bias={3: 1.0})
    draws = torch.cat([next_token(logits, params, None, make_generator(s)) for s in range(200)])
    assert 2 not in draws.tolist()
    assert next_token(torch.zeros(1, 5), SamplingParams(temperature=0, logit_bias={4: 0.1})).item() == 4
    with pytest.raises(RwkvkitError, match="outside the vocabulary"):
        apply_logit_bias(logits, {9: 1.0})


def test_same_seed_same_tokens_and_sampling_matches_the_distribution() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    g1, g2, g3 = make_generator(7), make_generator(7), make_generator(8)
    a = torch.cat([sample(probs, g1) for _ in range(100)])
    b = torch.cat([sample(probs, g2) for _ in range(100)])
    c = torch.cat([sample(probs, g3) for _ in range(100)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = make_generator(0)
    draws = sample(probs.expand(20000, 4), g)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    # 20000 draws: the standard error of each frequency is < 0.0035, so 0.015 is > 4 sigma
    torch.testing.assert_close(freq, probs[0], rtol=0, atol=0.015)


def test_filtered_tokens_are_never_drawn() -> None:
    probs = torch.zeros(1, 1000)
    probs[0, [0, 500, 999]] = torch.tensor([1e-6, 0.5, 0.5 - 1e-6])
    draws = sample(probs.expand(5000, 1000), make_generator(1))
    assert set(draws.tolist()) <= {0, 500, 999} and {500, 999} <= set(draws.tolist())
    one = torch.zeros(3, 10)
    one[:, 9] = 1.0
    assert sample(one, make_generator(0)).tolist() == [9, 9, 9]


def test_per_row_generators_make_rows_independent_of_the_batch() -> None:
    probs = torch.softmax(torch.randn(3, 30, generator=torch.Generator().manual_seed(2)), -1)
    together = sample(probs, [make_generator(10 + i) for i in range(3)])
    alone = [sample(probs[i : i + 1], make_generator(10 + i)).item() for i in range(3)]
    assert together.tolist() == alone


def test_rows_with_their_own_params_sample_as_they_would_alone() -> None:
    V = 50
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(4)) * 3
    params = [
        SamplingParams(temperature=0),
        SamplingParams(top_p=0.8),
        SamplingParams(temperature=0.5, top_k=5, presence_penalty=1.0, frequency_penalty=0.5),
        SamplingParams(top_p=0.8),  # equal to row 1: sampled in one group with it
        SamplingParams(min_p=0.1, logit_bias={7: 3.0}, banned_tokens=[0, 1]),
    ]

    def penalties() -> list[Penalties | None]:
        out = [Penalties(1, V, p) if p.uses_penalties else None for p in params]
        out[2].update(torch.tensor([int(logits[2].argmax())]))  # the favourite is now penalised
        return out

    for seed in range(20):
        gens = [make_generator(seed * 10 + i) for i in range(5)]
        together = next_token_rows(logits, params, penalties(), gens)
        pens = penalties()
        alone = [
            next_token(logits[i : i + 1], params[i], pens[i], make_generator(seed * 10 + i)).item()
            for i in range(5)
        ]
        assert together.tolist() == alone
    with pytest.raises(RwkvkitError, match="2 generators"):
        next_token_rows(logits, params, penalties(), gens[:2])


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 2.0},
        {"penalty_decay": 1.1},
        {"presence_penalty": float("nan")},
    ],
)
def test_invalid_params_are_refused_with_the_name(bad: dict) -> None:
    with pytest.raises(RwkvkitError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_non_finite_logits_are_refused() -> None:
    """NaN would otherwise become token 0 (or any token) without a word."""
    from rwkvkit.errors import NonFiniteError

    params = SamplingParams(temperature=0.8)
    ok = torch.tensor([[0.0, 1.0, -math.inf]])  # -inf is a banned token, nothing wrong
    assert next_token(ok, params, None, make_generator(0)).item() in (0, 1)
    for bad in ([0.0, math.nan, 1.0], [0.0, math.inf, 1.0], [-math.inf, -math.inf, -math.inf]):
        for p in (params, SamplingParams(temperature=0)):
            with pytest.raises(NonFiniteError, match="batch row 1"):
                next_token(torch.tensor([[0.0, 1.0, 2.0], bad]), p, None, make_generator(0))


def test_seeds_out_of_range_are_refused() -> None:
    from rwkvkit.errors import InputError

    assert make_generator(2**64 - 1).initial_seed() == 2**64 - 1
    for bad in (-1, 2**64, 1.5, "3", True):
        with pytest.raises(InputError, match="seed must be an integer"):
            make_generator(bad)  # type: ignore[arg-type]
