"""Segments of a response and the token that ends each."""


import pytest

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
