"""Segment reward models: a per-segment error classifier read at each segment's last token.

Fine-Grained RLHF (Wu et al. 2023, Sec. 2.2 and 4.1) trains one reward model per feedback
category. For relevance and factuality the model reads a response cut into segments
(sub-sentences, sentences) and says, for each segment, whether it has an error of its category;
the reward after segment ``j`` then goes on that segment's last token ``T_j``.

Here the model is an LM backbone with a token-classification head (an HF
``*ForTokenClassification`` with one label, so the folder loads anywhere with
``AutoModelForTokenClassification``). The head's logit at a token is the log-odds that the
segment ending at that token has an error; only the segment-end positions are read
(:meth:`SegmentRewardModel.forward` takes them as an index), the same positions the RL stages
put the rewards on (:func:`rlhfkit.segments.response_segments`). Because the backbone is causal,
the hidden state at ``T_j`` has seen the prompt and the response up to the end of segment ``j``
and nothing after it.

Labels come from span feedback: a segment is an error of category C when a marked span of one
of C's span categories overlaps the segment's text (whitespace at its edges excluded, so a span
that starts on the space before a sentence does not mark the sentence before it).

The reward of segment j (``reward`` in the saved config):

* ``sign`` (default): +1 when the model predicts no error (``p_error < 1/2``), -1 when it
  predicts one; what the paper's code gives its relevance and factuality rewards before the
  weights ``w_k`` (allenai/FineGrainedRLHF, ``tasks/qa_feedback/training/reward.py``);
* ``prob``: ``1 - 2 p_error``, the expected value of that +-1 reward under the classifier: the
  same range, but smooth where the model is unsure;
* ``logodds``: ``-logit``, the log-odds of "no error" (unbounded; ``--reward-clip`` applies).

A saved segment reward model marks itself in its ``config.json`` (``rlhfkit_reward_type:
"segment"``, the unit, the category and its span categories, the reward kind), so
``--reward-model rel=runs/rm-rel/model`` loads it as a per-segment source
(:func:`segment_rm_source`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rlhfkit.models.loading import ModelLoadError, merge_and_save, resolve
from rlhfkit.rewards.shaping import DenseRewards
from rlhfkit.rewards.sources import RewardSource, Rollout, SourceContext
from rlhfkit.segments import UNITS, response_segments

if TYPE_CHECKING:
    from rlhfkit.data.records import Span

CATEGORY_GROUPS: dict[str, tuple[str, ...]] = {
    "relevance": ("irrelevant", "repetitive", "incoherent"),
    "factuality": ("untruthful", "unverifiable"),
}
"""Reward-model categories and the span categories each one learns to find (Wu et al. 2023:
"irrelevance, repetition, or incoherence" per sub-sentence; "incorrect or unverifiable facts"
per sentence). Any other name is taken as a comma-separated list of span categories."""

DEFAULT_UNITS = {"relevance": "subsentence", "factuality": "sentence"}
"""The segment unit each category is read at, as in the paper (sentence for other names)."""

REWARD_KINDS = ("sign", "prob", "logodds")


def span_categories(category: str) -> tuple[str, ...]:
    """The span categories behind a reward-model category (``relevance`` -> irrelevant, ...)."""
    if category in CATEGORY_GROUPS:
        return CATEGORY_GROUPS[category]
    names = tuple(c.strip() for c in category.split(",") if c.strip())
    if not names:
        raise ValueError("a segment reward model needs a category: relevance, factuality, or "
                         "span categories such as irrelevant,untruthful")
    return names


def default_unit(category: str) -> str:
    """The segment unit of a category (sub-sentence for relevance, else sentence)."""
    return DEFAULT_UNITS.get(category, "sentence")


def core(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` narrowed to exclude whitespace at both edges."""
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip())


