"""Plans for training at size: micro-batches, their loss normalisers, weight-sync buckets.

Everything here is a pure function of lengths, masks or parameter shapes; the trainer decides
when to call it (the model for the micro-batches is verl's dynamic batch size and sequence
length balancing).

**Micro-batches.** A mini-batch (the sequences of one optimizer step) is too big for one forward,
so it is cut into micro-batches whose gradients accumulate. :func:`plan_by_size` cuts it into
consecutive chunks of a fixed number of sequences; :func:`plan_by_tokens` packs sequences into
micro-batches of at most ``max_tokens`` tokens, so many short sequences share a forward and a
long one goes alone, and with several data-parallel ranks first shares the sequences out over
the ranks by tokens and gives every rank the same number of micro-batches (each backward of
DDP/FSDP is a collective: a rank that runs one fewer backward hangs the others).

**Normalisers.** The loss the trainer wants is a mean over the whole mini-batch (of every rank):
``L = (1 / D) sum_{u in mini-batch} l_u`` for some units ``u`` (tokens, or sequences) and a
denominator ``D`` that belongs to the mini-batch. Cut into micro-batches ``M_1 .. M_K``, the same
sum splits as ``L = sum_k (1 / D) sum_{u in M_k} l_u``: each micro-batch contributes its own
*sum* divided by the *mini-batch's* denominator, and since the gradient is linear the summed
gradients of the contributions are the gradient of ``L``. The micro-batch's own mean,
``(1 / D_k) sum_{u in M_k} l_u``, is not: a micro-batch of few tokens would weigh as much as one
of many. :class:`Normaliser` holds ``D`` and gives each micro-batch's contribution
(:meth:`Normaliser.contribution`), or the factor ``D_k / D`` that turns the micro-batch's own
mean into it (:meth:`Normaliser.scale`), or the arguments that make
:func:`rlhfkit.losses.grpo_loss` return it (:meth:`Normaliser.grpo_kwargs`).

The weight-sync buckets are planned in :mod:`rlhfkit.engines.buckets`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhfkit.losses import GRPO_LOSS_TYPES

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------
# Micro-batch plans
# --------------------------------------------------------------------------------------------


def plan_by_size(n: int, micro_batch_size: int) -> list[list[int]]:
    """Consecutive chunks of ``micro_batch_size`` indices (the last may be shorter).

    Args:
        n: Number of sequences in the mini-batch.
        micro_batch_size: Sequences per micro-batch (>= 1).

    Returns:
        ``[[0, .., m-1], [m, .., 2m-1], ...]`` covering ``range(n)`` once; empty for ``n = 0``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    return [list(range(s, min(s + micro_batch_size, n))) for s in range(0, n, micro_batch_size)]


@dataclass(frozen=True)
class MicroBatchPlan:
    """Which sequences each rank runs in each of its micro-batches.

    Attributes:
        micro_batches: ``micro_batches[r][k]`` the indices (into the mini-batch, ascending) of
            rank ``r``'s ``k``-th micro-batch. Every rank has the same number of micro-batches;
            one may be empty (see :func:`plan_by_tokens`).
        tokens: ``tokens[r][k]`` the tokens of that micro-batch.
        max_tokens: The budget the plan was made for.
    """

    micro_batches: list[list[list[int]]]
    tokens: list[list[int]]
    max_tokens: int

    @property
    def world(self) -> int:
        """Number of ranks."""
        return len(self.micro_batches)

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per rank (the same on every rank)."""
        return len(self.micro_batches[0]) if self.micro_batches else 0

    @property
    def rank_tokens(self) -> list[int]:
        """Tokens each rank runs."""
        return [sum(t) for t in self.tokens]

    def rank(self, r: int) -> list[list[int]]:
        """Rank ``r``'s micro-batches."""
        return self.micro_batches[r]


def _lpt(indices: Sequence[int], lengths: Sequence[int], k: int) -> list[list[int]]:
    """Greedy largest-first: each sequence, longest first, into the bin with fewest tokens.

    Ties go to the shorter index first and to the bin with fewer sequences, then the lower bin,
    so the result is deterministic. Each bin's indices come out ascending.
    """
    bins: list[list[int]] = [[] for _ in range(k)]
    heap = [(0, 0, b) for b in range(k)]  # (tokens, sequences, bin)
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        load, count, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (load + lengths[i], count + 1, b))
    return [sorted(b) for b in bins]


