"""A causal LM wrapped so that its forward computes logits only where a loss needs them."""

from __future__ import annotations

import torch
from torch import nn

from rlhfkit.losses import token_logprobs
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
        return self.lm_head(self.selected_hidden(input_ids, attention_mask, target_mask,
                                                 position_ids))  # (N, V)

    @property
    def lm_head(self) -> nn.Module:
        """The output projection (hidden -> vocabulary)."""
        return decoder_and_head(self.lm)[1]

    def selected_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        target_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (N, H) of the positions that predict ``target_mask[:, 1:]``."""
        body, _ = decoder_and_head(self.lm)
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=False,  # a KV cache also stops transformers from honouring packed rows
        ).last_hidden_state
        return hidden[:, :-1][target_mask[:, 1:].bool()]  # (N, H)


def targets_of(input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """The (N,) target tokens matching ``SelectiveLM``'s logits."""
    return input_ids[:, 1:][target_mask[:, 1:].bool()]


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    target_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the target tokens, per token and summed per row.

    Runs ``model`` (a :class:`SelectiveLM`, possibly wrapped by DDP) once, so the output
    projection is applied only at target positions, then takes ``log softmax`` at each target
    token in fp32. This is ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over the response
    tokens that direct preference losses need, without a (B, T, V) tensor.

    Args:
        model: A ``SelectiveLM`` (or a wrapper whose forward has its signature).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens (None for packed rows).
        target_mask: (B, T) True at the tokens to score (position 0 is never scored).
        position_ids: Optional (B, T) position ids (packed rows).

    Returns:
        ``token_logps`` (N,) in the row-major order of ``target_mask[:, 1:]`` and
        ``seq_logps`` (B,) their sums per row (0.0 for a row with no targets).
    """
    logits = model(input_ids, attention_mask, target_mask, position_ids)  # (N, V)
    targets = targets_of(input_ids, target_mask)  # (N,)
    token_logps = token_logprobs(logits, targets)  # (N,) fp32
    rows = target_mask[:, 1:].bool().nonzero()[:, 0]  # (N,) the row of each target
    seq_logps = token_logps.new_zeros(input_ids.shape[0]).index_add(0, rows, token_logps)
    return token_logps, seq_logps  # (N,), (B,)
