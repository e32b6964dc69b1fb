"""Segment reward models (fine-grained RLHF): segment labels from spans, rewards and losses by
hand, the head reads the segment ends, and a saved folder becomes a source that places its rewards
there."""

import math

import pytest
import torch

from rlhfkit.data.records import Span
from rlhfkit.losses import segment_bce_loss
from rlhfkit.models.segment_reward import (
    SegmentRewardModel,
    classification_counts,
    default_unit,
    f1_metrics,
    is_segment_rm,
    segment_labels,
    segment_rewards,
    span_categories,
)
from rlhfkit.segments import split_segments

# ---------------------------------------------------------------------------------------
# Labels, rewards, loss, metrics: by hand
# ---------------------------------------------------------------------------------------


def test_segment_labels_by_hand():
    text = "It lies on the Tull. I hope this helps. Its trade is wool, and it is old."
    subs = split_segments(text, "subsentence")
    assert [text[a:b] for a, b in subs] == ["It lies on the Tull. ", "I hope this helps. ",
                                            "Its trade is wool, ", "and it is old."]
    spans = [
        Span(20, 39, "irrelevant"),     # " I hope this helps." with the space before it
        Span(53, 57, "untruthful"),     # "wool": another category
        Span(60, 63, "repetitive"),     # "and" inside the last sub-sentence
    ]
    rel = ("irrelevant", "repetitive")
    # The leading space belongs to sub-sentence 0 but is whitespace: only sub-sentence 1 is hit.
    assert segment_labels(text, subs, spans, rel) == [0, 1, 0, 1]
    assert segment_labels(text, subs, spans, ("untruthful",)) == [0, 0, 1, 0]
    sentences = split_segments(text, "sentence")  # the last sentence holds both the clauses
    assert segment_labels(text, sentences, spans, ("untruthful",)) == [0, 0, 1]
    assert segment_labels(text, subs, [], rel) == [0, 0, 0, 0]
    # touching is not overlapping: a span ending where a segment's text starts
    assert segment_labels("Ab. Cd.", [(0, 4), (4, 7)], [Span(0, 4, "x")], ("x",)) == [1, 0]
    assert segment_labels("Ab. Cd.", [(0, 4), (4, 7)], [Span(3, 5, "x")], ("x",)) == [0, 1]


def test_categories_and_units():
    assert span_categories("relevance") == ("irrelevant", "repetitive", "incoherent")
    assert span_categories("factuality") == ("untruthful", "unverifiable")
    assert span_categories("off-topic, rude") == ("off-topic", "rude")
    with pytest.raises(ValueError, match="needs a category"):
        span_categories(" , ")
    assert default_unit("relevance") == "subsentence"
    assert default_unit("factuality") == default_unit("rude") == "sentence"


def test_segment_rewards_by_hand():
    logits = torch.tensor([-2.0, 0.0, math.log(3.0), 3.0])
    # sign: +1 where no error is predicted (logit <= 0), -1 where one is (Wu et al.'s +-1)
    assert segment_rewards(logits, "sign").tolist() == [1.0, 1.0, -1.0, -1.0]
    # prob: 1 - 2p; p = sigmoid(ln 3) = 3/4 -> -1/2; p = 1/2 -> 0
    prob = segment_rewards(logits, "prob")
    assert prob[1].item() == pytest.approx(0.0)
    assert prob[2].item() == pytest.approx(-0.5)
    assert prob[0].item() == pytest.approx(1 - 2 / (1 + math.exp(2.0)))
    assert segment_rewards(logits, "logodds").tolist() == pytest.approx([2.0, 0.0, -math.log(3),
                                                                         -3.0])
    with pytest.raises(ValueError, match="sign, prob, logodds"):
        segment_rewards(logits, "tanh")


def test_segment_bce_loss_by_hand():
    """z = (0, ln 3, -ln 3), y = (1, 0, 0), error weight 2:
    segment 0: error, p = 1/2 -> 2 * -ln(1/2) = 2 ln 2; predicted clean (z = 0): wrong;
    segment 1: clean, p = 3/4 -> -ln(1/4) = ln 4; predicted error: wrong;
    segment 2: clean, p = 1/4 -> -ln(3/4); right."""
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])
    labels = torch.tensor([1, 0, 0])
    loss, diag = segment_bce_loss(logits, labels, error_weight=2.0)
    assert loss.tolist() == pytest.approx([2 * math.log(2), math.log(4), -math.log(0.75)])
    assert diag["correct"].tolist() == [0.0, 0.0, 1.0]
    assert diag["weight"].tolist() == [2.0, 1.0, 1.0]
    plain, _ = segment_bce_loss(logits, labels)
    assert plain[0].item() == pytest.approx(math.log(2))