def _first_fit(indices: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit decreasing into bins of ``budget`` tokens; a longer sequence gets its own bin.

    Close to the fewest bins (at most ``11/9`` of the optimum plus a constant): how many
    micro-batches a rank needs.
    """
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        for b, load in enumerate(loads):
            if load + lengths[i] <= budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return [sorted(b) for b in bins]


def _fits(bins: list[list[int]], lengths: Sequence[int], budget: int) -> bool:
    return all(len(b) <= 1 or sum(lengths[i] for i in b) <= budget for b in bins)


def _pack(indices: Sequence[int], lengths: Sequence[int], budget: int,
          count: int) -> list[list[int]]:
    """Exactly ``count`` micro-batches of ``indices`` within ``budget``, as even as found.

    Balanced first (largest-first into ``count`` bins); where that overflows the budget, the
    first-fit packing (which needs at most ``count`` bins) with its heaviest micro-batches
    split in two until there are ``count``. Empty micro-batches pad only a rank with fewer
    sequences than ``count``.
    """
    k = min(count, len(indices))
    bins = _lpt(indices, lengths, k)
    if not _fits(bins, lengths, budget):
        bins = _first_fit(indices, lengths, budget)
        while len(bins) < k:
            heaviest = max((b for b in bins if len(b) > 1),
                           key=lambda b: (sum(lengths[i] for i in b), -b[0]))
            bins.remove(heaviest)
            bins += _lpt(heaviest, lengths, 2)
    bins.sort(key=lambda b: (-sum(lengths[i] for i in b), b[0]))  # heaviest first: OOM early
    return bins + [[] for _ in range(count - len(bins))]


def plan_by_tokens(lengths: Sequence[int], max_tokens: int, world: int = 1) -> MicroBatchPlan:
    """Dynamic micro-batches of at most ``max_tokens`` tokens, balanced over ``world`` ranks.

    1. With ``world > 1`` the sequences are first shared out over the ranks by tokens: longest
       first, each to the rank with the fewest tokens so far (greedy LPT, within 4/3 of the
       best split), so no rank waits long for the slowest.
    2. Each rank needs as many micro-batches as first-fit decreasing packs its sequences into;
       every rank gets the largest of these counts, ``K``.
    3. Each rank's sequences go into exactly ``K`` micro-batches, balanced by tokens (largest
       first into the lightest), or, where that would overflow the budget, the first-fit
       packing with its heaviest micro-batches split until there are ``K``. So a rank that
       needs fewer micro-batches **splits** its sequences into more, smaller ones (never
       over the budget), and is **padded** with empty micro-batches only when it has fewer than
       ``K`` sequences. An empty micro-batch still needs its backward under DDP/FSDP: run a
       forward on any one-token input and back-propagate its loss times 0.

    A sequence longer than ``max_tokens`` is never split or dropped: it gets a micro-batch of
    its own. Micro-batches come heaviest first (an out-of-memory shows on the first), then by
    their first index; the plan depends on ``lengths`` alone, so every rank computes the same
    one from the same lengths.

    Args:
        lengths: Tokens of each sequence of the mini-batch (prompt and response: what the
            forward pays for).
        max_tokens: Token budget of one micro-batch's forward (>= 1).
        world: Data-parallel ranks (>= 1).

    Returns:
        The plan; every index of ``lengths`` is in exactly one micro-batch of one rank.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths):
        raise ValueError("lengths must be >= 0")
    shares = _lpt(range(len(lengths)), lengths, world)
    count = max(len(_first_fit(share, lengths, max_tokens)) for share in shares)
    ranks = [_pack(share, lengths, max_tokens, count) for share in shares]
    tokens = [[sum(lengths[i] for i in mb) for mb in rank] for rank in ranks]
    return MicroBatchPlan(micro_batches=ranks, tokens=tokens, max_tokens=max_tokens)


# --------------------------------------------------------------------------------------------
# Groups that a loss couples (online DPO's chosen and rejected responses)
# --------------------------------------------------------------------------------------------
# A batch holds groups of ``group`` consecutive rows (the K responses to one prompt). When the
# loss couples the rows of a group (a pairwise loss), every cut of the batch, into mini-batches
# or micro-batches, must put whole groups on one side: the plans below cut a batch of groups
# and give back the rows, each group's rows together and in order.


def _check_groups(n: int, group: int) -> int:
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    if n % group:
        raise ValueError(f"{n} rows are not whole groups of {group}")
    return n // group


def shuffled_groups(n: int, group: int = 1) -> list[int]:
    """The ``n`` rows in a random order of whole groups (each group's rows stay in order).

    With ``group = 1`` this is ``torch.randperm(n)``, the same draw from the same generator.
    """
    order = torch.randperm(_check_groups(n, group)).tolist()
    return [g * group + j for g in order for j in range(group)]


def group_lengths(lengths: Sequence[int], group: int) -> list[int]:
    """Tokens of each group: the sum of its rows' lengths."""
    n = _check_groups(len(lengths), group)
    return [sum(int(x) for x in lengths[g * group:(g + 1) * group]) for g in range(n)]


