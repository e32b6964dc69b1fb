"""Step 2: reward models from comparisons, rankings, binary and score feedback.

Items are *groups*: all comparisons of one ranking (or up to ``pairs_per_group`` plain
comparisons of one prompt) with their distinct responses. A group is never split across
batches, so the C(K,2) pairs of a K-ranking are in the same batch with weight 1/C(K,2)
(Ouyang et al. 2022, eq. 1), and each distinct response is run through the model once: a
ranking of K costs K forward passes instead of the 2*C(K,2) that pair-by-pair training needs.

Score (Likert) records train one of two ways (``--score-mode``): ``pairs`` (default) turns the
scored responses of each prompt into all their pairs, the higher score chosen, weight
1/C(K,2), margin the score gap (:func:`rlhfkit.data.records.score_pairs`), so they train and
evaluate exactly like a ranking; ``regression`` fits the reward to the standardised score by
squared error (each score record one unit), and saves the score's mean and std in the config so
``mean + std * r`` reads back as a score.

Loss per group: ``sum_pairs w * BT(r_c, r_r)`` (+ centring penalty) + ``sum_points w * logistic``
+ ``sum_targets w * (r - t)^2``, averaged over the global batch by total weight. The held-out
accuracy (chosen > rejected strictly, ties counted wrong) is logged at each evaluation and
written to ``eval.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as cfglib
from rlhfkit.data.chat import encode_pair, pad
from rlhfkit.data.records import BinaryFeedback, Record, ScoreFeedback, as_comparisons, score_pairs
from rlhfkit.data.splits import prompt_key
from rlhfkit.losses import (
    bradley_terry_loss,
    pointwise_loss,
    reward_centering_penalty,
    score_regression_loss,
)
from rlhfkit.models.loading import prepare_for_training
from rlhfkit.models.reward import RewardModel
from rlhfkit.train.inputs import LabelWeightOptions, stage_inputs, weigh_labels
from rlhfkit.train.loop import FSDPOptions, Loop, ModelOptions, Run, TrainConfig, held_out_summary
from rlhfkit.train.sharding import share_batches


@cfglib.stage_defaults(output_dir="runs/rm", learning_rate=2e-5, batch_size=4)
@dataclass
class RMConfig(FSDPOptions, LabelWeightOptions, TrainConfig):
    """Reward-model training (``rlhfkit rm``)."""

    center_rewards: float = 0.0
    """Weight of the (r_c + r_r)^2 penalty that keeps rewards centred (0 = off)."""
    use_margin: bool = True
    """Use the comparisons' margins, when given, in the Bradley–Terry loss."""
    pairs_per_group: int = 8
    """Plain comparisons of one prompt batched together (their shared responses run once)."""
    score_mode: Literal["pairs", "regression"] = "pairs"
    """How score (Likert) records train: pairs (within a prompt, higher score chosen, margin =
    score gap) or regression (squared error to the standardised score)."""


SCORE_MODES = ("pairs", "regression")


@dataclass
class Group:
    """Distinct sequences of one prompt and the judgements between them."""

    sequences: list[list[int]] = field(default_factory=list)
    pairs: list[tuple[int, int, float, float, bool]] = field(default_factory=list)
    """(chosen index, rejected index, weight, margin, tie)."""
    points: list[tuple[int, float, float]] = field(default_factory=list)
    """(index, label 1/0, weight) for binary feedback."""
    targets: list[tuple[int, float, float]] = field(default_factory=list)
    """(index, standardised score, weight) for score feedback under --score-mode regression."""

    @property
    def num_tokens(self) -> int:
        """Tokens the group costs in one forward pass."""
        return sum(len(s) for s in self.sequences)


