"""What a built-in task provides: prompts, demonstrations, comparisons and a gold judge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rlhfkit.data.records import Comparison, Demonstration, PromptRecord, Ranking
from rlhfkit.feedback.simulated import SimulatedLabeler
from rlhfkit.rewards.gold import Scorer

__all__ = ["Task"]

SPLITS = ("train", "eval")


class Task:
    """A built-in task: everything a pipeline run needs when no files are given.

    Subclasses set ``name``, ``description`` and ``system_prompt`` and implement
    :meth:`prompts`, :meth:`demonstrations`, :meth:`rankings` and :meth:`gold_scorer`.
    Prompts are plain strings; the trainers apply the chat template (with
    ``system_prompt`` as the system message when it is not None).
    """

    name: str = ""
    description: str = ""
    system_prompt: str | None = None
    reward_sources: ClassVar[dict[str, Callable[..., tuple[Any, Any]]]] = {}
    """Reward sources the task brings, by ``--reward-model`` prefix: ``factory(name, spec,
    context) -> (fn, stats)`` with ``fn(rollout)`` the ``(token, reward)`` pairs of each
    response and ``stats`` a ``(mean, std)`` to standardise with, or None."""
    environments: ClassVar[dict[str, Callable[..., Any]]] = {}
    """Multi-turn environments the task brings, by ``--environment`` name: ``factory() ->``
    :class:`rlhfkit.tasks.environment.Environment` (read by :func:`rlhfkit.tasks.task_environments`)."""

    def prompts(self, split: str = "train") -> list[str]:
        """The prompts of a split ("train" or "eval"); the two never share a prompt."""
        raise NotImplementedError

    def prompt_records(self, split: str = "train") -> list[PromptRecord]:
        """The prompts of a split as :class:`PromptRecord` objects."""
        return [
            PromptRecord(prompt=p, id=f"{self.name}-{split}-{i}")
            for i, p in enumerate(self.prompts(split))
        ]

    def demonstrations(self) -> list[Demonstration]:
        """Demonstrations (prompt, response) on train prompts, for supervised fine-tuning."""
        raise NotImplementedError

    def rankings(self) -> list[Ranking]:
        """K responses per train prompt, ranked by the task's simulated labeler."""
        raise NotImplementedError

    def comparisons(self) -> list[Comparison]:
        """The rankings expanded into all C(K, 2) pairs per prompt (ties kept)."""
        return [c for r in self.rankings() for c in r.to_comparisons()]

    def gold_scorer(self) -> Scorer:
        """The fixed judge of what this task wants (never trained on directly)."""
        raise NotImplementedError

    def labeler(
        self, seed: int = 0, temperature: float = 0.1, flip_rate: float = 0.0
    ) -> SimulatedLabeler:
        """A simulated labeler on this task's gold scorer, to label fresh policy samples."""
        return SimulatedLabeler(
            self.gold_scorer(), temperature=temperature, flip_rate=flip_rate, seed=seed
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_split(split: str) -> str:
    """Return ``split`` if it is a known split name, else raise a clear error."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split
