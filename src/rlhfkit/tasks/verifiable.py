"""Tasks whose answers can be checked: a verifier instead of a learned judge (RLVR).

A :class:`VerifiableTask` knows, for each of its prompts, a *reference* (the exact answer of an
arithmetic problem, the constraints of an instruction) and a verifier that reads a response and
says how well it meets the reference, in [0, 1]; 1 means solved. The verifier is the task's
gold scorer, so ``--gold task`` measures accuracy, and ``--reward-model task:NAME`` trains on
it directly ("reinforcement learning with verifiable rewards", Lambert et al. 2024; the rule
rewards of DeepSeek-R1). A task whose responses end in one short answer also says how to read
it (:meth:`VerifiableTask.extract_answer`), which is what a majority vote over sampled
reasoning paths needs (self-consistency, Wang et al. 2022; ``rlhfkit self-improve``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfkit.rewards.gold import prompt_text
from rlhfkit.tasks.base import Task

__all__ = ["VerifiableTask", "VerifierScorer"]


class VerifiableTask(Task):
    """A task with a reference per prompt and a verifier (see the module docstring).

    Subclasses implement :meth:`reference_of` and :meth:`verify`, and
    :meth:`extract_answer` when a response ends in a single answer.
    """

    def reference_of(self, prompt: Any) -> Any:
        """The reference of one of this task's prompts (None for a prompt it does not know)."""
        raise NotImplementedError

    def references(self, prompts: Sequence[Any]) -> list[Any]:
        """The references of several prompts."""
        return [self.reference_of(p) for p in prompts]

    def verify(self, reference: Any, response: str) -> float:
        """How well ``response`` meets ``reference``, in [0, 1] (1 = solved)."""
        raise NotImplementedError

    def extract_answer(self, response: str) -> str | None:
        """The final answer a response gives, normalised for voting (None: none given)."""
        return None

    def answer_text(self, answer: str) -> str:
        """A response that gives just ``answer`` (to check a voted answer with the verifier)."""
        return answer

    def solved(self, prompt: Any, response: str) -> bool:
        """Whether ``response`` solves ``prompt`` (the verifier gives 1)."""
        reference = self.reference_of(prompt)
        return reference is not None and self.verify(reference, response) >= 1.0

    def gold_scorer(self) -> VerifierScorer:
        """The verifier as a scorer: ``verify(reference_of(prompt), response)``."""
        return VerifierScorer(self)


class VerifierScorer:
    """A gold scorer that runs a task's verifier on each (prompt, response) pair.

    A prompt the task has no reference for scores 0 (it cannot be verified).
    """

    def __init__(self, task: VerifiableTask) -> None:
        self.task = task
        self.name = f"{task.name}-verifier"

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One verifier score per pair."""
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(responses)} "
                             "responses")
        out = []
        for prompt, response in zip(prompts, responses):
            reference = self.task.reference_of(prompt)
            out.append(0.0 if reference is None else float(self.task.verify(reference, response)))
        return out


def prompt_key(prompt: Any) -> str:
    """The text a task looks a prompt up by (a chat prompt: its first user message)."""
    if isinstance(prompt, str):
        return prompt.strip()
    users = [m for m in prompt if m.get("role") == "user"]
    return prompt_text(users[:1] or list(prompt)).strip()