def build_groups(
    records: list[Record],
    tokenizer: Any,
    max_length: int,
    system_prompt: str | None = None,
    pairs_per_group: int = 8,
    train_on_ties: bool = True,
    use_margin: bool = True,
    score_mode: str = "pairs",
    score_stats: tuple[float, float] | None = None,
) -> tuple[list[Group], dict[str, int]]:
    """Turn records into groups; returns the groups and counts.

    Counts: ``pairs``, ``ties``, ``rankings``, ``binary``, and for score records ``score_pairs``
    and ``score_unpaired`` (the only scored response to a prompt: no pair) or ``score_targets``.
    ``score_stats`` is the (mean, std) that standardises scores under ``regression``.
    """
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
    scores = [r for r in records if isinstance(r, ScoreFeedback)]
    prefs = [r for r in records if not isinstance(r, BinaryFeedback | ScoreFeedback)]
    counts = {"score_pairs": 0, "score_unpaired": 0, "score_targets": 0}
    if scores and score_mode == "pairs":
        derived = score_pairs(scores)
        prefs += derived.pairs
        counts.update(score_pairs=len(derived.pairs), score_unpaired=derived.n_unpaired)
    comparisons = as_comparisons(prefs, drop_ties=not train_on_ties) if prefs else None
    cache: dict[str, list[int]] = {}

    def encode(prompt: Any, response: str) -> list[int]:
        return encode_pair(tokenizer, prompt, response, max_length, system_prompt, cache).input_ids

    groups = _pair_groups(comparisons.pairs if comparisons else [], encode, pairs_per_group,
                          use_margin)
    binary = [r for r in records if isinstance(r, BinaryFeedback)]
    for r in binary:
        groups.append(Group(sequences=[encode(r.prompt, r.response)],
                            points=[(0, 1.0 if r.label else 0.0, 1.0)]))
    if scores and score_mode == "regression":
        mean, std = score_stats if score_stats is not None else standardise(scores)
        for r in scores:
            groups.append(Group(sequences=[encode(r.prompt, r.response)],
                                targets=[(0, (r.score - mean) / std, 1.0)]))
        counts["score_targets"] = len(scores)
    counts.update({
        "pairs": len(comparisons.pairs) if comparisons else 0,
        "ties": comparisons.n_ties if comparisons else 0,
        "rankings": comparisons.n_rankings if comparisons else 0,
        "binary": len(binary),
    })
    return groups, counts


def _pair_groups(pairs: list[Any], encode: Any, pairs_per_group: int,
                 use_margin: bool) -> list[Group]:
    """Comparisons into groups, each distinct response of a group encoded once.

    A group is a ranking's (or a prompt's scores') pairs, else up to ``pairs_per_group`` plain
    comparisons of one prompt.
    """
    by_key: dict[tuple[str, str], list[Any]] = {}
    for c in pairs:
        key = ("g", c.group) if c.group is not None else ("p", prompt_key(c.prompt))
        by_key.setdefault(key, []).append(c)
    groups: list[Group] = []
    for key, group_pairs in by_key.items():
        size = len(group_pairs) if key[0] == "g" else pairs_per_group
        for start in range(0, len(group_pairs), size):
            group, seen = Group(), {}
            for c in group_pairs[start:start + size]:
                ij = []
                for response in (c.chosen, c.rejected):
                    if response not in seen:
                        seen[response] = len(group.sequences)
                        group.sequences.append(encode(c.prompt, response))
                    ij.append(seen[response])
                margin = float(c.margin) if (use_margin and c.margin is not None) else 0.0
                group.pairs.append((ij[0], ij[1], float(c.weight), margin, bool(c.tie)))
            groups.append(group)
    return groups


def standardise(scores: list[ScoreFeedback]) -> tuple[float, float]:
    """(mean, std) of the records' scores; std 1 when they are all equal."""
    values = [r.score for r in scores]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return mean, std or 1.0


