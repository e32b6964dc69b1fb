"""The "reviews" task: steer the continuation of a grumpy movie review toward the positive.

This is a small, offline version of the controlled-sentiment experiment in the DPO paper
(Rafailov et al. 2023, Sec. 6.1), where a policy continues the prefix of an IMDb review and a
sentiment classifier is the gold reward. Here:

- a prompt is the opening of a review that leans negative, e.g. "I wanted to like this
  heist movie, but the pacing"; the policy writes the rest of the sentence and maybe one more;
- the gold reward is the VADER sentiment of the continuation alone, in [-1, 1];
- demonstrations finish the sentence with mixed sentiment, as real reviews do, so a policy
  fine-tuned on them lands near neutral on average and has clear room to improve;
- comparisons rank K = 4 such continuations per prompt with a simulated sentiment labeler.

Everything is generated from the hand-written phrase lists below with a fixed seed: no files,
no network, the same prompts on every machine. All openings end with the grammatical subject
of a clause ("the pacing", "the script", ...), and every continuation starts with a predicate
that fits any of those subjects.
"""

from __future__ import annotations

import itertools
import random
from functools import cached_property

from rlhfkit.data.records import Demonstration, Ranking
from rlhfkit.rewards.gold import Scorer, SentimentScorer
from rlhfkit.tasks.base import Task, check_split

__all__ = ["ReviewsTask"]

FILM_KINDS = (
    "thriller",
    "romantic comedy",
    "war drama",
    "horror film",
    "animated feature",
    "space opera",
    "courtroom drama",
    "period piece",
    "superhero movie",
    "documentary",
    "heist movie",
    "western",
    "musical",
    "coming-of-age story",
    "detective story",
    "disaster movie",
    "family comedy",
    "spy film",
)

# Grammatically singular, so any predicate below can follow.
SUBJECTS = (
    "the lead performance",
    "the script",
    "the soundtrack",
    "the pacing",
    "the ending",
    "the dialogue",
    "the production design",
    "the villain",
    "the middle act",
    "the camera work",
    "the supporting cast",
    "the editing",
    "the humor",
    "the central romance",
)

# Openings that lean negative; {a_kind} is the kind with its article ("an animated feature").
OPENINGS = (
    "I wanted to like this {kind}, but {subject}",
    "This {kind} was a dull disappointment for me, though {subject}",
    "For {a_kind} with so much hype, this one is a sad letdown, and {subject}",
    "Halfway through this boring {kind} I checked my watch, and yet {subject}",
    "I went in expecting a boring {kind}, and {subject}",
    "This {kind} gets off to a painfully slow start, but {subject}",
    "The reviews for this {kind} were brutal, and to be fair {subject}",
    "I nearly walked out of this awful {kind} in the first hour, though {subject}",
    "My friends warned me this {kind} was terrible, and {subject}",
    "On paper this {kind} should have worked, yet {subject}",
    "I rented this {kind} with low hopes on a gloomy night, and {subject}",
    "Everything about this {kind} felt tired to me, but {subject}",
    "The first twenty minutes of this {kind} are dreary, and {subject}",
    "I am not sure who this clumsy {kind} was made for, and {subject}",
    "After years of delays, this {kind} is a bit of a disappointment, and {subject}",
    "I expected a mess from this {kind}, and for a while {subject}",
    "The plot of this {kind} is a confused mess, and {subject}",
    "I have rarely been so bored by {a_kind}, though {subject}",
)

# First sentence: finishes the opening's clause. Three moods, so demonstrations are mixed.
PREDICATES = {
    "positive": (
        "turns out to be the best thing about it.",
        "won me over by the final scene.",
        "is warm, funny and surprisingly moving.",
        "is handled with real care and skill.",
        "is a genuine delight from start to finish.",
        "kept me smiling long after the credits rolled.",
        "is beautifully done and easy to love.",
        "works far better than it has any right to.",
    ),
    "negative": (
        "is a dull, lifeless mess.",
        "falls flat almost every single time, sadly.",
        "makes the whole film a dreary chore.",
        "is clumsy and painfully predictable.",
        "drags everything else down, which is a shame.",
        "is the weakest part of an already weak film.",
        "is so bad that I laughed at the wrong moments.",
        "left me bored and irritated.",
    ),
    "neutral": (
        "is about what you would expect.",
        "goes exactly where you think it will.",
        "takes a while to find its rhythm.",
        "is uneven, sharp in places and tedious in others.",
        "does its job without ever standing out.",
        "settles down a little in the second half.",
        "is neither here nor there.",
        "feels borrowed from a dozen other films.",
    ),
}