def segment_labels(text: str, segments: Sequence[tuple[int, int]], spans: Sequence[Span],
                   categories: Sequence[str]) -> list[int]:
    """1 for each segment whose text overlaps a span of one of ``categories``, else 0.

    Args:
        text: The response.
        segments: Character spans that tile it (:func:`rlhfkit.segments.split_segments`).
        spans: The marked spans (``start``, ``end``, ``category``).
        categories: Span categories that count as an error here.

    Example:
        >>> from rlhfkit.data.records import Span
        >>> segment_labels("Good. Bad.", [(0, 6), (6, 10)], [Span(5, 9, "untruthful")],
        ...                ["untruthful"])
        [0, 1]
    """
    marked = [(s.start, s.end) for s in spans if s.category in categories]
    labels = []
    for a, b in segments:
        a, b = core(text, a, b)
        labels.append(int(any(max(a, s) < min(b, e) for s, e in marked)))
    return labels


def segment_rewards(error_logits: torch.Tensor, kind: str = "sign") -> torch.Tensor:
    """Reward of each segment from the classifier's error logit (see the module docstring).

    ``sign``: +1 if ``logit <= 0`` (no error predicted) else -1; ``prob``:
    ``1 - 2 sigmoid(logit)``; ``logodds``: ``-logit``.
    """
    logits = error_logits.float()
    if kind == "sign":
        return torch.where(logits > 0, -1.0, 1.0)
    if kind == "prob":
        return 1.0 - 2.0 * torch.sigmoid(logits)
    if kind == "logodds":
        return -logits
    raise ValueError(f"segment reward must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")


def classification_counts(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """True/false positives and negatives of ``logit > 0`` against the labels (error = 1)."""
    pred = logits > 0
    gold = labels.bool()
    return {"tp": float((pred & gold).sum()), "fp": float((pred & ~gold).sum()),
            "fn": float((~pred & gold).sum()), "tn": float((~pred & ~gold).sum())}


def f1_metrics(counts: dict[str, float], prefix: str = "eval/segment_") -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the error class from summed counts."""
    tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"{prefix}accuracy": (tp + tn) / n if n else 0.0, f"{prefix}precision": precision,
            f"{prefix}recall": recall, f"{prefix}f1": f1,
            f"{prefix}error_rate": (tp + fn) / n if n else 0.0, f"{prefix}count": n}


class SegmentRewardModel(nn.Module):
    """Error logits at chosen positions from a token-classification model with one label."""

    def __init__(self, tok_model: nn.Module) -> None:
        super().__init__()
        self.tok_model = tok_model

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: torch.dtype = torch.float32,
                        pad_token_id: int | None = None) -> SegmentRewardModel:
        """Load a backbone (a causal LM gets a fresh head) or a saved segment reward model."""
        from transformers import AutoModelForTokenClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the head of a fresh model is missing on purpose
        try:
            tok = AutoModelForTokenClassification.from_pretrained(resolve(name_or_path),
                                                                  num_labels=1, dtype=dtype)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"could not load segment reward model '{name_or_path}': {err}") from err
        finally:
            hf_logging.set_verbosity(verbosity)
        if pad_token_id is not None:
            tok.config.pad_token_id = pad_token_id
        tok.config.id2label, tok.config.label2id = {0: "error"}, {"error": 0}
        return cls(tok)

    @property
    def config(self) -> Any:
        """The HF config of the underlying model."""
        return self.tok_model.config

    def mark(self, unit: str, category: str, categories: Sequence[str], reward: str) -> None:
        """Record in the config what this model judges, so a folder says how to use it."""
        if unit not in UNITS:
            raise ValueError(f"unknown segment unit {unit!r}; use one of {', '.join(UNITS)}")
        if reward not in REWARD_KINDS:
            raise ValueError(f"segment reward must be one of {', '.join(REWARD_KINDS)}")
        cfg = self.config
        cfg.rlhfkit_reward_type = "segment"
        cfg.rlhfkit_segment_unit = unit
        cfg.rlhfkit_segment_category = category
        cfg.rlhfkit_span_categories = list(categories)
        cfg.rlhfkit_segment_reward = reward

    @property
    def unit(self) -> str:
        """Segment unit the model was trained at."""
        return getattr(self.config, "rlhfkit_segment_unit", "sentence")

    @property
    def category(self) -> str:
        """The reward-model category (``relevance``, ``factuality``, ...)."""
        return getattr(self.config, "rlhfkit_segment_category", "")

    @property
    def reward_kind(self) -> str:
        """How error logits become rewards (:func:`segment_rewards`)."""
        return getattr(self.config, "rlhfkit_segment_reward", "sign")

    def _parts(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        tok = self.tok_model
        if hasattr(tok, "get_base_model"):  # peft
            tok = tok.get_base_model()
        body = getattr(tok, tok.base_model_prefix)
        head = getattr(tok, "score", None)
        if head is None:
            head = getattr(tok, "classifier", None)
        if head is None:
            raise ModelLoadError(f"{type(tok).__name__} has no 'score' or 'classifier' head")
        return body, head, getattr(tok, "dropout", nn.Identity())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Error logits (N,) at positions ``(rows[i], cols[i])`` of a (B, T) batch.

        Only those N hidden states go through the head. ``position_ids`` is needed for
        left-padded rows (a rollout); right-padded rows count positions from 0 as they are.
        """
        body, head, dropout = self._parts()
        hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False).last_hidden_state  # (B, T, H)
        selected = dropout(hidden[rows, cols])  # (N, H)
        return head(selected).squeeze(-1).float().clone()  # (N,) not a view (see RewardModel)

    def save(self, path: str | Path, tokenizer: Any = None) -> None:
        """Save as an HF folder (LoRA merged) that the stock transformers classes load."""
        merge_and_save(self.tok_model, tokenizer, path)


