"""Where the RL stages' rewards come from: reward models, scorers, rewards after each segment.

A :class:`RewardSource` turns a rollout into :data:`rlhfkit.rewards.shaping.DenseRewards`: for
each response, ``(token position, score)`` pairs. A holistic reward model gives one pair per
response, on its last token; a fine-grained source gives one after each segment (Wu et al.
2023). The RL stages combine several sources with weights,

    r_t = sum_k w_k * sum_j 1(t = T_j^k) * R_k(x, y, j)  -  beta * KL_t,

which is :func:`rlhfkit.rewards.shaping.token_rewards`. On the command line::

    --reward-model runs/rm/model                          # one source
    --reward-model rel=runs/rm-rel/model,comp=runs/rm-comp/model --rewards rel=0.3,comp=0.5

A source spec is one of

* a reward-model folder (``rlhfkit rm``): one score per response;
* a segment reward-model folder (``rlhfkit segment-rm``): a reward after each segment, +-1 as
  its classifier finds no error / an error (:mod:`rlhfkit.models.segment_reward`);
* ``scorer:SPEC``: a programmatic scorer from :func:`rlhfkit.feedback.gold.get_scorer`, one
  score per response (e.g. ``scorer:non-toxic``);
* ``segment-gain:SPEC``: the same scorer read on the growing prefix of the response, the
  reward after segment j being ``s(y_1..j) - s(y_1..j-1)`` (and ``s(y_1)`` after the first),
  so the rewards of a response sum to its holistic score. With ``non-toxic`` this is the drop
  in toxicity after each sentence, the fine-grained detoxification reward of Wu et al.;
* any prefix added with :func:`register_reward_source`, or given to :func:`build_sources` by
  the level above (``rlhfkit.train.inputs`` adds the built-in tasks' sources, such as
  ``factqa-gold:ASPECT``).

A factory builds a source from its spec and a :class:`SourceContext` (the tokenizer, device and
precision of the run, and the few options a source reads), never from the RL run itself.
A rollout here is anything with the attributes of :class:`rlhfkit.rollout.Rollout` that a
source reads (``prompts``, ``texts``, ``response_ids``, ``response_mask``, ``input_ids``,
``attention_mask``, ``position_ids``, ``prompt_width``, ``ended``, ``select``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import parse_weights, split_named
from rlhfkit.feedback.gold import get_scorer
from rlhfkit.models.reward import RewardModel
from rlhfkit.models.segment_reward import SegmentRewardModel, is_segment_rm, segment_rewards
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


# ---------------------------------------------------------------------------------------
# Built-in sources
# ---------------------------------------------------------------------------------------


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


Factory = Callable[[str, str, SourceContext], RewardSource]
"""``(name, spec after the prefix, context) -> RewardSource``."""

_FACTORIES: dict[str, Factory] = {}


def register_reward_source(prefix: str, factory: Factory) -> None:
    """Make ``--reward-model PREFIX:SPEC`` build a source with ``factory(name, SPEC, context)``."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", prefix):
        raise ValueError(f"bad reward-source prefix {prefix!r}: lowercase letters, digits, '-'")
    _FACTORIES[prefix] = factory


def scorer_source(name: str, scorer: Callable[[list[Any], list[str]], Sequence[float]]
                  ) -> RewardSource:
    """A holistic source from ``scorer(prompts, responses) -> one score each``."""

    def fn(rollout: Rollout) -> DenseRewards:
        scores = torch.as_tensor(list(scorer(rollout.prompts, rollout.texts)),
                                 dtype=torch.float32)
        return sequence_rewards(scores, rollout.response_mask.cpu())

    return RewardSource(name, fn)