def collate_groups(groups: list[Group], pad_id: int) -> dict[str, Any]:
    """Flatten groups into one padded batch with index tensors for pairs and points."""
    sequences: list[list[int]] = []
    pair_rows, point_rows, target_rows = [], [], []
    for g in groups:
        offset = len(sequences)
        sequences += g.sequences
        pair_rows += [(i + offset, j + offset, w, m, t) for i, j, w, m, t in g.pairs]
        point_rows += [(i + offset, y, w) for i, y, w in g.points]
        target_rows += [(i + offset, y, w) for i, y, w in g.targets]
    input_ids, attention_mask = pad(sequences, pad_id)
    pairs = list(zip(*pair_rows)) if pair_rows else [[], [], [], [], []]
    points = list(zip(*point_rows)) if point_rows else [[], [], []]
    targets = list(zip(*target_rows)) if target_rows else [[], [], []]
    batch = {
        "input_ids": input_ids,  # (S, T) every distinct sequence once
        "attention_mask": attention_mask,  # (S, T)
        "chosen_idx": torch.tensor(pairs[0], dtype=torch.long),  # (P,)
        "rejected_idx": torch.tensor(pairs[1], dtype=torch.long),  # (P,)
        "pair_weight": torch.tensor(pairs[2], dtype=torch.float32),  # (P,)
        "margin": torch.tensor(pairs[3], dtype=torch.float32),  # (P,)
        "tie": torch.tensor(pairs[4], dtype=torch.bool),  # (P,)
        "point_idx": torch.tensor(points[0], dtype=torch.long),  # (Q,)
        "point_label": torch.tensor(points[1], dtype=torch.float32),  # (Q,)
        "point_weight": torch.tensor(points[2], dtype=torch.float32),  # (Q,)
        "target_idx": torch.tensor(targets[0], dtype=torch.long),  # (U,)
        "target": torch.tensor(targets[1], dtype=torch.float32),  # (U,)
        "target_weight": torch.tensor(targets[2], dtype=torch.float32),  # (U,)
        "num_tokens": int(attention_mask.sum()),
    }
    batch["num_units"] = float(batch["pair_weight"].sum() + batch["point_weight"].sum()
                               + batch["target_weight"].sum())
    return batch


