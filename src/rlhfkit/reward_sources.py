"""Where the RL stages' rewards come from: reward models, scorers, rewards after each segment.

A :class:`RewardSource` turns a rollout into :data:`rlhfkit.rewards.DenseRewards`: for each
response, ``(token position, score)`` pairs. A holistic reward model gives one pair per
response, on its last token; a fine-grained source gives one after each segment (Wu et al.
2023). The RL stages combine several sources with weights,

    r_t = sum_k w_k * sum_j 1(t = T_j^k) * R_k(x, y, j)  -  beta * KL_t,

which is :func:`rlhfkit.rewards.token_rewards`. On the command line::

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
* any prefix added with :func:`register_reward_source`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit.rewards import DenseRewards, sequence_rewards

if TYPE_CHECKING:
    from rlhfkit.rollout import Rollout

SourceFn = Callable[["Rollout"], DenseRewards]
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

    @property
    def is_holistic(self) -> bool:
        """True when every response has exactly one reward (the classic RLHF setting)."""
        return all(len(items) <= 1 for source in self.dense for items in source)


def split_named(spec: str) -> list[tuple[str | None, str]]:
    """``"a=X,b=Y"`` -> ``[("a", "X"), ("b", "Y")]``; a spec without names -> ``[(None, spec)]``.

    Commas inside a source spec (``scorer:sentiment:1,toxicity:-1``) stay with it: only a
    comma followed by ``name=`` starts a new source.
    """
    spec = spec.strip()
    if not re.match(r"^[A-Za-z_][\w-]*=", spec):
        return [(None, spec)]
    out = []
    for part in re.split(r",(?=\s*[A-Za-z_][\w-]*=)", spec):
        name, _, value = part.partition("=")
        if not value.strip():
            raise ValueError(f"reward source {name.strip()!r} in {spec!r} has no spec after '='")
        out.append((name.strip(), value.strip()))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a reward source name is used twice in {spec!r}")
    return out


def parse_weights(spec: str, names: Sequence[str]) -> dict[str, float]:
    """``"rel=0.3,fact=0.5"`` -> weights for ``names`` (1.0 for a name not given).

    Raises:
        ValueError: A malformed term, a weight that is not a number, or an unknown name.
    """
    weights = dict.fromkeys(names, 1.0)
    if not spec.strip():
        return weights
    for term in spec.split(","):
        name, eq, value = term.partition("=")
        name = name.strip()
        if not eq:
            raise ValueError(f"--rewards: expected name=weight, got {term.strip()!r}")
        if name not in weights:
            raise ValueError(f"--rewards: no reward source named {name!r}; the sources are "
                             f"{', '.join(names)} (name them in --reward-model name=SPEC,...)")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--rewards: the weight of {name!r} must be a number, "
                             f"got {value.strip()!r}") from None
    return weights


# ---------------------------------------------------------------------------------------
# Built-in sources
# ---------------------------------------------------------------------------------------

Factory = Callable[[str, str, Any], RewardSource]
"""``(name, spec after the prefix, run) -> RewardSource``; ``run`` is the :class:`RLRun`."""

_FACTORIES: dict[str, Factory] = {}


def register_reward_source(prefix: str, factory: Factory) -> None:
    """Make ``--reward-model PREFIX:SPEC`` build a source with ``factory(name, SPEC, run)``."""
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


def _scorer(name: str, spec: str, run: Any) -> RewardSource:
    from rlhfkit.feedback.gold import get_scorer

    return scorer_source(name, get_scorer(spec))


def segment_gains(prefix_scores: Sequence[float]) -> list[float]:
    """Rewards after each segment from the scores of the growing prefixes.

    ``[s(y_1), s(y_1..2) - s(y_1), s(y_1..3) - s(y_1..2), ...]``; they sum to the last.
    """
    return [s - (prefix_scores[j - 1] if j else 0.0) for j, s in enumerate(prefix_scores)]


def segment_gain_source(name: str, scorer: Callable[[list[Any], list[str]], Sequence[float]],
                        tokenizer: Any, unit: str = "sentence") -> RewardSource:
    """A dense source: a scorer read after each segment, rewarding its change (see module)."""
    from rlhfkit.segments import response_segments

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


def _segment_gain(name: str, spec: str, run: Any) -> RewardSource:
    from rlhfkit.feedback.gold import get_scorer

    return segment_gain_source(name, get_scorer(spec), run.tokenizer, run.cfg.segment_unit)


def reward_model_source(name: str, path: str, run: Any) -> RewardSource:
    """A source from a reward-model folder, holistic or per segment.

    A holistic folder (``rlhfkit rm``) gives one score per response, normalised by its saved
    stats; a segment folder (``rlhfkit segment-rm``, marked so in its config) a reward after
    each segment.
    """
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.models.segment_reward import is_segment_rm, segment_rm_source
    from rlhfkit.train.rl import rm_scores

    if not Path(path).exists():
        raise FileNotFoundError(
            f"reward source {name!r}: {path} does not exist; give a reward-model folder "
            f"(from rlhfkit rm or rlhfkit segment-rm), scorer:SPEC or segment-gain:SPEC"
            + (f", or a prefix registered with register_reward_source ({', '.join(_FACTORIES)})"
               if _FACTORIES else ""))
    if is_segment_rm(path):
        return segment_rm_source(name, path, run)
    rm = RewardModel.from_pretrained(path, pad_token_id=run.tokenizer.pad_token_id)
    rm.eval().requires_grad_(False).to(run.device)

    def fn(rollout: Rollout) -> DenseRewards:
        scores = rm_scores(rm, rollout, run.tokenizer.pad_token_id, run._autocast)
        return sequence_rewards(scores.cpu(), rollout.response_mask.cpu())

    stats = rm.reward_stats if run.cfg.normalize_reward else None
    return RewardSource(name, fn, stats=stats, model=rm, path=path)


register_reward_source("scorer", _scorer)
register_reward_source("segment-gain", _segment_gain)


def build_source(name: str, spec: str, run: Any) -> RewardSource:
    """The source for one spec: a registered ``prefix:`` or else a reward-model folder."""
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in _FACTORIES:
        return _FACTORIES[prefix](name, rest, run)
    return reward_model_source(name, spec, run)


def build_sources(spec: str, weights: str, run: Any) -> list[RewardSource]:
    """All sources of ``--reward-model`` with the weights of ``--rewards``."""
    named = split_named(spec)
    names = [n or "reward" for n, _ in named]
    if weights.strip() and named[0][0] is None:
        raise ValueError("--rewards needs named sources: --reward-model name=SPEC,name=SPEC")
    w = parse_weights(weights, names)
    sources = []
    for name, (_, s) in zip(names, named):
        source = build_source(name, s, run)
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
