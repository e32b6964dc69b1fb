"""Reward models: an LM backbone with a scalar head read at the last non-pad token.

The weights live in a standard HF ``*ForSequenceClassification`` model with one label, so a saved
reward model loads anywhere with ``AutoModelForSequenceClassification.from_pretrained``. For
decoder backbones we read the head at the last position where ``attention_mask`` is 1 rather than
HF's "last token that is not the pad id": SmolLM2's pad token is its end-of-turn token, which ends
every response, and HF's rule would then read one token too early.

Reward statistics from training (mean and std over the training responses) are saved in the
config as ``rlhfkit_reward_mean`` / ``rlhfkit_reward_std`` so RL can normalise rewards later.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from rlhfkit.models.loading import ModelLoadError, merge_and_save, resolve


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last 1 in each row of a (B, T) mask (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


class RewardModel(nn.Module):
    """Scalar reward r(x, y) from a sequence-classification model with one label."""

    def __init__(self, seq_model: nn.Module) -> None:
        super().__init__()
        self.seq_model = seq_model

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, dtype: torch.dtype = torch.float32, pad_token_id: int | None = None
    ) -> RewardModel:
        """Load a backbone (a causal LM gets a fresh scalar head) or a saved reward model."""
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        # A causal-LM backbone has no scalar head yet; transformers would print a "MISSING
        # score.weight" report that reads like an error. The head is new on purpose.
        hf_logging.set_verbosity_error()
        try:
            seq = AutoModelForSequenceClassification.from_pretrained(
                resolve(name_or_path), num_labels=1, dtype=dtype
            )
        except OSError as err:
            raise ModelLoadError(f"could not load reward model '{name_or_path}': {err}") from err
        finally:
            hf_logging.set_verbosity(verbosity)
        if pad_token_id is not None:
            seq.config.pad_token_id = pad_token_id
        return cls(seq)

    @property
    def config(self):
        """The HF config of the underlying model."""
        return self.seq_model.config

    def _parts(self) -> tuple[nn.Module | None, nn.Module | None]:
        seq = self.seq_model
        if hasattr(seq, "get_base_model"):  # peft
            seq = seq.get_base_model()
        head = getattr(seq, "score", None)
        body = getattr(seq, seq.base_model_prefix, None)
        if head is None or body is None:
            return None, None
        return body, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) for right- or left-padded sequences (B, T)."""
        body, head = self._parts()
        if body is None:  # encoders and other heads: use the model's own pooling
            return self.seq_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device),
                      last_token_index(attention_mask)]  # (B, H)
        return head(last).squeeze(-1).float()

    @property
    def reward_stats(self) -> tuple[float, float]:
        """(mean, std) of training rewards; (0, 1) if unknown."""
        cfg = self.seq_model.config
        return getattr(cfg, "rlhfkit_reward_mean", 0.0), getattr(cfg, "rlhfkit_reward_std", 1.0)

    def save(self, path: str | Path, tokenizer=None) -> None:
        """Save as an HF folder (LoRA merged) that the stock transformers classes load."""
        merge_and_save(self.seq_model, tokenizer, path)