def rm_losses(
    rewards: torch.Tensor, batch: dict[str, Any], center_rewards: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted loss sum and metric sums of a batch, given the rewards (S,) of its sequences."""
    loss = rewards.new_zeros(())
    metrics: dict[str, torch.Tensor] = {}
    if len(batch["chosen_idx"]):
        chosen, rejected = rewards[batch["chosen_idx"]], rewards[batch["rejected_idx"]]
        w = batch["pair_weight"]
        bt, diag = bradley_terry_loss(chosen, rejected, batch["margin"], batch["tie"])
        loss = loss + (w * bt).sum()
        if center_rewards:
            loss = loss + center_rewards * (w * reward_centering_penalty(chosen, rejected)).sum()
        metrics["rewards/accuracy"] = (w * diag["accuracy"]).sum().detach()
        metrics["rewards/margins"] = (w * diag["margin"]).sum()
    if len(batch["point_idx"]):
        pl, pdiag = pointwise_loss(rewards[batch["point_idx"]], batch["point_label"])
        loss = loss + (batch["point_weight"] * pl).sum()
        metrics["rewards/binary_accuracy"] = (batch["point_weight"] * pdiag["accuracy"]).sum()
    if len(batch["target_idx"]):
        sl, sdiag = score_regression_loss(rewards[batch["target_idx"]], batch["target"])
        loss = loss + (batch["target_weight"] * sl).sum()
        metrics["rewards/score_abs_error"] = (batch["target_weight"] * sdiag["abs_error"]).sum()
    return loss, metrics


@torch.no_grad()
def score_groups(loop: Loop, groups: list[Group], pad_id: int, batch_size: int) -> dict[str, float]:
    """Held-out metrics over groups, sharded over processes.

    Accuracy here is per pair, unweighted: the share of held-out judgements where the chosen
    response gets the strictly higher reward (ties count wrong). Under ``--fsdp`` every
    process runs as many batches (:func:`rlhfkit.train.sharding.share_batches`).
    """
    model = loop.model
    model.eval()
    sums = {"correct": 0.0, "pairs": 0.0, "loss": 0.0, "bin_correct": 0.0, "points": 0.0,
            "targets": 0.0, "sq_err": 0.0, "r": 0.0, "t": 0.0, "rr": 0.0, "tt": 0.0, "rt": 0.0}
    for part in share_batches(groups, loop.rank, loop.world, batch_size, loop.run_.sharded):
        batch = collate_groups(part or groups[:1], pad_id)  # []: run one, ignore it
        with loop.accelerator.autocast():
            rewards = model(batch["input_ids"], batch["attention_mask"])
        if not part:
            continue
        if len(batch["chosen_idx"]):
            bt, diag = bradley_terry_loss(rewards[batch["chosen_idx"]],
                                          rewards[batch["rejected_idx"]], None, batch["tie"])
            sums["correct"] += float(diag["accuracy"].sum())
            sums["pairs"] += len(batch["chosen_idx"])
            sums["loss"] += float(bt.sum())
        if len(batch["point_idx"]):
            _, pdiag = pointwise_loss(rewards[batch["point_idx"]], batch["point_label"])
            sums["bin_correct"] += float(pdiag["accuracy"].sum())
            sums["points"] += len(batch["point_idx"])
        if len(batch["target_idx"]):
            r, t = rewards[batch["target_idx"]].double(), batch["target"].double()
            sums["targets"] += len(r)
            sums["sq_err"] += float(((r - t) ** 2).sum())
            for name, value in (("r", r), ("t", t), ("rr", r * r), ("tt", t * t), ("rt", r * t)):
                sums[name] += float(value.sum())
    total = loop.reduce_sums(sums)
    out = {}
    if total["pairs"]:
        out["eval/rm_accuracy"] = total["correct"] / total["pairs"]
        out["eval/rm_loss"] = total["loss"] / total["pairs"]
        out["eval/pairs"] = total["pairs"]
    if total["points"]:
        out["eval/binary_accuracy"] = total["bin_correct"] / total["points"]
    if total["targets"]:
        n = total["targets"]
        out["eval/score_mse"] = total["sq_err"] / n
        cov = total["rt"] / n - total["r"] * total["t"] / n**2
        var_r = total["rr"] / n - (total["r"] / n) ** 2
        var_t = total["tt"] / n - (total["t"] / n) ** 2
        if var_r > 0 and var_t > 0:
            out["eval/score_pearson"] = cov / math.sqrt(var_r * var_t)
    return out


@torch.no_grad()
def reward_stats(loop: Loop, groups: list[Group], pad_id: int, batch_size: int,
                 limit: int = 1024) -> tuple[float, float]:
    """Mean and std of rewards over (up to ``limit``) training sequences."""
    model = loop.model
    model.eval()
    seqs = [s for g in groups for s in g.sequences][:limit]
    total = {"s": 0.0, "s2": 0.0, "n": 0.0}
    for part in share_batches(seqs, loop.rank, loop.world, batch_size * 4, loop.run_.sharded):
        ids, mask = pad(part or seqs[:1], pad_id)  # []: run one, ignore it (--fsdp)
        with loop.accelerator.autocast():
            r = model(ids, mask).double()
        if not part:
            continue
        total["s"] += float(r.sum())
        total["s2"] += float((r * r).sum())
        total["n"] += len(r)
    t = loop.reduce_sums(total)
    mean = t["s"] / max(t["n"], 1)
    var = max(t["s2"] / max(t["n"], 1) - mean * mean, 0.0)
    return mean, math.sqrt(var) or 1.0


def build_reward_model(cfg: ModelOptions, pad_token_id: int) -> RewardModel:
    """Backbone + fresh scalar head (or a saved RM), with LoRA when asked."""
    rm = RewardModel.from_pretrained(cfg.model, pad_token_id=pad_token_id)
    # The scalar head is new, so under LoRA it is trained in full next to the adapters.
    rm.seq_model = prepare_for_training(rm.seq_model, cfg, "SEQ_CLS", modules_to_save=["score"])
    return rm


def train_rm(cfg: RMConfig) -> Path:
    """Train a reward model; returns the folder of the saved model (``output_dir/model``)."""
    if cfg.score_mode not in SCORE_MODES:
        raise cfglib.ConfigError(
            f"--score-mode must be one of {', '.join(SCORE_MODES)}, got {cfg.score_mode!r}")
    run = Run(cfg, "rm")
    inputs = stage_inputs(cfg, "preferences", ["comparison", "ranking", "binary", "score"])
    accelerator, out, tokenizer = run.accelerator, run.out, inputs.tokenizer
    train_records, reliability = weigh_labels(cfg, inputs.train_records, inputs.eval_records)
    eval_records = inputs.eval_records
    if reliability and accelerator.is_main_process:
        (out / "reliability.json").write_text(json.dumps(reliability, indent=2))
    train_scores = [r for r in train_records if isinstance(r, ScoreFeedback)]
    score_stats = standardise(train_scores) if train_scores else None
    opts = dict(max_length=cfg.max_length, system_prompt=inputs.system_prompt,
                pairs_per_group=cfg.pairs_per_group, use_margin=cfg.use_margin,
                score_mode=cfg.score_mode, score_stats=score_stats)
    train_groups, counts = build_groups(train_records, tokenizer, train_on_ties=cfg.train_on_ties,
                                        **opts)
    # Held-out ties stay in: a tie can never be "correct", as the accuracy definition says.
    eval_groups, eval_counts = build_groups(eval_records, tokenizer, train_on_ties=True, **opts)
    if cfg.score_mode == "regression":  # held-out score pairs too, for an accuracy to compare
        eval_scores = [r for r in eval_records if isinstance(r, ScoreFeedback)]
        eval_groups += build_groups(eval_scores, tokenizer, train_on_ties=True,
                                    **{**opts, "score_mode": "pairs"})[0]
    pad_id = tokenizer.pad_token_id
    model = build_reward_model(cfg, pad_id)
    loop = Loop(run, model, train_groups, lambda b: collate_groups(b, pad_id),
                lengths=[g.num_tokens for g in train_groups])
    if accelerator.is_main_process:
        print(f"[rm] {len(train_groups)} training groups ({counts['pairs']} pairs from "
              f"{counts['rankings']} rankings, plain comparisons and {counts['score_pairs']} "
              f"score pairs, {counts['ties']} ties, {counts['binary']} binary labels, "
              f"{counts['score_targets']} score targets; {counts['score_unpaired']} scores "
              f"without a second response to their prompt left out); held out: "
              f"{eval_counts['pairs']} pairs; {loop.describe()}; precision "
              f"{accelerator.mixed_precision}")

    def step(m: torch.nn.Module, batch: dict[str, Any]):
        rewards = m(batch["input_ids"], batch["attention_mask"])  # (S,)
        return rm_losses(rewards, batch, cfg.center_rewards)

    evaluate = (lambda: score_groups(loop, eval_groups, pad_id, cfg.batch_size)) \
        if eval_groups else None
    metrics = loop.run(step, evaluate)
    mean, std = reward_stats(loop, train_groups, pad_id, cfg.batch_size)
    rm = run.export_copy(accelerator.unwrap_model(loop.model),  # --fsdp: gathered, on the main
                         lambda: build_reward_model(cfg, pad_id))  # process (every one calls)
    if accelerator.is_main_process:
        rm.seq_model.config.rlhfkit_reward_mean = mean
        rm.seq_model.config.rlhfkit_reward_std = std
        if cfg.score_mode == "regression" and score_stats is not None:
            rm.seq_model.config.rlhfkit_score_mean, rm.seq_model.config.rlhfkit_score_std = \
                score_stats
        rm.save(out / "model", tokenizer, adapter_dir=out / "adapter")
        result = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        result.update({"reward_mean": mean, "reward_std": std, "train_pairs": counts["pairs"],
                       "train_ties": counts["ties"], "eval_ties": eval_counts["ties"],
                       "train_score_pairs": counts["score_pairs"],
                       "train_score_targets": counts["score_targets"],
                       "train_scores_unpaired": counts["score_unpaired"]})
        (out / "eval.json").write_text(json.dumps(result, indent=2))
        print(f"[rm] saved reward model to {out / 'model'}; {held_out_summary(result)}; "
              f"results in {out / 'eval.json'}")
    accelerator.wait_for_everyone()
    return out / "model"