def is_segment_rm(path: str | Path) -> bool:
    """Whether ``path`` is a folder saved by ``rlhfkit segment-rm``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("rlhfkit_reward_type") == "segment"
    except (OSError, json.JSONDecodeError):
        return False


# ---------------------------------------------------------------------------------------
# As a reward source of the RL stages
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def rollout_segment_logits(model: SegmentRewardModel, tokenizer: Any, rollout: Rollout,
                           unit: str, autocast: Callable | None = None, batch_size: int = 16
                           ) -> list[list[tuple[int, float]]]:
    """``(segment-end token index, error logit)`` for every segment of every response.

    The model reads exactly the ids the policy sampled (prompt from the chat template, response
    up to its end-of-turn token), with the rollout's position ids for the left padding.
    """
    segs = response_segments(tokenizer, rollout.response_ids, rollout.texts, unit)
    width = rollout.prompt_width
    device = rollout.input_ids.device
    out: list[list[tuple[int, float]]] = []
    for start in range(0, len(rollout), batch_size):
        chunk = range(start, min(start + batch_size, len(rollout)))
        rows = [b - start for b in chunk for _ in segs[b]]
        toks = [tok for b in chunk for _, tok in segs[b]]
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(rollout.input_ids[start:chunk.stop],
                           rollout.attention_mask[start:chunk.stop],
                           torch.tensor(rows, device=device),
                           torch.tensor([width + t for t in toks], device=device),
                           rollout.position_ids[start:chunk.stop]).float().cpu().tolist()
        i = 0
        for b in chunk:
            out.append([(tok, logits[i + j]) for j, (_, tok) in enumerate(segs[b])])
            i += len(segs[b])
    return out


def segment_rm_source(name: str, path: str, ctx: SourceContext) -> RewardSource:
    """A per-segment reward source from a segment reward-model folder.

    Each segment's reward (``sign``/``prob``/``logodds`` of its error logit, as saved in the
    folder) goes on its last token. The rewards are not standardised: they are already on a
    fixed scale, and ``--rewards`` weighs them. The source has no ``path``, so ``--critic rm``
    starts the critic from a holistic reward model instead.
    """
    model = SegmentRewardModel.from_pretrained(path, pad_token_id=ctx.tokenizer.pad_token_id)
    model.eval().requires_grad_(False).to(ctx.device)
    unit, kind = model.unit, model.reward_kind

    def fn(rollout: Rollout) -> DenseRewards:
        per_response = rollout_segment_logits(model, ctx.tokenizer, rollout, unit, ctx.autocast)
        out = []
        for items in per_response:
            rewards = segment_rewards(torch.tensor([z for _, z in items]), kind).tolist()
            out.append([(tok, r) for (tok, _), r in zip(items, rewards)])
        return out

    return RewardSource(name, fn, model=model)
