"""A trained policy against the SFT policy it started from: what the comparison reports.

The demo, the iterative rounds and the reward-KL frontier measure a policy the same way: one
response per held-out prompt from each policy, each scored by the task's gold scorer and by the
proxy reward model, and the trained policy's KL to SFT. :func:`compare` turns those into one
summary: gold and proxy reward of both, the gold win rate (raw, ties as half, and with the
length effect regressed out, :func:`~rlhfkit.evaluate.metrics.length_controlled_win_rate`),
the KL, the mean length and distinct-2 of both. The sampling and scoring is
:func:`rlhfkit.train.comparison.compare_with_sft`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit.evaluate.metrics import distinct_n, length_controlled_win_rate, win_rate


@dataclass
class Responses:
    """One policy's responses to the held-out prompts, one per prompt, with their scores."""

    texts: list[str]
    gold: list[float]
    """The task's gold scorer on each response."""
    reward: list[float]
    """The proxy reward model on each response."""
    lengths: list[float]
    """Tokens of each response."""


def compare(prompts: Sequence[Any], sft: Responses, final: Responses, kl: float) -> dict:
    """The summary of ``final`` against ``sft`` and the samples side by side.

    Args:
        prompts: The held-out prompts, in the order of the responses.
        sft: The SFT policy's responses.
        final: The trained policy's responses.
        kl: KL(final || SFT) in nats per response.

    Returns:
        ``summary`` (``gold/sft``, ``gold/final``, ``reward/sft``, ``reward/final``,
        ``gold/win_rate``, ``gold/tie_rate``, ``gold/win_rate_ties_half``, ``gold/lc_win_rate``,
        ``kl/final``, ``length/*``, ``distinct2/*``) and ``samples`` (prompt, before, after,
        gold of each).
    """
    n = len(prompts)
    wr = win_rate(final.gold, sft.gold)
    lc = length_controlled_win_rate(final.gold, sft.gold, final.lengths, sft.lengths)
    summary = {
        "prompts": n,
        "gold/sft": sum(sft.gold) / n, "gold/final": sum(final.gold) / n,
        "reward/sft": sum(sft.reward) / n, "reward/final": sum(final.reward) / n,
        "gold/win_rate": wr["win"], "gold/tie_rate": wr["tie"],
        "gold/win_rate_ties_half": wr["win"] + wr["tie"] / 2,
        "gold/lc_win_rate": lc["lc_win_rate"],
        "kl/final": kl,
        "length/sft": sum(sft.lengths) / n, "length/final": sum(final.lengths) / n,
        "distinct2/sft": distinct_n(sft.texts, 2), "distinct2/final": distinct_n(final.texts, 2),
    }
    samples = [{"prompt": p, "before": b, "after": a, "gold_before": gb, "gold_after": ga}
               for p, b, a, gb, ga in zip(prompts, sft.texts, final.texts, sft.gold, final.gold)]
    return {"summary": summary, "samples": samples}
