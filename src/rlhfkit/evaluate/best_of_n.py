"""Best-of-N from scored samples: the pick per prompt, and what the pick buys.

N responses per prompt, each with the reward model's score: :func:`pick_best` keeps the
highest-scoring one (ties: the first), and :func:`best_of_n_summary` compares it with the first
sample, which is plain sampling: the reward of both and, with a gold scorer, their gold reward
and how often the pick beats the first (Rafailov et al. 2023, sec. 6; Touvron et al. 2023,
rejection sampling). The sampling is :func:`rlhfkit.train.best_of_n.best_of_n`; its KL to the
sampling policy is :func:`rlhfkit.evaluate.metrics.best_of_n_kl`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def pick_best(prompts: Sequence[Any], texts: Sequence[str], scores: Sequence[float], n: int
              ) -> list[dict[str, Any]]:
    """The best of each prompt's ``n`` responses (``texts`` and ``scores``: n per prompt, in order).

    Returns:
        One dict per prompt: ``prompt``, ``best`` (text), ``best_score``, ``first`` (the first
        sample) and ``scores`` (all n).
    """
    out = []
    for j, prompt in enumerate(prompts):
        group = list(scores[j * n:(j + 1) * n])
        best = max(range(n), key=lambda i: group[i])
        out.append({"prompt": prompt, "best": texts[j * n + best], "best_score": group[best],
                    "first": texts[j * n], "scores": group})
    return out


def best_of_n_summary(picked: Sequence[dict[str, Any]], n: int,
                      gold: Callable[[list[Any], list[str]], Sequence[float]] | None = None
                      ) -> dict[str, float]:
    """The mean reward of the picks and of the first samples, and their gold reward.

    Returns:
        ``n``, ``prompts``, ``reward/best``, ``reward/first`` and, with ``gold``, ``gold/best``,
        ``gold/first`` and ``gold/win_rate`` (the share of prompts where the pick's gold reward
        is higher than the first sample's).
    """
    summary: dict[str, float] = {
        "n": n, "prompts": len(picked),
        "reward/best": sum(r["best_score"] for r in picked) / len(picked),
        "reward/first": sum(r["scores"][0] for r in picked) / len(picked),
    }
    if gold is not None:
        prompts = [r["prompt"] for r in picked]
        g_best = gold(prompts, [r["best"] for r in picked])
        g_first = gold(prompts, [r["first"] for r in picked])
        summary["gold/best"] = sum(g_best) / len(g_best)
        summary["gold/first"] = sum(g_first) / len(g_first)
        summary["gold/win_rate"] = sum(b > f for b, f in zip(g_best, g_first)) / len(g_best)
    return summary
