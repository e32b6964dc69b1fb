"""The "factqa" task: short answers about small fictional passages, with fine-grained feedback.

A small, offline stand-in for the long-form QA experiment of Fine-Grained RLHF (Wu et al.
2023, Sec. 4), where people mark what is wrong in an answer, span by span, and three reward
models are trained from those marks. Here:

- a prompt is a passage about a made-up village (six facts: river, founding year, first
  settlers, main trade, month of the yearly fair, best-known landmark) and a question that asks
  for one or two of those facts;
- an answer is a few sentences; a *simulated span labeler* reads it the way the paper's
  annotators did and marks

  * ``irrelevant`` sub-sentences: they state none of the facts asked for (filler such as
    "I hope this helps", or background facts from the passage that the question did not ask
    about, the "auxiliary information" the paper's relevance reward penalises),
  * ``repetitive`` sub-sentences: they only restate a fact already given,
  * ``untruthful`` sentences: they contradict the passage (a wrong year, river, ...),
  * missing information: each fact asked for that the answer does not give correctly (the
    record's ``missing`` notes);

- completeness is judged pairwise, as in the paper: K answers to a prompt are ranked by the
  share of the passage's information they give, the facts asked for counting twice as much as
  background facts. So completeness pulls towards longer answers and relevance towards
  shorter ones, and the weights ``w_k`` decide between them (the paper's Sec. 4.5).

The labeler works on any text, not only on the templates below: it finds the facts an answer
states by looking for the passage's values (and the values the passage could have had), so the
same judge marks policy samples, gives the gold scores used for evaluation, and labels the
generated answers that make up the feedback records.

Everything comes from the word lists below and a seed: no files, no network.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from typing import Any

from rlhfkit.data.records import Demonstration, Ranking, Span, SpanFeedback
from rlhfkit.feedback.simulated import SimulatedLabeler
from rlhfkit.rewards.gold import prompt_text
from rlhfkit.segments import response_segments, split_segments
from rlhfkit.tasks.base import Task, check_split

__all__ = ["ATTRIBUTES", "FactQATask", "Item", "Judgement", "judge", "parse_prompt"]


@dataclass(frozen=True)
class Attribute:
    """One kind of fact a passage states, with the words to state and to ask it."""

    key: str
    values: tuple[str, ...]
    passage: str
    """Sentence of the passage (``{v}`` the value)."""
    question: str
    """Question asking for it (``{name}`` the village); contains ``keyword``."""
    keyword: str
    """Words that only this attribute's question contains (how a prompt is parsed back)."""
    clause: str
    """The fact as an answer clause, naming the village."""
    short: str
    """The same with a pronoun, to follow another clause."""
    topic: str
    """What a missing-information note calls it."""
    nouns: tuple[str, ...] = ()
    """The word that identifies each value in a text (default: the value itself)."""

    def pattern(self, value: str) -> re.Pattern[str]:
        """The regex that finds ``value`` stated in a text (whole words)."""
        word = self.nouns[self.values.index(value)] if self.nouns else value
        flags = 0 if word[0].isupper() else re.IGNORECASE
        return re.compile(rf"\b{re.escape(word)}\b", flags)


MONTHS = ("January", "February", "March", "April", "June", "July", "August", "September",
          "October", "November", "December")  # no "May": it is also a common verb