def expand_groups(plan: list[list[int]], group: int) -> list[list[int]]:
    """A plan over groups as a plan over their rows (group ``g`` is rows ``g*group ..``)."""
    return [[g * group + j for g in part for j in range(group)] for part in plan]


def group_units(advantages: Tensor, group: int) -> Tensor:
    """(b, 1) 1.0 on the first row of each group whose advantages are not all 0, else 0.

    The units of a loss averaged over the groups that carry a signal (online DPO's pairs): as a
    mask, :meth:`Normaliser.tokens` counts them and :meth:`Normaliser.scale` gives a
    micro-batch of whole groups its share of them.
    """
    n = _check_groups(advantages.shape[0], group)
    signal = (advantages.reshape(n, -1) != 0).any(-1)  # (G,)
    units = torch.zeros(advantages.shape[0], 1, device=advantages.device)
    units[::group, 0] = signal.float()
    return units


# --------------------------------------------------------------------------------------------
# Loss normalisers
# --------------------------------------------------------------------------------------------

NormaliserKind = Literal["token", "sequence", "constant"]


def _summed(x: float, reduce: Callable[[Tensor], Tensor] | None) -> float:
    if reduce is None:
        return float(x)
    return float(reduce(torch.tensor(float(x), dtype=torch.float64)))


