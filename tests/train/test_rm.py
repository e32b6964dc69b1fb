"""Reward models: K-wise batching by hand, reading position, save/load, and learning."""

import itertools
import math

import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.data.records import Comparison, Ranking
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.losses import bradley_terry_loss
from rlhfkit.models.reward import RewardModel, last_token_index
from rlhfkit.train.rm import RMConfig, build_groups, collate_groups, rm_losses, train_rm


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]


def test_ranking_group_runs_each_response_once_and_weights_pairs(tokenizer):
    """A ranking of K=4 -> 4 sequences, 6 pairs of weight 1/6; the group loss is their mean."""
    ranking = Ranking(prompt="p", responses=["a", "b", "c", "d"], ranks=[0, 1, 2, 3], id="r1")
    groups, counts = build_groups([ranking], tokenizer, 64)
    assert len(groups) == 1 and counts["pairs"] == 6
    batch = collate_groups(groups, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert torch.allclose(batch["pair_weight"], torch.full((6,), 1 / 6))
    assert batch["num_units"] == 1.0  # one prompt's worth of loss
    rewards = torch.tensor([3.0, 1.0, 0.5, -1.0])  # a, b, c, d
    loss, metrics = rm_losses(rewards, batch)
    by_hand = sum(-math.log(1 / (1 + math.exp(-(rewards[i] - rewards[j]).item())))
                  for i, j in itertools.combinations(range(4), 2)) / 6
    assert abs(loss.item() - by_hand) < 1e-5
    assert abs(metrics["rewards/accuracy"].item() - 1.0) < 1e-6


def test_plain_pairs_share_responses(tokenizer):
    pairs = [Comparison(prompt="p", chosen="a", rejected="b"),
             Comparison(prompt="p", chosen="a", rejected="c"),
             Comparison(prompt="q", chosen="x", rejected="y", margin=1.0)]
    groups, _ = build_groups(pairs, tokenizer, 64, pairs_per_group=8)
    assert sorted(len(g.sequences) for g in groups) == [2, 3]
    batch = collate_groups(groups, tokenizer.pad_token_id)
    assert batch["num_units"] == 3.0 and sorted(batch["margin"].tolist()) == [0.0, 0.0, 1.0]
    rewards = torch.randn(batch["input_ids"].shape[0])
    loss, _ = rm_losses(rewards, batch)
    ref, _ = bradley_terry_loss(rewards[batch["chosen_idx"]], rewards[batch["rejected_idx"]],
                                batch["margin"])
    assert torch.allclose(loss, ref.sum())


def test_reward_read_at_last_real_token_any_padding(tiny_lm, tokenizer):
    rm = RewardModel.from_pretrained(str(tiny_lm), pad_token_id=tokenizer.pad_token_id).eval()
    seq = tokenizer("a short response<|im_end|>", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id  # == eos for SmolLM2: the last real token *is* the pad id
    right = torch.tensor([seq + [pad] * 3])
    left = torch.tensor([[pad] * 3 + seq])
    m_right = torch.tensor([[1] * len(seq) + [0] * 3])
    m_left = torch.tensor([[0] * 3 + [1] * len(seq)])
    alone = rm(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
    pos = torch.arange(len(seq)).unsqueeze(0)
    with torch.no_grad():
        r_right = rm(right, m_right)
        hidden = rm.seq_model.model(input_ids=left, attention_mask=m_left,
                                    position_ids=torch.cat([torch.zeros(1, 3, dtype=torch.long),
                                                            pos], 1)).last_hidden_state
        r_left = rm.seq_model.score(hidden[:, -1]).squeeze(-1)
    assert torch.allclose(r_right, alone, atol=1e-5) and torch.allclose(r_left, alone, atol=1e-4)


def test_rm_learns_and_saves(tiny_lm, tmp_path):
    cfg = RMConfig(model=str(tiny_lm), output_dir=str(tmp_path / "rm"), epochs=3, batch_size=4,
                   learning_rate=1e-3, warmup_ratio=0.0, eval_every=10, progress=False,
                   precision="fp32")
    out = train_rm(cfg)
    lines = read_metrics(tmp_path / "rm")
    accs = [x["eval/rm_accuracy"] for x in lines if "eval/rm_accuracy" in x]
    result = read_json(tmp_path / "rm")
    # A random head starts near chance; after training the held-out accuracy is well above it.
    assert accs[0] < 0.7 and result["eval/rm_accuracy"] >= 0.85, (accs, result)
    assert result["eval/rm_accuracy"] == accs[-1]
    # Saved like a HF model, with the reward statistics for later normalisation.
    seq = AutoModelForSequenceClassification.from_pretrained(out)
    assert seq.config.num_labels == 1
    assert abs(seq.config.rlhfkit_reward_std - result["reward_std"]) < 1e-9
    reloaded = RewardModel.from_pretrained(str(out))
    assert reloaded.reward_stats == (result["reward_mean"], result["reward_std"])


def test_rm_learns_from_binary_feedback(tiny_lm, tmp_path):
    """👍 for positive continuations, 👎 for negative ones: the pointwise loss learns the sign."""
    from rlhfkit.data.io import write_records
    from rlhfkit.data.records import BinaryFeedback

    good = ["a wonderful film", "truly great acting", "I loved every minute", "a joy to watch"]
    bad = ["a dull mess", "boring and far too long", "I hated it", "a waste of time"]
    records = [BinaryFeedback(prompt=f"Review {i}:", response=r, label=lab)
               for i in range(12) for r, lab in [(good[i % 4], True), (bad[i % 4], False)]]
    write_records(records, tmp_path / "thumbs.jsonl")
    cfg = RMConfig(model=str(tiny_lm), data=str(tmp_path / "thumbs.jsonl"),
                   output_dir=str(tmp_path / "rm"), max_steps=60, batch_size=8,
                   learning_rate=3e-3, warmup_ratio=0.0, eval_fraction=0.0, progress=False,
                   precision="fp32")
    train_rm(cfg)
    lines = read_metrics(tmp_path / "rm")
    first, last = lines[:5], lines[-5:]
    assert sum(x["loss/rm"] for x in last) / 5 < sum(x["loss/rm"] for x in first) / 5 - 0.1
    assert sum(x["rewards/binary_accuracy"] for x in last) / 5 >= 0.9


def test_encoder_backbone(tmp_path, tokenizer):
    """An encoder (BERT-style) backbone works through its own pooling head."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, num_labels=1,
                     pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "enc")
    rm = RewardModel.from_pretrained(str(tmp_path / "enc"))
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = rm(ids, mask)
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()
    rewards.sum().backward()
    assert rm.seq_model.classifier.weight.grad is not None


def test_saved_rm_scores_the_same_in_stock_transformers(tiny_lm, tokenizer, tmp_path):
    """Stock AutoModelForSequenceClassification + the saved tokenizer, right-padded in a batch,
    gives rlhfkit's scores. Before the fix the folder padded with <|im_end|>, which ends every
    response, so the stock class read each score one token early."""
    from transformers import AutoTokenizer

    from rlhfkit.data.chat import encode_pair, pad

    rm = RewardModel.from_pretrained(str(tiny_lm), pad_token_id=tokenizer.pad_token_id).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a random head of the usual tiny scale reads as ~0 everywhere
        rm.seq_model.score.weight.normal_(0, 1.0)
    rm.save(tmp_path / "rm", tokenizer)
    assert tokenizer.pad_token == "<|im_end|>"  # the caller's tokenizer is untouched
    pairs = [("Say hi", "hi there"), ("Review:", "a dull, slow and far too long film"),
             ("2+2?", "4")]
    seqs = [encode_pair(tokenizer, p, r, 64).input_ids for p, r in pairs]
    ids, mask = pad(seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = rm(ids, mask)

    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    stock_tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert stock_tok.pad_token == "<|endoftext|>" and stock.config.pad_token_id == 0
    batch = stock_tok.pad({"input_ids": seqs}, return_tensors="pt")
    with torch.no_grad():
        theirs = stock(**batch).logits[:, 0]
    assert (ours.abs() > 1e-3).all()
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    # The same from text: the rendered conversation without the newline after <|im_end|>.
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p},
                                            {"role": "assistant", "content": r}],
                                           tokenize=False).removesuffix("\n") for p, r in pairs]
    batch = stock_tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        from_text = stock(**batch).logits[:, 0]
    assert torch.allclose(ours, from_text, atol=1e-5), (ours, from_text)


def test_saved_rm_adds_a_pad_token_when_none_is_safe(tiny_lm, tokenizer, tmp_path, monkeypatch):
    """A tokenizer whose only special tokens are BOS/EOS gets a new pad token on save; the
    saved embeddings grow by one row, the live model's do not."""
    from transformers import AutoTokenizer

    import rlhfkit.models.reward as reward

    class Bare:
        eos_token, bos_token, pad_token, unk_token = "</s>", "<s>", "</s>", None
        all_special_tokens = ["<s>", "</s>"]

    assert reward.scoring_pad_token(Bare()) is None
    assert reward.scoring_pad_token(tokenizer) == "<|endoftext|>"
    rm = RewardModel.from_pretrained(str(tiny_lm)).eval()
    monkeypatch.setattr(reward, "scoring_pad_token", lambda tok: None)
    rm.save(tmp_path / "rm", tokenizer)
    saved = AutoTokenizer.from_pretrained(tmp_path / "rm")
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert saved.pad_token == reward.NEW_PAD_TOKEN and stock.config.pad_token_id == len(tokenizer)
    assert stock.get_input_embeddings().weight.shape[0] == len(tokenizer) + 1
    assert rm.seq_model.get_input_embeddings().weight.shape[0] == len(tokenizer)
