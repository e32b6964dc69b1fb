"""A causal LM wrapped so that its forward computes logits only where a loss needs them."""

from __future__ import annotations

import torch
from torch import nn

from rlhfkit.models.loading import decoder_and_head


class SelectiveLM(nn.Module):
    """Runs the transformer body on all tokens and the output projection only where needed.

    ``target_mask`` (B, T) marks the tokens to be *predicted*; position t is scored by the hidden
    state at t - 1. For SFT that is the response tokens, so no (B, T, V) logits are computed for
    the prompt or for padding. Having this as the module's ``forward`` (rather than reaching into
    the model from a trainer) keeps DDP's gradient synchronisation intact.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        target_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return logits (N, V) for the N positions where ``target_mask[:, 1:]`` is true.

        Packed rows pass ``attention_mask=None`` and ``position_ids`` that restart at 0 for each
        sequence; transformers then builds a block-diagonal causal mask.
        """
        body, head = decoder_and_head(self.lm)
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        selected = hidden[:, :-1][target_mask[:, 1:].bool()]  # (N, H)
        return head(selected)  # (N, V)


def targets_of(input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """The (N,) target tokens matching ``SelectiveLM``'s logits."""
    return input_ids[:, 1:][target_mask[:, 1:].bool()]
