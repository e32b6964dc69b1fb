"""Reward models: an LM backbone with a scalar head read at the last non-pad token.

The weights live in a standard HF ``*ForSequenceClassification`` model with one label, so a saved
reward model loads anywhere with ``AutoModelForSequenceClassification.from_pretrained``. For
decoder backbones we read the head at the last position where ``attention_mask`` is 1 rather than
HF's "last token that is not the pad id": SmolLM2's pad token is its end-of-turn token, which ends
every response, and HF's rule would then read one token too early.

So that the stock class also *scores* the same, :meth:`RewardModel.save` writes the folder with a
pad token that no sequence ends with (:func:`scoring_pad_token`: SmolLM2's ``<|endoftext|>``),
in both ``config.json`` and the saved tokenizer. Stock transformers then reads the head at the
last real token of each right-padded row, which is where rlhfkit reads it.

Reward statistics from training (mean and std over the training responses) are saved in the
config as ``rlhfkit_reward_mean`` / ``rlhfkit_reward_std`` so RL can normalise rewards later.

The RL stages read a reward model through :func:`reward_model_source` (a folder of ``rlhfkit rm``
or ``rlhfkit segment-rm`` as a :class:`~rlhfkit.rewards.sources.RewardSource`, handed to
:func:`rlhfkit.rewards.registry.build_sources` by :mod:`rlhfkit.train.inputs`) and
:func:`rm_scores` (one score per sampled response).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from rlhfkit.models.loading import ModelLoadError, resolve, save_adapter
from rlhfkit.models.segment_reward import is_segment_rm, segment_rm_source
from rlhfkit.rewards.shaping import DenseRewards, sequence_rewards
from rlhfkit.rewards.sources import RewardSource, Rollout, SourceContext


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last 1 in each row of a (B, T) mask (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def scoring_pad_token(tokenizer: Any) -> str | None:
    """A pad token stock ``*ForSequenceClassification`` models can tell from a sequence's end.

    Stock transformers reads a decoder's score at the rightmost token that is not the pad id.
    When the pad token is also the end-of-sequence token (SmolLM2 pads with ``<|im_end|>``,
    which ends every response), that rule skips the real last token. This returns a special
    token that no rlhfkit sequence ends with: the tokenizer's unknown token, else another
    special token that is neither EOS nor BOS.

    Args:
        tokenizer: A HF tokenizer.

    Returns:
        The token to pad with: the current pad token when it is already safe, another existing
        special token, or None when the tokenizer has no such token (one must be added).
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return tokenizer.pad_token
    candidates = [tokenizer.unk_token, *tokenizer.all_special_tokens]
    for token in candidates:
        if token is not None and token not in (eos, tokenizer.bos_token):
            return token
    return None


