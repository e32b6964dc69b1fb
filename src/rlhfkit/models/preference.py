"""Pairwise preference models: ``P(y > y' | x)`` from one backbone that reads both responses.

A scalar reward model scores each response alone, so the preferences it implies are always
transitive. A pairwise model (Munos et al. 2023, §3) reads the prompt and *both* responses,
``"prompt | Response A: y | Response B: y'"``, and returns a logit ``f(x, y, y')``. We evaluate
it in both orders and antisymmetrise, ``g = (f(x, y, y') - f(x, y', y)) / 2``, so that
``P(y > y') = sigmoid(g) = 1 - P(y' > y)`` holds exactly and ``P(y > y) = 1/2``.

The backbone is a one-label ``*ForSequenceClassification`` model read at the last real token,
exactly as :class:`rlhfkit.models.reward.RewardModel`, so it saves and loads the same way.
Training is BCE on comparison records (:func:`rlhfkit.losses.preference_bce_loss`); ties are the
target 1/2.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.config import only, stage_defaults
from rlhfkit.data.chat import encode_pair, pad
from rlhfkit.data.records import Comparison
from rlhfkit.losses import antisymmetric_logit, preference_bce_loss
from rlhfkit.models.reward import RewardModel
from rlhfkit.options import DataOptions, OptimOptions, RunOptions


def duel_text(response_a: str, response_b: str) -> str:
    """The text the model reads after the prompt: both responses, labelled A and B."""
    return f"Response A:\n{response_a}\n\nResponse B:\n{response_b}"


def encode_duel(tokenizer: Any, prompt: Any, response_a: str, response_b: str, max_length: int,
                system_prompt: str | None = None,
                prompt_cache: dict[str, list[int]] | None = None) -> list[int]:
    """Token ids of ``prompt + duel_text(a, b)`` (the prompt is truncated first, from the left)."""
    return encode_pair(tokenizer, prompt, duel_text(response_a, response_b), max_length,
                       system_prompt, prompt_cache).input_ids


class PreferenceModel(RewardModel):
    """``P(A > B | x) = sigmoid((f(x, A, B) - f(x, B, A)) / 2)`` from a one-label backbone.

    ``forward`` (inherited) returns the raw logit ``f`` (B,) of sequences that already hold both
    responses; :meth:`preference_logits` evaluates both orders and antisymmetrises.
    """

    KIND = "pairwise_preference"
    """Saved in the config as ``rlhfkit_model_kind``, so a scalar reward model is not taken for one."""

    @property
    def is_marked(self) -> bool:
        """Whether the loaded folder was saved as a pairwise preference model."""
        return getattr(self.config, "rlhfkit_model_kind", None) == self.KIND

    def save(self, path, tokenizer=None, adapter_dir=None) -> None:
        """Save as a HF folder (LoRA merged), marked as a pairwise preference model."""
        self.config.rlhfkit_model_kind = self.KIND
        super().save(path, tokenizer, adapter_dir)

    def preference_logits(self, ab_ids: torch.Tensor, ab_mask: torch.Tensor,
                          ba_ids: torch.Tensor, ba_mask: torch.Tensor) -> torch.Tensor:
        """Antisymmetric logits (B,) of ``A > B`` from the (B, T) encodings in both orders."""
        raw = self.raw_both(ab_ids, ab_mask, ba_ids, ba_mask)  # (2, B)
        return antisymmetric_logit(raw[0], raw[1])

    def raw_both(self, ab_ids: torch.Tensor, ab_mask: torch.Tensor, ba_ids: torch.Tensor,
                 ba_mask: torch.Tensor) -> torch.Tensor:
        """(2, B) raw logits f(A, B) and f(B, A), in one forward pass over 2B sequences."""
        n = ab_ids.shape[0]
        ids, mask = _stack(ab_ids, ab_mask, ba_ids, ba_mask, self.config.pad_token_id or 0)
        return self(ids, mask).view(2, n)

    @torch.no_grad()
    def prob(self, tokenizer: Any, prompt: Any, response_a: str, response_b: str,
             max_length: int = 1024, system_prompt: str | None = None) -> float:
        """``P(response_a > response_b | prompt)`` for one pair."""
        batch = collate_duels(tokenizer, [(prompt, response_a, response_b, 1.0)], max_length,
                              system_prompt)
        device = next(self.parameters()).device
        g = self.preference_logits(*(batch[k].to(device) for k in
                                     ("ab_ids", "ab_mask", "ba_ids", "ba_mask")))
        return float(torch.sigmoid(g)[0])


def _stack(ab_ids: torch.Tensor, ab_mask: torch.Tensor, ba_ids: torch.Tensor,
           ba_mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad both (B, T_ab) and (B, T_ba) batches to one width and stack them: (2B, T)."""
    width = max(ab_ids.shape[1], ba_ids.shape[1])

    def widen(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    ids = torch.cat([widen(ab_ids, pad_id), widen(ba_ids, pad_id)])
    mask = torch.cat([widen(ab_mask, 0), widen(ba_mask, 0)])
    return ids, mask


Duel = tuple[Any, str, str, float]
"""(prompt, response A, response B, probability that A is preferred: 1, 0 or 1/2)."""


def duels_from_comparisons(comparisons: Sequence[Comparison], seed: int = 0) -> list[Duel]:
    """Comparison records as duels, with the chosen response in slot A for a random half.

    The antisymmetrised loss does not care about the order, but the raw logits see both
    orders anyway; shuffling keeps the data free of a "chosen comes first" shortcut for any
    caller that uses the raw logit.
    """
    rng = random.Random(seed)
    duels = []
    for c in comparisons:
        label = 0.5 if c.tie else 1.0
        if rng.random() < 0.5:
            duels.append((c.prompt, c.chosen, c.rejected, label))
        else:
            duels.append((c.prompt, c.rejected, c.chosen, 1.0 - label))
    return duels


def collate_duels(tokenizer: Any, duels: Sequence[Duel], max_length: int,
                  system_prompt: str | None = None) -> dict[str, torch.Tensor]:
    """Encode duels in both orders: ``ab_*``/``ba_*`` (B, T) and ``labels`` (B,)."""
    cache: dict[str, list[int]] = {}
    ab = [encode_duel(tokenizer, p, a, b, max_length, system_prompt, cache) for p, a, b, _ in duels]
    ba = [encode_duel(tokenizer, p, b, a, max_length, system_prompt, cache) for p, a, b, _ in duels]
    ab_ids, ab_mask = pad(ab, tokenizer.pad_token_id)
    ba_ids, ba_mask = pad(ba, tokenizer.pad_token_id)
    labels = torch.tensor([y for *_, y in duels], dtype=torch.float32)
    return {"ab_ids": ab_ids, "ab_mask": ab_mask, "ba_ids": ba_ids, "ba_mask": ba_mask,
            "labels": labels}


@stage_defaults(learning_rate=1e-4, epochs=1, max_length=512)
@dataclass
class PreferenceFitConfig(only(RunOptions, "seed"),
                          only(DataOptions, "epochs", "batch_size", "max_length"),
                          only(OptimOptions, "learning_rate")):
    """Plain training of a pairwise preference model (Python API).

    Whole passes (``epochs``) of ``batch_size`` duels per step, each run in both orders.
    """


def fit_preference_model(model: PreferenceModel, tokenizer: Any, duels: Sequence[Duel],
                         cfg: PreferenceFitConfig | None = None) -> list[float]:
    """Train ``model`` by BCE on duels (Munos et al. 2023, §3); returns the loss of each step."""
    cfg = cfg or PreferenceFitConfig()
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    rng = random.Random(cfg.seed)
    order = list(range(len(duels)))
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            mb = [duels[i] for i in order[start:start + cfg.batch_size]]
            batch = {k: v.to(device) for k, v in
                     collate_duels(tokenizer, mb, cfg.max_length).items()}
            raw = model.raw_both(batch["ab_ids"], batch["ab_mask"], batch["ba_ids"],
                                 batch["ba_mask"])  # (2, B)
            loss, _ = preference_bce_loss(raw[0], raw[1], batch["labels"])
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            losses.append(float(loss.detach().mean()))
    return losses


@torch.no_grad()
def evaluate_preferences(model: PreferenceModel, tokenizer: Any, duels: Sequence[Duel],
                         batch_size: int = 16, max_length: int = 512) -> dict[str, float]:
    """Held-out metrics of a preference model.

    Returns:
        ``accuracy``: share of non-tied duels whose preferred response gets P > 1/2;
        ``loss``: mean BCE over all duels.
    """
    model.eval()
    device = next(model.parameters()).device
    correct = decided = loss_sum = 0.0
    for start in range(0, len(duels), batch_size):
        batch = {k: v.to(device) for k, v in
                 collate_duels(tokenizer, duels[start:start + batch_size], max_length).items()}
        raw = model.raw_both(batch["ab_ids"], batch["ab_mask"], batch["ba_ids"], batch["ba_mask"])
        loss, diag = preference_bce_loss(raw[0], raw[1], batch["labels"])
        correct += float(diag["accuracy"].sum())
        decided += float((batch["labels"] != 0.5).sum())
        loss_sum += float(loss.sum())
    return {"accuracy": correct / max(decided, 1.0), "loss": loss_sum / max(len(duels), 1)}
