"""Gold scorers: fixed judges that no one on this project trained.

A gold scorer stands in for the true preference of people in demos, tests and benchmarks.
It is kept apart from anything a policy optimizes directly: a policy trains against a
*learned* reward model (fit on labels a simulated labeler drew from a gold scorer), and the
gold scorer then measures how much of the real goal the policy reached, reward hacking
included (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", Sec. 2).

Every scorer has the same interface::

    scorer(prompts: list[str], responses: list[str]) -> list[float]
    scorer.name -> str

By default only the response is scored; pass ``include_prompt=True`` to score
``prompt + " " + response`` (a chat prompt is flattened to its message contents).

Scorers here:

- :class:`SentimentScorer`: VADER compound polarity in [-1, 1] (Hutto & Gilbert 2014).
- :class:`ToxicityScorer`: probability of offensive language in [0, 1] from
  ``alt-profanity-check`` (a linear SVM on bag-of-words); ``invert=True`` gives
  ``1 - p`` ("non-toxic").
- :class:`LengthScorer`: 0 at a target length, falling linearly on either side.
- :class:`KeywordScorer`: a bonus per wanted word, a penalty per unwanted word.
- :class:`WeightedScorer`: a weighted sum of other scorers.

:func:`get_scorer` builds any of them from a short string, e.g. ``"sentiment"`` or
``"sentiment:1,toxicity:-0.5"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "GoldScorer",
    "KeywordScorer",
    "LengthScorer",
    "Scorer",
    "SentimentScorer",
    "ToxicityScorer",
    "WeightedScorer",
    "get_scorer",
    "list_scorers",
    "prompt_text",
    "register_scorer",
]


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores a batch of (prompt, response) pairs, higher is better."""

    name: str

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Return one float per pair."""
        ...


def prompt_text(prompt: str | Sequence[dict[str, str]] | None) -> str:
    """Flatten a prompt to plain text.

    Args:
        prompt: A string, a list of chat messages ``{"role", "content"}``, or None.

    Returns:
        The string itself, or the message contents joined by newlines ("" for None).
    """
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


class GoldScorer:
    """Shared plumbing: check the batch, pick the text to score, call :meth:`score_texts`.

    Subclasses implement ``score_texts(texts) -> list[float]`` and set ``name``.

    Args:
        include_prompt: Score ``prompt + " " + response`` instead of the response alone.
    """

    name: str = "gold"

    def __init__(self, include_prompt: bool = False) -> None:
        self.include_prompt = include_prompt

    def texts(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[str]:
        """The strings this scorer reads for a batch."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"{self.name}: got {len(prompts)} prompts but {len(responses)} responses"
            )
        if not self.include_prompt:
            return [str(r) for r in responses]
        return [f"{prompt_text(p)} {r}".strip() for p, r in zip(prompts, responses)]

    def score_texts(self, texts: list[str]) -> list[float]:
        """Score plain strings; implemented by each scorer."""
        raise NotImplementedError

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Score a batch of (prompt, response) pairs.

        Args:
            prompts: One prompt per response (strings or chat message lists).
            responses: The responses to judge.

        Returns:
            One float per pair, higher is better.
        """
        texts = self.texts(prompts, responses)
        if not texts:
            return []
        return [float(s) for s in self.score_texts(texts)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SentimentScorer(GoldScorer):
    """VADER compound sentiment of the text, in [-1, 1] (positive is higher).

    VADER is a lexicon and a handful of rules (negation, "but", intensifiers, punctuation);
    the compound score is the normalised sum of word valences, ``x / sqrt(x^2 + 15)``
    (Hutto & Gilbert 2014, ICWSM, Sec. 3). It runs offline from files shipped in the
    ``vaderSentiment`` package.

    Args:
        include_prompt: Score ``prompt + " " + response`` instead of the response alone.
    """

    name = "sentiment"

    def __init__(self, include_prompt: bool = False) -> None:
        super().__init__(include_prompt)
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:  # pragma: no cover - a core dependency
            raise ImportError(
                "SentimentScorer needs the `vaderSentiment` package: pip install vaderSentiment"
            ) from e
        self._analyzer = SentimentIntensityAnalyzer()

    def score_texts(self, texts: list[str]) -> list[float]:
        """VADER compound polarity of each text."""
        return [self._analyzer.polarity_scores(t)["compound"] for t in texts]


class ToxicityScorer(GoldScorer):
    """Probability that the text is offensive, from ``alt-profanity-check``.

    The model is a linear SVM over word n-grams, calibrated to a probability and trained on
    offensive-language data; it catches profanity and slurs, not subtle harm. Use it as a
    fast, fixed proxy for toxicity in demos and benchmarks.

    Args:
        invert: Return ``1 - p`` so that higher is better (registered as "non-toxic").
        include_prompt: Score ``prompt + " " + response`` instead of the response alone.
    """

    def __init__(self, invert: bool = False, include_prompt: bool = False) -> None:
        super().__init__(include_prompt)
        self.invert = invert
        self.name = "non-toxic" if invert else "toxicity"
        try:
            from profanity_check import predict_prob
        except ImportError as e:  # pragma: no cover - a core dependency
            raise ImportError(
                "ToxicityScorer needs the `alt-profanity-check` package: "
                "pip install alt-profanity-check"
            ) from e
        self._predict_prob = predict_prob

    def score_texts(self, texts: list[str]) -> list[float]:
        """Offensive-language probability (or its complement) of each text."""
        probs = [float(p) for p in self._predict_prob(texts)]
        return [1.0 - p for p in probs] if self.invert else probs


class LengthScorer(GoldScorer):
    """Prefer responses of a target length.

    ``score = -|n - target| / scale`` where ``n`` counts words (whitespace-separated) or
    characters; 0 at the target, -1 at ``scale`` units away. With ``scale=None`` the scale is
    the target itself, so an empty response scores -1.

    Args:
        target: The preferred length.
        unit: "words" or "chars".
        scale: Units of distance that cost 1 point (default: ``target``).
        include_prompt: Count the prompt too.
    """

    name = "length"

    def __init__(
        self,
        target: int = 30,
        unit: str = "words",
        scale: float | None = None,
        include_prompt: bool = False,
    ) -> None:
        super().__init__(include_prompt)
        if unit not in ("words", "chars"):
            raise ValueError(f"LengthScorer: unit must be 'words' or 'chars', got {unit!r}")
        if target <= 0 and scale is None:
            raise ValueError("LengthScorer: give a positive target or an explicit scale")
        self.target = target
        self.unit = unit
        self.scale = float(scale if scale is not None else target)
        if self.scale <= 0:
            raise ValueError(f"LengthScorer: scale must be positive, got {self.scale}")

    def length(self, text: str) -> int:
        """Length of ``text`` in this scorer's unit."""
        return len(text.split()) if self.unit == "words" else len(text)

    def score_texts(self, texts: list[str]) -> list[float]:
        """Negative scaled distance from the target length."""
        return [-abs(self.length(t) - self.target) / self.scale for t in texts]


