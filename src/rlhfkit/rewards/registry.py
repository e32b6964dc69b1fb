"""From a ``--reward-model`` spec to reward sources: the prefixes, and who reads a folder.

On the command line::

    --reward-model runs/rm/model                          # one source
    --reward-model rel=runs/rm-rel/model,comp=runs/rm-comp/model --rewards rel=0.3,comp=0.5

A source spec is one of

* ``scorer:SPEC``: a gold scorer of :func:`rlhfkit.rewards.gold.get_scorer`, one score per
  response (e.g. ``scorer:non-toxic``);
* ``segment-gain:SPEC``: the same scorer read on the growing prefix of the response, the
  reward after segment j being ``s(y_1..j) - s(y_1..j-1)`` (and ``s(y_1)`` after the first),
  so the rewards of a response sum to its holistic score. With ``non-toxic`` this is the drop
  in toxicity after each sentence, the fine-grained detoxification reward of Wu et al.;
* ``py:``, ``http:``, ``https:``, ``env``: a user's function, a remote scorer, an
  environment's rewards (:mod:`rlhfkit.rewards.plugins`);
* any prefix added with :func:`register_reward_source`, or given to :func:`build_sources` by
  the level above as ``extra`` (:mod:`rlhfkit.train.inputs` adds the built-in tasks' sources,
  such as ``factqa-gold:ASPECT``, and ``task:NAME``);
* anything else: a reward-model folder (``rlhfkit rm``, one score per response; ``rlhfkit
  segment-rm``, a reward after each segment), read by the ``folder`` factory the caller gives.
  Trained models sit a floor above this package, so it never loads one itself:
  :mod:`rlhfkit.train.inputs` hands in :func:`rlhfkit.models.reward.reward_model_source`.

A factory builds a source from its spec and a :class:`~rlhfkit.rewards.sources.SourceContext`
(the tokenizer, device and precision of the run, and the few options a source reads), never
from the RL run itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from rlhfkit.config import parse_weights, split_named
from rlhfkit.rewards.gold import get_scorer
from rlhfkit.rewards.plugins import env_source, http_source, https_source, python_source
from rlhfkit.rewards.sources import (
    RewardSource,
    SourceContext,
    scorer_source,
    segment_gain_source,
)

Factory = Callable[[str, str, SourceContext], RewardSource]
"""``(name, spec after the prefix, context) -> RewardSource``."""


def _scorer(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    return scorer_source(name, get_scorer(spec))


def _segment_gain(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    return segment_gain_source(name, get_scorer(spec), ctx.tokenizer, ctx.segment_unit)


_FACTORIES: dict[str, Factory] = {
    "scorer": _scorer,
    "segment-gain": _segment_gain,
    "py": python_source,
    "http": http_source,
    "https": https_source,
    "env": env_source,
}


def register_reward_source(prefix: str, factory: Factory) -> None:
    """Make ``--reward-model PREFIX:SPEC`` build a source with ``factory(name, SPEC, context)``."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", prefix):
        raise ValueError(f"bad reward-source prefix {prefix!r}: lowercase letters, digits, '-'")
    _FACTORIES[prefix] = factory


def build_source(name: str, spec: str, ctx: SourceContext,
                 extra: Mapping[str, Factory] | None = None,
                 folder: Factory | None = None) -> RewardSource:
    """The source for one spec: a known ``prefix:`` or else a reward-model folder.

    Args:
        name: The source's name.
        spec: Its spec (``scorer:sentiment``, a folder, ...).
        ctx: What the factory may use.
        extra: Prefixes known to this call only (the tasks' sources, given by the caller).
        folder: Builds the source of a reward-model folder (None: folders are refused).
    """
    factories = {**_FACTORIES, **(extra or {})}
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in factories:
        return factories[prefix](name, rest, ctx)
    if not colon and spec in factories and not Path(spec).exists():  # a bare prefix: "env"
        return factories[spec](name, "", ctx)
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"reward source {name!r}: {spec} does not exist; give a reward-model folder "
            f"(from rlhfkit rm or rlhfkit segment-rm) or a prefixed spec "
            f"({', '.join(f'{p}:SPEC' for p in sorted(factories))})")
    if folder is None:
        raise ValueError(f"reward source {name!r}: {spec} is a reward-model folder, and this "
                         f"call reads none (rlhfkit.train.inputs.reward_sources does)")
    return folder(name, spec, ctx)


def build_sources(spec: str, weights: str, ctx: SourceContext,
                  extra: Mapping[str, Factory] | None = None,
                  folder: Factory | None = None) -> list[RewardSource]:
    """All sources of ``--reward-model`` with the weights of ``--rewards``."""
    named = split_named(spec)
    names = [n or "reward" for n, _ in named]
    if weights.strip() and named[0][0] is None:
        raise ValueError("--rewards needs named sources: --reward-model name=SPEC,name=SPEC")
    w = parse_weights(weights, names)
    sources = []
    for name, (_, s) in zip(names, named):
        source = build_source(name, s, ctx, extra, folder)
        source.weight = w[name]
        sources.append(source)
    return sources
