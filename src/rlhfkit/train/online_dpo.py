"""Online DPO/IPO as an entry of the one RL loop: sample K, label, the pairwise loss on best vs worst.

Offline DPO learns from pairs that some other policy wrote; once the policy moves, those pairs
say little about its own mistakes. Online DPO labels the policy's own samples as it trains
(Guo et al. 2024, "Direct language model alignment from online AI feedback"; Xiong et al.
2024, "Iterative preference learning from human feedback"; TRL's ``OnlineDPOTrainer``). It is
the ``online-dpo`` entry of :mod:`rlhfkit.train.algorithms`, so each step of
:func:`rlhfkit.train.trainer.train_rl` is:

1. **sample** K responses to each of ``--batch-size`` prompts (a group), with the reference's
   log-probs (the loop's rollout);
2. **label** each group (:meth:`OnlineDPORun.score`): the task's simulated gold labeler
   (``--labeler gold``) or an AI judge (``judge:MODEL``, RLAIF) rank the group's distinct
   responses; a reward model (``rm:FOLDER``) or any reward source (``reward:SPEC``, the same
   specs as ``--reward-model``: ``py:FILE:FUNCTION``, ``http://URL``, ``task:NAME``, ...) score
   every response as the loop's reward sources do. Every group's labels go to ``labels.jsonl``
   in the run folder (one ranking per group, with its step);
3. **pair**: the best and the worst response of each group (the ``best_worst`` estimator); a
   group whose responses all tie, or are all the same text, gives no pair;
4. **update**: the pairwise ``--loss`` of offline DPO (``dpo``, ``ipo``, ``pref-ft``,
   ``unlikelihood``: :data:`rlhfkit.train.dpo.PAIRWISE_LOSSES`) on the pair's sequence
   log-probs against the reference, over ``--update-epochs`` x mini-batches of whole groups.

The reference is the loop's (``--ref-policy sft``: ``--reference``, or the starting policy: the
LoRA base with the adapter off, else a frozen copy) or the policy that sampled the batch
(``--ref-policy previous``: the old log-probs, which is what "the policy at the round's start"
of the former rounds loop becomes once a round is one rollout batch).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.records import MAX_K, Ranking
from rlhfkit.models.judge import AIJudge
from rlhfkit.rewards.sources import RewardTerms
from rlhfkit.rollout import Rollout
from rlhfkit.train.rl import RLRun


@dataclass
class OnlineDPOOptions:
    """Online DPO's labeler and reference (``rlhfkit online-dpo``); the loss is ``--loss``."""

    labeler: str = "gold"
    """Who picks chosen and rejected in each group: gold (the task's simulated labeler),
    rm:FOLDER (a reward model), judge:MODEL (an AI judge), or reward:SPEC (any --reward-model
    spec: py:FILE:FUNCTION, http://URL, task:NAME, ...)."""
    labeler_temperature: float = 0.1
    """Noise of the simulated gold labeler (Plackett–Luce temperature, in gold-score units)."""
    judge_criteria: str = ""
    """What the AI judge is told "better" means (default: the task's description)."""
    ref_policy: Literal["sft", "previous"] = "sft"
    """Reference of the pairwise loss: sft (the starting policy, or --reference) or previous
    (the policy that sampled each batch)."""


RETIRED_OPTIONS = {
    "rounds": "online DPO runs in the one RL loop, one rollout batch (sample, label, update) "
              "per step: use --max-steps",
    "prompts_per_round": "use --batch-size, the prompts sampled and labelled each step",
    "samples_per_prompt": "use --num-samples, the responses sampled per prompt",
    "ref_batch_size": "the reference and labelling passes are cut by --micro-batch-size or "
                      "--micro-batch-tokens",
    "grad_accum": "use --micro-batch-size or --micro-batch-tokens (the gradients accumulate "
                  "over micro-batches into one optimizer step)",
    "group_by_length": "use --micro-batch-tokens (short sequences share a forward)",
    "log_every": "the RL loop logs every step",
    "desirable_weight": "KTO is offline only (rlhfkit dpo --loss kto); online DPO trains on pairs",
    "undesirable_weight": "KTO is offline only (rlhfkit dpo --loss kto); online DPO trains on "
                          "pairs",
}
"""Options of the former rounds loop of ``rlhfkit online-dpo`` and what replaces each."""

