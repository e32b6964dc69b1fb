"""Multi-turn environments: after each model turn the environment answers.

An RL episode in the MDP view of a conversation: the policy writes a turn, the environment
returns the next message (a simulated user's follow-up, or a tool's result), a reward and
whether the episode is over; the policy writes its next turn with everything so far in its
context, and so on (:func:`rlhfkit.train.episodes.run_episodes` lays the turns out as one
rollout, environment tokens masked out of the loss and the KL).

An :class:`Environment` starts an :class:`Episode` from a prompt; :meth:`Episode.step` reads
the model's turn and returns a :class:`Step`. A message is placed one of two ways:

- ``"tool"``: right after the model's text, inside the same assistant turn (the model stopped
  at one of the environment's ``stop`` strings, e.g. the end of a tool call, and goes on
  writing after the result);
- ``"user"``: as a new user turn of the chat template (the model ended its turn).

Built-in environments come with the tasks that use them (``Task.environments``): the
calculator and the simulated user of :mod:`rlhfkit.tasks.arithmetic`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Environment", "Episode", "Step"]

ROLES = ("tool", "user")


@dataclass
class Step:
    """What the environment returns after a model turn.

    Args:
        message: The next message (None when the episode is over).
        reward: The reward for the turn just written; it lands on the turn's last token.
        done: Whether the episode is over.
        role: Where ``message`` goes: ``tool`` (inside the assistant turn) or ``user``.
        info: Counts to log per episode, e.g. ``{"tool_calls": 1}`` (summed over turns).
    """

    message: str | None = None
    reward: float = 0.0
    done: bool = False
    role: str = "user"
    info: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Step.role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not self.done and self.message is None:
            raise ValueError("a Step that does not end the episode needs a message")


class Episode:
    """One episode's state; :meth:`step` is called once per model turn."""

    def step(self, text: str, ended: bool) -> Step:
        """The environment's answer to the model's turn.

        Args:
            text: The turn's text (without the end-of-turn token).
            ended: True when the model ended the turn itself (end of turn or a stop string),
                False when it was cut at the token limit.
        """
        raise NotImplementedError


class Environment:
    """Starts episodes; ``stop`` holds the strings that end a model turn early."""

    name: str = ""
    stop: tuple[str, ...] = ()
    """Strings after which the model's turn is cut and the environment answers (a tool call's
    closing tag); the end-of-turn token always ends a turn."""

    def start(self, prompt: Any) -> Episode:
        """A new episode on ``prompt``."""
        raise NotImplementedError
