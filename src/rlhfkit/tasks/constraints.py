r"""``task:constraints``: instructions with constraints a program can check (in the style of IFEval).

A prompt asks for a short text on a topic under one or two constraints (Zhou et al. 2023,
"Instruction-Following Evaluation for Large Language Models", whose checks these follow):

| kind | instruction | check |
|---|---|---|
| ``max_words`` / ``min_words`` | Use at most / at least N words. | words (``\w+`` runs) |
| ``include`` | Include the word "X". | X appears as a whole word (any case) |
| ``exclude`` | Do not use the word "X". | X never appears as a whole word |
| ``lowercase`` | Write only in lowercase letters. | no uppercase letter |
| ``bullets`` | Answer with exactly N bullet points that start with "- ". | N lines start with ``- `` or ``* `` |
| ``json_keys`` | Answer with a JSON object with the keys "a" and "b". | the text (code fences allowed) parses to an object with those keys |

The verifier gives the share of a prompt's constraints that hold; a response *solves* the
prompt when all hold (IFEval's strict prompt-level accuracy), which is what pass@k counts.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rlhfkit.data.records import Demonstration, Ranking
from rlhfkit.tasks.base import check_split
from rlhfkit.tasks.verifiable import VerifiableTask, prompt_key

__all__ = ["Constraint", "ConstraintsTask", "check_constraint"]

TOPICS = ("the ocean", "a rainy day", "your favorite food", "a trip to the mountains",
          "learning to cook", "a city at night", "a good friend", "the moon", "a busy market",
          "autumn leaves", "a quiet library", "riding a bike", "a summer garden", "an old train",
          "morning coffee", "a snowy forest", "a small village", "the night sky", "a long walk",
          "a birthday party", "a new school", "a lost key", "a river", "a football match")
ASKS = ("Write a short note about {t}.", "Describe {t}.", "Write a few sentences about {t}.",
        "Tell me about {t}.")
INCLUDE = ("light", "home", "water", "friends", "time", "music", "color", "quiet", "green",
           "warm", "story", "road")
EXCLUDE = ("very", "really", "nice", "beautiful", "good", "great", "amazing", "thing")
KEY_SETS = (("title", "summary"), ("topic", "mood"), ("name", "description"),
            ("place", "feeling"), ("subject", "detail"))
KINDS = ("max_words", "min_words", "include", "exclude", "lowercase", "bullets", "json_keys")
CLASHES = ({"bullets", "json_keys"}, {"max_words", "min_words"}, {"include", "exclude"},
           {"bullets", "max_words"},
           {"json_keys", "min_words"})
"""Pairs of kinds never asked together."""

WORD = re.compile(r"\w+")
SENTENCES = ("{T} is easy to picture.", "I like to think about {t}.",
             "It brings back calm memories.", "There is always something new to notice.",
             "The details change with every season.", "People often talk about {t}.",
             "It can feel different in the evening.", "A small moment can say a lot.")


@dataclass(frozen=True)
class Constraint:
    """One checkable constraint: its kind and argument (a number, a word or keys)."""

    kind: str
    arg: Any = None

    def instruction(self) -> str:
        """The sentence that asks for it."""
        if self.kind == "max_words":
            return f"Use at most {self.arg} words."
        if self.kind == "min_words":
            return f"Use at least {self.arg} words."
        if self.kind == "include":
            return f'Include the word "{self.arg}".'
        if self.kind == "exclude":
            return f'Do not use the word "{self.arg}".'
        if self.kind == "lowercase":
            return "Write only in lowercase letters."
        if self.kind == "bullets":
            return f'Answer with exactly {self.arg} bullet points that start with "- ".'
        keys = " and ".join(f'"{k}"' for k in self.arg)
        return f"Answer with a JSON object with the keys {keys}."

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a reference in a file of records)."""
        return {"kind": self.kind, "arg": list(self.arg) if isinstance(self.arg, tuple)
                else self.arg}


