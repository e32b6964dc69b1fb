"""Per-segment reward models from span feedback (``rlhfkit segment-rm``).

One model per feedback category (Wu et al. 2023, Sec. 4.1): ``--category relevance`` learns
to find irrelevant, repetitive or incoherent sub-sentences, ``--category factuality`` untruthful
or unverifiable sentences (or name span categories yourself, ``--category irrelevant,off-topic``).
Information completeness stays a holistic reward model trained on comparisons
(``rlhfkit rm``).

Items are span-feedback records (``SpanFeedback``: from a file, the feedback app's export, a
store ``db:URL``, or a built-in task with simulated span feedback such as ``task:factqa``). Each
becomes one sequence, prompt (chat template) + response, with the position of every segment's
last token and a 0/1 label per segment (:func:`rlhfkit.models.segment_reward.segment_labels`).
The loss is the binary cross-entropy per segment, averaged over all segments of the global
batch (``segment_bce_loss``); the held-out accuracy, precision, recall and F1 of the error
class go to ``metrics.jsonl`` and ``eval.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as cfglib
from rlhfkit.data.chat import encode, encode_pair, pad, response_text
from rlhfkit.data.records import RecordError, SpanFeedback
from rlhfkit.losses import segment_bce_loss
from rlhfkit.models.loading import load_tokenizer, prepare_for_training
from rlhfkit.models.segment_reward import (
    REWARD_KINDS,
    SegmentRewardModel,
    classification_counts,
    default_unit,
    f1_metrics,
    segment_labels,
    span_categories,
)
from rlhfkit.segments import UNITS, response_segments
from rlhfkit.train.inputs import load_span_records, split_or_load, system_prompt_for
from rlhfkit.train.loop import FSDPOptions, Loop, Run, TrainConfig
from rlhfkit.train.sharding import share_batches


@cfglib.stage_defaults(output_dir="runs/segment-rm", data="task:factqa", learning_rate=2e-5,
                       max_length=512)
@dataclass
class SegmentRMConfig(FSDPOptions, TrainConfig):
    """A per-segment reward model from span feedback (``rlhfkit segment-rm``)."""

    category: str = "relevance"
    """relevance (irrelevant/repetitive/incoherent spans), factuality (untruthful/unverifiable),
    or a comma-separated list of span categories."""
    segment_unit: Literal["", "sentence", "subsentence", "response"] = ""
    """sentence, subsentence or response; default subsentence for relevance, else sentence."""
    reward: Literal["sign", "prob", "logodds"] = "sign"
    """Reward of a segment in RL: sign (+1 no error / -1 error), prob (1 - 2 p_error), logodds."""
    error_weight: float = 1.0
    """Loss weight of error segments (raise it when errors are rare)."""


@dataclass
class SegmentItem:
    """One response: its ids, the absolute position of each segment's end, a label each."""

    input_ids: list[int]
    positions: list[int]
    labels: list[int]


def build_items(records: list[SpanFeedback], tokenizer: Any, unit: str,
                categories: tuple[str, ...], max_length: int,
                system_prompt: str | None = None) -> tuple[list[SegmentItem], dict[str, int]]:
    """Tokenize span records into :class:`SegmentItem`.

    A response cut by ``max_length`` is skipped. Returns the items and counts (responses,
    segments, errors, skipped).
    """
    cache: dict[str, list[int]] = {}
    items, skipped = [], 0
    for r in records:
        enc = encode_pair(tokenizer, r.prompt, r.response, max_length, system_prompt, cache)
        response_ids = enc.input_ids[enc.prompt_len:]
        full = encode(tokenizer, response_text(tokenizer, r.prompt, r.response, system_prompt))
        if len(response_ids) < len(full):
            skipped += 1
            continue
        (segs,) = response_segments(tokenizer, [response_ids], [r.response], unit)
        labels = segment_labels(r.response, [span for span, _ in segs], r.spans, categories)
        items.append(SegmentItem(enc.input_ids, [enc.prompt_len + t for _, t in segs], labels))
    counts = {"responses": len(items), "segments": sum(len(i.labels) for i in items),
              "errors": sum(sum(i.labels) for i in items), "skipped": skipped}
    return items, counts