DEFAULT_BONUS_WORDS = ("wonderful", "delightful", "brilliant", "moving", "beautiful")
DEFAULT_PENALTY_WORDS = ("boring", "awful", "terrible", "waste", "dull")


class KeywordScorer(GoldScorer):
    """A bonus for each wanted word or phrase, a penalty for each unwanted one.

    ``score = bonus_weight * (#bonus hits) - penalty_weight * (#penalty hits)``. Words match
    on word boundaries, case-insensitively by default. With ``unique=True`` (default) each
    keyword counts at most once per text, so repeating a word earns nothing extra; with
    ``unique=False`` every occurrence counts (an easy target for reward hacking, which is
    sometimes what a demo wants to show).

    Args:
        bonus: Words or phrases that earn ``bonus_weight`` each.
        penalty: Words or phrases that cost ``penalty_weight`` each.
        bonus_weight: Points per bonus hit.
        penalty_weight: Points per penalty hit.
        unique: Count each keyword at most once per text.
        case_sensitive: Match case exactly.
        include_prompt: Search the prompt too.
    """

    name = "keyword"

    def __init__(
        self,
        bonus: Iterable[str] = DEFAULT_BONUS_WORDS,
        penalty: Iterable[str] = DEFAULT_PENALTY_WORDS,
        bonus_weight: float = 1.0,
        penalty_weight: float = 1.0,
        unique: bool = True,
        case_sensitive: bool = False,
        include_prompt: bool = False,
    ) -> None:
        super().__init__(include_prompt)
        self.bonus = [w for w in bonus if w]
        self.penalty = [w for w in penalty if w]
        self.bonus_weight = bonus_weight
        self.penalty_weight = penalty_weight
        self.unique = unique
        flags = 0 if case_sensitive else re.IGNORECASE
        self._bonus_res = [self._compile(w, flags) for w in self.bonus]
        self._penalty_res = [self._compile(w, flags) for w in self.penalty]

    @staticmethod
    def _compile(word: str, flags: int) -> re.Pattern[str]:
        # \b only works next to word characters; a keyword like "!!" matches anywhere.
        left = r"\b" if re.match(r"\w", word) else ""
        right = r"\b" if re.search(r"\w$", word) else ""
        return re.compile(left + re.escape(word) + right, flags)

    def _hits(self, patterns: list[re.Pattern[str]], text: str) -> int:
        if self.unique:
            return sum(1 for p in patterns if p.search(text))
        return sum(len(p.findall(text)) for p in patterns)

    def score_texts(self, texts: list[str]) -> list[float]:
        """Weighted bonus hits minus weighted penalty hits."""
        return [
            self.bonus_weight * self._hits(self._bonus_res, t)
            - self.penalty_weight * self._hits(self._penalty_res, t)
            for t in texts
        ]


