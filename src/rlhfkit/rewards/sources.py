"""What a reward source is, the sources built on a scorer, and how a rollout's sources combine.

A :class:`RewardSource` turns a rollout into :data:`rlhfkit.rewards.shaping.DenseRewards`: for
each response, ``(token position, score)`` pairs. A holistic reward model gives one pair per
response, on its last token; a fine-grained source gives one after each segment (Wu et al.
2023). The RL stages combine several sources with weights,

    r_t = sum_k w_k * sum_j 1(t = T_j^k) * R_k(x, y, j)  -  beta * KL_t,

which is :func:`rlhfkit.rewards.shaping.token_rewards`; :func:`combine` gives each source's
normalised, clipped scores and their weighted sum.

The sources defined here need no model: :func:`scorer_source` (one score per response from a
scorer such as the gold scorers of :mod:`rlhfkit.rewards.gold`) and :func:`segment_gain_source`
(the same scorer read after each segment). Sources from outside the package are in
:mod:`rlhfkit.rewards.plugins`, the ones that read a trained reward model next to the model
(:func:`rlhfkit.models.reward.reward_model_source`), and :mod:`rlhfkit.rewards.registry` builds
any of them from a ``--reward-model`` spec.

A rollout here is anything with the attributes of :class:`rlhfkit.rollout.Rollout` that a
source reads (``prompts``, ``texts``, ``response_ids``, ``response_mask``, ``input_ids``,
``attention_mask``, ``position_ids``, ``prompt_width``, ``ended``, ``select``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.rewards.shaping import DenseRewards, sequence_rewards
from rlhfkit.segments import response_segments

Rollout = Any
"""A sampled batch (:class:`rlhfkit.rollout.Rollout`); see the module docstring."""

SourceFn = Callable[[Rollout], DenseRewards]
"""Raw scores of a rollout's responses at token positions (before normalisation)."""


@dataclass
class RewardSource:
    """One reward term.

    Args:
        name: Used in ``--rewards`` weights and in the ``reward/<name>`` metric.
        fn: Rollout -> raw :data:`DenseRewards`.
        weight: ``w_k``.
        stats: ``(mean, std)`` to standardise each score with (a reward model's saved stats),
            or None.
        model: The model behind the source, if any.
        path: The reward-model folder it was loaded from, if any (``--critic rm`` starts the
            PPO critic from the first such folder).
    """

    name: str
    fn: SourceFn
    weight: float = 1.0
    stats: tuple[float, float] | None = None
    model: Any = field(default=None, repr=False)
    path: str | None = None