NEW_PAD_TOKEN = "<|rlhfkit_pad|>"
"""Added to a saved reward model's vocabulary when the tokenizer has no safe pad token."""


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
        """Rewards (B,) for right- or left-padded sequences (B, T).

        The rewards are a tensor of their own, not a view of the head's (B, 1) output: FSDP2
        warns about a sharded model that returns a view (an in-place op on it would skip the
        hook that gathers the weights for backward).
        """
        body, head = self._parts()
        if body is None:  # encoders and other heads: use the model's own pooling
            return self.seq_model(input_ids=input_ids,
                                  attention_mask=attention_mask).logits[:, 0].clone()
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device),
                      last_token_index(attention_mask)]  # (B, H)
        return head(last).squeeze(-1).float().clone()

    @property
    def reward_stats(self) -> tuple[float, float]:
        """(mean, std) of training rewards; (0, 1) if unknown."""
        cfg = self.seq_model.config
        return getattr(cfg, "rlhfkit_reward_mean", 0.0), getattr(cfg, "rlhfkit_reward_std", 1.0)

    def save(self, path: str | Path, tokenizer: Any = None,
             adapter_dir: str | Path | None = None) -> None:
        """Save as a HF folder (LoRA merged) that stock transformers scores the same way.

        For decoder backbones saved with their tokenizer, the folder's pad token is one that no
        sequence ends with (see :func:`scoring_pad_token`; a new token is added, and the
        embeddings resized, only if the tokenizer has none), so that
        ``AutoModelForSequenceClassification`` with the saved tokenizer, right-padded, reads
        the score at the last real token as :meth:`forward` does. The caller's tokenizer and
        this model are left as they were.

        Args:
            path: Folder for the merged model.
            tokenizer: Saved next to the weights (with the safe pad token).
            adapter_dir: With LoRA, also save the adapter (and its trained ``score`` head)
                here, for ``PeftModel.from_pretrained(base, adapter_dir)``.
        """
        seq = self.seq_model
        if tokenizer is not None and self._parts()[0] is not None:
            tokenizer = _scoring_tokenizer(tokenizer)
        if hasattr(seq, "merge_and_unload"):
            if adapter_dir is not None:
                save_adapter(seq, tokenizer, Path(adapter_dir))
            seq = copy.deepcopy(seq).merge_and_unload()
        Path(path).mkdir(parents=True, exist_ok=True)
        old_pad = seq.config.pad_token_id
        if tokenizer is not None and self._parts()[0] is not None:
            if tokenizer.pad_token_id >= seq.get_input_embeddings().weight.shape[0]:
                seq = copy.deepcopy(seq)  # a new pad token: one more embedding row
                seq.resize_token_embeddings(len(tokenizer))
            seq.config.pad_token_id = tokenizer.pad_token_id
        try:
            seq.save_pretrained(path, safe_serialization=True)
        finally:
            seq.config.pad_token_id = old_pad
        if tokenizer is not None:
            tokenizer.save_pretrained(path)


def _scoring_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` that right-pads with a safe token (see :func:`scoring_pad_token`)."""
    token = scoring_pad_token(tokenizer)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "right"  # stock Llama-style models take positions from the left
    if token is None:
        tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    else:
        tokenizer.pad_token = token
    return tokenizer


# ---------------------------------------------------------------------------------------
# As a reward source of the RL stages
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def rm_scores(rm: RewardModel, rollout: Rollout, autocast: Callable | None = None,
              batch_size: int = 16) -> torch.Tensor:
    """(B,) reward-model scores of prompt + response, read at the last real token.

    The RM sees exactly the ids the policy sampled (prompt from the chat template, response up
    to and including its end-of-turn token), i.e. what it was trained on.
    """
    out = []
    for i in range(0, len(rollout), batch_size):
        chunk = rollout.select(range(i, min(i + batch_size, len(rollout))))
        with autocast() if autocast else contextlib.nullcontext():
            out.append(rm(chunk.input_ids, chunk.attention_mask).float())
    return torch.cat(out)


def reward_model_source(name: str, path: str, ctx: SourceContext) -> RewardSource:
    """The reward source of a reward-model folder, holistic or per segment.

    A holistic folder (``rlhfkit rm``) gives one score per response, normalised by its saved
    stats; a segment folder (``rlhfkit segment-rm``, marked so in its config) a reward after
    each segment (:func:`rlhfkit.models.segment_reward.segment_rm_source`). This is the
    ``folder`` factory of :func:`rlhfkit.rewards.registry.build_sources`.
    """
    if is_segment_rm(path):
        return segment_rm_source(name, path, ctx)
    rm = RewardModel.from_pretrained(path, pad_token_id=ctx.tokenizer.pad_token_id)
    rm.eval().requires_grad_(False).to(ctx.device)

    def fn(rollout: Rollout) -> DenseRewards:
        scores = rm_scores(rm, rollout, ctx.autocast)
        return sequence_rewards(scores.cpu(), rollout.response_mask.cpu())

    stats = rm.reward_stats if ctx.normalize_reward else None
    return RewardSource(name, fn, stats=stats, model=rm, path=path)
