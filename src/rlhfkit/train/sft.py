"""Step 1: supervised fine-tuning on demonstrations (teacher forcing, prompt masked).

Loss: the mean over response tokens of ``-log p(y_t | x, y_<t)`` (Ouyang et al. 2022, step 1).
Prompt tokens are context only. With ``--packing`` several demonstrations share a row; position
ids restart for each, and transformers turns them into a block-diagonal causal mask so the
demonstrations never attend to each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import stage_defaults
from rlhfkit.data.chat import Encoded, encode_pair, pad
from rlhfkit.data.records import Demonstration
from rlhfkit.losses import token_nll
from rlhfkit.models.loading import load_causal_lm, merge_and_save, prepare_for_training
from rlhfkit.models.policy import SelectiveLM, targets_of
from rlhfkit.train.inputs import stage_inputs
from rlhfkit.train.loop import FSDPOptions, Loop, ModelOptions, Run, TrainConfig


@stage_defaults(output_dir="runs/sft", learning_rate=5e-5, epochs=2.0)
@dataclass
class SFTConfig(FSDPOptions, TrainConfig):
    """Supervised fine-tuning (``rlhfkit sft``)."""

    packing: bool = False
    """Pack several demonstrations into each row of --max-length tokens (no padding)."""


def encode_demonstrations(
    tokenizer: Any, records: list[Demonstration], max_length: int, system_prompt: str | None
) -> list[Encoded]:
    """Tokenize demonstrations, each as prompt ids + response ids."""
    cache: dict[str, list[int]] = {}
    return [encode_pair(tokenizer, r.prompt, r.response, max_length, system_prompt, cache)
            for r in records]


def collate_padded(items: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch; ``target_mask`` marks response tokens (the SFT targets)."""
    input_ids, attention_mask = pad([e.input_ids for e in items], pad_id)
    target_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    for i, e in enumerate(items):
        target_mask[i, e.prompt_len:len(e.input_ids)] = True
    target_mask[:, 0] = False  # the first token has no context to predict it from
    return {
        "input_ids": input_ids,  # (B, T)
        "attention_mask": attention_mask,  # (B, T)
        "target_mask": target_mask,  # (B, T)
        "num_units": int(target_mask.sum()),
        "num_tokens": int(attention_mask.sum()),
    }


def pack(items: list[Encoded], max_length: int) -> list[Encoded]:
    """Greedy first-fit packing of whole demonstrations into rows of at most ``max_length``.

    Returns "rows" as Encoded objects whose ``prompt_len`` is unused; the boundaries are kept in
    ``segments`` on each row (list of (start, prompt_len, length)).
    """
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for e in sorted(items, key=lambda e: -len(e.input_ids)):
        for r, free in enumerate(room):
            if len(e.input_ids) <= free:
                rows[r].append(e)
                room[r] -= len(e.input_ids)
                break
        else:
            rows.append([e])
            room.append(max_length - len(e.input_ids))
    packed = []
    for row in rows:
        ids: list[int] = []
        segments = []
        for e in row:
            segments.append((len(ids), e.prompt_len, len(e.input_ids)))
            ids += e.input_ids
        p = Encoded(ids, 0)
        p.segments = segments  # type: ignore[attr-defined]
        packed.append(p)
    return packed


def collate_packed(rows: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Collate packed rows: position ids restart per demonstration, no attention mask."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    target_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        input_ids[i, : len(r.input_ids)] = torch.as_tensor(r.input_ids)
        for start, prompt_len, length in r.segments:  # type: ignore[attr-defined]
            position_ids[i, start:start + length] = torch.arange(length)
            target_mask[i, start + max(prompt_len, 1):start + length] = True
        tail = width - len(r.input_ids)
        if tail:  # padding continues as one more "sequence" that is never a target
            position_ids[i, len(r.input_ids):] = torch.arange(tail)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "target_mask": target_mask,
        "num_units": int(target_mask[:, 1:].sum()),
        "num_tokens": sum(len(r.input_ids) for r in rows),
    }