LANDMARKS = ("a stone bridge", "an old windmill", "a clock tower", "a round chapel",
             "a watchtower", "a fountain", "a granary", "a ruined abbey")

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("river", ("Tull", "Wend", "Corran", "Sallow", "Brisk", "Osk", "Fennel", "Marrow"),
              "It lies on the river {v}.", "Which river does {name} lie on?", "river",
              "{name} lies on the river {v}", "it lies on the river {v}", "the river"),
    Attribute("year", tuple(str(y) for y in range(1420, 1900, 10)),
              "It was founded in {v}.", "In what year was {name} founded?", "what year",
              "{name} was founded in {v}", "it was founded in {v}", "the founding year"),
    Attribute("settlers", ("weavers", "monks", "miners", "fishermen", "potters", "shepherds",
                           "masons", "millers"),
              "Its first settlers were {v}.", "Who were the first settlers of {name}?",
              "settlers", "the first settlers of {name} were {v}",
              "its first settlers were {v}", "the first settlers"),
    Attribute("trade", ("wool", "cheese", "timber", "glass", "rope", "honey", "linen", "salt"),
              "Its main trade is {v}.", "What is the main trade of {name}?", "trade",
              "the main trade of {name} is {v}", "its main trade is {v}", "the main trade"),
    Attribute("fair", MONTHS,
              "Its yearly fair is held in {v}.", "In which month is the fair of {name} held?",
              "fair", "the yearly fair of {name} is held in {v}", "its fair is held in {v}",
              "the month of the fair"),
    Attribute("landmark", LANDMARKS,
              "Its best-known landmark is {v}.", "What is the best-known landmark of {name}?",
              "landmark", "the best-known landmark of {name} is {v}",
              "its best-known landmark is {v}", "the landmark",
              ("bridge", "windmill", "clock tower", "chapel", "watchtower", "fountain",
               "granary", "abbey")),
)
BY_KEY = {a.key: a for a in ATTRIBUTES}
YEAR = re.compile(r"\b1\d{3}\b")  # any year stated counts as a claim about the founding year

PREFIXES = ("Brindle", "Ash", "Thorn", "Wick", "Holl", "Marsh", "Elder", "Raven", "Oak", "Fern",
            "Stone", "Alder")
SUFFIXES = ("moor", "combe", "ford", "by", "wick", "stead", "field", "haven")

FILLERS = ("That is a good question.", "I hope this helps.", "Here is what I found.",
           "Thanks for asking.", "Let me explain.", "The passage is short.")

SYSTEM_PROMPT = "Answer the question about the passage in a few short sentences."


@dataclass(frozen=True)
class Item:
    """One prompt: a village's facts and the attributes the question asks for."""

    name: str
    facts: dict[str, str]
    asked: tuple[str, ...]

    @property
    def background(self) -> tuple[str, ...]:
        """The attributes the question does not ask for."""
        return tuple(a.key for a in ATTRIBUTES if a.key not in self.asked)

    @property
    def passage(self) -> str:
        """The passage: a first sentence naming the village, then one sentence per fact."""
        return f"{self.name} is a small village. " + " ".join(
            a.passage.format(v=self.facts[a.key]) for a in ATTRIBUTES)

    @property
    def question(self) -> str:
        """One question per asked attribute."""
        return " ".join(BY_KEY[k].question.format(name=self.name) for k in self.asked)

    @property
    def prompt(self) -> str:
        """The prompt text: ``Passage: ...`` and ``Question: ...`` on the next line."""
        return f"Passage: {self.passage}\nQuestion: {self.question}"


def parse_prompt(prompt: Any) -> Item:
    """Read the village's facts and the asked attributes back from a prompt.

    Raises:
        ValueError: The prompt is not a factqa prompt.
    """
    text = prompt_text(prompt)
    m = re.search(r"Passage: (\w+) is a small village\. (.*?)\nQuestion: (.*)", text, re.S)
    if not m:
        raise ValueError(f"not a factqa prompt (no 'Passage: ... Question: ...'): {text[:80]!r}")
    name, passage, question = m.groups()
    facts = {}
    for attr in ATTRIBUTES:
        found = (YEAR.findall(passage) if attr.key == "year"
                 else [v for v in attr.values if attr.pattern(v).search(passage)])
        if len(found) != 1:
            raise ValueError(f"factqa prompt: expected one {attr.key} in the passage, got {found}")
        facts[attr.key] = found[0]
    asked = tuple(a.key for a in ATTRIBUTES if a.keyword in question)
    if not asked:
        raise ValueError(f"factqa prompt: the question asks for no known fact: {question!r}")
    return Item(name, facts, asked)