def _json_object(text: str) -> Any:
    body = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def check_constraint(constraint: Constraint | dict[str, Any], text: str) -> bool:
    """Whether ``text`` meets one constraint (see the module table)."""
    if isinstance(constraint, dict):
        constraint = Constraint(constraint["kind"], constraint.get("arg"))
    kind, arg = constraint.kind, constraint.arg
    words = WORD.findall(text)
    if kind == "max_words":
        return 0 < len(words) <= int(arg)
    if kind == "min_words":
        return len(words) >= int(arg)
    if kind in ("include", "exclude"):
        found = re.search(rf"\b{re.escape(str(arg))}\b", text, re.IGNORECASE) is not None
        return found if kind == "include" else (found is False and bool(words))
    if kind == "lowercase":
        return bool(words) and text == text.lower()
    if kind == "bullets":
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        return sum(ln.startswith(("- ", "* ")) for ln in lines) == int(arg)
    if kind == "json_keys":
        value = _json_object(text)
        return isinstance(value, dict) and all(k in value for k in arg)
    raise ValueError(f"unknown constraint kind {kind!r}; known: {', '.join(KINDS)}")


@dataclass(frozen=True)
class Item:
    """A prompt and its constraints."""

    prompt: str
    topic: str
    constraints: tuple[Constraint, ...]


def draw_constraint(rng: random.Random, kind: str) -> Constraint:
    """A constraint of ``kind`` with a random argument."""
    if kind == "max_words":
        return Constraint(kind, rng.choice((15, 20, 25, 30)))
    if kind == "min_words":
        return Constraint(kind, rng.choice((30, 40, 50)))
    if kind == "include":
        return Constraint(kind, rng.choice(INCLUDE))
    if kind == "exclude":
        return Constraint(kind, rng.choice(EXCLUDE))
    if kind == "bullets":
        return Constraint(kind, rng.choice((2, 3, 4)))
    if kind == "json_keys":
        return Constraint(kind, rng.choice(KEY_SETS))
    return Constraint(kind)