@dataclass(frozen=True)
class Normaliser:
    """The denominator of a mini-batch mean, to split the loss over micro-batches exactly.

    With per-token losses ``l_it`` and mask ``m_it`` over the whole mini-batch (all ranks):

    - ``token``: ``L = sum_it m_it l_it / N``, ``N = sum_it m_it`` (a masked mean: GRPO's
      ``bnpo``, PPO's policy and value losses and the KL term through ``masked_mean``). A
      micro-batch contributes ``sum_{i in M_k, t} m_it l_it / N``.
    - ``sequence``: ``L = (1 / B) sum_i (sum_t m_it l_it / |o_i|)``, B the sequences (GRPO's
      ``grpo``). A micro-batch contributes ``sum_{i in M_k} (sum_t m_it l_it / |o_i|) / B``;
      ``|o_i|`` is a sequence's own, and a micro-batch never splits a sequence.
    - ``constant``: ``L = sum_it m_it l_it / C`` with a ``C`` fixed in advance (Dr. GRPO's
      ``B * max_new_tokens``, DAPO's generation-batch token count). A micro-batch contributes
      ``sum_{i in M_k, t} m_it l_it / C``.

    Summed over the micro-batches (and ranks) these are ``L`` term for term, so the summed
    gradients are ``grad L``. Under DDP/FSDP (and Accelerate) the gradient all-reduce
    *averages* over the W ranks; ``ranks_averaged = W`` multiplies each contribution by W to
    undo that (leave it 1 for a summing all-reduce or one process). The contributions already
    carry the accumulation, so an Accelerator built with ``gradient_accumulation_steps`` (whose
    ``backward`` divides by it) must keep it at 1.

    Attributes:
        kind: ``token``, ``sequence`` or ``constant``.
        total: ``N``, ``B`` or ``C``: over the whole mini-batch, every rank's part included.
        ranks_averaged: Ranks whose gradients the all-reduce averages.
    """

    kind: NormaliserKind
    total: float
    ranks_averaged: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("token", "sequence", "constant"):
            raise ValueError(f"kind must be token, sequence or constant, got {self.kind!r}")
        if self.kind == "constant" and not self.total > 0:
            raise ValueError(f"a constant normaliser must be > 0, got {self.total}")
        if self.ranks_averaged < 1:
            raise ValueError(f"ranks_averaged must be >= 1, got {self.ranks_averaged}")

    @classmethod
    def tokens(cls, mask: Tensor, reduce: Callable[[Tensor], Tensor] | None = None,
               ranks_averaged: int = 1) -> Normaliser:
        """Token mean over the mini-batch: ``N`` = the 1s of ``mask``, summed over ranks.

        Args:
            mask: (B, T) this rank's whole share of the mini-batch (all its micro-batches).
            reduce: Sums a tensor over processes (as in :mod:`rlhfkit.losses`); None = one.
            ranks_averaged: See the class.
        """
        return cls("token", _summed(mask.sum(), reduce), ranks_averaged)

    @classmethod
    def sequences(cls, mask: Tensor, reduce: Callable[[Tensor], Tensor] | None = None,
                  ranks_averaged: int = 1) -> Normaliser:
        """Sequence mean: ``B`` = the rows of ``mask`` (this rank's share), summed over ranks.

        A row with no tokens counts, as in ``aggregate_token_loss(..., "grpo")``.
        """
        return cls("sequence", _summed(mask.shape[0], reduce), ranks_averaged)

    @classmethod
    def constant(cls, value: float, ranks_averaged: int = 1) -> Normaliser:
        """A denominator fixed in advance (Dr. GRPO's ``B * max_new_tokens``, DAPO's)."""
        return cls("constant", float(value), ranks_averaged)

    @classmethod
    def for_loss_type(cls, loss_type: str, mask: Tensor, *, max_length: int | None = None,
                      normalizer: float | Tensor | None = None,
                      reduce: Callable[[Tensor], Tensor] | None = None,
                      ranks_averaged: int = 1) -> Normaliser:
        """The normaliser of :func:`rlhfkit.losses.aggregate_token_loss`'s ``loss_type``.

        ``bnpo`` (and ``dapo`` without ``normalizer``): token mean; ``grpo``: sequence mean;
        ``dr_grpo``: the constant ``B * max_length``, B the mini-batch's sequences over all
        ranks; ``dapo``: the constant ``normalizer`` (already over the generation batch, at
        least 1 as there).

        Args:
            loss_type: One of :data:`rlhfkit.losses.GRPO_LOSS_TYPES`.
            mask: (B, T) this rank's share of the mini-batch.
            max_length: ``max_new_tokens``, for ``dr_grpo``.
            normalizer: DAPO's token count, for ``dapo``.
            reduce: Sums over processes.
            ranks_averaged: See the class.
        """
        if loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, "
                             f"got {loss_type!r}")
        if loss_type == "grpo":
            return cls.sequences(mask, reduce, ranks_averaged)
        if loss_type == "dr_grpo":
            if not max_length:
                raise ValueError("loss_type 'dr_grpo' needs max_length")
            return cls.constant(_summed(mask.shape[0], reduce) * max_length, ranks_averaged)
        if loss_type == "dapo" and normalizer is not None:
            return cls.constant(max(float(normalizer), 1.0), ranks_averaged)
        return cls.tokens(mask, reduce, ranks_averaged)

    @property
    def denominator(self) -> float:
        """``total``, at least 1 for counts (as ``masked_mean`` clamps), over ``ranks_averaged``."""
        total = self.total if self.kind == "constant" else max(self.total, 1.0)
        return total / self.ranks_averaged

    def contribution(self, per_token: Tensor, mask: Tensor) -> Tensor:
        """One micro-batch's share of the mini-batch loss (see the class).

        Args:
            per_token: (b, T) the micro-batch's per-token loss.
            mask: (b, T) its mask.

        Returns:
            A scalar; the sum over every micro-batch of every rank is the mini-batch loss.
        """
        mask = mask.to(per_token.dtype)
        summed = per_token * mask
        if self.kind == "sequence":
            summed = summed.sum(-1) / mask.sum(-1).clamp(min=1)
        return summed.sum() / self.denominator

    def scale(self, mask: Tensor) -> float:
        """The factor that turns a micro-batch's own mean into its contribution.

        ``token``: the micro-batch's ``masked_mean`` is ``S_k / n_k``, times ``n_k / N``;
        ``sequence``: its mean over its b sequences, times ``b / B``; ``constant``: its sum
        over the same constant ``C``, times 1 (the constant is already the mini-batch's). Each
        times ``ranks_averaged`` as well (a micro-batch with no tokens gives 0 either way).

        Args:
            mask: (b, T) the micro-batch's mask.
        """
        if self.kind == "token":
            return float(mask.sum()) / self.denominator
        if self.kind == "sequence":
            return mask.shape[0] / self.denominator
        return float(self.ranks_averaged)

    def grpo_kwargs(self, mask: Tensor) -> tuple[dict[str, Any], float]:
        """Arguments that make :func:`rlhfkit.losses.grpo_loss` give the contribution.

        ``token`` and ``constant``: ``loss_type="dapo"`` with ``normalizer=`` the denominator
        (its token sum over that number) and factor 1; ``sequence``: ``loss_type="grpo"`` (the
        micro-batch's mean of sequence means) and factor :meth:`scale`. Then
        ``factor * grpo_loss(..., **kwargs)[0]`` is the contribution, and the diagnostics
        ``policy`` and ``kl`` times the factor sum to the mini-batch's over the micro-batches.
        A ``token`` or ``constant`` denominator under 1 (``ranks_averaged`` above the count)
        goes through ``dapo``'s clamp at 1 as a factor instead.

        Args:
            mask: (b, T) the micro-batch's mask.
        """
        if self.kind == "sequence" and mask.shape[0]:
            return {"loss_type": "grpo"}, self.scale(mask)
        if self.kind == "sequence":  # no rows: grpo's mean over none would be nan; 0 instead
            return {"loss_type": "dapo", "normalizer": 1.0}, 0.0
        denominator = self.denominator
        if denominator >= 1.0:
            return {"loss_type": "dapo", "normalizer": denominator}, 1.0
        return {"loss_type": "dapo", "normalizer": 1.0}, 1.0 / denominator
