"""The reward side of the loop: ask for labels where the ensemble disagrees, refit ``r_hat``.

:class:`RewardLearner` does one round (pick queries, label them, fit, normalise) when it is
called; the training loop calls it between rollouts, which keeps a run reproducible.
:class:`AsyncRewardLearner` runs the same rounds in a background thread while the policy keeps
training, as the paper's asynchronous processes do (Christiano et al. 2017, section 2.2: "these
processes run asynchronously"); the loop picks up the new weights when a round finishes. With
people labelling in the feedback app, a round is mostly waiting, and the policy no longer stops
for it.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlhfkit.control.reward import (
    PreferenceData,
    RewardEnsemble,
    Segments,
    select_queries,
    train_reward_model,
)
from rlhfkit.losses import segment_preference_loss

Labeler = Callable[[Segments, Segments], Tensor]
"""Queried pairs -> (B,) ``mu`` (NaN where nobody answered); see :mod:`rlhfkit.control.labelers`."""


@torch.no_grad()
def reward_normaliser(model: RewardEnsemble, data: PreferenceData) -> tuple[float, float]:
    """(shift, scale): the mean reward of absorbing steps and the std over all labelled steps."""
    segs = Segments.cat([data.seg_1, data.seg_2])  # type: ignore[list-item]
    rewards = model.reward(segs.obs, segs.actions)  # (2|D|, K)
    shift = rewards[segs.absorbing].mean().item() if segs.absorbing.any() else rewards.mean().item()
    return shift, rewards.std().item() + 1e-8


@dataclass
class RewardUpdate:
    """What one round produced: the weights the policy should use from now on."""

    state: dict[str, Tensor]
    """The ensemble's ``state_dict`` (a copy)."""
    shift: float
    scale: float
    stats: dict[str, float]
    """``loss/reward``, ``rewards/accuracy`` (on all labels) and ``rewards/accuracy_new`` (on the
    pairs just labelled, before fitting on them)."""
    labels: int
    """Comparisons the weights were fitted on."""
    fit: int
    """Number of this fit (1, 2, ...)."""


class RewardLearner:
    """The comparisons ``D``, the ensemble and its optimiser; one :meth:`round` per refit.

    Args:
        model: The reward ensemble it fits (in place).
        labeler: Compares the queried pairs.
        epochs: Epochs over ``D`` per fit.
        learning_rate: Adam learning rate of the ensemble.
        rng: Source of the bootstrap resamples.
        on_labels: Called with ``(seg_1, seg_2, mu)`` of every newly labelled batch (the run
            writes them to ``comparisons.jsonl``).
    """

    def __init__(self, model: RewardEnsemble, labeler: Labeler, epochs: int,
                 learning_rate: float, rng: np.random.Generator,
                 on_labels: Callable[[Segments, Segments, Tensor], None] | None = None) -> None:
        self.model, self.labeler, self.epochs, self.rng = model, labeler, epochs, rng
        self.optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        self.data = PreferenceData()
        self.on_labels = on_labels
        self.fits = 0

    def round(self, seg_1: Segments, seg_2: Segments, n: int) -> RewardUpdate | None:
        """Label the ``n`` most disputed of the candidate pairs, refit on all of ``D``.

        Returns:
            The new weights, or None when no label came back and nothing was fitted.
        """
        idx = select_queries(self.model, seg_1, seg_2, n)
        q_1, q_2 = seg_1[idx], seg_2[idx]
        mu = self.labeler(q_1, q_2).float()
        answered = ~torch.isnan(mu)
        if not answered.any():
            return None
        q_1, q_2, mu = q_1[answered], q_2[answered], mu[answered]
        with torch.no_grad():  # accuracy on labels the model has not been fitted on yet
            _, diag = segment_preference_loss(self.model.reward(q_1.obs, q_1.actions),
                                              self.model.reward(q_2.obs, q_2.actions), mu)
        self.data.add(q_1, q_2, mu)
        if self.on_labels is not None:
            self.on_labels(q_1, q_2, mu)
        stats = train_reward_model(self.model, self.data, self.optimizer, self.epochs,
                                   rng=self.rng)
        stats["rewards/accuracy_new"] = diag["accuracy"].item()
        shift, scale = reward_normaliser(self.model, self.data)
        self.fits += 1
        return RewardUpdate({k: v.clone() for k, v in self.model.state_dict().items()},
                            shift, scale, stats, len(self.data), self.fits)


class AsyncRewardLearner:
    """Runs :meth:`RewardLearner.round` in a background thread on its own copy of the model.

    The training loop :meth:`submit` s candidate pairs when no round is running, keeps
    training, and :meth:`collect` s the newest :class:`RewardUpdate` when one is ready. An
    exception in the worker is raised again by the next :meth:`collect`.
    """

    def __init__(self, learner: RewardLearner) -> None:
        self.learner = learner
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self.pending = False
        """A round was submitted and its result not yet collected."""
        self._thread = threading.Thread(target=self._work, name="reward-learner", daemon=True)
        self._thread.start()

    @classmethod
    def around(cls, model: RewardEnsemble, **learner_kwargs: Any) -> AsyncRewardLearner:
        """A worker fitting a copy of ``model`` (the loop's own model is only ever loaded into)."""
        return cls(RewardLearner(copy.deepcopy(model), **learner_kwargs))

    def _work(self) -> None:
        torch.set_num_threads(1)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._results.put(self.learner.round(*job))
            except BaseException as err:  # noqa: BLE001 - handed to the loop, raised there
                self._results.put(err)

    def submit(self, seg_1: Segments, seg_2: Segments, n: int) -> None:
        """Start a round on these candidate pairs (only when none is pending)."""
        if self.pending:
            raise RuntimeError("a reward-learning round is still running")
        self.pending = True
        self._jobs.put((seg_1, seg_2, n))

    def collect(self, wait: bool = False) -> RewardUpdate | None:
        """The finished round's update (None if it is still running or fitted nothing)."""
        if not self.pending:
            return None
        try:
            result = self._results.get(block=wait)
        except queue.Empty:
            return None
        self.pending = False
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """Stop the worker (a labeler waiting for people is told to give up first)."""
        cancel = getattr(self.learner.labeler, "cancel", None)
        if cancel is not None:
            cancel.set()
        self._jobs.put(None)
        self._thread.join(timeout=60)
