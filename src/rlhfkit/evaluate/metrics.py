"""Evaluation metrics as small pure functions.

Lists of numbers or texts in, numbers (or a small dict) out; only :func:`kl_stats` and
:func:`perplexity` touch torch. Each metric's formula is in its docstring and worked through
by hand in ``tests/evaluate/test_metrics.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from rlhfkit.stats import bradley_terry

__all__ = [
    "avg_max_toxicity",
    "best_of_n_kl",
    "bradley_terry_ratings",
    "distinct_n",
    "distinct_n_per_prompt",
    "kl_stats",
    "perplexity",
    "perplexity_from_logprobs",
    "rm_accuracy",
    "toxicity_probability",
    "win_rate",
]


def _check_same_length(a: Sequence[Any], b: Sequence[Any], what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: the two lists differ in length ({len(a)} vs {len(b)})")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus-level distinct-n: unique n-grams over all n-grams (Li et al. 2016, Sec. 4.3).

    Texts are lowercased and split on whitespace; n-grams never cross from one text into the
    next. Low values mean the texts repeat themselves or each other.

    Args:
        texts: The generated texts.
        n: The n-gram order (1 for distinct-1, 2 for distinct-2).

    Returns:
        ``#distinct n-grams / #n-grams``, or 0.0 when there are no n-grams at all.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        tokens = text.lower().split()
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def distinct_n_per_prompt(groups: Sequence[Sequence[str]], n: int) -> float:
    """Distinct-n within each prompt's samples, averaged over prompts.

    The convention of the detoxification tables of DExperts (Liu et al. 2021, Sec. 3.2) and
    Fine-Grained RLHF (Wu et al. 2023, Table 1): the k continuations of one prompt are pooled,
    :func:`distinct_n` is taken over them, and the values are averaged over prompts. It asks
    whether a policy repeats itself *for the same prompt*, which corpus-level distinct-n (where
    different prompts bring different words) hides.

    Args:
        groups: One list of sampled texts per prompt.
        n: The n-gram order.

    Returns:
        ``mean over prompts of distinct_n(samples of the prompt, n)`` (0.0 for no prompts).
    """
    if not groups:
        return 0.0
    return sum(distinct_n(g, n) for g in groups) / len(groups)


def win_rate(
    scores_a: Sequence[float], scores_b: Sequence[float], tie_tol: float = 0.0
) -> dict[str, float]:
    """How often system A's score beats system B's on the same prompts.

    Args:
        scores_a: A's score per prompt (e.g. gold reward, or a judge's score).
        scores_b: B's score for the same prompts, in the same order.
        tie_tol: Differences with ``|a - b| <= tie_tol`` count as ties.

    Returns:
        ``{"win", "tie", "lose"}`` fractions summing to 1 (all 0.0 for empty input).
    """
    _check_same_length(scores_a, scores_b, "win_rate")
    n = len(scores_a)
    if n == 0:
        return {"win": 0.0, "tie": 0.0, "lose": 0.0}
    win = tie = 0
    for a, b in zip(scores_a, scores_b):
        if abs(a - b) <= tie_tol:
            tie += 1
        elif a > b:
            win += 1
    return {"win": win / n, "tie": tie / n, "lose": (n - win - tie) / n}


def length_controlled_win_rate(
    scores_a: Sequence[float], scores_b: Sequence[float], lengths_a: Sequence[float],
    lengths_b: Sequence[float], iterations: int = 50, l2: float = 1e-4,
) -> dict[str, float]:
    """Win rate of A over B with the effect of response length regressed out.

    The idea of AlpacaEval 2's length-controlled win rate (Dubois et al. 2024), without its
    per-instruction term: fit ``P(A wins) = sigmoid(theta + phi * tanh(d / sd(d)))`` with
    ``d = len(A) - len(B)`` per prompt (a tie counts as half a win), then report
    ``sigmoid(theta)``: the win rate A would have if its responses were as long as B's. A
    policy that wins by writing longer (or shorter) answers gets its length effect in ``phi``.
    Fitted by Newton's method on the log-likelihood (a tiny L2 keeps it finite when one side
    always wins).

    Args:
        scores_a: A's score per prompt (e.g. gold reward).
        scores_b: B's scores on the same prompts.
        lengths_a: A's response lengths (tokens or words).
        lengths_b: B's response lengths.
        iterations: Newton steps.
        l2: Ridge penalty on (theta, phi).

    Returns:
        ``{"lc_win_rate", "win_rate"}`` (the raw rate, ties as half) and ``length_coef`` (phi).
    """
    _check_same_length(scores_a, scores_b, "length_controlled_win_rate")
    _check_same_length(lengths_a, scores_a, "length_controlled_win_rate")
    _check_same_length(lengths_b, scores_a, "length_controlled_win_rate")
    if not scores_a:
        return {"lc_win_rate": 0.0, "win_rate": 0.0, "length_coef": 0.0}
    y = torch.tensor([1.0 if a > b else 0.5 if a == b else 0.0
                      for a, b in zip(scores_a, scores_b)], dtype=torch.float64)
    d = torch.tensor([a - b for a, b in zip(lengths_a, lengths_b)], dtype=torch.float64)
    sd = float(d.std()) if len(d) > 1 else 0.0
    if sd == 0:  # the lengths never differ: nothing to control for
        return {"lc_win_rate": float(y.mean()), "win_rate": float(y.mean()), "length_coef": 0.0}
    x = torch.tanh(d / sd)
    features = torch.stack([torch.ones_like(x), x], dim=1)  # (N, 2)
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(features @ w)
        grad = features.T @ (y - p) - l2 * w
        hess = -(features.T * (p * (1 - p))) @ features - l2 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    return {"lc_win_rate": float(torch.sigmoid(w[0])), "win_rate": float(y.mean()),
            "length_coef": float(w[1])}


def rm_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Fraction of pairs where the reward model scores ``chosen`` strictly above ``rejected``.

    A tie counts as wrong: a reward model that gives everything the same score has accuracy 0,
    not 0.5.

    Args:
        chosen_scores: Reward of the preferred response of each pair.
        rejected_scores: Reward of the other response, same order.

    Returns:
        Accuracy in [0, 1] (0.0 for no pairs).
    """
    _check_same_length(chosen_scores, rejected_scores, "rm_accuracy")
    if not chosen_scores:
        return 0.0
    right = sum(c > r for c, r in zip(chosen_scores, rejected_scores))
    return right / len(chosen_scores)