RANKING_LABELERS = ("gold", "judge:")
REWARD_LABELERS = ("rm:", "reward:")


def check_online_dpo(cfg: Any) -> None:
    """Online DPO's rules between options (run before any model loads)."""
    if cfg.loss == "kto":
        raise ConfigError("--loss kto is not an online-dpo loss: KTO learns from 👍/👎 on "
                          "single responses, online DPO from pairs; choose dpo, ipo, pref-ft "
                          "or unlikelihood (or rlhfkit dpo --loss kto on labelled data)")
    spec = cfg.labeler
    if not (spec == "gold" or spec.startswith(("judge:", *REWARD_LABELERS))) \
            or spec.endswith(":"):
        raise ConfigError(f"--labeler must be gold, rm:FOLDER, judge:MODEL or reward:SPEC, "
                          f"got {spec!r}")
    if cfg.num_samples > MAX_K:
        raise ConfigError(f"--num-samples must be <= {MAX_K} for online-dpo: a group's labels "
                          f"are one ranking of at most {MAX_K} responses")


class Labeler(Protocol):
    """Anything that ranks the responses to each prompt (SimulatedLabeler, AIJudge)."""

    def rank_batch(
        self, prompts: Sequence[Any], responses: Sequence[Sequence[str]]
    ) -> list[Ranking]:
        """One ranking per prompt."""
        ...


def build_labeler(cfg: Any, task: Any) -> Labeler:
    """The ranking labeler of ``--labeler gold`` or ``judge:MODEL``."""
    if cfg.labeler == "gold":
        if task is None:
            raise ConfigError("--labeler gold needs a task (--data task:NAME); give "
                              "rm:FOLDER, judge:MODEL or reward:SPEC for prompts from a file")
        return task.labeler(seed=cfg.seed, temperature=cfg.labeler_temperature)
    criteria = cfg.judge_criteria or (task.description if task is not None else "")
    return AIJudge(cfg.labeler[len("judge:"):], criteria=criteria)


def distinct_responses(texts: Sequence[str], limit: int = MAX_K) -> list[str]:
    """The non-empty distinct responses in order, stripped (a ranking holds 2..9 of them)."""
    seen: list[str] = []
    for t in texts:
        t = t.strip()
        if t and t not in seen:
            seen.append(t)
    return seen[:limit]


def ranking_scores(ranking: Ranking) -> list[float]:
    """One score per response of a ranking, higher is better (its scores, or minus its ranks)."""
    if ranking.scores is not None:
        return [float(s) for s in ranking.scores]
    return [-float(r) for r in ranking.ranks or []]


def scores_by_text(texts: Sequence[str], responses: Sequence[str],
                   scores: Sequence[float]) -> list[float]:
    """The score of each of ``texts`` (one group) from the labelled ``responses``.

    Copies of one response (up to surrounding spaces) get the same score, so they are never a
    pair. A response with no label (an empty one, which a labeler cannot rank) goes below every
    labelled one; with no label at all every response gets 0 (no pair).
    """
    by_text = dict(zip(responses, scores))
    low = min(scores) - 1.0 if scores else 0.0
    return [by_text.get(t.strip(), low) for t in texts]


def same_text_same_score(scores: torch.Tensor, texts: Sequence[str], k: int) -> torch.Tensor:
    """``scores`` (B,) with every copy of a response in a group given its first copy's score."""
    out = scores.clone()
    for g in range(0, len(texts), k):
        first: dict[str, int] = {}
        for i in range(g, g + k):
            j = first.setdefault(texts[i].strip(), i)
            out[i] = out[j]
    return out


