"""Direct preference optimisation: DPO, IPO, KTO and the preferred-FT / unlikelihood baselines.

No reward model and no sampling: the policy is trained on the preference records themselves.
DPO (Rafailov et al. 2023) shows that the KL-constrained RLHF objective is solved by
``pi(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``, so ``r = beta * log pi / pi_ref`` (+ a term that
cancels in comparisons) and a Bradley–Terry loss on that implicit reward trains the policy
directly. ``--loss`` picks the objective; every one is a pure function in :mod:`rlhfkit.losses`
and one entry in :data:`PAIRWISE_LOSSES` (KTO, on unpaired labels, has its own step).

How the data is laid out:

- Items are *groups*. A ranking of K keeps its K distinct responses together with its C(K, 2)
  pairs, each of weight 1/C(K, 2) (Ouyang et al. 2022, eq. 1), so each response runs through the
  policy once per step instead of once per pair; a plain comparison is a group of 2; ties are
  skipped (DPO has no likelihood for a tie) and counted. For KTO a group is one response with
  its 👍/👎 and one *mismatched* response (the prompt with another example's response) for the
  KL reference point; comparisons and rankings are split: a response that wins more of its
  pairs than it loses is desirable, one that loses more is undesirable (KTO paper, sec. 4).
- Reference log-probs are computed once before training, with no gradient, in batches sorted
  by length, and stored with the items (and in ``output_dir/reference_logps.pt`` so a resumed run
  reuses them). The reference is ``--reference`` if given, else the LoRA model with its adapter
  disabled (``--lora``), else the starting policy itself: computed before the first update, it
  *is* the frozen reference, and no copy of the model is kept in memory. Under ``--fsdp`` they
  are computed with the sharded policy, or a ``--reference`` sharded as a frozen model.
- A micro-batch is one right-padded batch of the distinct sequences of its groups, chosen and
  rejected together; the policy runs once over it and the output projection is applied only at
  response tokens (:func:`rlhfkit.models.policy.sequence_logprobs`).

Logged metrics (training: weighted means over the global batch; ``eval/`` prefix: held-out,
unweighted means over pairs):

- ``loss/<loss>``: the loss.
- ``rewards/chosen``, ``rewards/rejected``: the DPO implicit reward
  ``beta * (log pi(y) - log pi_ref(y))`` of the chosen / rejected response (summed over tokens,
  whatever ``--loss`` is, so runs with different losses compare);
  ``rewards/margins`` = chosen - rejected; ``rewards/accuracy`` = share of pairs with a margin
  strictly above 0 (0 at the start, where the policy is the reference).
- ``logps/chosen``, ``logps/rejected``: summed response log-probs under the policy.
- KTO: ``kto/kl`` (the reference point z0) and ``rewards/accuracy`` = share of examples whose
  reward is on the side of ``beta * z0`` that its label asks for; on held-out pairs the pairwise
  metrics above, on held-out 👍/👎 ``rewards/chosen|rejected`` are the mean rewards of desirable
  and undesirable responses.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from rlhfkit import config as cfglib
from rlhfkit.config import only
from rlhfkit.data.chat import encode_pair, pad
from rlhfkit.data.records import BinaryFeedback, Record, ScoreFeedback, as_comparisons, score_pairs
from rlhfkit.data.splits import prompt_key
from rlhfkit.losses import dpo_loss, ipo_loss, kto_loss, preferred_ft_loss, unlikelihood_loss
from rlhfkit.models.loading import load_causal_lm, merge_and_save
from rlhfkit.models.policy import SelectiveLM, sequence_logprobs
from rlhfkit.options import KLOptions
from rlhfkit.train.inputs import LabelWeightOptions, stage_inputs, weigh_labels
from rlhfkit.train.loop import FSDPOptions, Loop, Run, TrainConfig, held_out_summary
from rlhfkit.train.sft import build_policy
from rlhfkit.train.sharding import shard_model, share_batches

Tensor = torch.Tensor

LOSSES = ("dpo", "ipo", "kto", "pref-ft", "unlikelihood")


@dataclass
class DPOOptions:
    """The objective of DPO and its relatives (offline ``rlhfkit dpo`` and ``online-dpo``)."""

    loss: Literal["dpo", "ipo", "kto", "pref-ft", "unlikelihood"] = "dpo"
    """dpo, ipo, kto, pref-ft (fine-tune on the chosen response) or unlikelihood."""
    beta: float = field(default=0.1, metadata=cfglib.bounds(gt=0))
    """KL strength: the implicit reward is beta * log(pi / pi_ref); IPO's target gap is 1/(2 beta)."""
    label_smoothing: float = field(default=0.0, metadata=cfglib.bounds(ge=0, lt=0.5))
    """DPO only: assumed probability that a label is flipped (conservative DPO), in [0, 0.5)."""
    unlikelihood_alpha: float = 1.0
    """Unlikelihood only: weight of the -log(1 - p) term on rejected tokens."""
    desirable_weight: float = 1.0
    """KTO only: lambda_D, the weight of desirable examples."""
    undesirable_weight: float = 1.0
    """KTO only: lambda_U, the weight of undesirable examples."""
    ref_batch_size: int = 16
    """Sequences per forward pass while computing the reference log-probs."""


