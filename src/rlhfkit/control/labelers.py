"""Who compares the segments: the synthetic oracle, or people in the feedback app.

A labeler is called with the queried pairs and returns ``mu``, the probability mass on the first
segment (1, 0 or 1/2 for "equally good"), or NaN for a pair nobody answered: the paper leaves
comparisons the human could not make out of the data set (Christiano et al. 2017, section
2.2.2: "if the human indicates that the segments are incomparable, the comparison is not
included").
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from typing import Any

import torch
from torch import Tensor

from rlhfkit.control.reward import Segments, oracle_preferences


class OracleLabeler:
    """Synthetic labels from the true returns (:func:`oracle_preferences`)."""

    def __init__(self, noise: float = 0.0, generator: torch.Generator | None = None) -> None:
        self.noise, self.generator = noise, generator

    def __call__(self, seg_1: Segments, seg_2: Segments) -> Tensor:
        """(B,) ``mu`` for the B pairs."""
        return oracle_preferences(seg_1, seg_2, self.noise, self.generator)

    def close(self) -> None:
        """Nothing to release."""


def mu_of_answer(answer: dict) -> float:
    """``mu`` of a stored ``pairwise`` answer (canonical terms, see feedback.questions).

    ``choice`` 0 (the item's first response, the first segment) -> 1, 1 -> 0, a tie or "both
    bad" -> 1/2 (equally preferable).
    """
    choice = answer["choice"]
    if choice == 0:
        return 1.0
    if choice == 1:
        return 0.0
    return 0.5


class AppLabeler:
    """People compare the segments in the feedback web app (``rlhfkit label serve``).

    Each queried pair becomes an item of a ``pairwise`` project in the feedback store: its two
    responses carry the segments as animated GIFs (:mod:`rlhfkit.control.render`), and the item's
    ``meta`` keeps the run, the pair's number and the true returns (for measuring the
    annotators against the true reward later; ``meta`` is never sent to annotators). The labeler
    then polls the store until every pair has ``overlap`` answers or ``timeout`` seconds have
    passed; a pair with several answers gets the mean of their ``mu``, a pair with none NaN.

    Args:
        db: Feedback store URL (the one ``rlhfkit label serve --db`` serves).
        project: Project name; created (``pairwise``) if missing.
        env_id: Environment the segments come from (for drawing them).
        prompt: What annotators are asked; None = :data:`~rlhfkit.control.render.TASK_PROMPTS`.
        overlap: Annotators per pair.
        timeout: Seconds to wait for the answers to one batch of queries.
        poll_interval: Seconds between two looks at the store.
        width: Width of the animations in pixels.
        fps: Playback speed of the animations (None: the environment's own).
    """

    def __init__(self, db: str, project: str, env_id: str, prompt: str | None = None,
                 overlap: int = 1, timeout: float = 3600.0, poll_interval: float = 2.0,
                 width: int = 240, fps: float | None = None) -> None:
        from rlhfkit.control.render import TASK_PROMPTS, SegmentRenderer
        from rlhfkit.feedback.store import Store, StoreError

        self.renderer = SegmentRenderer(env_id, width=width, fps=fps)
        self.store = Store(db)
        self.project, self.timeout, self.poll_interval = project, timeout, poll_interval
        self.prompt = prompt or TASK_PROMPTS.get(
            env_id, "Which clip is closer to what the task should achieve?")
        try:
            self.store.create_project(
                project, ["pairwise"], overlap=overlap,
                guidelines="Each clip is a short piece of an agent's behaviour, looped. Pick the "
                           "clip that does the task better; Tie if they are equally good; Skip "
                           "if you cannot tell.")
        except StoreError as err:
            if err.status != 409:
                raise
            if self.store.project(project).questions != ["pairwise"]:
                raise ValueError(f"feedback project {project!r} exists and asks "
                                 f"{self.store.project(project).questions}, not ['pairwise']") from None
        self.overlap = self.store.project(project).overlap
        self.run_id = secrets.token_hex(4)
        self.asked = 0
        self.cancel = threading.Event()
        """Set to stop waiting (the run is ending)."""

    def _item(self, seg_1: Segments, seg_2: Segments, i: int) -> dict[str, Any]:
        n = self.asked + i
        clips = [self.renderer.data_uri(s.obs[i].numpy(), s.actions[i].numpy(),
                                        s.absorbing[i].numpy()) for s in (seg_1, seg_2)]
        returns = [float(s.true_rewards[i].sum()) for s in (seg_1, seg_2)]
        return {"id": f"{self.run_id}-{n}", "prompt": self.prompt,
                "responses": [{"text": f"Clip {n}.{k + 1}", "media": clip}
                              for k, clip in enumerate(clips)],
                "meta": {"control_run": self.run_id, "pair": n, "true_returns": returns}}

    def answers(self, ids: list[str]) -> dict[str, list[float]]:
        """``mu`` of every answer so far to the items with these external ids."""
        wanted, out = set(ids), {}
        for label, item, _user in self.store.label_rows(self.project):
            if item.external_id in wanted:
                out.setdefault(item.external_id, []).append(mu_of_answer(label.answers["pairwise"]))
        return out

    def __call__(self, seg_1: Segments, seg_2: Segments) -> Tensor:
        """Put the B pairs in the app, wait for answers; (B,) ``mu`` (NaN: no answer in time)."""
        items = [self._item(seg_1, seg_2, i) for i in range(len(seg_1))]
        self.asked += len(items)
        self.store.add_items(self.project, items)
        ids = [it["id"] for it in items]
        deadline = time.monotonic() + self.timeout
        while True:
            got = self.answers(ids)
            done = all(len(got.get(i, ())) >= self.overlap for i in ids)
            if done or time.monotonic() >= deadline or self.cancel.is_set():
                break
            self.cancel.wait(self.poll_interval)
        return torch.tensor([sum(got[i]) / len(got[i]) if got.get(i) else math.nan
                             for i in ids])

    def close(self) -> None:
        """Stop waiting and release the store and the renderer."""
        self.cancel.set()
        self.renderer.close()
        self.store.close()
