"""Micro-batch plans, their loss normalisers and weight-sync buckets (rlhfkit.train.microbatch).

The gradient tests rest on one identity. A mini-batch loss that is a mean,
``L = (1 / D) sum_u l_u`` over units ``u`` (tokens or sequences) with a denominator ``D`` of the
whole mini-batch (every rank's share), splits over micro-batches ``M_1 .. M_K`` (on any ranks)
as ``L = sum_k (1 / D) sum_{u in M_k} l_u``, so ``grad L = sum_k grad((1 / D) sum_{u in M_k} l_u)``
by linearity. Each unit's loss ``l_u`` depends on its own sequence only (the clipped surrogates,
the value loss and k3 are per token; GRPO's sequence mean and GSPO's ratio are per sequence, and
a micro-batch never splits a sequence), so computing it inside a micro-batch, with the padding
cut to that micro-batch's longest sequence, gives the same value. The tests build a tiny linear
policy and value head, take ``grad L`` on the whole padded batch with the real functions of
``rlhfkit.losses``, and compare it in fp32 with the summed gradients of the contributions, for
micro-batches by size and by tokens, on one rank and on two simulated ranks whose gradients
are summed (an all-reduce sum) or averaged (DDP's all-reduce, with ``ranks_averaged=2``).
"""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from rlhfkit import losses
from rlhfkit.engines.buckets import (
    Bucket,
    pack,
    parameter_specs,
    plan_buckets,
    plan_for,
    tied_names,
    total_bytes,
    unpack,
)
from rlhfkit.train import microbatch
from rlhfkit.train.microbatch import Normaliser, plan_by_size, plan_by_tokens

# --------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------


