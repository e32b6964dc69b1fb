"""Simulated labelers: a gold scorer turned into noisy feedback records.

A :class:`SimulatedLabeler` answers the same questions a person answers in the web app
(thumbs up or down, which of two is better, rank these K, give a score) and returns the same
record types, with ``source="simulated"`` and ``annotator=<its name>``. It stands in for
people exactly where people would stand.

Noise model, with gold scores ``s`` and a temperature ``T`` in the scorer's units:

- binary: 👍 with probability ``sigmoid((s - threshold) / T)``.
- compare: ``P(a > b) = sigmoid((s_a - s_b) / T)`` (Bradley–Terry; Bradley & Terry 1952,
  as used for reward models in Christiano et al. 2017, Eq. 1), then the answer is flipped
  with probability ``flip_rate`` (a slip of the hand, independent of how close the pair is).
- rank: a Plackett–Luce sample with item weights ``exp(s_i / T)``: add independent
  Gumbel(0, 1) noise to ``s_i / T`` and sort (the Gumbel-max trick; Yellott 1977).
- score: ``s + T * N(0, 1)``.

``T = 0`` is a noiseless labeler: the higher gold score always wins. Exactly equal gold
scores are reported as a tie (``tie=True`` in a comparison, equal ranks in a ranking)
whatever the temperature. ``flip_rate`` applies to binary and pairwise labels.

All randomness comes from one ``random.Random(seed)`` stream, and every call draws a fixed
number of numbers (binary 2, compare 2, rank K, score 1) whatever the temperature or flip
rate, so the same seed and the same sequence of calls give the same labels, a batch call
gives exactly what the same single calls in order give, and raising ``flip_rate`` flips a
superset of the pairs flipped at a lower rate.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rlhfkit.data.records import BinaryFeedback, Comparison, Ranking, ScoreFeedback
from rlhfkit.rewards.gold import Scorer, get_scorer

__all__ = ["SimulatedLabeler", "sigmoid"]

Prompt = str | list[dict[str, str]]


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SimulatedLabeler:
    """Turn a gold scorer into noisy human-like feedback records.

    Args:
        scorer: A gold scorer, or a name for :func:`rlhfkit.rewards.gold.get_scorer`.
        temperature: Noise scale in the scorer's units; 0 means noiseless. For VADER sentiment
            (range [-1, 1]) 0.1 makes a pair 0.2 apart come out right ~88% of the time.
        flip_rate: Probability of reporting the opposite of the drawn binary or pairwise label.
        threshold: Score above which a binary label leans 👍.
        seed: Seed of the labeler's random stream.
        name: Annotator name written into records (default ``"sim-<scorer name>"``).
    """

    def __init__(
        self,
        scorer: Scorer | str,
        temperature: float = 0.1,
        flip_rate: float = 0.0,
        threshold: float = 0.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        self.scorer = get_scorer(scorer)
        self.temperature = float(temperature)
        self.flip_rate = float(flip_rate)
        self.threshold = float(threshold)
        self.seed = seed
        self.name = name or f"sim-{self.scorer.name}"
        self._rng = random.Random(seed)
        self._count = 0  # records made so far; part of each record's id

    def __repr__(self) -> str:
        return (
            f"SimulatedLabeler(name={self.name!r}, temperature={self.temperature}, "
            f"flip_rate={self.flip_rate}, seed={self.seed})"
        )

    # -- helpers ---------------------------------------------------------------------------

    def _prob(self, diff: float) -> float:
        """P(label goes the way of ``diff``) = sigmoid(diff / T); a step function at T = 0."""
        if self.temperature == 0.0:
            return 1.0 if diff > 0 else (0.0 if diff < 0 else 0.5)
        return sigmoid(diff / self.temperature)

    def _common(self, kind: str, prompt: Prompt, *texts: str) -> dict[str, Any]:
        """Fields every record from this labeler shares: a stable id, annotator, source, time."""
        payload = json.dumps([self.name, self.seed, self._count, kind, prompt, texts])
        self._count += 1
        return {
            "id": f"{kind}-{hashlib.sha1(payload.encode()).hexdigest()[:16]}",
            "annotator": self.name,
            "source": "simulated",
            "created_at": _now(),
        }

    # -- single items ----------------------------------------------------------------------

    def binary(self, prompt: Prompt, response: str) -> BinaryFeedback:
        """👍 / 👎 for one response.

        Args:
            prompt: The prompt.
            response: The response to judge.

        Returns:
            A :class:`BinaryFeedback`; ``meta`` holds the gold score, P(👍) and whether the
            label was flipped.
        """
        return self.binary_batch([prompt], [response])[0]

    def compare(self, prompt: Prompt, a: str, b: str) -> Comparison:
        """Pick the better of two responses (Bradley–Terry, then a flip with ``flip_rate``).

        Args:
            prompt: The prompt.
            a: First response.
            b: Second response.

        Returns:
            A :class:`Comparison`; exactly equal gold scores give ``tie=True`` (with
            ``chosen=a``). ``meta`` holds both gold scores, P(chosen) and the flip flag.
        """
        return self.compare_batch([prompt], [a], [b])[0]

    def rank(self, prompt: Prompt, responses: Sequence[str]) -> Ranking:
        """Rank K responses best to worst by a Plackett–Luce draw.

        Args:
            prompt: The prompt.
            responses: K distinct responses (2..9 for a valid :class:`Ranking`).

        Returns:
            A :class:`Ranking` with ``ranks`` (0 = best; equal gold scores share a rank) and
            the gold scores in ``meta["gold_scores"]``.
        """
        return self.rank_batch([prompt], [responses])[0]

    def score(self, prompt: Prompt, response: str) -> ScoreFeedback:
        """A noisy numeric score: gold score plus ``temperature * N(0, 1)``.

        Args:
            prompt: The prompt.
            response: The response to score.

        Returns:
            A :class:`ScoreFeedback`; ``meta["gold_score"]`` holds the noiseless score.
        """
        return self.score_batch([prompt], [response])[0]

    # -- batches ---------------------------------------------------------------------------

    def binary_batch(
        self, prompts: Sequence[Prompt], responses: Sequence[str]
    ) -> list[BinaryFeedback]:
        """:meth:`binary` for many pairs; one scorer call, same labels as single calls in order."""
        scores = self.scorer(list(prompts), list(responses))
        records = []
        for prompt, response, s in zip(prompts, responses, scores):
            u_label, u_flip = self._rng.random(), self._rng.random()
            p_up = self._prob(s - self.threshold)
            label = u_label < p_up
            flipped = u_flip < self.flip_rate
            records.append(
                BinaryFeedback(
                    prompt=prompt,
                    response=response,
                    label=label != flipped,
                    meta={"gold_score": s, "p_up": p_up, "flipped": flipped},
                    **self._common("binary", prompt, response),
                )
            )
        return records

    def compare_batch(
        self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]
    ) -> list[Comparison]:
        """:meth:`compare` for many pairs; one scorer call per side."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"compare_batch: lengths differ ({len(prompts)}, {len(a)}, {len(b)})")
        scores_a = self.scorer(list(prompts), list(a))
        scores_b = self.scorer(list(prompts), list(b))
        records = []
        for prompt, ra, rb, sa, sb in zip(prompts, a, b, scores_a, scores_b):
            u_pick, u_flip = self._rng.random(), self._rng.random()
            tie = sa == sb
            p_a = self._prob(sa - sb)  # Bradley–Terry P(a > b)
            a_wins = u_pick < p_a
            flipped = not tie and u_flip < self.flip_rate
            if flipped:
                a_wins = not a_wins
            if tie or a_wins:
                chosen, rejected, s_c, s_r, p_c = ra, rb, sa, sb, p_a
            else:
                chosen, rejected, s_c, s_r, p_c = rb, ra, sb, sa, 1.0 - p_a
            records.append(
                Comparison(
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    tie=tie,
                    meta={
                        "gold_chosen": s_c,
                        "gold_rejected": s_r,
                        "p_chosen": p_c,
                        "flipped": flipped,
                    },
                    **self._common("comparison", prompt, ra, rb),
                )
            )
        return records

    def rank_batch(
        self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]]
    ) -> list[Ranking]:
        """:meth:`rank` for many prompts; one scorer call for all responses."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"rank_batch: {len(prompts)} prompts but {len(responses)} response lists"
            )
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat_responses = [r for rs in responses for r in rs]
        flat_scores = self.scorer(flat_prompts, flat_responses)
        records, start = [], 0
        for prompt, rs in zip(prompts, responses):
            scores = flat_scores[start : start + len(rs)]
            start += len(rs)
            ranks = self._plackett_luce_ranks(scores)
            records.append(
                Ranking(
                    prompt=prompt,
                    responses=list(rs),
                    ranks=ranks,
                    meta={"gold_scores": scores},
                    **self._common("ranking", prompt, *rs),
                )
            )
        return records

    def score_batch(
        self, prompts: Sequence[Prompt], responses: Sequence[str]
    ) -> list[ScoreFeedback]:
        """:meth:`score` for many pairs; one scorer call."""
        scores = self.scorer(list(prompts), list(responses))
        records = []
        for prompt, response, s in zip(prompts, responses, scores):
            noisy = s + self.temperature * self._rng.gauss(0.0, 1.0)
            records.append(
                ScoreFeedback(
                    prompt=prompt,
                    response=response,
                    score=noisy,
                    meta={"gold_score": s},
                    **self._common("score", prompt, response),
                )
            )
        return records

    # -- Plackett–Luce ---------------------------------------------------------------------

    def _plackett_luce_ranks(self, scores: Sequence[float]) -> list[int]:
        """Sample ranks (0 = best) from Plackett–Luce with weights ``exp(s_i / T)``.

        Gumbel-max: ``argsort(s_i / T + g_i)`` descending, ``g_i ~ Gumbel(0, 1)``, is an
        exact PL sample. Items with exactly equal scores form one group that takes the
        Gumbel draw of its first member and share a rank (dense ranks: 0, 1, 2, ...).
        """
        gumbels = [-math.log(-math.log(self._rng.random() or 1e-300)) for _ in scores]
        first_of: dict[float, int] = {}
        for i, s in enumerate(scores):
            first_of.setdefault(s, i)
        if self.temperature == 0.0:
            keys = {s: s for s in first_of}
        else:
            keys = {s: s / self.temperature + gumbels[i] for s, i in first_of.items()}
        order = sorted(first_of, key=lambda s: keys[s], reverse=True)
        group_rank = {s: r for r, s in enumerate(order)}
        return [group_rank[s] for s in scores]