class ConstraintsTask(VerifiableTask):
    """Short texts under checkable constraints (see the module docstring).

    Args:
        n_train: Train prompts.
        n_eval: Held-out prompts (no prompt text is in both).
        n_demos: Demonstrations (responses that meet every constraint) on the first train
            prompts.
        max_constraints: Constraints per prompt are drawn from 1..this.
        seed: Seed of the prompts and demonstrations.
    """

    name = "constraints"
    description = ("Short texts under constraints a program checks (word counts, required and "
                   "forbidden words, lowercase, bullet points, JSON keys), as in IFEval.")
    system_prompt = "Follow every instruction exactly. Keep the answer short."

    def __init__(self, n_train: int = 1000, n_eval: int = 200, n_demos: int = 256,
                 max_constraints: int = 2, seed: int = 0) -> None:
        if not 1 <= max_constraints <= 3:
            raise ValueError(f"constraints: max_constraints must be in 1..3, got {max_constraints}")
        if not 0 <= n_demos <= n_train:
            raise ValueError(f"constraints: n_demos must be in [0, n_train={n_train}]")
        self.n_train, self.n_eval, self.n_demos = n_train, n_eval, n_demos
        self.max_constraints, self.seed = max_constraints, seed

    @cached_property
    def _splits(self) -> dict[str, list[Item]]:
        rng = random.Random(f"constraints-{self.max_constraints}-{self.seed}")
        items: list[Item] = []
        seen: set[str] = set()
        while len(items) < self.n_train + self.n_eval:
            topic, ask = rng.choice(TOPICS), rng.choice(ASKS)
            kinds: list[str] = []
            for _ in range(rng.randint(1, self.max_constraints)):
                options = [k for k in KINDS if k not in kinds
                           and not any({k, other} in CLASHES for other in kinds)]
                kinds.append(rng.choice(options))
            constraints = tuple(draw_constraint(rng, k) for k in kinds)
            prompt = " ".join([ask.format(t=topic)] + [c.instruction() for c in constraints])
            if prompt not in seen:
                seen.add(prompt)
                items.append(Item(prompt, topic, constraints))
        return {"train": items[:self.n_train], "eval": items[self.n_train:]}

    @cached_property
    def _by_prompt(self) -> dict[str, Item]:
        return {it.prompt: it for items in self._splits.values() for it in items}

    def prompts(self, split: str = "train") -> list[str]:
        """The instructions of a split."""
        return [it.prompt for it in self._splits[check_split(split)]]

    def reference_of(self, prompt: Any) -> list[dict[str, Any]] | None:
        """The prompt's constraints, as ``{"kind", "arg"}`` dicts."""
        item = self._by_prompt.get(prompt_key(prompt))
        return None if item is None else [c.to_dict() for c in item.constraints]

    def verify(self, reference: Any, response: str) -> float:
        """The share of the constraints that hold (1 = all)."""
        if not reference:
            return 0.0
        return sum(check_constraint(c, response) for c in reference) / len(reference)

    # -- demonstrations and rankings -------------------------------------------------------

    @classmethod
    def compliant(cls, item: Item, rng: random.Random) -> str:
        """A response that meets every constraint of ``item`` (the first of a few that does)."""
        kinds = {c.kind: c.arg for c in item.constraints}
        banned = kinds.get("exclude")
        topic = item.topic if banned is None or banned not in item.topic.split() else "it"
        pool = [s.format(t=topic, T=topic[0].upper() + topic[1:]) for s in SENTENCES]
        pool = [s for s in pool if banned is None
                or not re.search(rf"\b{banned}\b", s, re.IGNORECASE)]
        rng.shuffle(pool)
        reference = [c.to_dict() for c in item.constraints]
        text = ""
        for n in (3, 2, 1, 5, 8, 11, 14):
            sentences = (pool * 4)[:n]
            if "include" in kinds:
                sentences[0] = f"It reminds me of {kinds['include']}."
            text = cls._render(kinds, sentences, topic)
            if all(check_constraint(c, text) for c in reference):
                return text
        return text

    @staticmethod
    def _render(kinds: dict[str, Any], sentences: list[str], topic: str) -> str:
        if "bullets" in kinds:
            b = kinds["bullets"]
            rows = [" ".join(sentences[i::b]) or sentences[i % len(sentences)] for i in range(b)]
            text = "\n".join(f"- {r}" for r in rows)
        elif "json_keys" in kinds:
            keys = kinds["json_keys"]
            text = json.dumps({keys[0]: topic, keys[1]: " ".join(sentences)})
        else:
            text = " ".join(sentences)
        return text.lower() if "lowercase" in kinds else text

    def demonstrations(self) -> list[Demonstration]:
        """A compliant response for each of the first ``n_demos`` train prompts."""
        rng = random.Random(f"constraints-demos-{self.seed}")
        return [Demonstration(prompt=it.prompt, response=self.compliant(it, rng),
                              id=f"constraints-demo-{i}", source="simulated",
                              annotator="constraints-templates")
                for i, it in enumerate(self._splits["train"][:self.n_demos])]

    def rankings(self) -> list[Ranking]:
        """A compliant response against violating ones, ranked by the verifier."""
        rng = random.Random(f"constraints-rankings-{self.seed}")
        items = self._splits["train"][self.n_demos:self.n_demos + 256]
        prompts, groups = [], []
        for it in items:
            good = self.compliant(it, rng)
            shouty = good.upper()
            padded = good + " " + " ".join(["More words go here."] * 12)
            groups.append(list(dict.fromkeys([good, shouty, padded, "I cannot help."])))
            prompts.append(it.prompt)
        return self.labeler(seed=self.seed, temperature=0.05).rank_batch(prompts, groups)