# ---------------------------------------------------------------------------------------
# The judge: what a careful annotator would mark
# ---------------------------------------------------------------------------------------


def claims(text: str) -> list[tuple[str, str]]:
    """``(attribute, value)`` for every fact a text states, right or wrong."""
    out = [("year", m.group()) for m in YEAR.finditer(text)]
    for attr in ATTRIBUTES:
        if attr.key != "year":
            out += [(attr.key, v) for v in attr.values if attr.pattern(v).search(text)]
    return out


def _core(text: str, span: tuple[int, int]) -> tuple[int, int]:
    """A segment without its leading and trailing whitespace."""
    a, b = span
    piece = text[a:b]
    return a + len(piece) - len(piece.lstrip()), a + len(piece.rstrip())


@dataclass
class Judgement:
    """The labeler's reading of one answer.

    ``sub_errors[i]`` is None, ``irrelevant`` or ``repetitive`` for sub-sentence i;
    ``sentence_wrong[j]`` says whether sentence j contradicts the passage.
    """

    text: str
    subsentences: list[tuple[int, int]]
    sub_errors: list[str | None]
    sentences: list[tuple[int, int]]
    sentence_wrong: list[bool]
    wrong_subs: list[int]
    """Sub-sentences that state a wrong value (the marked stretch of an untruthful sentence)."""
    asked_correct: set[str] = field(default_factory=set)
    background_correct: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    n_asked: int = 1
    n_background: int = 5

    @property
    def relevance(self) -> float:
        """Share of sub-sentences without a relevance error."""
        return 1.0 - sum(e is not None for e in self.sub_errors) / len(self.sub_errors)

    @property
    def factuality(self) -> float:
        """Share of sentences that do not contradict the passage."""
        return 1.0 - sum(self.sentence_wrong) / len(self.sentence_wrong)

    @property
    def completeness(self) -> float:
        """Information given: asked facts weigh 1, background facts 1/2 (in [0, 1])."""
        got = len(self.asked_correct) + 0.5 * len(self.background_correct)
        return got / (self.n_asked + 0.5 * self.n_background)

    @property
    def recall(self) -> float:
        """Share of the asked facts given correctly."""
        return len(self.asked_correct) / self.n_asked

    @property
    def overall(self) -> float:
        """Recall of the asked facts times the share of error-free sub-sentences."""
        bad = {i for i, e in enumerate(self.sub_errors) if e is not None} | set(self.wrong_subs)
        return self.recall * (1.0 - len(bad) / len(self.sub_errors))


def judge(item: Item, text: str) -> Judgement:
    """Mark an answer: relevance per sub-sentence, truth per sentence, what is missing.

    A sub-sentence is relevant when it states an asked-for fact (right or wrong) not stated
    before; it is ``repetitive`` when every asked-for fact it states was stated before, and
    ``irrelevant`` when it states none (filler, background facts, anything else). A sentence
    is untruthful when it states a value the passage contradicts.
    """
    subs = split_segments(text, "subsentence")
    sentences = split_segments(text, "sentence")
    sub_errors: list[str | None] = []
    wrong_subs: list[int] = []
    stated: set[str] = set()
    asked_correct: set[str] = set()
    background_correct: set[str] = set()
    for i, (a, b) in enumerate(subs):
        found = claims(text[a:b])
        on_topic = {k for k, _ in found if k in item.asked}
        if not on_topic:
            sub_errors.append("irrelevant")
        elif on_topic <= stated:
            sub_errors.append("repetitive")
        else:
            sub_errors.append(None)
        stated |= on_topic
        for k, v in found:
            if v != item.facts[k]:
                wrong_subs.append(i)
            elif k in item.asked:
                asked_correct.add(k)
            else:
                background_correct.add(k)
    wrong_subs = sorted(set(wrong_subs))
    sentence_wrong = [any(subs[i][0] >= s and subs[i][1] <= e for i in wrong_subs)
                      for s, e in sentences]
    missing = [f"{BY_KEY[k].topic}: {item.facts[k]}" for k in item.asked
               if k not in asked_correct]
    return Judgement(text, subs, sub_errors, sentences, sentence_wrong, wrong_subs,
                     asked_correct, background_correct, missing, len(item.asked),
                     len(item.background))


