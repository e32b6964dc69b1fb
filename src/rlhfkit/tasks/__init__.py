"""Built-in tasks: prompts, demonstrations, comparisons and the gold judge for each.

>>> from rlhfkit.tasks import get_task
>>> task = get_task("reviews")
>>> len(task.prompts("train")) >= 300
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhfkit.tasks.arithmetic import (
    ArithmeticTask,
    ClarifyArithmeticTask,
    StepsArithmeticTask,
    ToolArithmeticTask,
)
from rlhfkit.tasks.base import Task
from rlhfkit.tasks.constraints import ConstraintsTask
from rlhfkit.tasks.detox import DetoxTask
from rlhfkit.tasks.factqa import FactQATask
from rlhfkit.tasks.reviews import ReviewsTask

__all__ = ["ArithmeticTask", "ClarifyArithmeticTask", "ConstraintsTask", "DetoxTask", "FactQATask", "ReviewsTask",
           "StepsArithmeticTask", "Task", "ToolArithmeticTask", "get_task", "list_tasks", "register_task",
           "task_environments", "task_reward_sources"]

_TASKS: dict[str, Callable[..., Task]] = {
    "reviews": ReviewsTask, "detox": DetoxTask, "factqa": FactQATask,
    "arithmetic": ArithmeticTask, "arithmetic-tool": ToolArithmeticTask,
    "arithmetic-clarify": ClarifyArithmeticTask,
    "arithmetic-steps": StepsArithmeticTask, "constraints": ConstraintsTask}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Make ``get_task(name, **kwargs)`` call ``factory(**kwargs)``."""
    _TASKS[name] = factory


def list_tasks() -> list[str]:
    """Names of the built-in (and registered) tasks."""
    return sorted(_TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name.

    Args:
        name: A name from :func:`list_tasks`, e.g. ``"reviews"``.
        **kwargs: Passed to the task's constructor (e.g. ``n_train=64`` for a quick run).

    Returns:
        The task.

    Raises:
        KeyError: An unknown name, listing the known ones.
    """
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(list_tasks())}")
    return _TASKS[name](**kwargs)


def task_reward_sources() -> dict[str, Callable[..., Any]]:
    """Every reward-source factory the registered tasks bring, by prefix (see ``Task``)."""
    out: dict[str, Callable[..., Any]] = {}
    for factory in _TASKS.values():
        out.update(getattr(factory, "reward_sources", {}))
    return out


def task_environments() -> dict[str, Callable[..., Any]]:
    """Every multi-turn environment the registered tasks bring, by ``--environment`` name."""
    out: dict[str, Callable[..., Any]] = {}
    for factory in _TASKS.values():
        out.update(getattr(factory, "environments", {}))
    return out