# Optional second sentence: a verdict on the whole film.
VERDICTS = {
    "positive": (
        "Still, I would happily watch it again.",
        "The last twenty minutes are wonderful.",
        "By the end I was honestly moved.",
        "It is worth seeing for the cast alone, and I am glad I went.",
        "I left the theater in a great mood.",
        "Give it a fair chance; you might love it.",
    ),
    "negative": (
        "I cannot recommend it to anyone.",
        "Skip it; this one is a dreary mess.",
        "The rest of the film is no better.",
        "I was bored long before the end.",
        "What a sad waste of a good idea.",
        "I regret buying the ticket.",
    ),
    "neutral": (
        "It has its moments, but not many.",
        "Fans of the genre may see it differently.",
        "It is a mixed bag.",
        "Your mileage may vary.",
        "I have mixed feelings about the whole thing.",
        "It is an average evening at the movies.",
    ),
}

MOODS = ("positive", "negative", "neutral")
# How often a demonstration's sentences take each mood: a slight lean to the negative,
# as the openings invite, so the SFT policy starts a little below neutral.
MOOD_WEIGHTS = (0.3, 0.4, 0.3)
VERDICT_PROB = 0.6  # chance a continuation has a second sentence


def _with_article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


class ReviewsTask(Task):
    """Continue a negative-leaning movie-review opening; the goal is positive sentiment.

    Args:
        n_train: Number of train prompts (RL trains on all of them).
        n_eval: Number of eval prompts, disjoint from train.
        n_demos: Number of demonstrations: one each for the first ``n_demos`` train prompts.
            Kept small so that SFT of the default model takes minutes on a CPU.
        n_ranked: Number of train prompts that get a ranking of ``k`` continuations: the
            ``n_ranked`` prompts after the demonstration prompts (wrapping around), so the SFT
            and reward-model prompt sets are disjoint when ``n_demos + n_ranked <= n_train``,
            as the stages of InstructGPT use separate prompt sets (Ouyang et al. 2022, Sec. 3.2).
        k: Continuations per ranking (2..9).
        labeler_temperature: Bradley–Terry temperature of the simulated labeler that ranks
            them, in VADER units.
        seed: Seed for the split, the demonstrations and the labeler.
    """

    name = "reviews"
    description = (
        "Continue a movie review that opens on a negative note; the gold reward is the "
        "VADER sentiment of the continuation (positive is better), as in the IMDb "
        "experiment of the DPO paper."
    )
    system_prompt = "Continue this movie review from where it stops, in one or two sentences."

    def __init__(
        self,
        n_train: int = 384,
        n_eval: int = 96,
        n_demos: int = 128,
        n_ranked: int = 128,
        k: int = 4,
        labeler_temperature: float = 0.1,
        seed: int = 0,
    ) -> None:
        n_all = len(FILM_KINDS) * len(SUBJECTS) * len(OPENINGS)
        if n_train + n_eval > n_all:
            raise ValueError(
                f"reviews: at most {n_all} prompts in all, asked for {n_train + n_eval}"
            )
        if not 0 <= n_demos <= n_train:
            raise ValueError(f"reviews: n_demos must be in [0, n_train={n_train}], got {n_demos}")
        if not 0 <= n_ranked <= n_train:
            raise ValueError(f"reviews: n_ranked must be in [0, n_train={n_train}], got {n_ranked}")
        if not 2 <= k <= 9:
            raise ValueError(f"reviews: k must be in 2..9, got {k}")
        self.n_train = n_train
        self.n_eval = n_eval
        self.n_demos = n_demos
        self.n_ranked = n_ranked
        self.k = k
        self.labeler_temperature = labeler_temperature
        self.seed = seed

    # -- prompts ---------------------------------------------------------------------------

    @cached_property
    def _splits(self) -> dict[str, list[str]]:
        combos = list(itertools.product(OPENINGS, FILM_KINDS, SUBJECTS))
        random.Random(f"reviews-split-{self.seed}").shuffle(combos)
        texts = [
            opening.format(kind=kind, a_kind=_with_article(kind), subject=subject)
            for opening, kind, subject in combos[: self.n_train + self.n_eval]
        ]
        return {"train": texts[: self.n_train], "eval": texts[self.n_train :]}

    def prompts(self, split: str = "train") -> list[str]:
        """Review openings of a split ("train" or "eval"); the splits are disjoint."""
        return list(self._splits[check_split(split)])

    # -- continuations ---------------------------------------------------------------------

    @staticmethod
    def continuation(rng: random.Random, mood: str | None = None) -> str:
        """Draw one continuation: a predicate and, 60% of the time, a verdict sentence.

        Args:
            rng: The random stream to draw from.
            mood: Mood of the first sentence ("positive", "negative", "neutral"); drawn with
                ``MOOD_WEIGHTS`` when None. The verdict's mood is always drawn.
        """
        mood = mood or rng.choices(MOODS, MOOD_WEIGHTS)[0]
        text = rng.choice(PREDICATES[mood])
        if rng.random() < VERDICT_PROB:
            text += " " + rng.choice(VERDICTS[rng.choices(MOODS, MOOD_WEIGHTS)[0]])
        return text

    @staticmethod
    def all_continuations() -> list[str]:
        """Every continuation the generator can produce (for tests and inspection)."""
        predicates = [p for mood in MOODS for p in PREDICATES[mood]]
        verdicts = [""] + [v for mood in MOODS for v in VERDICTS[mood]]
        return [f"{p} {v}".strip() for p in predicates for v in verdicts]

    def demonstrations(self) -> list[Demonstration]:
        """One demonstration for each of the first ``n_demos`` train prompts.

        The continuations mix positive, negative and neutral sentences (a slight lean to the
        negative), so their mean gold sentiment sits a little below 0.
        """
        rng = random.Random(f"reviews-demos-{self.seed}")
        # First-sentence moods in exact MOOD_WEIGHTS proportions (then shuffled), so the mix
        # does not drift with the seed the way independent draws would over ~100 samples.
        counts = [round(w * self.n_demos) for w in MOOD_WEIGHTS]
        counts[-1] = self.n_demos - sum(counts[:-1])
        moods = [m for m, c in zip(MOODS, counts) for _ in range(c)]
        rng.shuffle(moods)
        prompts = self.prompts("train")[: self.n_demos]
        return [
            Demonstration(
                prompt=prompt,
                response=self.continuation(rng, mood),
                id=f"reviews-demo-{i}",
                source="simulated",
                annotator="reviews-templates",
            )
            for i, (prompt, mood) in enumerate(zip(prompts, moods))
        ]

    def rankings(self) -> list[Ranking]:
        """Rank ``k`` distinct continuations for each of ``n_ranked`` train prompts.

        The ranker is the task's simulated sentiment labeler (Plackett–Luce at
        ``labeler_temperature``, seeded with ``seed``).
        """
        rng = random.Random(f"reviews-rankings-{self.seed}")
        train = self.prompts("train")
        prompts = [train[(self.n_demos + i) % len(train)] for i in range(self.n_ranked)]
        groups = []
        for _ in prompts:
            group: list[str] = []
            while len(group) < self.k:
                text = self.continuation(rng)
                if text not in group:
                    group.append(text)
            groups.append(group)
        labeler = self.labeler(seed=self.seed, temperature=self.labeler_temperature)
        return labeler.rank_batch(prompts, groups)

    def gold_scorer(self) -> Scorer:
        """VADER sentiment of the continuation alone, in [-1, 1]."""
        return SentimentScorer()