def test_plan_by_size_cuts_consecutive_chunks():
    assert plan_by_size(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_by_size(4, 4) == [[0, 1, 2, 3]]
    assert plan_by_size(0, 2) == []
    with pytest.raises(ValueError):
        plan_by_size(3, 0)


def check_plan(plan, lengths, max_tokens, world):
    """Every index once; budget kept (but by lone long sequences); equal counts; counts right."""
    assert plan.world == world and plan.max_tokens == max_tokens
    flat = [i for rank in plan.micro_batches for mb in rank for i in mb]
    assert sorted(flat) == list(range(len(lengths)))
    assert len({len(rank) for rank in plan.micro_batches}) == 1  # the same number of backwards
    for rank, tokens in zip(plan.micro_batches, plan.tokens):
        assert len(rank) == len(tokens) == plan.num_micro_batches
        for mb, t in zip(rank, tokens):
            assert mb == sorted(mb) and t == sum(lengths[i] for i in mb)
            assert t <= max_tokens or len(mb) == 1, (mb, t)
    assert sum(plan.rank_tokens) == sum(lengths)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_plan_by_tokens_holds_every_index_once_within_the_budget(world):
    rng = random.Random(world)
    for _ in range(200):
        n = rng.randint(0, 40)
        max_tokens = rng.randint(8, 64)
        lengths = [rng.randint(0, 80) for _ in range(n)]  # some longer than the budget
        plan = plan_by_tokens(lengths, max_tokens, world)
        check_plan(plan, lengths, max_tokens, world)
        assert plan == plan_by_tokens(lengths, max_tokens, world)  # deterministic


def test_a_sequence_longer_than_the_budget_goes_alone_and_short_ones_share():
    plan = plan_by_tokens([3, 50, 2, 4, 1], max_tokens=10)
    assert plan.rank(0) == [[1], [0, 2, 3, 4]]  # heaviest first; nothing split or dropped
    assert plan.tokens == [[50, 10]]


def test_balanced_packing_that_overflows_falls_back_to_first_fit():
    # largest-first into 2 bins gives 6+3 | 4+4+3 = 11 > 10; first-fit decreasing fits 2
    plan = plan_by_tokens([6, 4, 4, 3, 3], max_tokens=10)
    assert plan.rank(0) == [[0, 1], [2, 3, 4]] and plan.tokens == [[10, 10]]


def test_the_fallback_splits_its_heaviest_micro_batch_to_reach_the_count(monkeypatch):
    monkeypatch.setattr(microbatch, "_fits", lambda bins, lengths, budget: False)
    lengths = [5, 5, 2, 2, 1, 1]  # first fit: [5, 5] [2, 2, 1, 1]; 4 wanted
    bins = microbatch._pack(range(6), lengths, 10, 4)
    assert sorted(sorted(b) for b in bins) == [[0], [1], [2, 4], [3, 5]]
    assert sorted(i for b in bins for i in b) == list(range(6))


def test_ranks_get_equal_counts_by_splitting_and_pad_only_without_sequences():
    # one rank gets the long sequence (1 micro-batch needed), the other the short ones (3)
    lengths = [30, 10, 10, 10]
    plan = plan_by_tokens(lengths, max_tokens=10, world=2)
    check_plan(plan, lengths, 10, 2)
    assert plan.micro_batches == [[[0], [], []], [[1], [2], [3]]]  # padded: one sequence
    plan = plan_by_tokens([30, 5, 5, 5, 5, 5, 5, 6, 6], max_tokens=24, world=2)
    counts = [[len(mb) for mb in rank] for rank in plan.micro_batches]
    assert plan.num_micro_batches == 2 and all(all(counts[r]) for r in range(2)), counts
    # 3 ranks, 2 sequences: the third rank runs empty micro-batches (a zero-loss backward)
    plan = plan_by_tokens([4, 4], max_tokens=8, world=3)
    assert plan.micro_batches == [[[0]], [[1]], [[]]]


def test_balance_beats_a_consecutive_split_on_a_skewed_batch():
    # long responses first (as sorted or grouped batches come): a consecutive split gives one
    # rank all the long ones and one micro-batch all the long sequences of a rank
    lengths = [400, 380, 350, 300, 60, 50, 40, 30, 20, 20, 10, 10]
    world, max_tokens = 2, 512
    plan = plan_by_tokens(lengths, max_tokens, world)
    check_plan(plan, lengths, max_tokens, world)
    half = len(lengths) // world
    naive_ranks = [sum(lengths[:half]), sum(lengths[half:])]
    assert max(plan.rank_tokens) < max(naive_ranks)
    assert max(plan.rank_tokens) - min(plan.rank_tokens) <= 10 < naive_ranks[0] - naive_ranks[1]
    # micro-batches: the same count of consecutive chunks has a heavier largest forward
    k = plan.num_micro_batches
    mbs = [mb for rank in plan.micro_batches for mb in rank]
    chunk = -(-len(lengths) // (world * k))
    naive = [sum(lengths[i] for i in mb) for mb in plan_by_size(len(lengths), chunk)]
    assert max(sum(lengths[i] for i in mb) for mb in mbs) <= max_tokens < max(naive)


# --------------------------------------------------------------------------------------------
# gradients: the summed micro-batch contributions against the full-batch loss
# --------------------------------------------------------------------------------------------

B, T, D, V = 8, 9, 6, 11
RESPONSE_LENGTHS = [9, 2, 5, 1, 0, 7, 3, 8]  # one response empty: it counts as a sequence
PROMPT = 4
MAX_TOKENS = 14
CLIP = 0.2


class TinyPolicy(nn.Module):
    """Per-token log-probs and values from fixed features: ``x W`` and ``x v``."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(D, V, generator=gen) * 0.5)
        self.v = nn.Parameter(torch.randn(D, generator=gen) * 0.5)

    def forward(self, batch):
        logprobs = losses.token_logprobs(batch["x"] @ self.w, batch["targets"])
        return logprobs, batch["x"] @ self.v


def make_batch():
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[t < n for t in range(T)] for n in RESPONSE_LENGTHS])
    batch = {"x": torch.randn(B, T, D, generator=gen), "mask": mask,
             "targets": torch.randint(0, V, (B, T), generator=gen),
             "advantages": torch.randn(B, 1, generator=gen).expand(B, T).contiguous(),
             "returns": torch.randn(B, T, generator=gen)}
    with torch.no_grad():
        logprobs, values = TinyPolicy()(batch)
    # old and reference log-probs/values near the current ones: some ratios clip, some not
    batch["old_logprobs"] = logprobs + 0.3 * torch.randn(B, T, generator=gen)
    batch["ref_logprobs"] = logprobs + 0.5 * torch.randn(B, T, generator=gen)
    batch["old_values"] = values + 0.3 * torch.randn(B, T, generator=gen)
    return batch


def select(batch, rows):
    """A micro-batch: its rows, the padding cut to its longest response (at least 1)."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    width = max([RESPONSE_LENGTHS[int(r)] for r in rows] + [1])
    return {k: v[rows][:, :width] for k, v in batch.items()}


def grpo_args(batch, logprobs, importance_level):
    return dict(logprobs=logprobs, old_logprobs=batch["old_logprobs"],
                ref_logprobs=batch["ref_logprobs"], advantages=batch["advantages"],
                mask=batch["mask"], clip_range=CLIP, clip_range_high=0.28, kl_coef=0.1,
                importance_level=importance_level)


def per_token(name, batch, logprobs, values):
    """The per-token loss of the cases that reduce a (B, T) tensor."""
    if name == "ppo_policy":
        return losses.ppo_policy_loss(logprobs, batch["old_logprobs"], batch["advantages"],
                                      CLIP)[0]
    if name == "ppo_value":
        return losses.ppo_value_loss(values, batch["old_values"], batch["returns"], CLIP)[0]
    if name == "kl_k3":
        return losses.kl_penalty(logprobs, batch["ref_logprobs"], "k3")
    return losses.reinforce_loss(logprobs, batch["advantages"])


# name -> (the full-batch loss's loss_type for the normaliser, how the micro-batch is reduced)
CASES = {
    "token_mean_reinforce": ("bnpo", "contribution"),
    "ppo_policy": ("bnpo", "scale"),  # the micro-batch's own masked_mean, rescaled
    "ppo_value": ("bnpo", "contribution"),
    "kl_k3": ("bnpo", "contribution"),
    "sequence_mean_reinforce": ("grpo", "contribution"),
    "dr_grpo_reinforce": ("dr_grpo", "contribution"),
    "grpo_loss/bnpo": ("bnpo", "grpo"),
    "grpo_loss/grpo": ("grpo", "grpo"),
    "grpo_loss/dr_grpo": ("dr_grpo", "grpo"),
    "grpo_loss/dapo": ("dapo", "grpo"),
    "grpo_loss/grpo/gspo": ("grpo", "grpo"),
}
DAPO_NORMALIZER = 41.5  # a generation-batch token count, fixed before the update


def full_loss(name, model, batch):
    logprobs, values = model(batch)
    loss_type, _ = CASES[name]
    mask = batch["mask"]
    if name.startswith("grpo_loss"):
        level = "sequence" if name.endswith("gspo") else "token"
        return losses.grpo_loss(**grpo_args(batch, logprobs, level), loss_type=loss_type,
                                max_length=T, normalizer=DAPO_NORMALIZER)[0]
    x = per_token(name, batch, logprobs, values)
    if loss_type == "bnpo":
        return losses.masked_mean(x, mask)
    return losses.aggregate_token_loss(x, mask, loss_type, max_length=T)


def micro_loss(name, model, mb, norm):
    logprobs, values = model(mb)
    _, how = CASES[name]
    if how == "grpo":
        level = "sequence" if name.endswith("gspo") else "token"
        kwargs, factor = norm.grpo_kwargs(mb["mask"])
        return factor * losses.grpo_loss(**grpo_args(mb, logprobs, level), max_length=T,
                                         **kwargs)[0]
    x = per_token(name, mb, logprobs, values)
    if how == "scale":
        return norm.scale(mb["mask"]) * losses.masked_mean(x, mb["mask"])
    return norm.contribution(x, mb["mask"])


class ThreadGroup:
    """A simulated process group: each rank runs in a thread and ``reduce`` sums over them."""

    def __init__(self, world):
        self.world, self.slots = world, [None] * world
        self.barrier = threading.Barrier(world)

    def reduce_for(self, rank):
        def reduce(t):
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = torch.stack(self.slots).sum(0)
            self.barrier.wait()
            return out
        return reduce

    def run(self, fn):
        with ThreadPoolExecutor(self.world) as pool:
            return list(pool.map(lambda r: fn(r, self.reduce_for(r)), range(self.world)))


def plans(world):
    lengths = [PROMPT + n for n in RESPONSE_LENGTHS]
    by_tokens = plan_by_tokens(lengths, MAX_TOKENS, world).micro_batches
    shares = [list(range(B))[r::world] for r in range(world)]  # strided, as a sampler would
    by_size = [[[share[i] for i in mb] for mb in plan_by_size(len(share), 3)] for share in shares]
    padded = [rank + [[]] for rank in by_tokens]  # an empty micro-batch adds nothing (no nan)
    return {"by_size": by_size, "by_tokens": by_tokens, "padded": padded}


def grads_of(model):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def micro_grads(name, batch, ranks, all_reduce):
    """Each rank's gradient summed over its micro-batches, then all-reduced over the ranks."""
    world = len(ranks)
    averaged = world if all_reduce == "mean" else 1
    loss_type = CASES[name][0]

    def normaliser(r, reduce):
        rows = [i for mb in ranks[r] for i in mb]
        share = batch["mask"][torch.as_tensor(rows, dtype=torch.long)]
        return Normaliser.for_loss_type(loss_type, share, max_length=T,
                                        normalizer=DAPO_NORMALIZER, reduce=reduce,
                                        ranks_averaged=averaged)

    norms = ThreadGroup(world).run(normaliser)
    per_rank = []
    for r, rank in enumerate(ranks):
        model = TinyPolicy()
        for mb in rank:  # backward per micro-batch: the gradients accumulate
            micro_loss(name, model, select(batch, mb), norms[r]).backward()
        per_rank.append(grads_of(model))
    grads = [torch.stack(g).sum(0) for g in zip(*per_rank)]
    return [g / world for g in grads] if all_reduce == "mean" else grads


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("world,all_reduce", [(1, "sum"), (2, "sum"), (2, "mean"), (3, "mean")])
def test_summed_micro_batch_gradients_equal_the_full_batch_gradient(name, world, all_reduce):
    batch = make_batch()
    model = TinyPolicy()
    full_loss(name, model, batch).backward()
    expected = grads_of(model)
    assert max(float(g.abs().max()) for g in expected) > 1e-3  # a real gradient
    for kind, ranks in plans(world).items():
        assert len({len(r) for r in ranks}) == 1 or kind == "by_size"
        got = micro_grads(name, batch, ranks, all_reduce)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6, msg=f"{kind}: {name}")


def test_the_plans_used_above_really_cut_the_batch():
    for world in (1, 2):
        for ranks in plans(world).values():
            assert sum(len(r) for r in ranks) > world  # several micro-batches
            assert sorted(i for r in ranks for mb in r for i in mb) == list(range(B))


def test_a_micro_batch_own_mean_is_not_its_share():
    """Averaging each micro-batch's own masked mean (the naive accumulation) changes the
    gradient whenever micro-batches hold different token counts: why the normaliser exists."""
    batch = make_batch()
    model = TinyPolicy()
    full_loss("token_mean_reinforce", model, batch).backward()
    expected = model.w.grad.clone()
    ranks = plans(1)["by_tokens"]
    naive = TinyPolicy()
    for mb in ranks[0]:
        part = select(batch, mb)
        logprobs, _ = naive(part)
        x = losses.reinforce_loss(logprobs, part["advantages"])
        (losses.masked_mean(x, part["mask"]) / len(ranks[0])).backward()
    assert (naive.w.grad - expected).abs().max() > 1e-3


def test_normaliser_totals_follow_the_loss_type():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert Normaliser.for_loss_type("bnpo", mask) == Normaliser("token", 3.0)
    assert Normaliser.for_loss_type("dapo", mask) == Normaliser("token", 3.0)
    assert Normaliser.for_loss_type("grpo", mask) == Normaliser("sequence", 3.0)
    assert Normaliser.for_loss_type("dr_grpo", mask, max_length=5) == Normaliser("constant", 15.0)
    assert Normaliser.for_loss_type("dapo", mask, normalizer=0.5) == Normaliser("constant", 1.0)
    doubled = Normaliser.tokens(mask, reduce=lambda t: 2 * t, ranks_averaged=2)
    assert doubled.total == 6.0 and doubled.denominator == 3.0
    empty = Normaliser.tokens(torch.zeros(2, 3))
    assert empty.denominator == 1.0  # masked_mean's clamp: an all-padding batch gives 0
    assert float(empty.contribution(torch.ones(2, 3), torch.zeros(2, 3))) == 0.0
    with pytest.raises(ValueError):
        Normaliser.for_loss_type("dr_grpo", mask)
    with pytest.raises(ValueError):
        Normaliser.for_loss_type("mean", mask)
    with pytest.raises(ValueError):
        Normaliser.constant(0.0)


# --------------------------------------------------------------------------------------------
# weight-sync buckets
# --------------------------------------------------------------------------------------------

PARAMS = [("embed.weight", (10, 4), torch.float32),  # 40 elements: 80 bytes in bf16
          ("layer.0.weight", (4, 4), torch.float32),  # 32 bytes
          ("layer.0.bias", (4,), torch.float32),  # 8
          ("layer.1.weight", (4, 4), torch.float32),  # 32
          ("layer.1.bias", (4,), torch.float32),  # 8
          ("huge", (100,), torch.float32),  # 200 > a bucket
          ("norm.weight", (4,), torch.float32)]  # 8


def test_buckets_keep_order_and_sizes_in_the_target_dtype():
    buckets = plan_buckets(PARAMS, bucket_bytes=96, target_dtype=torch.bfloat16)
    assert [b.names for b in buckets] == [["embed.weight"],
                                          ["layer.0.weight", "layer.0.bias", "layer.1.weight",
                                           "layer.1.bias"],
                                          ["huge"], ["norm.weight"]]
    assert [b.nbytes for b in buckets] == [80, 80, 200, 8]
    for b in buckets:
        assert b.nbytes <= 96 or len(b.entries) == 1  # only a lone big tensor is over
        end = 0
        for e in b.entries:
            assert e.offset == end and e.dtype == torch.bfloat16
            assert e.nbytes == 2 * torch.Size(e.shape).numel()
            end = e.offset + e.nbytes
        assert end == b.nbytes
    assert total_bytes(buckets) == 2 * sum(torch.Size(s).numel() for _, s, _ in PARAMS)
    fp32 = plan_buckets(PARAMS, bucket_bytes=96, target_dtype=torch.float32)
    assert total_bytes(fp32) == 2 * total_bytes(buckets)
    one = plan_buckets(PARAMS, bucket_bytes=10**9, target_dtype=torch.bfloat16)
    assert len(one) == 1 and one[0].names == [n for n, _, _ in PARAMS]


def test_buckets_align_tensors_that_are_not_cast():
    specs = [("a", (3,), torch.float32), ("steps", (2,), torch.int64)]
    (bucket,) = plan_buckets(specs, bucket_bytes=64, target_dtype=torch.float16)
    assert [(e.dtype, e.offset, e.nbytes) for e in bucket.entries] == [
        (torch.float16, 0, 6), (torch.int64, 8, 16)]
    assert bucket.nbytes == 24


class TiedLM(nn.Module):
    def __init__(self, tie=True):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight


def test_tied_weights_are_found_and_sent_once():
    model = TiedLM()
    tied = tied_names(model)
    assert tied == {"lm_head.weight": "embed_tokens.weight"}
    specs = parameter_specs(model)
    assert [n for n, _, _ in specs][-1] == "lm_head.weight"  # listed, so the plan can skip it
    buckets = plan_buckets(specs, bucket_bytes=64, target_dtype=torch.bfloat16, tied=tied)
    names = [n for b in buckets for n in b.names]
    assert names == ["embed_tokens.weight", "body.weight", "body.bias"]
    assert total_bytes(buckets) == 2 * (40 + 16 + 4)
    assert tied_names(TiedLM(tie=False)) == {}


def test_tied_names_see_shared_memory_not_only_the_same_object():
    model = TiedLM(tie=False)
    model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.data)  # same memory
    assert tied_names(model) == {"lm_head.weight": "embed_tokens.weight"}
    with torch.device("meta"):
        meta = TiedLM(tie=False)
    assert tied_names(meta) == {}  # no memory to compare: distinct objects are distinct


