"""The pairwise preference model ``P(y > y' | x)`` that Nash-MD plays against (``rlhfkit preference``).

A scalar reward model scores each response alone; this one reads the prompt and both responses
(:mod:`rlhfkit.models.preference`) and is trained by binary cross-entropy on comparisons
(Munos et al. 2023, §3): the target is 1 when the response in slot A was preferred, 0 when the
one in slot B was, 1/2 for a tie. Every duel is run in both orders and antisymmetrised, so
``P(A > B) = 1 - P(B > A)`` holds exactly.

Items are single duels (a comparison, or one of the C(K,2) pairs of a ranking of K), each with
the record's weight (``1 / C(K,2)`` for a ranking's pairs, as InstructGPT weights them); the
chosen response sits in slot A for a seeded random half, so "A wins" is no shortcut. Batching,
accumulation, checkpoints and ``--resume`` are the shared :class:`rlhfkit.train.loop.Loop`.

Held out (``--eval-data`` or a prompt-level split of ``--data``): ``eval/preference_accuracy`` is
the share of non-tied held-out pairs whose preferred response gets ``P > 1/2``, and
``eval/preference_loss`` the mean BCE over all held-out pairs (ties included, with target 1/2).
Both are written to ``eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import only, stage_defaults
from rlhfkit.data.chat import pad
from rlhfkit.data.records import Record, RecordError, as_comparisons
from rlhfkit.losses import preference_bce_loss
from rlhfkit.models.preference import PreferenceModel, duels_from_comparisons, encode_duel
from rlhfkit.train.inputs import LabelWeightOptions, stage_inputs
from rlhfkit.train.loop import (
    FSDPOptions,
    Loop,
    ModelOptions,
    Run,
    TrainConfig,
    TrainingError,
    held_out_summary,
)
from rlhfkit.train.rm import build_reward_model
from rlhfkit.train.sharding import share_batches


@stage_defaults(output_dir="runs/preference", learning_rate=2e-5, batch_size=4, max_length=512)
@dataclass
class PreferenceConfig(FSDPOptions, only(LabelWeightOptions, "train_on_ties"), TrainConfig):
    """Pairwise preference model P(y > y' | x) for Nash-MD (``rlhfkit preference``)."""


@dataclass
class DuelItem:
    """One encoded duel: token ids with A first and with B first, its label and weight."""

    ab_ids: list[int]
    ba_ids: list[int]
    label: float
    """Probability that A is preferred: 1, 0 or 1/2 (tie)."""
    weight: float

    @property
    def num_tokens(self) -> int:
        """Tokens the duel costs (both orders)."""
        return len(self.ab_ids) + len(self.ba_ids)


def build_duels(records: list[Record], tokenizer: Any, max_length: int,
                system_prompt: str | None = None, train_on_ties: bool = True, seed: int = 0,
                source: str | None = None) -> tuple[list[DuelItem], dict[str, int]]:
    """Encode comparison and ranking records as duels.

    Args:
        records: Comparison and Ranking records.
        tokenizer: The backbone's tokenizer.
        max_length: Token budget of a duel.
        system_prompt: System message for prompts without one.
        train_on_ties: Keep tied pairs (target 1/2).
        seed: Seed of the A/B slot shuffle.
        source: The file the records came from (for error messages).

    Returns:
        The duels and counts: ``pairs``, ``ties``, ``rankings``, ``truncated`` (duels that
        reached ``max_length``, where response B may have been cut).
    """
    try:
        comparisons = as_comparisons(records, drop_ties=not train_on_ties)
    except TypeError as err:  # a record of another kind slipped through
        raise RecordError(str(err), field="kind", expected="comparison or ranking records",
                          file=source) from err
    cache: dict[str, list[int]] = {}
    duels = duels_from_comparisons(comparisons.pairs, seed=seed)
    items = []
    for c, (prompt, a, b, label) in zip(comparisons.pairs, duels):
        items.append(DuelItem(
            ab_ids=encode_duel(tokenizer, prompt, a, b, max_length, system_prompt, cache),
            ba_ids=encode_duel(tokenizer, prompt, b, a, max_length, system_prompt, cache),
            label=label, weight=float(c.weight)))
    counts = {"pairs": len(items), "ties": comparisons.n_ties,
              "rankings": comparisons.n_rankings,
              "truncated": sum(max(len(d.ab_ids), len(d.ba_ids)) >= max_length for d in items)}
    return items, counts


def collate_duel_items(items: list[DuelItem], pad_id: int) -> dict[str, Any]:
    """Stack both orders of every duel into one padded batch.

    Rows ``[:B]`` hold the duels with A first, rows ``[B:]`` the same duels with B first.
    """
    ids, mask = pad([d.ab_ids for d in items] + [d.ba_ids for d in items], pad_id)
    weight = torch.tensor([d.weight for d in items], dtype=torch.float32)
    return {
        "input_ids": ids,  # (2B, T)
        "attention_mask": mask,  # (2B, T)
        "labels": torch.tensor([d.label for d in items], dtype=torch.float32),  # (B,)
        "weight": weight,  # (B,)
        "num_units": float(weight.sum()),
        "num_tokens": int(mask.sum()),
    }


def duel_losses(raw: torch.Tensor, batch: dict[str, Any]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted BCE sum and metric sums of a batch, given the raw logits (2B,) of its rows."""
    n = batch["labels"].shape[0]
    raw = raw.view(2, n)  # f(x, A, B) and f(x, B, A)
    loss, diag = preference_bce_loss(raw[0], raw[1], batch["labels"])  # (B,)
    w = batch["weight"]
    return (w * loss).sum(), {"preference/accuracy": (w * diag["accuracy"]).sum()}


@torch.no_grad()
def score_duels(loop: Loop, items: list[DuelItem], pad_id: int,
                batch_size: int) -> dict[str, float]:
    """Held-out metrics, unweighted per pair and sharded over processes.

    ``eval/preference_accuracy``: share of non-tied pairs whose preferred response gets
    ``P > 1/2``; ``eval/preference_loss``: mean BCE over all pairs (ties included). Under
    ``--fsdp`` every process runs as many batches (:func:`rlhfkit.train.sharding.share_batches`).
    """
    model = loop.model
    model.eval()
    sums = {"correct": 0.0, "decided": 0.0, "loss": 0.0, "pairs": 0.0}
    for part in share_batches(items, loop.rank, loop.world, batch_size, loop.run_.sharded):
        batch = collate_duel_items(part or items[:1], pad_id)  # []: run one, ignore it
        with loop.accelerator.autocast():
            raw = model(batch["input_ids"], batch["attention_mask"])
        if not part:
            continue
        n = batch["labels"].shape[0]
        loss, diag = preference_bce_loss(*raw.float().view(2, n), batch["labels"])
        sums["correct"] += float(diag["accuracy"].sum())
        sums["decided"] += float((batch["labels"] != 0.5).sum())
        sums["loss"] += float(loss.sum())
        sums["pairs"] += n
    total = loop.reduce_sums(sums)
    return {"eval/preference_accuracy": total["correct"] / max(total["decided"], 1.0),
            "eval/preference_loss": total["loss"] / max(total["pairs"], 1.0),
            "eval/pairs": total["pairs"]}


def build_preference_model(cfg: ModelOptions, pad_token_id: int) -> PreferenceModel:
    """Backbone + fresh one-label head (or a saved model), with LoRA when asked."""
    # The same backbone, head, checkpointing and LoRA set-up as a reward model; only the text it
    # reads (both responses) and the loss differ.
    return PreferenceModel(build_reward_model(cfg, pad_token_id).seq_model)


def train_preference(cfg: PreferenceConfig) -> Path:
    """Train a pairwise preference model; returns the folder of the saved model."""
    run = Run(cfg, "preference")
    stage = stage_inputs(cfg, "preferences", ["comparison", "ranking"])
    accelerator, out, tokenizer = run.accelerator, run.out, stage.tokenizer
    opts = dict(max_length=cfg.max_length, system_prompt=stage.system_prompt, seed=cfg.seed)
    train_items, counts = build_duels(stage.train_records, tokenizer,
                                      train_on_ties=cfg.train_on_ties, source=cfg.data, **opts)
    # Held-out ties stay in: the loss scores them (target 1/2), the accuracy leaves them out.
    eval_items, eval_counts = build_duels(stage.eval_records, tokenizer, train_on_ties=True,
                                          source=cfg.eval_data or cfg.data, **opts)
    if not train_items:
        raise TrainingError(f"preference: no training pairs in {cfg.data} ({counts['ties']} "
                            "ties were left out by --no-train-on-ties)")
    pad_id = tokenizer.pad_token_id
    model = build_preference_model(cfg, pad_id)
    loop = Loop(run, model, train_items, lambda b: collate_duel_items(b, pad_id),
                lengths=[d.num_tokens for d in train_items])
    if accelerator.is_main_process:
        print(f"[preference] {counts['pairs']} training pairs ({counts['rankings']} rankings "
              f"expanded, {counts['ties']} ties); held out: {eval_counts['pairs']} pairs; "
              f"{loop.describe()}; precision {accelerator.mixed_precision}")
        cut = counts["truncated"] + eval_counts["truncated"]
        if cut:
            print(f"[preference] warning: {cut} duels reached --max-length {cfg.max_length}; "
                  "the end of response B may be cut: raise --max-length")
        if not eval_items:
            print("[preference] warning: no held-out pairs (set --eval-data or "
                  "--eval-fraction > 0); eval.json will hold no accuracy")

    def step(m: torch.nn.Module, batch: dict[str, Any]):
        raw = m(batch["input_ids"], batch["attention_mask"])  # (2B,)
        return duel_losses(raw, batch)

    evaluate = (lambda: score_duels(loop, eval_items, pad_id, cfg.batch_size)) \
        if eval_items else None
    metrics = loop.run(step, evaluate)
    pm = run.export_copy(accelerator.unwrap_model(loop.model),  # --fsdp: gathered, on the main
                         lambda: build_preference_model(cfg, pad_id))  # process (all call)
    if accelerator.is_main_process:
        pm.save(out / "model", tokenizer, adapter_dir=out / "adapter")
        result = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        result.update({"train_pairs": counts["pairs"], "train_ties": counts["ties"],
                       "eval_ties": eval_counts["ties"], "steps": loop.total_steps})
        (out / "eval.json").write_text(json.dumps(result, indent=2))
        print(f"[preference] saved preference model to {out / 'model'}; {held_out_summary(result)}; "
              f"results in {out / 'eval.json'}")
    accelerator.wait_for_everyone()
    return out / "model"