def collate_segments(items: list[SegmentItem], pad_id: int) -> dict[str, Any]:
    """Right-pad the sequences; flatten the segment ends into (row, column) indices."""
    input_ids, attention_mask = pad([i.input_ids for i in items], pad_id)
    rows = [b for b, item in enumerate(items) for _ in item.positions]
    cols = [p for item in items for p in item.positions]
    labels = [y for item in items for y in item.labels]
    return {
        "input_ids": input_ids,  # (B, T)
        "attention_mask": attention_mask,  # (B, T)
        "rows": torch.tensor(rows, dtype=torch.long),  # (N,) which sequence
        "cols": torch.tensor(cols, dtype=torch.long),  # (N,) its segment-end position
        "labels": torch.tensor(labels, dtype=torch.float32),  # (N,) 1 = error
        "num_tokens": int(attention_mask.sum()),
        "num_units": float(len(labels)),  # the loss is a mean over segments
    }


@torch.no_grad()
def evaluate_segments(loop: Loop, items: list[SegmentItem], pad_id: int, batch_size: int,
                      error_weight: float = 1.0) -> dict[str, float]:
    """Held-out per-segment accuracy, precision, recall, F1 (error class) and loss.

    Under ``--fsdp`` every process runs as many batches
    (:func:`rlhfkit.train.sharding.share_batches`).
    """
    model = loop.model
    model.eval()
    sums = {"tp": 0.0, "fp": 0.0, "fn": 0.0, "tn": 0.0, "loss": 0.0}
    for part in share_batches(items, loop.rank, loop.world, batch_size, loop.run_.sharded):
        batch = collate_segments(part or items[:1], pad_id)  # []: run one, ignore it
        dev = loop.accelerator.device
        with loop.accelerator.autocast():
            logits = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                           batch["rows"].to(dev), batch["cols"].to(dev))
        if not part:
            continue
        labels = batch["labels"].to(dev)
        loss, _ = segment_bce_loss(logits, labels, error_weight)
        for key, v in classification_counts(logits, labels).items():
            sums[key] += v
        sums["loss"] += float(loss.sum())
    total = loop.reduce_sums(sums)
    out = f1_metrics(total)
    out["eval/segment_loss"] = total["loss"] / max(out["eval/segment_count"], 1.0)
    model.train()
    return out