class OnlineDPORun(RLRun):
    """:class:`RLRun` of online DPO: each group is labelled, its labels written down.

    Args:
        cfg: The run's options (with :class:`OnlineDPOOptions`).
        stage: Stage name for logs.
        reward_fn: A programmatic reward that labels instead of ``--labeler`` (as it replaces
            ``--reward-model`` for the other algorithms).
        **kwargs: The rest of :class:`RLRun`'s arguments.
    """

    def __init__(self, cfg: Any, stage: str, reward_fn: Any = None, **kwargs: Any) -> None:
        spec = cfg.labeler
        self.label_name = "reward_fn" if reward_fn is not None else spec
        ranks = reward_fn is None and spec.startswith(RANKING_LABELERS)
        if ranks:  # the payoff is the labeler's ranking, not a reward source
            reward_fn = lambda p, t, r: [0.0] * len(t)  # noqa: E731
        elif reward_fn is None:  # rm:FOLDER, reward:SPEC: the loop's reward sources
            cfg = dataclasses.replace(cfg, reward_model=spec.partition(":")[2])
        super().__init__(cfg, stage, reward_fn=reward_fn, **kwargs)
        self.labeler: Labeler | None = build_labeler(cfg, self.task) if ranks else None
        name = "labels.jsonl" if self.rank == 0 else f"labels.rank{self.rank}.jsonl"
        self.labels_path = self.out / name
        """Every group's labels (each process writes its own share)."""
        if not cfg.resume and self.labels_path.exists():  # an earlier run's, overwritten
            self.labels_path.unlink()
        self._rankings: dict[int, Ranking] = {}

    @torch.no_grad()
    def score(self, rollout: Rollout) -> tuple[RewardTerms, dict[str, float]]:
        """Label each group; ``label/pairs`` is the share of groups that give a pair."""
        k, texts = self.k, rollout.texts
        if self.labeler is None:
            terms = self.rewards(rollout)
            raw, scores = terms.raw.float(), terms.scores.float()
        else:
            raw = scores = self.ranked_scores(rollout)
        raw = same_text_same_score(raw, texts, k)
        scores = same_text_same_score(scores, texts, k)
        self.write_labels(rollout, raw)
        grouped = scores.view(-1, k)
        has_pair = grouped.max(-1).values > grouped.min(-1).values
        terms = RewardTerms.holistic(raw.to(self.device), scores.to(self.device),
                                     rollout.response_mask)
        return terms, {"label/pairs": float(has_pair.float().mean())}

    def ranked_scores(self, rollout: Rollout) -> torch.Tensor:
        """(B,) scores from the ranking labeler, one call for the batch's groups."""
        k, texts, prompts = self.k, rollout.texts, rollout.prompts
        groups = [distinct_responses(texts[g:g + k]) for g in range(0, len(texts), k)]
        asked = [n for n, rs in enumerate(groups) if len(rs) >= 2]
        rankings = self.labeler.rank_batch([prompts[n * k] for n in asked],
                                           [groups[n] for n in asked]) if asked else []
        self._rankings = dict(zip(asked, rankings))
        out: list[float] = []
        for n in range(len(groups)):
            ranking = self._rankings.get(n)
            responses = ranking.responses if ranking is not None else []
            labelled = ranking_scores(ranking) if ranking is not None else []
            out += scores_by_text(texts[n * k:(n + 1) * k], responses, labelled)
        return torch.tensor(out, dtype=torch.float32)

    def write_labels(self, rollout: Rollout, scores: torch.Tensor) -> None:
        """Append one ranking per group with 2+ distinct responses to the labels file."""
        k, texts = self.k, rollout.texts
        rankings = self._rankings if self.labeler is not None else {}
        with open(self.labels_path, "a", encoding="utf-8") as f:
            for n in range(len(texts) // k):
                record = rankings.get(n) or self._score_ranking(rollout, scores, n)
                if record is None:
                    continue
                record.meta = {**record.meta, "step": self.step + 1}
                f.write(json.dumps({"kind": record.KIND, **record.to_dict()},
                                   ensure_ascii=False) + "\n")
        self._rankings = {}

    def _score_ranking(self, rollout: Rollout, scores: torch.Tensor, n: int) -> Ranking | None:
        """The scores of group ``n`` from a reward labeler as a ranking (None: < 2 responses)."""
        k = self.k
        responses, values = [], []
        for i in range(n * k, (n + 1) * k):
            text = rollout.texts[i].strip()
            if text and text not in responses and len(responses) < MAX_K:
                responses.append(text)
                values.append(float(scores[i]))
        if len(responses) < 2 or self.labeler is not None:
            return None
        return Ranking(prompt=rollout.prompts[n * k], responses=responses, scores=values,
                       annotator=self.label_name)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The loop's evaluation; without reward sources (gold, judge) no ``eval/reward``."""
        metrics = super().evaluate()
        if self.labeler is not None:
            metrics.pop("eval/reward", None)
        return metrics