@cfglib.stage_defaults(output_dir="runs/dpo", learning_rate=5e-6, batch_size=4)
@dataclass
class DPOConfig(FSDPOptions, only(LabelWeightOptions, "weight_by", "min_reliability"), TrainConfig,
                DPOOptions, only(KLOptions, "reference")):
    """Direct preference optimisation (``rlhfkit dpo``)."""


# --------------------------------------------------------------------------------------------
# Data: groups of sequences with their judgements and cached reference log-probs
# --------------------------------------------------------------------------------------------


@dataclass
class PrefGroup:
    """Distinct sequences of one prompt, the judgements between them, and reference log-probs."""

    sequences: list[list[int]] = field(default_factory=list)
    """Token ids of prompt + response, each distinct response once."""
    prompt_lens: list[int] = field(default_factory=list)
    """Prompt length of each sequence; the tokens after it are scored."""
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    """(chosen index, rejected index, weight)."""
    points: list[tuple[int, bool]] = field(default_factory=list)
    """KTO: (index, desirable)."""
    kl_sequences: list[list[int]] = field(default_factory=list)
    """KTO: mismatched sequences (this prompt, another example's response) for the KL estimate."""
    kl_prompt_lens: list[int] = field(default_factory=list)
    """Prompt length of each mismatched sequence."""
    ref_logps: list[float] = field(default_factory=list)
    """Reference log pi_ref(y | x) of each sequence (filled by :func:`attach_reference_logps`)."""
    kl_ref_logps: list[float] = field(default_factory=list)
    """Reference log-probs of the mismatched sequences."""

    @property
    def num_tokens(self) -> int:
        """Tokens the group costs in one forward pass."""
        return sum(len(s) for s in self.sequences) + sum(len(s) for s in self.kl_sequences)


class _Encoder:
    """encode_pair with the stage's settings and a shared prompt cache."""

    def __init__(self, tokenizer: Any, max_length: int, system_prompt: str | None) -> None:
        self.tokenizer, self.max_length, self.system_prompt = tokenizer, max_length, system_prompt
        self.cache: dict[str, list[int]] = {}

    def __call__(self, prompt: Any, response: str) -> tuple[list[int], int]:
        e = encode_pair(self.tokenizer, prompt, response, self.max_length, self.system_prompt,
                        self.cache)
        return e.input_ids, e.prompt_len


def build_pair_groups(
    records: Sequence[Record], tokenizer: Any, max_length: int, system_prompt: str | None = None
) -> tuple[list[PrefGroup], dict[str, int]]:
    """Groups for the pairwise losses from comparisons and rankings (ties skipped, counted).

    Returns:
        The groups and counts: ``pairs`` (kept), ``ties`` (skipped), ``rankings``.
    """
    prefs = [r for r in records if not isinstance(r, BinaryFeedback)]
    comparisons = as_comparisons(prefs, drop_ties=True)
    encode = _Encoder(tokenizer, max_length, system_prompt)
    by_key: dict[Any, list[Any]] = {}
    for n, c in enumerate(comparisons.pairs):
        by_key.setdefault(("g", c.group) if c.group is not None else ("c", n), []).append(c)
    groups = []
    for pairs in by_key.values():
        group, seen = PrefGroup(), {}
        for c in pairs:
            ij = []
            for response in (c.chosen, c.rejected):
                if response not in seen:
                    seen[response] = len(group.sequences)
                    ids, prompt_len = encode(c.prompt, response)
                    group.sequences.append(ids)
                    group.prompt_lens.append(prompt_len)
                ij.append(seen[response])
            group.pairs.append((ij[0], ij[1], float(c.weight)))
        groups.append(group)
    counts = {"pairs": len(comparisons.pairs), "ties": comparisons.n_ties,
              "rankings": comparisons.n_rankings}
    return groups, counts