def test_a_tie_to_a_later_or_missing_name_is_refused():
    specs = [("lm_head.weight", (10, 4), torch.float32), ("embed.weight", (10, 4), torch.float32)]
    with pytest.raises(ValueError, match="does not come before"):
        plan_buckets(specs, 64, torch.bfloat16, tied={"lm_head.weight": "embed.weight"})
    with pytest.raises(ValueError, match="does not come before"):
        plan_buckets(specs, 64, torch.bfloat16, tied={"embed.weight": "nowhere"})
    with pytest.raises(ValueError):
        plan_buckets(specs, 0, torch.bfloat16)
    assert isinstance(plan_buckets(specs, 64, torch.bfloat16)[0], Bucket)


def test_a_packed_bucket_unpacks_to_the_cast_tensors():
    """bf16 weights and an int buffer through one flat buffer: each comes back as sent (the
    float ones cast to bf16), in its own shape, from a bucket plan of the pairs given."""
    named = [("w", torch.randn(3, 5)), ("b", torch.randn(5)), ("steps", torch.arange(4)),
             ("scale", torch.tensor(2.5))]
    buckets, tensors = plan_for(named, 1 << 20, torch.bfloat16)
    assert len(buckets) == 1
    back = dict(unpack(buckets[0], pack(buckets[0], tensors)))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        want = t.to(torch.bfloat16) if t.is_floating_point() else t
        assert back[name].dtype == want.dtype and torch.equal(back[name], want), name


def test_group_plans_by_hand():
    from rlhfkit.train.microbatch import (
        expand_groups,
        group_lengths,
        group_units,
        shuffled_groups,
    )

    assert group_lengths([3, 4, 1, 1, 5, 5], 2) == [7, 2, 10]
    assert expand_groups([[0, 2], [1]], 2) == [[0, 1, 4, 5], [2, 3]]
    torch.manual_seed(1)
    expected = torch.randperm(6).tolist()
    torch.manual_seed(1)
    assert shuffled_groups(6) == expected  # one row a group: the draw of randperm itself
    torch.manual_seed(1)
    order = shuffled_groups(6, 3)
    assert order in ([0, 1, 2, 3, 4, 5], [3, 4, 5, 0, 1, 2])
    with pytest.raises(ValueError, match="whole groups"):
        shuffled_groups(5, 2)
    adv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, -1.0], [2.0, 0.0]])
    assert group_units(adv, 2)[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
