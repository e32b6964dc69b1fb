"""RL with verifiable rewards: DAPO's recipe on top of GRPO (Yu et al. 2025).

Four of DAPO's changes to GRPO, each an option of ``rlhfkit grpo``:

- **clip-higher** (sec. 3.1): a larger upper clip edge than lower, ``--clip-range 0.2
  --clip-range-high 0.28``, so unlikely tokens that turn out good can gain probability faster
  and the policy's entropy does not collapse (:func:`rlhfkit.losses.grpo_loss`).
- **token-level loss** (sec. 3.3): ``--loss-type dapo``, every token of the generation batch
  weighs the same (:func:`rlhfkit.losses.aggregate_token_loss`).
- **dynamic sampling** (sec. 3.2): a group whose samples all get the same reward (all right or
  all wrong) has advantages of 0 and teaches nothing; ``--dynamic-sampling drop`` leaves such
  groups out of the update, ``refill`` samples groups for more prompts until ``--batch-size``
  groups differ (or ``--max-refill-rounds`` extra rounds are spent).
- **overlong reward shaping** (sec. 3.4): ``--overlong-buffer N`` adds a reward that falls from
  0 to ``-overlong_penalty`` over the last N tokens before ``--max-new-tokens``
  (:func:`rlhfkit.losses.overlong_penalty`; logged as ``reward/overlong``), and
  ``--overlong-filter`` leaves responses that were cut at the limit out of the loss.

Metrics: ``rlvr/signal_groups`` (share of the first batch's groups whose rewards differ),
``rlvr/kept_groups`` (groups trained on), ``rlvr/sampled_groups`` (groups sampled, refills
included), ``rlvr/truncated`` (share of responses cut at the limit).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhfkit.config import ConfigError
from rlhfkit.losses import groups_with_signal, overlong_penalty
from rlhfkit.rewards.shaping import sequence_rewards
from rlhfkit.rewards.sources import RewardSource, RewardTerms
from rlhfkit.rollout import Rollout, concat_rollouts


@dataclass
class RLVROptions:
    """DAPO's dynamic sampling and overlong shaping (``rlhfkit grpo``; docs/verifiable.md)."""

    dynamic_sampling: Literal["off", "drop", "refill"] = "off"
    """Groups whose rewards are all equal (no gradient signal): off (train on them), drop (leave
    them out of the update) or refill (sample more prompts until --batch-size groups differ;
    DAPO's dynamic sampling)."""
    max_refill_rounds: int = 3
    """--dynamic-sampling refill: extra sampling rounds per step at most."""
    overlong_buffer: int = 0
    """DAPO's overlong reward shaping: over the last this many tokens before --max-new-tokens
    the reward falls linearly to -(--overlong-penalty) (0 = off)."""
    overlong_penalty: float = 1.0
    """The largest overlong punishment (at --max-new-tokens)."""
    overlong_filter: bool = False
    """Leave responses cut at --max-new-tokens out of the loss (DAPO's overlong filtering)."""


def check_rlvr(cfg: Any, world: int = 1) -> None:
    """Clear errors for RLVR options that cannot work together."""
    mode = getattr(cfg, "dynamic_sampling", "off")
    if mode != "off" and world > 1:
        raise ConfigError("--dynamic-sampling runs on one process for now (each process would "
                          "keep a different number of groups)")
    if mode == "refill" and getattr(cfg, "async_generation", False):
        raise ConfigError("--dynamic-sampling refill samples more groups in the step itself; "
                          "it does not combine with --async-generation")
    if getattr(cfg, "overlong_buffer", 0) and not 0 < cfg.overlong_buffer <= cfg.max_new_tokens:
        raise ConfigError(f"--overlong-buffer must be in 1..--max-new-tokens "
                          f"({cfg.max_new_tokens}), got {cfg.overlong_buffer}")