def test_f1_metrics_by_hand():
    logits = torch.tensor([2.0, 1.0, -1.0, -3.0, 0.5])
    labels = torch.tensor([1, 0, 1, 0, 1])
    counts = classification_counts(logits, labels)
    assert counts == {"tp": 2.0, "fp": 1.0, "fn": 1.0, "tn": 1.0}
    m = f1_metrics(counts)
    assert m["eval/segment_accuracy"] == pytest.approx(3 / 5)
    assert m["eval/segment_precision"] == pytest.approx(2 / 3)
    assert m["eval/segment_recall"] == pytest.approx(2 / 3)
    assert m["eval/segment_f1"] == pytest.approx(2 / 3)
    assert m["eval/segment_error_rate"] == pytest.approx(3 / 5)
    assert f1_metrics({"tp": 0, "fp": 0, "fn": 0, "tn": 4})["eval/segment_f1"] == 0.0


# ---------------------------------------------------------------------------------------
# The model reads the segment ends; the source places rewards there
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_segment_rm(tiny_lm, tokenizer, tmp_path_factory):
    """A tiny segment reward model (random head), marked as a relevance model, saved."""
    torch.manual_seed(0)
    model = SegmentRewardModel.from_pretrained(str(tiny_lm), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():  # a head that reacts to the hidden state, so positions matter
        model.tok_model.score.weight.normal_(0, 1.0)
    model.mark("sentence", "relevance", ["irrelevant"], "logodds")
    path = tmp_path_factory.mktemp("seg-rm") / "model"
    model.save(path, tokenizer)
    return path


def test_head_reads_exactly_the_requested_positions(tiny_segment_rm, tokenizer):
    model = SegmentRewardModel.from_pretrained(str(tiny_segment_rm)).eval()
    assert model.unit == "sentence" and model.reward_kind == "logodds"
    a = tokenizer("Good film. Bad plot. The end.")["input_ids"]
    b = tokenizer("Fine. Not fine at all, really.")["input_ids"]
    n = min(len(a), len(b))
    assert n >= 8
    ids = torch.tensor([a[:n], b[:n]])  # (2, n)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model.tok_model(input_ids=ids, attention_mask=mask).logits[..., 0]  # (B, T)
        rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 5, 0, 7])
        picked = model(ids, mask, rows, cols)
    assert torch.allclose(picked, full[rows, cols], atol=1e-5)
    assert not torch.allclose(picked[0], full[0, 3], atol=1e-3)  # a neighbour differs
    # causal: the logit at a segment end does not see the tokens after it
    changed = ids.clone()
    changed[0, 6:] = tokenizer("zzz")["input_ids"][0]
    with torch.no_grad():
        again = model(changed, mask, torch.tensor([0]), torch.tensor([5]))
    assert again.item() == pytest.approx(picked[1].item(), abs=1e-5)


def test_source_loads_from_folder_and_places_rewards_at_segment_ends(tiny_segment_rm, tokenizer):
    """Built through ``build_sources`` like ``--reward-model rel=FOLDER``: one reward per
    sentence, at the token that completes it (the last one at the EOS), equal to -logit
    (``logodds``) of the model run on the training encoding of the same text."""
    from rlhfkit.data.chat import encode_pair
    from rlhfkit.models.reward import reward_model_source
    from rlhfkit.rewards.registry import build_sources
    from rlhfkit.rewards.sources import SourceContext
    from rlhfkit.rollout import build_rollout, encode_prompts, eos_ids_of
    from rlhfkit.segments import response_segments

    assert is_segment_rm(tiny_segment_rm) and not is_segment_rm(tiny_segment_rm.parent)
    prompts = ["Tell me about it.", "A much longer question, so the prompts are padded?"]
    texts = ["The acting is great. The plot drags, sadly.", "Short answer."]
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    responses = [encode_pair(tokenizer, p, t, 512).input_ids[len(pi):]
                 for p, t, pi in zip(prompts, texts, prompt_ids)]
    assert all(r[-1] == eos for r in responses)
    rollout = build_rollout(tokenizer, prompts, prompt_ids, responses, eos_ids_of(tokenizer))
    assert rollout.texts == texts
    ctx = SourceContext(tokenizer, torch.device("cpu"), segment_unit="sentence")
    (source,) = build_sources(f"rel={tiny_segment_rm}", "rel=0.3", ctx,
                              folder=reward_model_source)
    assert source.name == "rel" and source.weight == 0.3 and source.stats is None
    dense = source.fn(rollout)
    segs = response_segments(tokenizer, rollout.response_ids, texts, "sentence")
    assert [[p for p, _ in row] for row in dense] == [[t for _, t in s] for s in segs]
    assert [len(row) for row in dense] == [2, 1]
    assert dense[0][-1][0] == len(responses[0]) - 1 and dense[1][0][0] == len(responses[1]) - 1
    # the same numbers as the model on the (right-padded) training encoding
    model = SegmentRewardModel.from_pretrained(str(tiny_segment_rm)).eval()
    for b, (p, t) in enumerate(zip(prompts, texts)):
        enc = encode_pair(tokenizer, p, t, 512)
        ids = torch.tensor([enc.input_ids])
        cols = torch.tensor([enc.prompt_len + tok for tok, _ in dense[b]])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids), torch.zeros_like(cols), cols)
        assert [r for _, r in dense[b]] == pytest.approx((-logits).tolist(), abs=1e-4)