class WeightedScorer:
    """A weighted sum of scorers: ``score = sum_i w_i * scorer_i(prompt, response)``.

    Args:
        components: ``(scorer, weight)`` pairs; a scorer may be a registry name.
        name: Name of the sum (default: e.g. ``"sentiment:1,toxicity:-0.5"``).

    Example:
        >>> polite_positive = WeightedScorer([("sentiment", 1.0), ("toxicity", -2.0)])
    """

    def __init__(
        self,
        components: Iterable[tuple[Scorer | str, float]],
        name: str | None = None,
    ) -> None:
        self.components: list[tuple[Scorer, float]] = [
            (get_scorer(s) if isinstance(s, str) else s, float(w)) for s, w in components
        ]
        if not self.components:
            raise ValueError("WeightedScorer needs at least one (scorer, weight) pair")
        self.name = name or ",".join(f"{s.name}:{w:g}" for s, w in self.components)

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Weighted sum of the component scores for each pair."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"{self.name}: got {len(prompts)} prompts but {len(responses)} responses"
            )
        total = [0.0] * len(responses)
        for scorer, weight in self.components:
            for i, s in enumerate(scorer(prompts, responses)):
                total[i] += weight * s
        return total

    def __repr__(self) -> str:
        return f"WeightedScorer(name={self.name!r})"


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Scorer]] = {
    "sentiment": SentimentScorer,
    "toxicity": ToxicityScorer,
    "non-toxic": lambda **kw: ToxicityScorer(invert=True, **kw),
    "length": LengthScorer,
    "keyword": KeywordScorer,
}


def register_scorer(name: str, factory: Callable[..., Scorer]) -> None:
    """Make ``get_scorer(name, **kwargs)`` call ``factory(**kwargs)``.

    Args:
        name: Registry name (lowercase, no ``:`` or ``,``).
        factory: A class or function returning a scorer.
    """
    if not name or any(c in name for c in ":,"):
        raise ValueError(f"bad scorer name {name!r}: use letters, digits, '-' or '_'")
    _REGISTRY[name] = factory


def list_scorers() -> list[str]:
    """Names :func:`get_scorer` accepts."""
    return sorted(_REGISTRY)


class UnknownScorerError(KeyError):
    """A scorer name that is not registered; the message lists the known ones."""

    user_facing = True

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def get_scorer(spec: str | Scorer, **kwargs: Any) -> Scorer:
    """Build a gold scorer from its name, or a weighted sum from a short spec.

    Args:
        spec: A registry name (``"sentiment"``, ``"toxicity"``, ``"non-toxic"``,
            ``"length"``, ``"keyword"``, or one added with :func:`register_scorer`); a
            weighted sum ``"name:weight,name:weight"`` such as ``"sentiment:1,toxicity:-0.5"``;
            or a scorer object, returned as is.
        **kwargs: Passed to the scorer's constructor (single names only).

    Returns:
        The scorer.

    Raises:
        UnknownScorerError: An unknown name, listing the known ones (a ``KeyError``).
    """
    if not isinstance(spec, str):
        return spec
    spec = spec.strip()
    if "," in spec or ":" in spec:
        if kwargs:
            raise ValueError("get_scorer: keyword arguments apply to a single scorer name only")
        parts = []
        for term in spec.split(","):
            name, _, weight = term.partition(":")
            try:
                parts.append((get_scorer(name.strip()), float(weight) if weight else 1.0))
            except ValueError as e:
                raise ValueError(f"get_scorer: bad weight in {term!r} of {spec!r}") from e
        return WeightedScorer(parts, name=spec)
    key = spec.lower()
    if key not in _REGISTRY:
        raise UnknownScorerError(f"unknown gold scorer {spec!r}; known: "
                                 f"{', '.join(list_scorers())}")
    return _REGISTRY[key](**kwargs)