def sft_step(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    """Summed token NLL of a micro-batch and the number of correctly predicted tokens."""
    logits = model(batch["input_ids"], batch.get("attention_mask"), batch["target_mask"],
                   batch.get("position_ids"))
    targets = targets_of(batch["input_ids"], batch["target_mask"])  # (N,)
    nll = token_nll(logits, targets)  # (N,)
    correct = (logits.argmax(-1) == targets).sum()
    return nll.sum(), {"sft/token_accuracy": correct}


@torch.no_grad()
def evaluate_sft(loop: Loop, items: list[Encoded], pad_id: int, batch_size: int) -> dict[str, float]:
    """Held-out token NLL and perplexity, sharded over processes.

    Under ``--fsdp`` every forward is a collective, so every process runs the same number of
    batches: one whose share ran out runs a batch it then ignores.
    """
    model = loop.model
    model.eval()
    nll_sum, count = 0.0, 0.0
    shard = items[loop.rank::loop.world]
    rounds = math.ceil(math.ceil(len(items) / loop.world) / batch_size)  # the most of any rank
    for k in range(0, rounds * batch_size if loop.run_.sharded else len(shard), batch_size):
        part = shard[k:k + batch_size]
        batch = collate_padded(part or items[:1], pad_id)
        with loop.accelerator.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
        if not part:
            continue
        nll_sum += float(token_nll(logits, targets_of(batch["input_ids"],
                                                      batch["target_mask"])).sum())
        count += batch["num_units"]
    sums = loop.reduce_sums({"nll": nll_sum, "n": count})
    mean = sums["nll"] / max(sums["n"], 1)
    return {"eval/sft_nll": mean, "eval/perplexity": math.exp(min(mean, 50))}


def build_policy(cfg: ModelOptions) -> torch.nn.Module:
    """Load the policy for training, with LoRA adapters when asked."""
    return prepare_for_training(load_causal_lm(cfg.model, dtype=torch.float32), cfg)


def train_sft(cfg: SFTConfig) -> Path:
    """Run supervised fine-tuning; returns the folder of the saved policy (``output_dir/model``)."""
    run = Run(cfg, "sft")
    inputs = stage_inputs(cfg, "demonstrations", ["demonstration"])
    tokenizer, system_prompt = inputs.tokenizer, inputs.system_prompt
    train_items = encode_demonstrations(tokenizer, inputs.train_records, cfg.max_length,
                                        system_prompt)
    eval_items = encode_demonstrations(tokenizer, inputs.eval_records, cfg.max_length,
                                       system_prompt)
    pad_id = tokenizer.pad_token_id
    model = SelectiveLM(build_policy(cfg))
    if cfg.packing:
        train_items = pack(train_items, cfg.max_length)
        collate = lambda b: collate_packed(b, pad_id)  # noqa: E731
    else:
        collate = lambda b: collate_padded(b, pad_id)  # noqa: E731
    loop = Loop(run, model, train_items, collate, lengths=[len(e.input_ids) for e in train_items])
    if run.is_main:
        print(f"[sft] {len(train_items)} training rows, {len(eval_items)} held-out "
              f"demonstrations; {loop.describe()}; precision "
              f"{run.accelerator.mixed_precision}")
    evaluate = (lambda: evaluate_sft(loop, eval_items, pad_id, cfg.batch_size)) \
        if eval_items else None
    metrics = loop.run(sft_step, evaluate)
    policy = run.export_copy(run.accelerator.unwrap_model(loop.model).lm,
                             lambda: build_policy(cfg))  # --fsdp: gathered, on the main process
    if run.is_main:
        merge_and_save(policy, tokenizer, run.out / "model", adapter_dir=run.out / "adapter")
        print(f"[sft] saved policy to {run.out / 'model'}; final metrics: "
              + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("_")))
    run.accelerator.wait_for_everyone()
    return run.out / "model"