def overlong_source(cfg: Any) -> RewardSource:
    """The ``overlong`` reward source: DAPO's soft overlong punishment on the last token."""

    def fn(rollout: Rollout) -> list[list[tuple[int, float]]]:
        lengths = rollout.response_mask.long().sum(-1).cpu()
        # a response cut at the limit counts as too long (|y| > L_max in eq. 13)
        lengths = torch.where(rollout.ended.cpu(), lengths, lengths + 1)
        penalty = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer,
                                   cfg.overlong_penalty)
        return sequence_rewards(penalty, rollout.response_mask.cpu())

    return RewardSource("overlong", fn)


def concat_terms(terms: list[RewardTerms]) -> RewardTerms:
    """The reward terms of several rollouts, in order (as :func:`concat_rollouts`)."""
    if len(terms) == 1:
        return terms[0]
    keys = terms[0].by_source.keys()
    return RewardTerms(torch.cat([t.raw for t in terms]), torch.cat([t.scores for t in terms]),
                       [[row for t in terms for row in t.dense[s]]
                        for s in range(len(terms[0].dense))],
                       list(terms[0].weights),
                       {k: torch.cat([t.by_source[k] for t in terms]) for k in keys})


def _signal_rows(terms: RewardTerms, k: int) -> list[int]:
    keep = groups_with_signal(terms.scores.detach().float().cpu().view(-1, k))
    return [g * k + j for g in keep.nonzero().flatten().tolist() for j in range(k)]


def dynamic_batch(cfg: Any, run: Any, step: int, rollout: Rollout, terms: RewardTerms,
                  policy_logprobs: bool) -> tuple[Rollout, RewardTerms, dict[str, float]]:
    """The groups of ``rollout`` to train on under ``--dynamic-sampling`` (see the module).

    Returns the kept rollout and its terms (possibly empty) and the ``rlvr/`` metrics.
    """
    k = cfg.num_samples
    rows = _signal_rows(terms, k)
    n_groups = len(rollout) // k
    metrics = {"rlvr/signal_groups": len(rows) / k / max(n_groups, 1)}
    kept_r, kept_t = [rollout.select(rows)], [terms.select(rows)]
    sampled, have = n_groups, len(rows) // k
    rounds = cfg.max_refill_rounds if cfg.dynamic_sampling == "refill" else 0
    for round_ in range(1, rounds + 1):
        if have >= cfg.batch_size:
            break
        rng = random.Random(cfg.seed * 1_000_003 + step * 7_919 + round_)
        picks = rng.sample(range(len(run.train_prompts)), min(cfg.batch_size,
                                                              len(run.train_prompts)))
        prompts = [run.train_prompts[i] for i in picks for _ in range(k)]
        seed = (cfg.seed * 1_000_003 + step * 7_919 + round_ * 104_729) % 2**31
        extra = run.score_rollout(run.sample_responses(prompts, seed),
                                  policy_logprobs=policy_logprobs)
        extra_terms = run.rewards(extra)
        extra_rows = _signal_rows(extra_terms, k)
        kept_r.append(extra.select(extra_rows))
        kept_t.append(extra_terms.select(extra_rows))
        sampled += len(picks)
        have += len(extra_rows) // k
    out_r = concat_rollouts([r for r in kept_r if len(r)] or kept_r[:1], run.tokenizer.pad_token_id)
    out_t = concat_terms([t for t, r in zip(kept_t, kept_r) if len(r)] or kept_t[:1])
    if len(out_r) > cfg.batch_size * k:
        top = list(range(cfg.batch_size * k))
        out_r, out_t = out_r.select(top), out_t.select(top)
    metrics["rlvr/kept_groups"] = len(out_r) / k
    metrics["rlvr/sampled_groups"] = float(sampled)
    return out_r, out_t, metrics


def loss_mask(cfg: Any, rollout: Rollout) -> torch.Tensor:
    """The response mask of the loss, without the responses cut at the limit (overlong filter)."""
    mask = rollout.response_mask
    if getattr(cfg, "overlong_filter", False):
        mask = mask & rollout.ended.to(mask.device)[:, None]
    return mask
