"""Segments of a response and the token that ends each; combining reward sources by hand."""

import math

import pytest
import torch

from rlhfkit.config import parse_weights, split_named
from rlhfkit.rewards.shaping import place_rewards, token_rewards
from rlhfkit.rewards.sources import RewardSource, RewardTerms, combine, segment_gains
from rlhfkit.segments import response_segments, segment_end_tokens, split_segments


def texts_of(text, spans):
    return [text[a:b] for a, b in spans]


def test_sentences_and_subsentences_tile_the_text():
    text = 'Great film. Loved it, truly! "Wow!" she said; fine.\nNext line'
    sent = split_segments(text, "sentence")
    assert texts_of(text, sent) == ["Great film. ", "Loved it, truly! ", '"Wow!" ',
                                    "she said; fine.\n", "Next line"]
    sub = split_segments(text, "subsentence")
    assert texts_of(text, sub) == ["Great film. ", "Loved it, ", "truly! ", '"Wow!" ',
                                   "she said; ", "fine.\n", "Next line"]
    for spans in (sent, sub):
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_decimal_points_trailing_space_and_empty_text():
    assert texts_of("3.5 stars. Fine", split_segments("3.5 stars. Fine")) == ["3.5 stars. ",
                                                                              "Fine"]
    assert split_segments("Done.  ") == [(0, 7)]
    assert split_segments("") == [(0, 0)]
    assert split_segments("One. Two.", "response") == [(0, 9)]
    with pytest.raises(ValueError, match="unknown segment unit"):
        split_segments("x", "paragraph")


def test_segment_end_tokens_by_hand():
    # "Good. Bad." in tokens "Go", "od.", " Bad", ".", <eos>: cumulative ends 2, 5, 9, 10, 10
    char_ends = [2, 5, 9, 10, 10]
    assert segment_end_tokens(char_ends, [5, 10]) == [1, 4]  # "od." completes "Good."; EOS
    assert segment_end_tokens(char_ends, [3, 10]) == [1, 4]  # mid-token end: the token reaching it
    assert segment_end_tokens(char_ends, [2, 9, 10]) == [0, 2, 4]
    assert segment_end_tokens([], [0]) == [0]


def test_response_segments_with_the_real_tokenizer(tokenizer):
    text = "The acting is great. The plot drags, sadly."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    (segs,) = response_segments(tokenizer, [ids], [text], "sentence")
    (first_span, first_tok), (last_span, last_tok) = segs
    assert text[slice(*first_span)] == "The acting is great. "
    # the first segment's token is the one that completes "great." ...
    assert tokenizer.decode(ids[: first_tok + 1]).rstrip().endswith("great.")
    assert not tokenizer.decode(ids[:first_tok]).rstrip().endswith("great.")
    # ... and the last segment's reward goes on the EOS, where a holistic score would go
    assert last_tok == len(ids) - 1


def test_segment_gains_telescope_to_the_holistic_score():
    assert segment_gains([0.9, 0.2, 0.7]) == pytest.approx([0.9, -0.7, 0.5])
    assert sum(segment_gains([0.9, 0.2, 0.7])) == pytest.approx(0.7)
    assert segment_gains([]) == []


def test_split_named_keeps_commas_inside_a_spec():
    assert split_named("runs/rm/model") == [(None, "runs/rm/model")]
    assert split_named("scorer:sentiment:1,toxicity:-1") == [(None,
                                                               "scorer:sentiment:1,toxicity:-1")]
    assert split_named("rel=runs/a, comp=scorer:sentiment:1,toxicity:-1") == [
        ("rel", "runs/a"), ("comp", "scorer:sentiment:1,toxicity:-1")]
    with pytest.raises(ValueError, match="used twice"):
        split_named("a=x,a=y")


def test_parse_weights_defaults_and_errors():
    assert parse_weights("rel=0.3,comp=0.5", ["rel", "fact", "comp"]) == {
        "rel": 0.3, "fact": 1.0, "comp": 0.5}
    with pytest.raises(ValueError, match="no reward source named 'tox'"):
        parse_weights("tox=1", ["rel"])
    with pytest.raises(ValueError, match="must be a number"):
        parse_weights("rel=high", ["rel"])
    with pytest.raises(ValueError, match="name=weight"):
        parse_weights("rel", ["rel"])


class FakeRollout:
    def __init__(self, lengths, ended):
        r = max(lengths)
        self.response_mask = torch.tensor([[i < n for i in range(r)] for n in lengths])
        self.ended = torch.tensor(ended)

    def __len__(self):
        return len(self.ended)


def test_combine_normalises_clips_weights_and_penalises_by_hand():
    rollout = FakeRollout([3, 2], [True, False])
    holistic = RewardSource("rm", lambda r: [[(2, 3.0)], [(1, -1.0)]], weight=0.5,
                            stats=(1.0, 2.0))  # -> (3-1)/2 = 1.0 and (-1-1)/2 = -1.0
    per_segment = RewardSource("seg", lambda r: [[(0, 0.4), (2, 9.0)], [(1, -0.2)]],
                               weight=2.0)  # 9.0 is clipped to 5
    terms = combine([holistic, per_segment], rollout, clip=5.0, missing_eos_penalty=-1.0)
    assert terms.raw.tolist() == pytest.approx([0.5 * 3 + 2 * 9.4, 0.5 * -1 + 2 * -0.2])
    assert terms.scores.tolist() == pytest.approx([0.5 * 1 + 2 * 5.4, 0.5 * -1 + 2 * -0.2 - 1])
    assert terms.by_source["seg"].tolist() == pytest.approx([9.4, -0.2])
    assert not terms.is_holistic
    placed = sum(w * place_rewards(d, rollout.response_mask)
                 for w, d in zip(terms.weights, terms.dense))
    assert torch.allclose(placed, torch.tensor([[0.8, 0.0, 0.5 + 10.0], [0.0, -0.5 - 0.4, 0.0]]))


def test_holistic_source_gives_the_same_token_rewards_as_one_score():
    rollout = FakeRollout([3, 2], [True, False])
    lp, ref = torch.randn(2, 3), torch.randn(2, 3)
    scores = torch.tensor([0.7, -0.3])
    terms = RewardTerms.holistic(scores, scores, rollout.response_mask)
    assert terms.is_holistic
    a, _ = token_rewards(rollout.response_mask, lp, ref, 0.1, scores=scores,
                         ended=rollout.ended, missing_eos_penalty=-2.0)
    b, _ = token_rewards(rollout.response_mask, lp, ref, 0.1, dense=terms.dense,
                         weights=terms.weights, ended=rollout.ended, missing_eos_penalty=-2.0)
    assert torch.allclose(a, b)
    assert not math.isclose(float(a[1, 1]), 0.0)
