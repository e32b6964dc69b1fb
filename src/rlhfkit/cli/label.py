"""``rlhfkit label …``: the feedback app's commands (:mod:`rlhfkit.feedback.cli`), with a sampler.

The app never loads a model itself; ``create-project --generate-from MODEL`` gets its responses
from the policy sampler made here (:func:`rlhfkit.rollout.generate_responses`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from rlhfkit.feedback.cli import register
from rlhfkit.rollout import generate_responses


def policy_sampler(args: argparse.Namespace) -> Callable[[Sequence[Any], int], list[list[str]]]:
    """``generate(prompts, k)`` sampling from ``--generate-from`` with the command's settings."""

    def generate(prompts: Sequence[Any], k: int) -> list[list[str]]:
        return generate_responses(args.generate_from, prompts, k,
                                  max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p,
                                  system_prompt=args.system_prompt, seed=args.seed)

    return generate


def register_label(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``label`` command and its actions."""
    register(subparsers, sampler=policy_sampler)