class FactQAScorer:
    """A gold scorer reading factqa prompts: one of the :class:`Judgement` scores.

    Args:
        aspect: ``overall``, ``relevance``, ``factuality``, ``completeness`` or ``recall``.
    """

    ASPECTS = ("overall", "relevance", "factuality", "completeness", "recall")

    def __init__(self, aspect: str = "overall") -> None:
        if aspect not in self.ASPECTS:
            raise ValueError(f"factqa scorer: aspect must be one of {self.ASPECTS}, got {aspect!r}")
        self.aspect = aspect
        self.name = f"factqa-{aspect}"
        self._items: dict[str, Item] = {}

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response); an empty answer scores 0 (factuality 1)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts, {len(responses)} responses")
        out = []
        for prompt, response in zip(prompts, responses):
            key = prompt_text(prompt)
            if key not in self._items:
                self._items[key] = parse_prompt(prompt)
            if not response.strip():
                out.append(1.0 if self.aspect == "factuality" else 0.0)
                continue
            out.append(float(getattr(judge(self._items[key], response), self.aspect)))
        return out

    def __repr__(self) -> str:
        return f"FactQAScorer({self.aspect!r})"


# ---------------------------------------------------------------------------------------
# Answers: demonstrations and the samples people (here: the simulated labeler) annotate
# ---------------------------------------------------------------------------------------


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _wrong(rng: random.Random, attr: Attribute, value: str) -> str:
    return rng.choice([v for v in attr.values if v != value])


def compose(rng: random.Random, item: Item, facts: Sequence[tuple[str, str]],
            filler: str | None = None, join: float = 0.3) -> str:
    """Write ``(attribute, value)`` facts as sentences; a pair is sometimes joined by ", and".

    The first sentence names the village, later ones say "it"/"its".
    """
    sentences, i = [], 0
    while i < len(facts):
        key, value = facts[i]
        first = BY_KEY[key].clause if not sentences else BY_KEY[key].short
        text = _cap(first.format(name=item.name, v=value))
        if i + 1 < len(facts) and rng.random() < join:
            k2, v2 = facts[i + 1]
            text += ", and " + BY_KEY[k2].short.format(v=v2)
            i += 1
        sentences.append(text + ".")
        i += 1
    if filler:
        if rng.random() < 0.5:
            sentences.insert(0, filler)
        else:
            sentences.append(filler)
    return " ".join(sentences)


