"""Direct preference optimisation on tiny models: data layout, cached references, learning."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data.io import write_records
from rlhfkit.data.records import BinaryFeedback, Comparison, Ranking
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.losses import dpo_loss
from rlhfkit.models.loading import apply_lora
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.tasks import get_task
from rlhfkit.tasks.reviews import ReviewsTask
from rlhfkit.train.dpo import (
    DPOConfig,
    attach_reference_logps,
    binary_examples,
    build_kto_groups,
    build_pair_groups,
    collate_groups,
    disabled_adapter,
    pairwise_step,
    train_dpo,
)

SYSTEM = "Continue."


# ------------------------------------------------------------------------------ helpers


pytestmark = pytest.mark.usefixtures("one_thread")


def plain_logps(lm: torch.nn.Module, ids: list[int], prompt_len: int) -> float:
    """log pi(response | prompt) the slow, obvious way: full logits of one unpadded sequence."""
    with torch.no_grad():
        logits = lm(torch.tensor([ids])).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts token t + 1
    start = max(prompt_len, 1)
    targets = torch.tensor(ids[start:])
    return float(logprobs[start - 1:].gather(-1, targets[:, None]).sum())


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory):
    """32 train rankings (K = 3) and 12 held-out ones on disjoint prompts, as JSONL."""
    root = tmp_path_factory.mktemp("prefs")
    train = get_task("reviews", n_demos=0, n_ranked=32, k=3).rankings()
    held = get_task("reviews", n_demos=32, n_ranked=12, k=3).rankings()
    write_records(train, root / "train.jsonl")
    write_records(held, root / "eval.jsonl")
    # KTO's own data: one 👍/👎 per response from the task's simulated labeler.
    rng = random.Random(0)
    prompts = get_task("reviews", n_demos=0).prompts("train")[:64]
    responses = [ReviewsTask.continuation(rng) for _ in prompts]
    labels = get_task("reviews").labeler(seed=0, temperature=0.05).binary_batch(prompts,
                                                                               responses)
    write_records(labels, root / "binary.jsonl")
    return root


def run(tiny_lm, pref_files, tmp_path, **overrides):
    opts = dict(model=str(tiny_lm), data=str(pref_files / "train.jsonl"),
                eval_data=str(pref_files / "eval.jsonl"), output_dir=str(tmp_path / "run"),
                max_steps=12, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, eval_every=12,
                progress=False, precision="fp32", system_prompt=SYSTEM)
    opts.update(overrides)
    cfg = DPOConfig(**opts)
    out = train_dpo(cfg)
    lines = read_metrics(tmp_path / "run")
    return cfg, out, lines


# ------------------------------------------------------------------------------ data layout


def test_ranking_is_one_group_with_weighted_pairs_and_ties_skipped(tokenizer):
    """K = 4 with one tie: 4 sequences once each, 5 of the 6 pairs kept at weight 1/6."""
    ranking = Ranking(prompt="p", responses=["a", "b", "c", "d"], ranks=[0, 1, 1, 2], id="r")
    plain = Comparison(prompt="q", chosen="x", rejected="y")
    groups, counts = build_pair_groups([ranking, plain], tokenizer, 64)
    assert counts == {"pairs": 6, "ties": 1, "rankings": 1}
    assert [len(g.sequences) for g in groups] == [4, 2]
    assert [len(g.pairs) for g in groups] == [5, 1]
    assert all(abs(w - 1 / 6) < 1e-12 for _, _, w in groups[0].pairs)
    for g in groups:
        g.ref_logps = [0.0] * len(g.sequences)
    batch = collate_groups(groups, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6  # distinct sequences, not 2 per pair
    assert abs(batch["num_units"] - (5 / 6 + 1)) < 1e-6


def test_kto_examples_from_binary_and_from_rankings(tokenizer):
    """Wins minus losses within a ranking decide: K = 3 -> best 👍, worst 👎, middle left out."""
    ranking = Ranking(prompt="p", responses=["a", "b", "c"], ranks=[2, 0, 1], id="r")
    thumbs = BinaryFeedback(prompt="q", response="z", label=False)
    examples, undecided = binary_examples([ranking, thumbs])
    assert sorted(examples, key=str) == sorted([("q", "z", False), ("p", "b", True),
                                                ("p", "a", False)], key=str)
    assert undecided == 1
    groups, counts = build_kto_groups([ranking, thumbs], tokenizer, 64)
    assert counts == {"desirable": 1, "undesirable": 2, "undecided": 1}
    # Each example has one mismatched sequence: its own prompt with another prompt's response.
    for g in groups:
        assert len(g.kl_sequences) == 1 and len(g.sequences) == 1
        assert g.kl_sequences[0][:g.kl_prompt_lens[0]] == g.sequences[0][:g.prompt_lens[0]]
        assert g.kl_sequences[0] != g.sequences[0]


def test_binary_records_need_kto(tiny_lm, tmp_path, pref_files):
    from rlhfkit.config import ConfigError

    with pytest.raises(ConfigError, match="--loss kto"):
        run(tiny_lm, pref_files, tmp_path, data=str(pref_files / "binary.jsonl"), loss="dpo")


# ------------------------------------------------------------------------------ references


def test_cached_reference_equals_fresh_plain_computation(tiny_lm, tokenizer):
    """Batched, padded, length-sorted, selective reference log-probs == one by one, full logits."""
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    rankings = get_task("reviews", n_demos=0, n_ranked=5, k=4).rankings()
    groups, _ = build_pair_groups(rankings, tokenizer, 96, SYSTEM)
    attach_reference_logps(groups, SelectiveLM(lm), tokenizer.pad_token_id, batch_size=3)
    for g in groups:
        fresh = [plain_logps(lm, s, p) for s, p in zip(g.sequences, g.prompt_lens)]
        torch.testing.assert_close(torch.tensor(g.ref_logps), torch.tensor(fresh),
                                   rtol=1e-5, atol=1e-4)


def test_cache_file_is_reused_only_for_the_same_reference(tiny_lm, tokenizer, tmp_path):
    lm = SelectiveLM(AutoModelForCausalLM.from_pretrained(tiny_lm))
    rankings = get_task("reviews", n_demos=0, n_ranked=2, k=3).rankings()
    groups, _ = build_pair_groups(rankings, tokenizer, 96, SYSTEM)
    cache = tmp_path / "ref.pt"
    attach_reference_logps(groups, lm, tokenizer.pad_token_id, cache_file=cache, identity="a")
    first = [list(g.ref_logps) for g in groups]
    with torch.no_grad():
        for p in lm.parameters():
            p.mul_(0.5)  # a different model under the same identity: the cache wins
    attach_reference_logps(groups, lm, tokenizer.pad_token_id, cache_file=cache, identity="a")
    assert [g.ref_logps for g in groups] == first
    attach_reference_logps(groups, lm, tokenizer.pad_token_id, cache_file=cache, identity="b")
    assert [g.ref_logps for g in groups] != first


def test_lora_reference_with_adapter_disabled_equals_base_model(tiny_lm, tokenizer):
    base = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    policy = SelectiveLM(apply_lora(AutoModelForCausalLM.from_pretrained(tiny_lm), r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA starts as the identity (B = 0); make the adapter matter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    rankings = get_task("reviews", n_demos=0, n_ranked=3, k=3).rankings()
    groups, _ = build_pair_groups(rankings, tokenizer, 96, SYSTEM)
    with disabled_adapter(policy):
        attach_reference_logps(groups, policy, tokenizer.pad_token_id)
    reference = [v for g in groups for v in g.ref_logps]
    expected = [plain_logps(base, s, p) for g in groups for s, p in zip(g.sequences, g.prompt_lens)]
    torch.testing.assert_close(torch.tensor(reference), torch.tensor(expected),
                               rtol=1e-5, atol=1e-4)
    attach_reference_logps(groups, policy, tokenizer.pad_token_id)  # adapter on: a different model
    adapted = [v for g in groups for v in g.ref_logps]
    assert max(abs(a - b) for a, b in zip(adapted, expected)) > 1e-2


def test_step_on_concatenated_batch_equals_plain_dpo(tiny_lm, tokenizer):
    """One forward over chosen + rejected rows gives the DPO loss of per-sequence log-probs."""
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    rankings = get_task("reviews", n_demos=0, n_ranked=3, k=3).rankings()
    groups, _ = build_pair_groups(rankings, tokenizer, 96, SYSTEM)
    for g in groups:  # a made-up reference, so the log-ratios are not all 0
        g.ref_logps = [-30.0 - i for i in range(len(g.sequences))]
    batch = collate_groups(groups, tokenizer.pad_token_id)
    cfg = DPOConfig(beta=0.2, label_smoothing=0.1)
    with torch.no_grad():
        loss_sum, metrics = pairwise_step(SelectiveLM(lm), batch, cfg)
    plain, weights = [], []
    for g in groups:
        logps = [plain_logps(lm, s, p) for s, p in zip(g.sequences, g.prompt_lens)]
        for i, j, w in g.pairs:
            plain.append((logps[i], logps[j], g.ref_logps[i], g.ref_logps[j]))
            weights.append(w)
    c, r, rc, rr = (torch.tensor(x) for x in zip(*plain))
    expected, diag = dpo_loss(c, r, rc, rr, beta=0.2, label_smoothing=0.1)
    w = torch.tensor(weights)
    torch.testing.assert_close(loss_sum, (w * expected).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["rewards/margins"], (w * diag["margins"]).sum(),
                               rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ learning


@pytest.mark.parametrize(
    ("loss", "lr", "data"),
    [("dpo", 1e-3, "train.jsonl"), ("ipo", 1e-3, "train.jsonl"), ("kto", 2e-3, "train.jsonl"),
     ("pref-ft", 1e-2, "train.jsonl"), ("unlikelihood", 1e-2, "train.jsonl")],
)
def test_each_loss_raises_heldout_margin_and_accuracy(tiny_lm, pref_files, tmp_path, loss, lr,
                                                      data):
    """Held-out implicit reward margin and preference accuracy, before vs after 12 steps.

    At step 0 the policy is the reference, so every margin is 0 (up to float noise) and the
    strict accuracy is near 0; training must move both up, the accuracy past chance.
    """
    cfg, out, lines = run(tiny_lm, pref_files, tmp_path, loss=loss, learning_rate=lr,
                          data=str(pref_files / data))
    evals = [x for x in lines if "eval/rewards/accuracy" in x]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == cfg.max_steps
    assert abs(first["eval/rewards/margins"]) < 1e-3
    assert last["eval/rewards/margins"] > first["eval/rewards/margins"] + 0.05, (first, last)
    assert last["eval/rewards/accuracy"] > max(0.55, first["eval/rewards/accuracy"]), (first, last)
    train = [x for x in lines if f"loss/{loss}" in x]
    assert len(train) == cfg.max_steps
    if loss != "kto":
        names = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy",
                 "logps/chosen", "logps/rejected"}
        assert names <= set(train[-1])
    result = read_json(tmp_path / "run")
    assert result["eval/rewards/accuracy"] == last["eval/rewards/accuracy"]
    assert (out / "model.safetensors").exists()


def test_lora_run_uses_base_as_reference(tiny_lm, pref_files, tmp_path):
    cfg, out, lines = run(tiny_lm, pref_files, tmp_path, lora=True, lora_r=4, lora_alpha=8,
                          learning_rate=1e-2, max_steps=6, eval_every=6)
    evals = [x for x in lines if "eval/rewards/margins" in x]
    assert abs(evals[0]["eval/rewards/margins"]) < 1e-3
    assert evals[-1]["eval/rewards/margins"] > 0.02, evals


def test_cli_dpo(tiny_lm, pref_files, tmp_path):
    from rlhfkit.cli.main import main

    rc = main(["dpo", "--model", str(tiny_lm), "--data", str(pref_files / "train.jsonl"),
               "--eval-data", str(pref_files / "eval.jsonl"), "--loss", "ipo", "--beta", "0.5",
               "--max-steps", "2", "--batch-size", "2", "--output-dir", str(tmp_path / "cli"),
               "--precision", "fp32", "--no-progress", "--system-prompt", SYSTEM])
    assert rc == 0
    assert (tmp_path / "cli" / "model" / "model.safetensors").exists()
    assert "eval/rewards/accuracy" in read_json(tmp_path / "cli")


def test_resume_matches_uninterrupted_run(tiny_lm, pref_files, tmp_path):
    """Stopped after step 3 of 6 and resumed (reference log-probs from the run folder's cache):
    the same weights, bit for bit, as the run that never stopped."""
    import os
    import shutil

    from safetensors.torch import load_file

    opts = dict(max_steps=6, eval_every=0, learning_rate=1e-3)
    _, full_out, _ = run(tiny_lm, pref_files, tmp_path / "full", save_every=3, **opts)
    part = tmp_path / "part" / "run"
    (part / "checkpoints").mkdir(parents=True)
    os.symlink(tmp_path / "full" / "run" / "checkpoints" / "step-0000003",
               part / "checkpoints" / "step-0000003")
    shutil.copy(tmp_path / "full" / "run" / "reference_logps.pt", part / "reference_logps.pt")
    _, part_out, lines = run(tiny_lm, pref_files, tmp_path / "part", resume=True, **opts)
    assert [x["step"] for x in lines if "loss/dpo" in x] == [4, 5, 6]
    full_w, part_w = (load_file(p / "model.safetensors") for p in (full_out, part_out))
    assert full_w.keys() == part_w.keys()
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


def test_kto_on_thumbs_up_down_records(tiny_lm, pref_files, tmp_path):
    """👍/👎 records train KTO end to end (each with a mismatched partner for z0), and the
    held-out comparisons are scored as pairs."""
    cfg, _, lines = run(tiny_lm, pref_files, tmp_path, loss="kto", max_steps=4, eval_every=4,
                        learning_rate=2e-3, data=str(pref_files / "binary.jsonl"))
    train = [x for x in lines if "loss/kto" in x]
    assert len(train) == 4 and all("kto/kl" in x and x["kto/kl"] >= 0 for x in train)
    result = read_json(tmp_path / "run")
    assert result["train_desirable"] + result["train_undesirable"] == 64
    assert result["train_undecided"] == 0 and result["eval/pairs"] > 0


def test_gradient_checkpointing_gives_the_same_run(tiny_lm, pref_files, tmp_path):
    """Recomputing activations changes memory, not the maths: same losses, same weights."""
    from safetensors.torch import load_file

    opts = dict(max_steps=3, eval_every=0, learning_rate=1e-3)
    _, plain_out, plain = run(tiny_lm, pref_files, tmp_path / "plain", **opts)
    _, gc_out, gc = run(tiny_lm, pref_files, tmp_path / "gc", gradient_checkpointing=True, **opts)
    losses = [[x["loss/dpo"] for x in lines if "loss/dpo" in x] for lines in (plain, gc)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    a, b = (load_file(p / "model.safetensors") for p in (plain_out, gc_out))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