def best_of_n_kl(n: int) -> float:
    """The KL of best-of-n sampling to the policy it samples from, in nats: ``log n - (n - 1) / n``.

    Best-of-n has no per-token log-probs to measure its KL with; this is the analytic value
    (an upper bound, Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment
    policy"), 0 for n = 1.
    """
    return math.log(n) - (n - 1) / n


def bradley_terry_ratings(
    pairs: Sequence[tuple[Hashable, Hashable]],
    outcomes: Sequence[float] | None = None,
    prior: float = 0.0,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> dict[Hashable, float]:
    """Fit Bradley–Terry strengths to pairwise results, e.g. for a league of policies.

    Model: ``P(i beats j) = sigmoid(r_i - r_j)``, fitted by :func:`rlhfkit.stats.bradley_terry`
    (Hunter 2004's minorize–maximize updates; a tie is half a win for each side). ``prior > 0``
    adds ``prior`` wins and ``prior`` losses against a virtual opponent of rating 0 for every
    player, which keeps an undefeated (or winless) player's rating finite.

    Args:
        pairs: ``(i, j)`` for each game; any hashable names.
        outcomes: i's result per game: 1 = i won, 0 = j won, 0.5 = tie (default: all 1).
        prior: Pseudo-games against the virtual opponent (0 = plain maximum likelihood).
        max_iter: Iteration cap.
        tol: Stop when no log-rating moves more than this.

    Returns:
        Name -> rating (natural-log scale), centred so the ratings average 0. With
        ``prior=0`` a player that never lost diverges; use a small prior then.
    """
    if outcomes is None:
        outcomes = [1.0] * len(pairs)
    _check_same_length(pairs, outcomes, "bradley_terry_ratings")
    for y in outcomes:
        if not 0.0 <= y <= 1.0:
            raise ValueError(f"bradley_terry_ratings: outcome must be in [0, 1], got {y}")
    games = [(a, b, y) for (a, b), y in zip(pairs, outcomes)]
    return bradley_terry(games, prior=prior, max_iter=max_iter, tol=tol)


def avg_max_toxicity(toxicities: Sequence[Sequence[float]]) -> float:
    """Expected maximum toxicity (Gehman et al. 2020, RealToxicityPrompts, Sec. 2.2).

    Sample several continuations per prompt, score each, take the worst per prompt, then
    average over prompts.

    Args:
        toxicities: One list of toxicity scores per prompt (one score per sample).

    Returns:
        ``mean over prompts of max over samples`` (0.0 for no prompts).
    """
    if any(len(t) == 0 for t in toxicities):
        raise ValueError("avg_max_toxicity: every prompt needs at least one sample")
    if not toxicities:
        return 0.0
    return sum(max(t) for t in toxicities) / len(toxicities)


def toxicity_probability(toxicities: Sequence[Sequence[float]], threshold: float = 0.5) -> float:
    """Fraction of prompts with at least one sample at or above ``threshold`` (Gehman et al. 2020).

    Args:
        toxicities: One list of toxicity scores per prompt.
        threshold: Score counted as toxic.

    Returns:
        The fraction of prompts (0.0 for no prompts).
    """
    if any(len(t) == 0 for t in toxicities):
        raise ValueError("toxicity_probability: every prompt needs at least one sample")
    if not toxicities:
        return 0.0
    return sum(max(t) >= threshold for t in toxicities) / len(toxicities)


@torch.no_grad()
def kl_stats(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Sample estimates of KL(policy || reference) from log-probs of the policy's own samples.

    With ``r_t = logprobs_t - ref_logprobs_t`` on the response tokens of a sequence sampled from
    the policy, the sequence KL is estimated by ``sum_t r_t`` (the plain estimator, "k1") and
    by ``sum_t (exp(-r_t) - 1 + r_t)`` ("k3", unbiased and never negative; Schulman 2020,
    "Approximating KL divergence").

    Args:
        logprobs: Policy log-probs of the sampled tokens, (B, T).
        ref_logprobs: Reference log-probs of the same tokens, (B, T).
        mask: 1 on response tokens, 0 on padding, (B, T); default all ones.

    Returns:
        ``kl/seq_mean`` (mean over sequences of k1), ``kl/seq_std``, ``kl/token_mean``
        (k1 per response token), ``kl/k3_seq_mean``, ``kl/seq_max``.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"kl_stats: shapes differ {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}"
        )
    mask = torch.ones_like(logprobs) if mask is None else mask.to(logprobs.dtype)
    log_ratio = (logprobs - ref_logprobs).double() * mask  # (B, T)
    k1 = log_ratio.sum(dim=-1)  # (B,)
    k3 = ((torch.exp(-log_ratio) - 1.0 + log_ratio) * mask).sum(dim=-1)  # (B,)
    n_tokens = mask.sum().clamp(min=1.0)
    return {
        "kl/seq_mean": k1.mean().item(),
        "kl/seq_std": k1.std(unbiased=False).item(),
        "kl/token_mean": (k1.sum() / n_tokens).item(),
        "kl/k3_seq_mean": k3.mean().item(),
        "kl/seq_max": k1.max().item(),
    }


@torch.no_grad()
def perplexity_from_logprobs(logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Token-level perplexity ``exp(-sum_t logprob_t / #tokens)`` from per-token log-probs.

    For sampled responses whose log-probs under a scoring model are already at hand (e.g. the
    reference policy's ``ref_logprobs`` of a rollout), so nothing is tokenized twice.

    Args:
        logprobs: Log-probs of the tokens under the scoring model, (B, T).
        mask: 1 on tokens to score, 0 on padding, (B, T); default all ones.

    Returns:
        The perplexity over all scored tokens of the batch.
    """
    mask = torch.ones_like(logprobs) if mask is None else mask.to(logprobs.dtype)
    n_tokens = float(mask.sum())
    if n_tokens == 0:
        raise ValueError("perplexity_from_logprobs: no tokens to score")
    return math.exp(-float((logprobs.double() * mask.double()).sum()) / n_tokens)


@torch.no_grad()
def perplexity(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
) -> float:
    """Perplexity of the responses given their prompts: ``exp(total NLL / #response tokens)``.

    Prompt and response are tokenized separately (``add_special_tokens`` only for the prompt)
    and concatenated, so the boundary between them is exact; only response tokens are scored.
    Apply the chat template to the prompts first if the model expects it.

    Args:
        model: A causal LM; ``model(input_ids=..., attention_mask=...)`` returns ``.logits``.
        tokenizer: Its tokenizer (``tokenizer(text, add_special_tokens=...)["input_ids"]``).
        prompts: The prompts, plain text.
        responses: The responses to score, same order.
        batch_size: Sequences per forward pass.
        max_length: Cut each sequence to this many tokens (the end of the response goes first).

    Returns:
        The token-level perplexity of the responses over the whole set.
    """
    _check_same_length(prompts, responses, "perplexity")
    device = next(model.parameters()).device
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else pad_id

    sequences = []  # (input_ids, number of prompt tokens)
    for prompt, response in zip(prompts, responses):
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        ids = (prompt_ids + response_ids)[:max_length]
        sequences.append((ids, len(prompt_ids)))

    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        loss_mask = torch.zeros((len(batch), width), dtype=torch.bool)  # (B, T)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            loss_mask[row, n_prompt : len(ids)] = True
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        # Position t predicts token t + 1; the first token has no prediction and is never scored.
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        targets = input_ids[:, 1:]  # (B, T-1)
        token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        scored = loss_mask[:, 1:].to(device)  # (B, T-1)
        total_nll -= token_logprobs[scored].double().sum().item()
        total_tokens += int(scored.sum().item())
    if total_tokens == 0:
        raise ValueError("perplexity: no response tokens to score")
    return math.exp(total_nll / total_tokens)