@dataclass
class RewardTerms:
    """The rewards of one rollout, per source and summed.

    ``raw`` and ``scores`` are per-response sums over segments, weighted over sources;
    ``scores`` is what the policy optimises (normalised, clipped, with the missing-EOS penalty),
    ``raw`` is for logging. ``dense`` holds each source's normalised and clipped
    (unweighted) scores at their token positions, for :func:`rlhfkit.rewards.token_rewards`.
    """

    raw: torch.Tensor
    scores: torch.Tensor
    dense: list[DenseRewards]
    weights: list[float]
    by_source: dict[str, torch.Tensor]
    """(B,) raw per-response sum of each source (only when there are several)."""

    @classmethod
    def holistic(cls, raw: torch.Tensor, scores: torch.Tensor,
                 response_mask: torch.Tensor) -> RewardTerms:
        """One score per response (already normalised), on its last token."""
        return cls(raw, scores, [sequence_rewards(scores.cpu(), response_mask.cpu())], [1.0], {})

    def select(self, rows: Sequence[int]) -> RewardTerms:
        """The terms of the responses in ``rows`` (as :meth:`rlhfkit.rollout.Rollout.select`)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return RewardTerms(self.raw[idx.to(self.raw.device)],
                           self.scores[idx.to(self.scores.device)],
                           [[source[i] for i in idx.tolist()] for source in self.dense],
                           list(self.weights),
                           {k: v[idx.to(v.device)] for k, v in self.by_source.items()})

    @property
    def is_holistic(self) -> bool:
        """True when every response has exactly one reward (the classic RLHF setting)."""
        return all(len(items) <= 1 for source in self.dense for items in source)


@dataclass
class SourceContext:
    """What a source factory may use: the run's tokenizer, device and precision, two options.

    Args:
        tokenizer: The policy's tokenizer (a reward model reads the ids the policy sampled).
        device: Where reward models run.
        autocast: A function returning the run's autocast context (None = full precision).
        segment_unit: Segments of a response for per-segment rewards (``--segment-unit``).
        normalize_reward: Standardise reward-model scores with their saved mean/std.
        references: ``references(prompts) -> one reference answer each`` (None where a prompt
            has none), for the sources that check answers (``py:``, ``http:``); given by the
            level above from the task or the data.
    """

    tokenizer: Any
    device: torch.device | str = "cpu"
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None
    segment_unit: str = "sentence"
    normalize_reward: bool = True
    references: Callable[[list[Any]], list[Any]] | None = None


def scorer_source(name: str, scorer: Callable[[list[Any], list[str]], Sequence[float]]
                  ) -> RewardSource:
    """A holistic source from ``scorer(prompts, responses) -> one score each``."""

    def fn(rollout: Rollout) -> DenseRewards:
        scores = torch.as_tensor(list(scorer(rollout.prompts, rollout.texts)),
                                 dtype=torch.float32)
        return sequence_rewards(scores, rollout.response_mask.cpu())

    return RewardSource(name, fn)


def segment_gains(prefix_scores: Sequence[float]) -> list[float]:
    """Rewards after each segment from the scores of the growing prefixes.

    ``[s(y_1), s(y_1..2) - s(y_1), s(y_1..3) - s(y_1..2), ...]``; they sum to the last.
    """
    return [s - (prefix_scores[j - 1] if j else 0.0) for j, s in enumerate(prefix_scores)]


def segment_gain_source(name: str, scorer: Callable[[list[Any], list[str]], Sequence[float]],
                        tokenizer: Any, unit: str = "sentence") -> RewardSource:
    """A dense source: a scorer read after each segment, rewarding its change (see module)."""

    def fn(rollout: Rollout) -> DenseRewards:
        segs = response_segments(tokenizer, rollout.response_ids, rollout.texts, unit)
        prompts, texts = [], []
        for prompt, text, items in zip(rollout.prompts, rollout.texts, segs):
            for (_, end), _tok in items:
                prompts.append(prompt)
                texts.append(text[:end])
        flat = list(scorer(prompts, texts))
        out, i = [], 0
        for items in segs:
            gains = segment_gains(flat[i:i + len(items)])
            i += len(items)
            out.append([(tok, g) for ((_, _), tok), g in zip(items, gains)])
        return out

    return RewardSource(name, fn)


def combine(sources: Sequence[RewardSource], rollout: Rollout, clip: float | None = None,
            missing_eos_penalty: float = 0.0) -> RewardTerms:
    """Evaluate every source on a rollout: normalise, clip, weight, sum (see :class:`RewardTerms`).

    Args:
        sources: The reward sources.
        rollout: Sampled responses.
        clip: Clip each normalised score to ``[-clip, clip]`` (None = off).
        missing_eos_penalty: Added to ``scores`` of a response that never ended.
    """
    n = len(rollout)
    raw = torch.zeros(n)
    scores = torch.zeros(n)
    dense, weights, by_source = [], [], {}
    for source in sources:
        items = source.fn(rollout)
        if len(items) != n:
            raise ValueError(f"reward source {source.name!r} returned {len(items)} lists for "
                             f"{n} responses")
        mean, std = source.stats if source.stats else (0.0, 1.0)
        std = std if std > 0 else 1.0
        normalised = []
        for row in items:
            out = []
            for pos, s in row:
                v = (float(s) - mean) / std
                if clip:
                    v = min(max(v, -clip), clip)
                out.append((int(pos), v))
            normalised.append(out)
        src_raw = torch.tensor([sum(float(s) for _, s in row) for row in items])
        src_norm = torch.tensor([sum(v for _, v in row) for row in normalised])
        raw += source.weight * src_raw
        scores += source.weight * src_norm
        by_source[source.name] = src_raw
        dense.append(normalised)
        weights.append(source.weight)
    if missing_eos_penalty:
        scores = scores + (~rollout.ended.cpu()).float() * missing_eos_penalty
    device = rollout.response_mask.device
    return RewardTerms(raw.to(device), scores.to(device), dense, weights,
                       by_source if len(sources) > 1 else {})
