"""Metrics against values worked out by hand."""

import math

import pytest
import torch

from rlhfkit.evaluate.metrics import (
    avg_max_toxicity,
    best_of_n_kl,
    bradley_terry_ratings,
    distinct_n,
    distinct_n_per_prompt,
    kl_stats,
    perplexity,
    perplexity_from_logprobs,
    rm_accuracy,
    toxicity_probability,
    win_rate,
)


def test_distinct_n_by_hand():
    """["the cat sat", "The cat ran"] (lowercased):

    unigrams: the cat sat the cat ran -> 6 in all, 4 distinct -> 4/6
    bigrams: (the cat) (cat sat) | (the cat) (cat ran) -> 4 in all, 3 distinct -> 3/4
    (no bigram "sat the": n-grams do not cross texts)
    trigrams: (the cat sat) (the cat ran) -> 2/2
    """
    texts = ["the cat sat", "The cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(texts, 4) == 0.0  # no 4-grams at all
    assert distinct_n(["go go go go"], 1) == 0.25
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_win_rate_by_hand():
    # pairs (1,2) lose, (2,2) tie, (3,1) win, (4,0) win
    assert win_rate([1, 2, 3, 4], [2, 2, 1, 0]) == {"win": 0.5, "tie": 0.25, "lose": 0.25}
    # with a tolerance of 1, (1,2) becomes a tie too
    assert win_rate([1, 2, 3, 4], [2, 2, 1, 0], tie_tol=1.0) == {
        "win": 0.5,
        "tie": 0.5,
        "lose": 0.0,
    }
    assert win_rate([], []) == {"win": 0.0, "tie": 0.0, "lose": 0.0}
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_rm_accuracy_ties_count_wrong():
    # 1 > 0 right; 2 == 2 tie -> wrong; 3 < 4 wrong -> 1/3
    assert rm_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(1 / 3)
    assert rm_accuracy([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert rm_accuracy([], []) == 0.0


def test_best_of_n_kl_by_hand():
    """log n - (n - 1) / n: 0 for n = 1; log 4 - 3/4 for n = 4."""
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_bradley_terry_two_players_by_hand():
    """A beats B 3 times in 4: the MLE has sigmoid(r_A - r_B) = 3/4, so r_A - r_B = log 3.

    Centred: r_A = log(3)/2, r_B = -log(3)/2.
    """
    pairs = [("A", "B")] * 3 + [("B", "A")]
    r = bradley_terry_ratings(pairs)
    assert r["A"] - r["B"] == pytest.approx(math.log(3), abs=1e-6)
    assert r["A"] == pytest.approx(math.log(3) / 2, abs=1e-6)
    # ties are half a win each: one win each way plus two ties -> equal ratings
    r = bradley_terry_ratings([("A", "B"), ("B", "A"), ("A", "B"), ("A", "B")], [1, 1, 0.5, 0.5])
    assert r["A"] == pytest.approx(r["B"], abs=1e-9)


def test_bradley_terry_score_equations():
    """At the MLE, each player's wins equal its expected wins: W_i = sum_j n_ij sigmoid(r_i - r_j)."""
    results = [("A", "B", 1), ("A", "B", 0), ("B", "C", 1), ("B", "C", 1), ("C", "B", 1)]
    results += [("A", "C", 1), ("C", "A", 1), ("A", "C", 1), ("C", "B", 0.5)]
    pairs = [(i, j) for i, j, _ in results]
    outcomes = [y for _, _, y in results]
    r = bradley_terry_ratings(pairs, outcomes)
    assert sum(r.values()) == pytest.approx(0.0, abs=1e-9)
    for player in "ABC":
        wins = expected = 0.0
        for (i, j), y in zip(pairs, outcomes):
            if player in (i, j):
                p_i = 1 / (1 + math.exp(r[j] - r[i]))
                wins += y if player == i else 1 - y
                expected += p_i if player == i else 1 - p_i
        assert wins == pytest.approx(expected, abs=1e-6)


def test_bradley_terry_prior_keeps_an_unbeaten_player_finite():
    r = bradley_terry_ratings([("A", "B")] * 5, prior=0.5)
    assert 0 < r["A"] < 5 and r["B"] == pytest.approx(-r["A"])
    assert bradley_terry_ratings([]) == {}


def test_toxicity_by_hand():
    # maxima 0.9 and 0.3 -> mean 0.6; only the first prompt reaches 0.5 -> 1/2
    tox = [[0.1, 0.9, 0.2], [0.2, 0.3]]
    assert avg_max_toxicity(tox) == pytest.approx(0.6)
    assert toxicity_probability(tox) == 0.5
    assert toxicity_probability(tox, threshold=0.25) == 1.0
    with pytest.raises(ValueError):
        avg_max_toxicity([[0.1], []])


def test_distinct_n_per_prompt_by_hand():
    """Per prompt, then averaged over prompts.

    [["a b", "a b"], ["c d e"]]: prompt 1 has bigrams {ab, ab} -> 1/2; prompt 2 {cd, de} -> 2/2;
    mean 0.75. [["a b", "a b"], ["c d", "c d"]]: 1/2 each -> 0.5. [["a b"], ["a b"]]: one bigram
    per prompt -> 1.0, although pooled over prompts (corpus distinct-2) it is 1/2: the same text
    for different prompts is not repetition within a prompt.
    """
    assert distinct_n_per_prompt([["a b", "a b"], ["c d e"]], 2) == pytest.approx(0.75)
    assert distinct_n_per_prompt([["a b", "a b"], ["c d", "c d"]], 2) == pytest.approx(0.5)
    assert distinct_n_per_prompt([["a b"], ["a b"]], 2) == pytest.approx(1.0)
    assert distinct_n([t for g in [["a b"], ["a b"]] for t in g], 2) == pytest.approx(0.5)
    assert distinct_n_per_prompt([], 3) == 0.0


def test_perplexity_from_logprobs_by_hand():
    """Tokens with probabilities 1/2 and 1/8 (the third is padding): exp((ln 2 + ln 8) / 2) = 4."""
    logprobs = torch.tensor([[math.log(0.5), math.log(0.125), -100.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert perplexity_from_logprobs(logprobs, mask) == pytest.approx(4.0)
    # unmasked: a uniform model over 3 tokens has perplexity 3
    assert perplexity_from_logprobs(torch.full((2, 5), -math.log(3.0))) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        perplexity_from_logprobs(logprobs, torch.zeros(1, 3))


def test_kl_stats_by_hand():
    """r = logprobs - ref on unmasked tokens: [[0.5, -1], [1, (pad)]].

    k1 per sequence: -0.5 and 1 -> mean 0.25, population std 0.75, max 1, per token 0.5 / 3.
    k3 = exp(-r) - 1 + r: 0.10653 + 0.71828 = 0.82481 and 0.36788 -> mean 0.59634.
    """
    logprobs = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0], [-2.0, 5.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    stats = kl_stats(logprobs, ref_logprobs, mask)
    assert stats["kl/seq_mean"] == pytest.approx(0.25)
    assert stats["kl/seq_std"] == pytest.approx(0.75)
    assert stats["kl/token_mean"] == pytest.approx(0.5 / 3)
    assert stats["kl/seq_max"] == pytest.approx(1.0)
    k3 = (math.exp(-0.5) - 0.5) + (math.exp(1) - 2) + math.exp(-1)
    assert stats["kl/k3_seq_mean"] == pytest.approx(k3 / 2)
    same = kl_stats(logprobs, logprobs)
    assert same["kl/seq_mean"] == 0.0 and same["kl/k3_seq_mean"] == 0.0


# ----------------------------------------------------------------------------------------
# perplexity: a toy character tokenizer and a bigram "model" whose probabilities we set
# ----------------------------------------------------------------------------------------

PAD, BOS = 0, 1
VOCAB = {"a": 2, "b": 3}


class CharTokenizer:
    pad_token_id = PAD

    def __call__(self, text, add_special_tokens=True):
        ids = [VOCAB[c] for c in text]
        return {"input_ids": ([BOS] if add_special_tokens else []) + ids}


class Output:
    def __init__(self, logits):
        self.logits = logits


class BigramModel(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next token depends on this one only."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None):
        return Output(self.table[input_ids])  # (B, T, V)


def bigram_table():
    log = math.log
    return [
        [0.0, 0.0, 0.0, 0.0],  # after PAD: never used for scored tokens
        [log(0.7), log(0.28), log(0.01), log(0.01)],  # after BOS: P(a) = 0.01
        [log(0.125), log(0.125), log(0.5), log(0.25)],  # after a: P(a) = 1/2, P(b) = 1/4
        [log(0.25), log(0.25), log(0.25), log(0.25)],  # after b: uniform
    ]


def test_perplexity_by_hand_masks_the_prompt():
    """Prompt "a", response "ab": ids [BOS, a | a, b].

    Scored: P(a | a) = 1/2 and P(b | a) = 1/4 -> NLL = log 2 + log 4 = log 8 over 2 tokens,
    perplexity = exp(log(8) / 2) = sqrt(8). The prompt token (P(a | BOS) = 0.01) is not scored.
    """
    ppl = perplexity(BigramModel(bigram_table()), CharTokenizer(), ["a"], ["ab"])
    assert ppl == pytest.approx(math.sqrt(8), rel=1e-5)


def test_perplexity_uniform_model_is_vocab_size():
    model = BigramModel(torch.zeros(4, 4))
    assert perplexity(model, CharTokenizer(), ["ab", "b"], ["abba", "a"]) == pytest.approx(4.0)


def test_perplexity_batched_with_padding_equals_one_at_a_time():
    """Token-weighted: ("a","ab") gives log 8 over 2 tokens; ("ba","b") gives P(b|a) = 1/4;
    ("", "ba") scores b after BOS (0.01) and a after b (1/4).
    """
    model, tok = BigramModel(bigram_table()), CharTokenizer()
    prompts, responses = ["a", "ba", ""], ["ab", "b", "ba"]
    nll = math.log(8) + math.log(4) + (-math.log(0.01) + math.log(4))
    expected = math.exp(nll / 5)
    assert perplexity(model, tok, prompts, responses, batch_size=1) == pytest.approx(
        expected, rel=1e-5
    )
    assert perplexity(model, tok, prompts, responses, batch_size=3) == pytest.approx(
        expected, rel=1e-5
    )


def test_perplexity_on_a_tiny_transformers_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=4,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    tok = CharTokenizer()
    prompts, responses = ["ab", "a", "bba"], ["abab", "b", "aa"]
    one = perplexity(model, tok, prompts, responses, batch_size=1)
    many = perplexity(model, tok, prompts, responses, batch_size=3)
    assert one == pytest.approx(many, rel=1e-4)
    assert 1.0 < one < 16.0  # a random 4-token model is near uniform


def test_length_controlled_win_rate_by_hand():
    """Ten prompts where A answers longer (d = +3) and A wins 9; ten where it answers shorter
    (d = -3) and wins 5. tanh(d / sd(d)) takes two values +-c, so the logistic model is
    saturated and reproduces both rates: logit(0.9) = theta + phi c, logit(0.5) = theta - phi c,
    theta = (ln 9 + 0) / 2 = 1.0986, and the length-controlled rate is sigmoid(theta) = 0.75,
    where the raw rate is 14/20 = 0.7 and phi > 0 (longer wins)."""
    from rlhfkit.evaluate.metrics import length_controlled_win_rate

    a = [1.0] * 9 + [0.0] + [1.0] * 5 + [0.0] * 5
    b = [0.5] * 20
    la, lb = [13] * 10 + [7] * 10, [10] * 20
    out = length_controlled_win_rate(a, b, la, lb, l2=0.0)
    assert out["win_rate"] == pytest.approx(0.7)
    assert out["lc_win_rate"] == pytest.approx(0.75, abs=1e-6)
    assert out["length_coef"] > 0
    # no length difference at all: nothing to control for; ties count half
    same = length_controlled_win_rate([1, 0, 0.5, 1], [0, 1, 0.5, 0], [5] * 4, [5] * 4, l2=0.0)
    assert same["lc_win_rate"] == pytest.approx(same["win_rate"]) == pytest.approx(0.625)