def _scorer(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    return scorer_source(name, get_scorer(spec))


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


def _segment_gain(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    return segment_gain_source(name, get_scorer(spec), ctx.tokenizer, ctx.segment_unit)


def _autocast(ctx: SourceContext) -> contextlib.AbstractContextManager:
    return ctx.autocast() if ctx.autocast else contextlib.nullcontext()


@torch.no_grad()
def rm_scores(rm: RewardModel, rollout: Rollout, autocast: Callable | None = None,
              batch_size: int = 16) -> torch.Tensor:
    """(B,) reward-model scores of prompt + response, read at the last real token.

    The RM sees exactly the ids the policy sampled (prompt from the chat template, response up
    to and including its end-of-turn token), i.e. what it was trained on.
    """
    out = []
    for i in range(0, len(rollout), batch_size):
        chunk = rollout.select(range(i, min(i + batch_size, len(rollout))))
        with autocast() if autocast else contextlib.nullcontext():
            out.append(rm(chunk.input_ids, chunk.attention_mask).float())
    return torch.cat(out)


@torch.no_grad()
def rollout_segment_logits(model: SegmentRewardModel, tokenizer: Any, rollout: Rollout,
                           unit: str, autocast: Callable | None = None, batch_size: int = 16
                           ) -> list[list[tuple[int, float]]]:
    """``(segment-end token index, error logit)`` for every segment of every response.

    The model reads exactly the ids the policy sampled (prompt from the chat template, response
    up to its end-of-turn token), with the rollout's position ids for the left padding.
    """
    segs = response_segments(tokenizer, rollout.response_ids, rollout.texts, unit)
    width = rollout.prompt_width
    device = rollout.input_ids.device
    out: list[list[tuple[int, float]]] = []
    for start in range(0, len(rollout), batch_size):
        chunk = range(start, min(start + batch_size, len(rollout)))
        rows = [b - start for b in chunk for _ in segs[b]]
        toks = [tok for b in chunk for _, tok in segs[b]]
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(rollout.input_ids[start:chunk.stop],
                           rollout.attention_mask[start:chunk.stop],
                           torch.tensor(rows, device=device),
                           torch.tensor([width + t for t in toks], device=device),
                           rollout.position_ids[start:chunk.stop]).float().cpu().tolist()
        i = 0
        for b in chunk:
            out.append([(tok, logits[i + j]) for j, (_, tok) in enumerate(segs[b])])
            i += len(segs[b])
    return out


def segment_rm_source(name: str, path: str, ctx: SourceContext) -> RewardSource:
    """A per-segment reward source from a segment reward-model folder.

    Each segment's reward (``sign``/``prob``/``logodds`` of its error logit, as saved in the
    folder) goes on its last token. The rewards are not standardised: they are already on a
    fixed scale, and ``--rewards`` weighs them. The source has no ``path``, so ``--critic rm``
    starts the critic from a holistic reward model instead.
    """
    model = SegmentRewardModel.from_pretrained(path, pad_token_id=ctx.tokenizer.pad_token_id)
    model.eval().requires_grad_(False).to(ctx.device)
    unit, kind = model.unit, model.reward_kind

    def fn(rollout: Rollout) -> DenseRewards:
        per_response = rollout_segment_logits(model, ctx.tokenizer, rollout, unit, ctx.autocast)
        out = []
        for items in per_response:
            rewards = segment_rewards(torch.tensor([z for _, z in items]), kind).tolist()
            out.append([(tok, r) for (tok, _), r in zip(items, rewards)])
        return out

    return RewardSource(name, fn, model=model)


def reward_model_source(name: str, path: str, ctx: SourceContext,
                        prefixes: Sequence[str] = ()) -> RewardSource:
    """A source from a reward-model folder, holistic or per segment.

    A holistic folder (``rlhfkit rm``) gives one score per response, normalised by its saved
    stats; a segment folder (``rlhfkit segment-rm``, marked so in its config) a reward after
    each segment.
    """
    if not Path(path).exists():
        raise FileNotFoundError(
            f"reward source {name!r}: {path} does not exist; give a reward-model folder "
            f"(from rlhfkit rm or rlhfkit segment-rm) or a prefixed spec "
            f"({', '.join(f'{p}:SPEC' for p in prefixes)})")
    if is_segment_rm(path):
        return segment_rm_source(name, path, ctx)
    rm = RewardModel.from_pretrained(path, pad_token_id=ctx.tokenizer.pad_token_id)
    rm.eval().requires_grad_(False).to(ctx.device)

    def fn(rollout: Rollout) -> DenseRewards:
        scores = rm_scores(rm, rollout, ctx.autocast)
        return sequence_rewards(scores.cpu(), rollout.response_mask.cpu())

    stats = rm.reward_stats if ctx.normalize_reward else None
    return RewardSource(name, fn, stats=stats, model=rm, path=path)


register_reward_source("scorer", _scorer)
register_reward_source("segment-gain", _segment_gain)


def build_source(name: str, spec: str, ctx: SourceContext,
                 extra: Mapping[str, Factory] | None = None) -> RewardSource:
    """The source for one spec: a known ``prefix:`` or else a reward-model folder.

    Args:
        name: The source's name.
        spec: Its spec (``scorer:sentiment``, a folder, ...).
        ctx: What the factory may use.
        extra: Prefixes known to this call only (the tasks' sources, given by the caller).
    """
    factories = {**_FACTORIES, **(extra or {})}
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in factories:
        return factories[prefix](name, rest, ctx)
    if not colon and spec in factories and not Path(spec).exists():  # a bare prefix: "env"
        return factories[spec](name, "", ctx)
    return reward_model_source(name, spec, ctx, sorted(factories))


def build_sources(spec: str, weights: str, ctx: SourceContext,
                  extra: Mapping[str, Factory] | None = None) -> list[RewardSource]:
    """All sources of ``--reward-model`` with the weights of ``--rewards``."""
    named = split_named(spec)
    names = [n or "reward" for n, _ in named]
    if weights.strip() and named[0][0] is None:
        raise ValueError("--rewards needs named sources: --reward-model name=SPEC,name=SPEC")
    w = parse_weights(weights, names)
    sources = []
    for name, (_, s) in zip(names, named):
        source = build_source(name, s, ctx, extra)
        source.weight = w[name]
        sources.append(source)
    return sources


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