class FactQATask(Task):
    """Answer questions about fictional villages; feedback is fine-grained (spans).

    Args:
        n_train: Train prompts (RL trains on all of them).
        n_eval: Eval prompts, about villages no train prompt mentions.
        n_demos: Demonstrations, on the first ``n_demos`` train prompts.
        n_spans: Span-feedback records, one answer each, on the next ``n_spans`` prompts.
        n_ranked: Completeness rankings of ``k`` answers, on the prompts after those
            (wrapping around): SFT, the span reward models and the completeness reward model
            see different prompts while ``n_demos + n_spans + n_ranked <= n_train``.
        k: Answers per ranking (2..9).
        labeler_temperature: Bradley–Terry temperature of the completeness ranker, in
            completeness units ([0, 1]).
        miss_rate: Chance the span labeler misses an error (a segment left unmarked).
        false_rate: Chance it marks a correct sub-sentence as irrelevant.
        seed: Seed for the villages, the split, the answers and the labelers.
    """

    name = "factqa"
    description = (
        "Answer a question about a short passage on a fictional village. A simulated labeler "
        "marks irrelevant and repetitive sub-sentences, untruthful sentences and missing "
        "information, and ranks answers by completeness (Fine-Grained RLHF, Wu et al. 2023)."
    )
    system_prompt = SYSTEM_PROMPT

    def __init__(self, n_train: int = 480, n_eval: int = 64, n_demos: int = 160,
                 n_spans: int = 160, n_ranked: int = 160, k: int = 4,
                 labeler_temperature: float = 0.05, miss_rate: float = 0.05,
                 false_rate: float = 0.02, seed: int = 0) -> None:
        for label, n in (("n_demos", n_demos), ("n_spans", n_spans), ("n_ranked", n_ranked)):
            if not 0 <= n <= n_train:
                raise ValueError(f"factqa: {label} must be in [0, n_train={n_train}], got {n}")
        if not 2 <= k <= 9:
            raise ValueError(f"factqa: k must be in 2..9, got {k}")
        self.n_train, self.n_eval = n_train, n_eval
        self.n_demos, self.n_spans, self.n_ranked, self.k = n_demos, n_spans, n_ranked, k
        self.labeler_temperature = labeler_temperature
        self.miss_rate, self.false_rate = miss_rate, false_rate
        self.seed = seed
        n_train_max = len(self._villages[0]) * self._questions_per_village
        n_eval_max = len(self._villages[1]) * self._questions_per_village
        if n_train > n_train_max or n_eval > n_eval_max:
            raise ValueError(f"factqa: at most {n_train_max} train and {n_eval_max} eval "
                             f"prompts, asked for {n_train} and {n_eval}")

    # -- villages and prompts --------------------------------------------------------------

    _questions_per_village = len(ATTRIBUTES) + len(list(combinations(ATTRIBUTES, 2)))

    @cached_property
    def _villages(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(train villages, eval villages): names with their facts; 1 in 6 is held out."""
        rng = random.Random(f"factqa-villages-{self.seed}")
        names = [p + s for p in PREFIXES for s in SUFFIXES]
        rng.shuffle(names)
        villages = [{"name": n, "facts": {a.key: rng.choice(a.values) for a in ATTRIBUTES}}
                    for n in names]
        n_eval = len(villages) // 6
        return villages[n_eval:], villages[:n_eval]

    @cached_property
    def _items(self) -> dict[str, list[Item]]:
        out = {}
        for split, villages, n in (("train", self._villages[0], self.n_train),
                                   ("eval", self._villages[1], self.n_eval)):
            asks = [(a.key,) for a in ATTRIBUTES] + [
                (a.key, b.key) for a, b in combinations(ATTRIBUTES, 2)]
            items = [Item(v["name"], v["facts"], ask) for v in villages for ask in asks]
            random.Random(f"factqa-{split}-{self.seed}").shuffle(items)
            out[split] = items[:n]
        return out

    def items(self, split: str = "train") -> list[Item]:
        """The prompts of a split as :class:`Item` objects (facts and asked attributes)."""
        return list(self._items[check_split(split)])

    def prompts(self, split: str = "train") -> list[str]:
        """Passage-and-question prompts; eval prompts are about villages train never sees."""
        return [item.prompt for item in self.items(split)]

    # -- answers ---------------------------------------------------------------------------

    @staticmethod
    def good_answer(rng: random.Random, item: Item) -> str:
        """A demonstration: every asked fact, right, then 0..3 background facts.

        Sometimes a filler sentence too: answers written by people vary in length.
        """
        background = rng.sample(item.background, rng.randint(0, 3))
        facts = [(k, item.facts[k]) for k in item.asked + tuple(background)]
        filler = rng.choice(FILLERS) if rng.random() < 0.2 else None
        return compose(rng, item, facts, filler)

    @staticmethod
    def sampled_answer(rng: random.Random, item: Item) -> str:
        """An answer with the errors a small SFT model makes.

        Asked facts left out or wrong, background facts (sometimes wrong), filler, repeats.
        """
        facts = []
        for k in item.asked:
            if rng.random() < 0.85:
                v = item.facts[k] if rng.random() < 0.75 else _wrong(rng, BY_KEY[k], item.facts[k])
                facts.append((k, v))
        for k in rng.sample(item.background, rng.randint(0, 3)):
            v = item.facts[k] if rng.random() < 0.8 else _wrong(rng, BY_KEY[k], item.facts[k])
            facts.append((k, v))
        rng.shuffle(facts)
        if facts and rng.random() < 0.2:
            facts.append(rng.choice(facts))  # a repeat
        if not facts:
            facts = [(k, item.facts[k]) for k in rng.sample(item.background, 1)]
        filler = rng.choice(FILLERS) if rng.random() < 0.35 else None
        return compose(rng, item, facts, filler)

    def _prompt_slice(self, offset: int, n: int) -> list[Item]:
        train = self.items("train")
        return [train[(offset + i) % len(train)] for i in range(n)]

    def demonstrations(self) -> list[Demonstration]:
        """One good answer for each of the first ``n_demos`` train prompts."""
        rng = random.Random(f"factqa-demos-{self.seed}")
        return [Demonstration(prompt=item.prompt, response=self.good_answer(rng, item),
                              id=f"factqa-demo-{i}", source="simulated",
                              annotator="factqa-templates")
                for i, item in enumerate(self._prompt_slice(0, self.n_demos))]

    def span_feedback(self) -> list[SpanFeedback]:
        """Fine-grained feedback on one sampled answer for each of ``n_spans`` train prompts."""
        rng = random.Random(f"factqa-answers-{self.seed}")
        items = self._prompt_slice(self.n_demos, self.n_spans)
        labeler = SpanLabeler(self.miss_rate, self.false_rate, seed=self.seed)
        return [labeler.mark(item, self.sampled_answer(rng, item)) for item in items]

    def rankings(self) -> list[Ranking]:
        """``k`` distinct sampled answers per prompt, ranked by completeness (Plackett–Luce)."""
        rng = random.Random(f"factqa-rankings-{self.seed}")
        items = self._prompt_slice(self.n_demos + self.n_spans, self.n_ranked)
        groups = []
        for item in items:
            group: list[str] = []
            while len(group) < self.k:
                text = self.sampled_answer(rng, item)
                if text not in group:
                    group.append(text)
            groups.append(group)

        ranker = SimulatedLabeler(FactQAScorer("completeness"),
                                  temperature=self.labeler_temperature, seed=self.seed,
                                  name="sim-factqa-completeness")
        return ranker.rank_batch([item.prompt for item in items], groups)

    # -- judges ----------------------------------------------------------------------------

    def gold_scorer(self) -> FactQAScorer:
        """Asked-fact recall times the share of error-free sub-sentences, in [0, 1]."""
        return FactQAScorer("overall")

    def gold_scorers(self) -> dict[str, FactQAScorer]:
        """Each aspect's gold scorer: overall, relevance, factuality, completeness, recall."""
        return {a: FactQAScorer(a) for a in FactQAScorer.ASPECTS}


# ---------------------------------------------------------------------------------------
# Gold fine-grained rewards: the labeler's own marks as reward sources (no reward model)
# ---------------------------------------------------------------------------------------

GOLD_UNITS = {"relevance": "subsentence", "factuality": "sentence", "completeness": "response"}


def gold_segment_rewards(item: Item, text: str, aspect: str) -> list[float]:
    """The labeler's reward for each segment of an answer, as a perfect reward model gives it.

    ``relevance``: per sub-sentence, -1 if irrelevant or repetitive, else +1; ``factuality``:
    per sentence, -1 if untruthful, else +1 (Wu et al.'s +-1); ``completeness``: one score,
    :attr:`Judgement.completeness`.
    """
    j = judge(item, text)
    if aspect == "relevance":
        return [-1.0 if e is not None else 1.0 for e in j.sub_errors]
    if aspect == "factuality":
        return [-1.0 if wrong else 1.0 for wrong in j.sentence_wrong]
    if aspect == "completeness":
        return [j.completeness]
    raise ValueError(f"factqa-gold: aspect must be one of {', '.join(GOLD_UNITS)}, got {aspect!r}")


def gold_source(name: str, spec: str, ctx: Any
                ) -> tuple[Callable[[Any], list[list[tuple[int, float]]]], tuple[float, float] | None]:
    """``--reward-model NAME=factqa-gold:ASPECT``: the labeler's marks as a reward source.

    Relevance and factuality give +-1 after each sub-sentence / sentence; completeness one
    score at the end, standardised with the mean and std of the gold completeness of the
    task's ranked answers (as a reward model's scores are with its training stats). For
    measuring what the weights do apart from reward-model errors.

    Args:
        name: The source's name; also its aspect when ``spec`` is empty.
        spec: The aspect (relevance, factuality or completeness).
        ctx: The source context of the RL run (:class:`rlhfkit.rewards.sources.SourceContext`);
            only its ``tokenizer`` is read.

    Returns:
        ``(fn, stats)``: rollout -> ``(token, reward)`` pairs per response, and the
        ``(mean, std)`` that standardises the scores (None for the +-1 aspects).
    """
    aspect = spec.strip() or name
    if aspect not in GOLD_UNITS:
        raise ValueError(f"factqa-gold:{aspect}: use one of {', '.join(GOLD_UNITS)}")
    unit = GOLD_UNITS[aspect]
    items: dict[str, Item] = {}

    def fn(rollout: Any) -> list[list[tuple[int, float]]]:
        segs = response_segments(ctx.tokenizer, rollout.response_ids, rollout.texts, unit)
        out = []
        for prompt, text, places in zip(rollout.prompts, rollout.texts, segs):
            key = prompt_text(prompt)
            if key not in items:
                items[key] = parse_prompt(prompt)
            rewards = gold_segment_rewards(items[key], text, aspect)
            out.append([(tok, r) for (_, tok), r in zip(places, rewards)])
        return out

    stats = None
    if aspect == "completeness":
        import statistics

        task = FactQATask()
        scores = [s for r in task.rankings() for s in r.meta["gold_scores"]]
        stats = (statistics.fmean(scores), statistics.pstdev(scores) or 1.0)
    return fn, stats


class SpanLabeler:
    """Marks spans the way :func:`judge` reads an answer, with a little human-like noise.

    Args:
        miss_rate: Chance of leaving an error unmarked (each error on its own).
        false_rate: Chance of marking a correct sub-sentence ``irrelevant``.
        seed: Seed of the labeler's random stream.
    """

    def __init__(self, miss_rate: float = 0.05, false_rate: float = 0.02, seed: int = 0) -> None:
        self.miss_rate, self.false_rate = miss_rate, false_rate
        self.seed = seed
        self._rng = random.Random(f"factqa-spans-{seed}")
        self._count = 0

    def mark(self, item: Item, response: str) -> SpanFeedback:
        """A :class:`SpanFeedback` for one answer; ``meta`` keeps the noiseless judgement."""
        j = judge(item, response)
        spans = []
        for i, (seg, error) in enumerate(zip(j.subsentences, j.sub_errors)):
            a, b = _core(response, seg)
            if a >= b:
                continue
            u_miss, u_false = self._rng.random(), self._rng.random()
            if error is not None and u_miss >= self.miss_rate:
                spans.append(Span(a, b, error))
            elif error is None and u_false < self.false_rate:
                spans.append(Span(a, b, "irrelevant"))
            if i in j.wrong_subs and self._rng.random() >= self.miss_rate:
                spans.append(Span(a, b, "untruthful"))
        self._count += 1
        return SpanFeedback(
            prompt=item.prompt, response=response, spans=spans, missing=j.missing,
            id=f"factqa-span-{self.seed}-{self._count}", annotator="sim-factqa-spans",
            source="simulated",
            meta={"gold_relevance": j.relevance, "gold_factuality": j.factuality,
                  "gold_completeness": j.completeness})


# The task's own reward sources, keyed by their --reward-model prefix (read by
# rlhfkit.train.inputs, which hands them to rlhfkit.rewards.registry.build_sources).
FactQATask.reward_sources = {"factqa-gold": gold_source}
