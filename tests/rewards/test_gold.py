"""Gold scorers: known values, the shared interface and the registry."""

import pytest

from rlhfkit.rewards.gold import (
    KeywordScorer,
    LengthScorer,
    SentimentScorer,
    ToxicityScorer,
    WeightedScorer,
    get_scorer,
    list_scorers,
)


def test_sentiment_sign_and_range():
    scorer = SentimentScorer()
    good, bad, flat = scorer(
        ["p", "p", "p"],
        ["A wonderful, moving film.", "A dull, awful mess.", "The film is ninety minutes long."],
    )
    assert scorer.name == "sentiment"
    assert good > 0.5 and bad < -0.5 and flat == 0.0
    assert all(-1.0 <= s <= 1.0 for s in (good, bad, flat))


def test_response_only_by_default_and_include_prompt():
    prompt, response = "What an awful, terrible day.", "The film is ninety minutes long."
    assert SentimentScorer()([prompt], [response]) == [0.0]
    assert SentimentScorer(include_prompt=True)([prompt], [response])[0] < -0.5
    # a chat prompt is flattened to its contents
    chat = [{"role": "user", "content": prompt}]
    assert SentimentScorer(include_prompt=True)([chat], [response])[0] < -0.5


def test_toxicity_and_non_toxic_are_complements():
    texts = ["Have a lovely afternoon, friend.", "shut up you stupid idiot"]
    tox = ToxicityScorer()(["", ""], texts)
    clean = get_scorer("non-toxic")(["", ""], texts)
    assert tox[0] < 0.2 < 0.8 < tox[1]
    assert clean == pytest.approx([1 - t for t in tox])
    assert get_scorer("non-toxic").name == "non-toxic"


def test_length_scorer_by_hand():
    # target 4 words, scale 4: 4 words -> 0; 2 words -> -|2-4|/4 = -0.5; 6 words -> -0.5;
    # 0 words -> -1.
    scorer = LengthScorer(target=4)
    texts = ["one two three four", "one two", "a b c d e f", ""]
    assert scorer([""] * 4, texts) == [0.0, -0.5, -0.5, -1.0]
    chars = LengthScorer(target=10, unit="chars", scale=5)
    assert chars([""], ["abcde"]) == [-1.0]  # |5 - 10| / 5


def test_keyword_scorer_by_hand():
    scorer = KeywordScorer(bonus=["great", "thank you"], penalty=["bad"], penalty_weight=2.0)
    texts = [
        "Great film, thank you!",  # 2 bonus -> 2
        "great great great",  # unique: counts once -> 1
        "Bad, bad acting but a great score",  # 1 - 2 = -1
        "greatest badminton",  # word boundaries: no hits -> 0
    ]
    assert scorer([""] * 4, texts) == [2.0, 1.0, -1.0, 0.0]
    counting = KeywordScorer(bonus=["great"], penalty=[], unique=False)
    assert counting([""], ["great great great"]) == [3.0]


def test_weighted_scorer_and_spec_string():
    length = LengthScorer(target=4)
    keyword = KeywordScorer(bonus=["great"], penalty=[])
    combo = WeightedScorer([(length, 2.0), (keyword, -1.0)])
    # "a great b c": length 0, keyword 1 -> 2*0 - 1*1 = -1; "great": length -0.75, kw 1 -> -2.5
    assert combo(["", ""], ["a great b c", "great"]) == [-1.0, -2.5]
    assert combo.name == "length:2,keyword:-1"

    spec = get_scorer("sentiment:1,toxicity:-0.5")
    s = SentimentScorer()(["p"], ["a lovely film"])[0]
    t = ToxicityScorer()(["p"], ["a lovely film"])[0]
    assert spec(["p"], ["a lovely film"]) == pytest.approx([s - 0.5 * t])


def test_registry():
    assert {"sentiment", "toxicity", "non-toxic", "length", "keyword"} <= set(list_scorers())
    assert get_scorer("length", target=7).target == 7
    scorer = SentimentScorer()
    assert get_scorer(scorer) is scorer
    with pytest.raises(KeyError, match="known"):
        get_scorer("helpfulness")


def test_interface_errors_and_empty_batch():
    assert SentimentScorer()([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        SentimentScorer()(["a", "b"], ["c"])