def binary_examples(records: Sequence[Record]) -> tuple[list[tuple[Any, str, bool]], int]:
    """(prompt, response, desirable) examples for KTO, and how many responses were undecided.

    👍/👎 records pass through. Comparisons and rankings are split: within a group (a ranking, or
    one comparison) a response that wins more of its non-tied pairs than it loses is desirable,
    one that loses more is undesirable, and one that breaks even is left out.
    """
    examples = [(r.prompt, r.response, bool(r.label)) for r in records
                if isinstance(r, BinaryFeedback)]
    prefs = [r for r in records if not isinstance(r, BinaryFeedback)]
    undecided = 0
    if prefs:
        by_group: dict[Any, dict[str, int]] = {}
        prompts: dict[Any, Any] = {}
        for n, c in enumerate(as_comparisons(prefs, drop_ties=False).pairs):
            key = c.group if c.group is not None else f"comparison-{n}"
            score = by_group.setdefault(key, {})
            prompts[key] = c.prompt
            score.setdefault(c.chosen, 0)
            score.setdefault(c.rejected, 0)
            if not c.tie:
                score[c.chosen] += 1
                score[c.rejected] -= 1
        for key, score in by_group.items():
            for response, wins in score.items():
                if wins:
                    examples.append((prompts[key], response, wins > 0))
                else:
                    undecided += 1
    return examples, undecided


def build_kto_groups(
    records: Sequence[Record],
    tokenizer: Any,
    max_length: int,
    system_prompt: str | None = None,
    seed: int = 0,
) -> tuple[list[PrefGroup], dict[str, int]]:
    """One group per KTO example, each with a mismatched sequence for the KL reference point.

    The mismatched response of example i is the response of the next example in a seeded
    shuffle whose prompt differs (Ethayarajh et al. 2024, sec. 4.1 pair x_i with y_j, j != i).

    Returns:
        The groups and counts: ``desirable``, ``undesirable``, ``undecided`` (left out).
    """
    examples, undecided = binary_examples(records)
    encode = _Encoder(tokenizer, max_length, system_prompt)
    order = list(range(len(examples)))
    random.Random(f"kto-mismatch-{seed}").shuffle(order)
    successor = {}
    for pos, i in enumerate(order):
        j = order[(pos + 1) % len(order)]
        for step in range(2, min(len(order), 64)):
            if prompt_key(examples[j][0]) != prompt_key(examples[i][0]):
                break
            j = order[(pos + step) % len(order)]
        successor[i] = j
    groups = []
    for i, (prompt, response, desirable) in enumerate(examples):
        ids, prompt_len = encode(prompt, response)
        kl_ids, kl_prompt_len = encode(prompt, examples[successor[i]][1])
        groups.append(PrefGroup(sequences=[ids], prompt_lens=[prompt_len],
                                points=[(0, desirable)], kl_sequences=[kl_ids],
                                kl_prompt_lens=[kl_prompt_len]))
    n_desirable = sum(d for _, _, d in examples)
    counts = {"desirable": n_desirable, "undesirable": len(examples) - n_desirable,
              "undecided": undecided}
    return groups, counts