def check_config(cfg: SegmentRMConfig) -> tuple[str, tuple[str, ...]]:
    """The resolved unit and span categories; a clear error for a bad value."""
    unit = cfg.segment_unit or default_unit(cfg.category)
    if unit not in UNITS:
        raise cfglib.ConfigError(f"--segment-unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if cfg.reward not in REWARD_KINDS:
        raise cfglib.ConfigError(f"--reward must be one of {', '.join(REWARD_KINDS)}, "
                                 f"got {cfg.reward!r}")
    try:
        categories = span_categories(cfg.category)
    except ValueError as e:
        raise cfglib.ConfigError(str(e)) from None
    return unit, categories


def _check_categories(records: list[SpanFeedback], categories: tuple[str, ...], spec: str) -> None:
    seen = Counter(s.category for r in records for s in r.spans)
    if seen and not any(c in seen for c in categories):
        raise RecordError(
            f"no span has category {' or '.join(categories)}; the records have "
            + ", ".join(f"{c} ({n})" for c, n in seen.most_common()),
            field="spans[].category", expected="spans of the category this model learns "
            "(--category relevance|factuality|NAME,NAME)", file=spec)


def build_segment_model(cfg: SegmentRMConfig, pad_token_id: int) -> SegmentRewardModel:
    """Backbone + fresh token-classification head (or a saved one), with LoRA when asked."""
    model = SegmentRewardModel.from_pretrained(cfg.model, pad_token_id=pad_token_id)
    # The head is new, so under LoRA it is trained in full next to the adapters.
    model.tok_model = prepare_for_training(model.tok_model, cfg, "TOKEN_CLS",
                                           modules_to_save=["score"])
    return model


def train_segment_rm(cfg: SegmentRMConfig) -> Path:
    """Train a segment reward model; returns the saved model folder (``output_dir/model``)."""
    unit, categories = check_config(cfg)
    run = Run(cfg, "segment_rm")
    accelerator, out = run.accelerator, run.out
    tokenizer = load_tokenizer(cfg.model)
    system_prompt = system_prompt_for(cfg.system_prompt, cfg.data)
    records = load_span_records(cfg.data, split=cfg.split)
    _check_categories(records, categories, cfg.data)
    train_records, eval_records = split_or_load(
        records, cfg.eval_data, cfg.eval_fraction, cfg.seed,
        lambda spec, split: load_span_records(spec, split=split),
        data=cfg.data, eval_split=cfg.eval_split)
    train_items, counts = build_items(train_records, tokenizer, unit, categories,
                                      cfg.max_length, system_prompt)
    eval_items, eval_counts = build_items(eval_records, tokenizer, unit, categories,
                                          cfg.max_length, system_prompt)
    pad_id = tokenizer.pad_token_id
    model = build_segment_model(cfg, pad_id)

    def collate(batch: list[SegmentItem]) -> dict[str, Any]:
        return {k: v.to(accelerator.device) if torch.is_tensor(v) else v
                for k, v in collate_segments(batch, pad_id).items()}

    loop = Loop(run, model, train_items, collate, lengths=[len(i.input_ids) for i in train_items])
    if accelerator.is_main_process:
        print(f"[segment-rm] {cfg.category} ({', '.join(categories)}) per {unit}: "
              f"{counts['responses']} responses, {counts['segments']} segments, "
              f"{counts['errors']} marked as errors"
              + (f", {counts['skipped']} skipped (longer than --max-length)"
                 if counts["skipped"] else "")
              + f"; held out: {eval_counts['segments']} segments; {loop.describe()}; "
              f"precision {accelerator.mixed_precision}")

    def step(m: torch.nn.Module, batch: dict[str, Any]):
        logits = m(batch["input_ids"], batch["attention_mask"], batch["rows"], batch["cols"])
        labels = batch["labels"]
        loss, diag = segment_bce_loss(logits, labels, cfg.error_weight)
        return loss.sum(), {"segment/accuracy": diag["correct"].sum(),
                            "segment/error_rate": labels.sum()}

    evaluate = (lambda: evaluate_segments(loop, eval_items, pad_id, cfg.batch_size,
                                          cfg.error_weight)) if eval_items else None
    metrics = loop.run(step, evaluate)
    rm = run.export_copy(accelerator.unwrap_model(loop.model),  # --fsdp: gathered, on the main
                         lambda: build_segment_model(cfg, pad_id))  # process (all call)
    if accelerator.is_main_process:
        rm.mark(unit, cfg.category, categories, cfg.reward)
        rm.save(out / "model", tokenizer)
        result = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        result.update({"category": cfg.category, "span_categories": list(categories),
                       "segment_unit": unit, "reward": cfg.reward,
                       "train_responses": counts["responses"],
                       "train_segments": counts["segments"], "train_errors": counts["errors"],
                       "skipped": counts["skipped"] + eval_counts["skipped"]})
        (out / "eval.json").write_text(json.dumps(result, indent=2))
        f1 = result.get("eval/segment_f1")
        acc = result.get("eval/segment_accuracy")
        print(f"[segment-rm] saved to {out / 'model'}; held-out segment accuracy "
              f"{'n/a' if acc is None else f'{acc:.3f}'}, F1 {'n/a' if f1 is None else f'{f1:.3f}'}"
              f"; results in {out / 'eval.json'}")
    accelerator.wait_for_everyone()
    return out / "model"