def pad_with_targets(
    sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad; returns ``input_ids``, ``attention_mask`` and ``target_mask`` (response tokens)."""
    input_ids, attention_mask = pad(sequences, pad_id)  # (S, T), (S, T)
    target_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    for i, (s, p) in enumerate(zip(sequences, prompt_lens)):
        target_mask[i, p:len(s)] = True
    target_mask[:, 0] = False  # the first token has no context to predict it from
    return input_ids, attention_mask, target_mask


def collate_groups(groups: list[PrefGroup], pad_id: int) -> dict[str, Any]:
    """Flatten groups into one padded batch with index tensors for pairs and KTO points."""
    sequences: list[list[int]] = []
    prompt_lens: list[int] = []
    ref_logps: list[float] = []
    pair_rows: list[tuple[int, int, float]] = []
    point_rows: list[tuple[int, bool]] = []
    kl_sequences: list[list[int]] = []
    kl_prompt_lens: list[int] = []
    kl_ref_logps: list[float] = []
    for g in groups:
        offset = len(sequences)
        sequences += g.sequences
        prompt_lens += g.prompt_lens
        ref_logps += g.ref_logps
        pair_rows += [(i + offset, j + offset, w) for i, j, w in g.pairs]
        point_rows += [(i + offset, d) for i, d in g.points]
        kl_sequences += g.kl_sequences
        kl_prompt_lens += g.kl_prompt_lens
        kl_ref_logps += g.kl_ref_logps
    if len(ref_logps) != len(sequences):
        raise RuntimeError("reference log-probs are missing; call attach_reference_logps first")
    input_ids, attention_mask, target_mask = pad_with_targets(sequences, prompt_lens, pad_id)
    pairs = list(zip(*pair_rows)) if pair_rows else [[], [], []]
    points = list(zip(*point_rows)) if point_rows else [[], []]
    batch: dict[str, Any] = {
        "input_ids": input_ids,  # (S, T) every distinct sequence once
        "attention_mask": attention_mask,  # (S, T)
        "target_mask": target_mask,  # (S, T) response tokens
        "ref_logps": torch.tensor(ref_logps, dtype=torch.float32),  # (S,)
        "lengths": target_mask.sum(1).float(),  # (S,) response tokens scored
        "chosen_idx": torch.tensor(pairs[0], dtype=torch.long),  # (P,)
        "rejected_idx": torch.tensor(pairs[1], dtype=torch.long),  # (P,)
        "pair_weight": torch.tensor(pairs[2], dtype=torch.float32),  # (P,)
        "point_idx": torch.tensor(points[0], dtype=torch.long),  # (Q,)
        "desirable": torch.tensor(points[1], dtype=torch.bool),  # (Q,)
        "num_tokens": int(attention_mask.sum()),
    }
    if kl_sequences:
        kl_ids, kl_mask, kl_target = pad_with_targets(kl_sequences, kl_prompt_lens, pad_id)
        batch.update(kl_input_ids=kl_ids, kl_attention_mask=kl_mask,  # (M, T')
                     kl_target_mask=kl_target,  # (M, T')
                     kl_ref_logps=torch.tensor(kl_ref_logps, dtype=torch.float32))  # (M,)
        batch["num_tokens"] += int(kl_mask.sum())
    batch["num_units"] = float(batch["pair_weight"].sum()) + len(point_rows)
    return batch


# --------------------------------------------------------------------------------------------
# Reference log-probs, once
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_logps(
    reference: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    pad_id: int,
    batch_size: int = 16,
    accelerator: Any = None,
    progress: bool = False,
    same_count: bool = False,
) -> list[float]:
    """Summed response log-probs of each sequence under ``reference`` (a SelectiveLM).

    Sequences are sorted by length so that batches carry little padding, and sharded over
    processes when an ``accelerator`` with several processes is given (then gathered). With
    ``same_count`` (a sharded ``reference``, ``--fsdp``) every process runs as many batches.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator \
        else (0, 1)
    autocast = accelerator.autocast if accelerator is not None else nullcontext
    device = accelerator.device if accelerator is not None else next(reference.parameters()).device
    was_training = reference.training
    reference.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: list[tuple[int, float]] = []
    for idx in tqdm(share_batches(order, rank, world, batch_size, same_count),
                    desc="reference log-probs", unit="batch", disable=not progress,
                    dynamic_ncols=True):
        run_on = idx or order[:1]  # []: another process still has a batch: run one, ignore it
        ids, mask, target = pad_with_targets([sequences[i] for i in run_on],
                                             [prompt_lens[i] for i in run_on], pad_id)
        with autocast():
            _, seq_logps = sequence_logprobs(reference, ids.to(device), mask.to(device),
                                             target.to(device))
        results += list(zip(idx, seq_logps.tolist()))
    reference.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    out = [0.0] * len(sequences)
    for i, value in results:
        out[i] = value
    return out


def _cache_key(identity: str, sequences: list[list[int]], prompt_lens: list[int]) -> str:
    digest = hashlib.sha1(identity.encode())
    digest.update(json.dumps([sequences, prompt_lens]).encode())
    return digest.hexdigest()


def attach_reference_logps(
    groups: Sequence[PrefGroup],
    reference: torch.nn.Module,
    pad_id: int,
    batch_size: int = 16,
    accelerator: Any = None,
    cache_file: Path | None = None,
    identity: str = "",
    progress: bool = False,
    same_count: bool = False,
) -> None:
    """Fill ``ref_logps`` / ``kl_ref_logps`` of every group in one batched pass, no gradient.

    With ``cache_file``, values saved there for the same ``identity`` (reference model and
    precision) and the same token ids are reused, and fresh ones are saved. ``same_count``: see
    :func:`reference_logps`.
    """
    sequences = [s for g in groups for s in (*g.sequences, *g.kl_sequences)]
    prompt_lens = [p for g in groups for p in (*g.prompt_lens, *g.kl_prompt_lens)]
    key = _cache_key(identity, sequences, prompt_lens) if cache_file is not None else ""
    values = None
    if cache_file is not None and cache_file.exists():
        saved = torch.load(cache_file, weights_only=True)
        if saved.get("key") == key:
            values = saved["logps"].tolist()
    if values is None:
        values = reference_logps(reference, sequences, prompt_lens, pad_id, batch_size,
                                 accelerator, progress, same_count)
        if cache_file is not None and (accelerator is None or accelerator.is_main_process):
            torch.save({"key": key, "logps": torch.tensor(values, dtype=torch.float64)},
                       cache_file)
    it = iter(values)
    for g in groups:
        g.ref_logps = [next(it) for _ in g.sequences]
        g.kl_ref_logps = [next(it) for _ in g.kl_sequences]


def disabled_adapter(model: torch.nn.Module):
    """Context in which a peft model runs without its LoRA adapter (the base model)."""
    lm = model.lm if isinstance(model, SelectiveLM) else model
    if not hasattr(lm, "disable_adapter"):
        raise TypeError("the model has no LoRA adapter to disable")
    return lm.disable_adapter()


# --------------------------------------------------------------------------------------------
# Steps: one policy forward over the batch, then a loss from the table
# --------------------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """Per-pair views of one forward pass. Shapes (P,) unless noted; T = padded length - 1."""

    chosen_logps: Tensor
    rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    chosen_token_logps: Tensor  # (P, T)
    chosen_mask: Tensor  # (P, T)
    rejected_token_logps: Tensor  # (P, T)
    rejected_mask: Tensor  # (P, T)


def pair_batch(token_logps: Tensor, seq_logps: Tensor, batch: dict[str, Any]) -> PairBatch:
    """Pick the chosen and rejected rows of a forward pass over ``batch``'s sequences."""
    c, r = batch["chosen_idx"], batch["rejected_idx"]
    mask = batch["target_mask"][:, 1:]  # (S, T)
    # Back to (S, T) in the row-major order that sequence_logprobs used; padding stays 0.
    padded = token_logps.new_zeros(mask.shape).masked_scatter(mask, token_logps)
    ref, lengths = batch["ref_logps"], batch["lengths"]
    return PairBatch(seq_logps[c], seq_logps[r], ref[c], ref[r], lengths[c], lengths[r],
                     padded[c], mask[c], padded[r], mask[r])


PairLoss = Callable[[PairBatch, DPOConfig], tuple[Tensor, dict[str, Tensor]]]

PAIRWISE_LOSSES: dict[str, PairLoss] = {
    "dpo": lambda p, cfg: dpo_loss(p.chosen_logps, p.rejected_logps, p.ref_chosen_logps,
                                   p.ref_rejected_logps, cfg.beta, cfg.label_smoothing),
    "ipo": lambda p, cfg: ipo_loss(p.chosen_logps, p.rejected_logps, p.ref_chosen_logps,
                                   p.ref_rejected_logps, p.chosen_lengths, p.rejected_lengths,
                                   cfg.beta),
    "pref-ft": lambda p, cfg: preferred_ft_loss(p.chosen_logps, p.chosen_lengths),
    "unlikelihood": lambda p, cfg: unlikelihood_loss(p.chosen_token_logps, p.chosen_mask,
                                                     p.rejected_token_logps, p.rejected_mask,
                                                     cfg.unlikelihood_alpha),
}
"""Loss name -> per-pair loss (P,) of a :class:`PairBatch`; add a variant with one entry."""


def pairwise_losses(pairs: PairBatch, cfg: Any) -> Tensor:
    """(P,) the loss of ``cfg.loss`` on each pair (offline DPO's step and online DPO's loss)."""
    return PAIRWISE_LOSSES[cfg.loss](pairs, cfg)[0]


def pair_metrics(p: PairBatch, weight: Tensor, beta: float) -> dict[str, Tensor]:
    """Weighted sums of the implicit-reward metrics (the loop divides by the total weight)."""
    chosen = beta * (p.chosen_logps - p.ref_chosen_logps).detach()  # (P,)
    rejected = beta * (p.rejected_logps - p.ref_rejected_logps).detach()  # (P,)
    margins = chosen - rejected
    return {
        "rewards/chosen": (weight * chosen).sum(),
        "rewards/rejected": (weight * rejected).sum(),
        "rewards/margins": (weight * margins).sum(),
        "rewards/accuracy": (weight * (margins > 0).float()).sum(),
        "logps/chosen": (weight * p.chosen_logps.detach()).sum(),
        "logps/rejected": (weight * p.rejected_logps.detach()).sum(),
    }


def pairwise_step(
    model: torch.nn.Module, batch: dict[str, Any], cfg: DPOConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted loss sum and metric sums of a micro-batch for the pairwise losses."""
    token_logps, seq_logps = sequence_logprobs(model, batch["input_ids"],
                                               batch["attention_mask"], batch["target_mask"])
    pairs = pair_batch(token_logps, seq_logps, batch)
    loss = pairwise_losses(pairs, cfg)  # (P,)
    weight = batch["pair_weight"].to(loss.device)
    return (weight * loss).sum(), pair_metrics(pairs, weight, cfg.beta)


def process_sum(accelerator: Any) -> Callable[[Tensor], Tensor] | None:
    """Sums a tensor over the processes of ``accelerator`` (None with one process)."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t, reduction="sum")


def kto_step(
    model: torch.nn.Module, batch: dict[str, Any], cfg: DPOConfig,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss sum and metric sums of a micro-batch of KTO examples.

    The mismatched sequences only feed the detached reference point z0, so they run without
    gradient; the examples themselves run in one forward pass. ``reduce`` sums over processes,
    so that z0 comes from the mismatched pairs of all of them (:func:`rlhfkit.losses.kto_loss`).
    """
    with torch.no_grad():
        _, kl_logps = sequence_logprobs(model, batch["kl_input_ids"],
                                        batch["kl_attention_mask"], batch["kl_target_mask"])
    _, seq_logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                     batch["target_mask"])
    idx = batch["point_idx"]
    desirable = batch["desirable"].to(seq_logps.device)
    loss, diag = kto_loss(seq_logps[idx], batch["ref_logps"][idx].to(seq_logps.device),
                          desirable, kl_logps, batch["kl_ref_logps"].to(seq_logps.device),
                          cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, reduce)
    shifted = diag["rewards"] - cfg.beta * diag["kl"]  # (Q,) beta * (r - z0)
    correct = torch.where(desirable, shifted > 0, shifted < 0).float()
    return loss.sum(), {"rewards/accuracy": correct.sum(), "kto/kl": diag["kl"] * len(idx)}


# --------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_preferences(
    model: torch.nn.Module,
    groups: list[PrefGroup],
    pad_id: int,
    batch_size: int,
    cfg: DPOConfig,
    accelerator: Any = None,
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
    progress: bool = False,
    same_count: bool = False,
) -> dict[str, float]:
    """Held-out preference accuracy, margins and rewards, sharded over processes.

    Pairwise groups give ``eval/rewards/*``, ``eval/logps/*`` and (for the pairwise losses)
    ``eval/loss``, as unweighted means over pairs. KTO groups give the mean reward of
    desirable (``eval/rewards/chosen``) and undesirable (``eval/rewards/rejected``) responses,
    their difference, ``eval/kto/kl`` and ``eval/rewards/accuracy`` against ``beta * z0``.

    With ``same_count`` (a sharded ``model``, ``--fsdp``: each forward is a collective) every
    process runs as many batches, and as many forwards in each: one whose share ran out runs
    a batch it ignores, and a batch without KTO groups runs a stand-in for the mismatched
    sequences' forward when the held-out set has any.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator \
        else (0, 1)
    autocast = accelerator.autocast if accelerator is not None else nullcontext
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    model.eval()
    keys = ("pairs", "correct", "chosen", "rejected", "logps_c", "logps_r", "loss",
            "n_d", "n_u", "r_d", "r_u", "kl_sum", "kl_n")
    sums = dict.fromkeys(keys, 0.0)
    points: list[tuple[float, bool]] = []
    kl_everywhere = same_count and any(g.kl_sequences for g in groups)
    for part in tqdm(share_batches(groups, rank, world, batch_size, same_count), desc="held-out",
                     unit="batch", disable=not progress, dynamic_ncols=True):
        batch = collate_groups(part or groups[:1], pad_id)  # []: run one, ignore it
        batch = {n: v.to(device) if isinstance(v, Tensor) else v for n, v in batch.items()}
        with autocast():
            token_logps, seq_logps = sequence_logprobs(model, batch["input_ids"],
                                                       batch["attention_mask"],
                                                       batch["target_mask"])
            kl_logps = None
            if "kl_input_ids" in batch:
                _, kl_logps = sequence_logprobs(model, batch["kl_input_ids"],
                                                batch["kl_attention_mask"],
                                                batch["kl_target_mask"])
            elif kl_everywhere:  # another process may run its KL forward now
                sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                  batch["target_mask"])
        if not part:
            continue
        if len(batch["chosen_idx"]):
            p = pair_batch(token_logps, seq_logps, batch)
            m = pair_metrics(p, torch.ones_like(p.chosen_logps), cfg.beta)
            sums["pairs"] += len(batch["chosen_idx"])
            sums["correct"] += float(m["rewards/accuracy"])
            sums["chosen"] += float(m["rewards/chosen"])
            sums["rejected"] += float(m["rewards/rejected"])
            sums["logps_c"] += float(m["logps/chosen"])
            sums["logps_r"] += float(m["logps/rejected"])
            if cfg.loss in PAIRWISE_LOSSES:
                sums["loss"] += float(PAIRWISE_LOSSES[cfg.loss](p, cfg)[0].sum())
        if len(batch["point_idx"]):
            idx = batch["point_idx"]
            rewards = cfg.beta * (seq_logps[idx] - batch["ref_logps"][idx])
            points += list(zip(rewards.tolist(), batch["desirable"].tolist()))
        if kl_logps is not None:
            sums["kl_sum"] += float((kl_logps - batch["kl_ref_logps"]).sum())
            sums["kl_n"] += len(kl_logps)
    if world > 1:
        from accelerate.utils import gather_object

        points = gather_object(points)
    total = reduce(sums) if reduce is not None else sums
    out: dict[str, float] = {}
    if total["pairs"]:
        n = total["pairs"]
        out.update({
            "eval/rewards/chosen": total["chosen"] / n,
            "eval/rewards/rejected": total["rejected"] / n,
            "eval/rewards/margins": (total["chosen"] - total["rejected"]) / n,
            "eval/rewards/accuracy": total["correct"] / n,
            "eval/logps/chosen": total["logps_c"] / n,
            "eval/logps/rejected": total["logps_r"] / n,
            "eval/pairs": n,
        })
        if cfg.loss in PAIRWISE_LOSSES:
            out["eval/loss"] = total["loss"] / n
    if points:
        z0 = max(total["kl_sum"] / max(total["kl_n"], 1), 0.0)  # KTO's clamped reference point
        good = [r for r, d in points if d]
        bad = [r for r, d in points if not d]
        mean_good = sum(good) / len(good) if good else 0.0
        mean_bad = sum(bad) / len(bad) if bad else 0.0
        correct = sum((r > cfg.beta * z0) if d else (r < cfg.beta * z0) for r, d in points)
        out.update({
            "eval/rewards/chosen": mean_good,
            "eval/rewards/rejected": mean_bad,
            "eval/rewards/margins": mean_good - mean_bad,
            "eval/rewards/accuracy": correct / len(points),
            "eval/kto/kl": z0,
            "eval/examples": float(len(points)),
        })
    return out


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def build_groups_for(
    cfg: DPOConfig, records: Sequence[Record], tokenizer: Any, system_prompt: str | None,
    for_eval: bool = False,
) -> tuple[list[PrefGroup], dict[str, int]]:
    """Training groups for ``cfg.loss`` (or held-out groups with ``for_eval``).

    Held-out comparisons and rankings are always evaluated as pairs (preference accuracy), held-out
    👍/👎 records as KTO examples. Score (Likert) records become pairs within each prompt first
    (:func:`rlhfkit.data.records.score_pairs`: the higher score chosen, weight 1/C(K,2); equal
    scores are ties, which the pairwise losses skip), so they train every loss as a ranking by
    scores would.
    """
    scores = [r for r in records if isinstance(r, ScoreFeedback)]
    n_score_pairs = 0
    if scores:
        derived = score_pairs(scores)
        n_score_pairs = len(derived.pairs)
        records = [r for r in records if not isinstance(r, ScoreFeedback)] + derived.pairs
    groups, counts = _groups_for_loss(cfg, records, tokenizer, system_prompt, for_eval)
    counts["score_pairs"] = n_score_pairs
    return groups, counts


def _groups_for_loss(
    cfg: DPOConfig, records: Sequence[Record], tokenizer: Any, system_prompt: str | None,
    for_eval: bool,
) -> tuple[list[PrefGroup], dict[str, int]]:
    binary = [r for r in records if isinstance(r, BinaryFeedback)]
    prefs = [r for r in records if not isinstance(r, BinaryFeedback)]
    if cfg.loss == "kto" and not for_eval:
        return build_kto_groups(records, tokenizer, cfg.max_length, system_prompt, cfg.seed)
    if binary and not for_eval:
        raise cfglib.ConfigError(
            f"--loss {cfg.loss} needs comparisons or rankings, but the data has {len(binary)} "
            "thumbs-up/down (binary) records; use --loss kto for those"
        )
    groups, counts = build_pair_groups(prefs, tokenizer, cfg.max_length, system_prompt) \
        if prefs else ([], {"pairs": 0, "ties": 0, "rankings": 0})
    if binary:
        kto_groups, kto_counts = build_kto_groups(binary, tokenizer, cfg.max_length,
                                                  system_prompt, cfg.seed)
        groups += kto_groups
        counts.update(kto_counts)
    return groups, counts


def build_dpo_policy(cfg: DPOConfig) -> SelectiveLM:
    """The policy to train (LoRA and activation checkpointing when asked)."""
    return SelectiveLM(build_policy(cfg))


def train_dpo(cfg: DPOConfig) -> Path:
    """Train a policy directly on preferences; returns the saved policy (``output_dir/model``)."""
    if cfg.loss not in LOSSES:
        raise cfglib.ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    run = Run(cfg, cfg.loss)
    inputs = stage_inputs(cfg, "preferences", ["comparison", "ranking", "binary", "score"])
    accelerator, out, tokenizer = run.accelerator, run.out, inputs.tokenizer
    system_prompt = inputs.system_prompt
    train_records, reliability = weigh_labels(cfg, inputs.train_records, inputs.eval_records)
    eval_records = inputs.eval_records
    if reliability and accelerator.is_main_process:
        (out / "reliability.json").write_text(json.dumps(reliability, indent=2))
    train_groups, counts = build_groups_for(cfg, train_records, tokenizer, system_prompt)
    eval_groups, eval_counts = build_groups_for(cfg, eval_records, tokenizer, system_prompt,
                                                for_eval=True)
    pad_id = tokenizer.pad_token_id
    model = build_dpo_policy(cfg).to(accelerator.device)
    # Under --fsdp this shards the policy; the groups get their reference log-probs below,
    # before the loop collates any.
    loop = Loop(run, model, train_groups, lambda b: collate_groups(b, pad_id),
                lengths=[g.num_tokens for g in train_groups])
    policy = accelerator.unwrap_model(loop.model)

    # Reference log-probs, once, before the first update (see the module docstring). Under
    # --fsdp the policy is sharded by now, a --reference is sharded too (frozen, as RL shards
    # its reference), and every forward of theirs is a collective (same_count).
    identity = json.dumps([cfg.reference or cfg.model, cfg.lora, cfg.max_length,
                           accelerator.mixed_precision])
    if cfg.reference is not None:
        reference = SelectiveLM(load_causal_lm(cfg.reference))
        reference = shard_model(reference, cfg, frozen=True) if run.sharded else \
            reference.to(accelerator.device)
        context = nullcontext()
    else:
        reference = policy
        context = disabled_adapter(policy) if cfg.lora else nullcontext()
    with context:
        attach_reference_logps(train_groups + eval_groups, reference, pad_id, cfg.ref_batch_size,
                               accelerator, out / "reference_logps.pt", identity,
                               progress=cfg.progress and run.is_main, same_count=run.sharded)
    del reference

    if accelerator.is_main_process:
        what = (f"{counts['desirable']} desirable / {counts['undesirable']} undesirable examples "
                f"({counts['undecided']} undecided responses left out)") if cfg.loss == "kto" \
            else (f"{counts['pairs']} pairs from {counts['rankings']} rankings, plain "
                  f"comparisons and {counts['score_pairs']} score pairs, {counts['ties']} ties "
                  "skipped")
        print(f"[{cfg.loss}] {len(train_groups)} training groups ({what}); held out: "
              f"{eval_counts.get('pairs', 0)} pairs; {loop.describe()}; precision "
              f"{accelerator.mixed_precision}")

    step_fn = kto_step if cfg.loss == "kto" else pairwise_step
    extra = {"reduce": process_sum(accelerator)} if cfg.loss == "kto" else {}

    def step(m: torch.nn.Module, batch: dict[str, Any]):
        batch = {k: v.to(accelerator.device) if isinstance(v, Tensor) else v
                 for k, v in batch.items()}
        return step_fn(m, batch, cfg, **extra)

    def evaluate() -> dict[str, float]:
        return evaluate_preferences(loop.model, eval_groups, pad_id, cfg.batch_size, cfg,
                                    accelerator, loop.reduce_sums,
                                    progress=cfg.progress and run.is_main,
                                    same_count=run.sharded)

    metrics = loop.run(step, evaluate if eval_groups else None)
    policy = run.export_copy(accelerator.unwrap_model(loop.model).lm,
                             lambda: build_policy(cfg))  # --fsdp: gathered, on the main process
    if accelerator.is_main_process:
        merge_and_save(policy, tokenizer, out / "model", adapter_dir=out / "adapter")
        result = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        result.update({f"train_{k}": v for k, v in counts.items()})
        result.update({f"eval_{k}": v for k, v in eval_counts.items()})
        (out / "eval.json").write_text(json.dumps(result, indent=2))
        print(f"[{cfg.loss}] saved policy to {out / 'model'}; {held_out_summary(result)}; "
              f"results in {out / 'eval.json'}")
    accelerator.wait_for_everyone()
    return out / "model"
