"""Record types: validation, dict round trips, TRL conventions, ranking expansion."""

from __future__ import annotations

import math
import pickle

import pytest

from rlhfkit.data.records import (
    KINDS,
    BinaryFeedback,
    Comparison,
    Demonstration,
    PromptRecord,
    Ranking,
    RecordError,
    ScoreFeedback,
    Span,
    SpanFeedback,
    as_comparisons,
    from_dict,
    infer_kind,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def one_of_each():
    """One valid record of every kind, using every optional field somewhere."""
    return [
        PromptRecord(prompt="Write a haiku.", id="p1", source="human"),
        Demonstration(prompt="2+2?", response="4", annotator="ann-1"),
        Demonstration(messages=[*CHAT, {"role": "assistant", "content": "Hello."}]),
        Comparison(
            prompt=CHAT,
            chosen="Hello.",
            rejected="Go away.",
            margin=2.0,
            created_at="2024-05-01T12:00:00+00:00",
            meta={"batch": 3, "tags": ["a", "b"]},
        ),
        Comparison(prompt="x", chosen="same", rejected="same", tie=True, weight=0.5, group="g"),
        Ranking(prompt="Name a fruit.", responses=["apple", "rock", "pear"], ranks=[0, 2, 1]),
        Ranking(prompt="Name a fruit.", responses=["fig", "kiwi"], scores=[0.1, -3.0], id="r2"),
        BinaryFeedback(prompt="Joke?", response="No.", label=False, source="simulated"),
        ScoreFeedback(prompt="Joke?", response="A pun.", score=4.5, source="ai"),
        SpanFeedback(
            prompt="Capital of France?",
            response="Paris. It is in Spain.",
            spans=[Span(7, 22, "untruthful", note="France"), Span(0, 6, "my-category")],
            missing=["population"],
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Valid records and dict round trips
# ---------------------------------------------------------------------------------------------


def test_kinds_table_maps_every_kind_string_to_its_class():
    assert KINDS == {
        "prompt": PromptRecord,
        "demonstration": Demonstration,
        "comparison": Comparison,
        "ranking": Ranking,
        "binary": BinaryFeedback,
        "score": ScoreFeedback,
        "span": SpanFeedback,
    }
    for kind, cls in KINDS.items():
        assert cls.KIND == kind


@pytest.mark.parametrize("record", one_of_each(), ids=lambda r: r.KIND)
def test_to_dict_from_dict_round_trip(record):
    d = record.to_dict()
    assert "kind" not in d
    assert type(record).from_dict(d) == record
    assert from_dict(d, record.KIND) == record
    assert from_dict({"kind": record.KIND, **d}) == record  # kind from the dict itself


def test_to_dict_does_not_share_lists_with_the_record():
    record = Comparison(prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b")
    d = record.to_dict()
    d["prompt"][0]["content"] = "changed"
    assert record.prompt[0]["content"] == "q"


def test_numbers_are_stored_as_floats_and_spans_as_span_objects():
    assert ScoreFeedback(prompt="p", response="r", score=3).score == 3.0
    assert isinstance(ScoreFeedback(prompt="p", response="r", score=3).score, float)
    span = SpanFeedback(prompt="p", response="abc", spans=[{"start": 0, "end": 2, "category": "x"}])
    assert span.spans == [Span(0, 2, "x")]


def test_demonstration_from_messages_fills_prompt_and_response():
    demo = Demonstration(messages=[*CHAT, {"role": "assistant", "content": "Hello."}])
    assert demo.prompt == CHAT
    assert demo.response == "Hello."
    assert set(demo.to_dict()) >= {"messages"} and "response" not in demo.to_dict()


def test_unknown_keys_are_kept_in_meta():
    record = from_dict({"prompt": "p", "chosen": "a", "rejected": "b", "prompt_id": "x7"})
    assert record.meta == {"prompt_id": "x7"}


def test_none_values_stand_for_missing_optional_fields():
    record = from_dict({"prompt": "p", "chosen": "a", "rejected": "b", "tie": None, "meta": None})
    assert record.tie is False and record.meta == {}


def test_created_at_accepts_datetimes_and_iso_strings():
    from datetime import UTC, datetime

    record = PromptRecord(prompt="p", created_at=datetime(2024, 1, 2, 3, 4, tzinfo=UTC))
    assert record.created_at == "2024-01-02T03:04:00+00:00"
    assert PromptRecord(prompt="p", created_at="2024-01-02T03:04:05Z").created_at.endswith("Z")


# ---------------------------------------------------------------------------------------------
# TRL conventions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        (["prompt", "chosen", "rejected"], "comparison"),
        (["chosen", "rejected"], "comparison"),  # implicit prompt
        (["prompt", "chosen", "rejected", "messages", "score_chosen"], "comparison"),
        (["prompt", "responses", "ranks"], "ranking"),
        (["prompt", "responses", "scores"], "ranking"),
        (["prompt", "completion", "label"], "binary"),
        (["prompt", "response", "label"], "binary"),
        (["prompt", "response", "score"], "score"),
        (["prompt", "response", "spans", "missing"], "span"),
        (["messages"], "demonstration"),
        (["prompt", "completion"], "demonstration"),
        (["prompt", "response", "id", "meta"], "demonstration"),
        (["prompt"], "prompt"),
        (["prompt", "id", "kind"], "prompt"),
    ],
)
def test_infer_kind(columns, kind):
    assert infer_kind(columns) == kind


@pytest.mark.parametrize(
    "columns",
    [["text"], ["prompt", "chosen"], ["prompt", "label"], ["responses", "prompt"], []],
)
def test_infer_kind_refuses_columns_that_fit_no_kind(columns):
    with pytest.raises(RecordError) as info:
        infer_kind(columns)
    assert info.value.field == "kind"
    assert "expected" in str(info.value)


def test_trl_conversational_preference_takes_assistant_content_and_prompt_messages():
    row = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    record = from_dict(row)
    assert record == Comparison(
        prompt=[{"role": "user", "content": "Hi?"}], chosen="Hello!", rejected="Go away."
    )


def test_trl_implicit_prompt_is_the_shared_conversation_before_the_answer():
    user = {"role": "user", "content": "Hi?"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "Hello!"}],
        "rejected": [user, {"role": "assistant", "content": "Go away."}],
    }
    record = from_dict(row)
    assert record.prompt == [user]
    assert (record.chosen, record.rejected) == ("Hello!", "Go away.")


def test_trl_implicit_prompt_must_be_shared():
    row = {
        "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
        "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}],
    }
    with pytest.raises(RecordError, match="disagrees with the prompt") as info:
        from_dict(row)
    assert info.value.field == "rejected"


def test_trl_prompt_text_beside_whole_conversations_becomes_the_conversation():
    """The ultrafeedback_binarized layout: a text prompt, and chosen/rejected as whole chats."""
    system = {"role": "system", "content": "Be kind."}
    user = {"role": "user", "content": "Hi?"}
    row = {
        "prompt": "Hi?",
        "chosen": [system, user, {"role": "assistant", "content": "Hello!"}],
        "rejected": [system, user, {"role": "assistant", "content": "No."}],
    }
    record = from_dict(row)
    assert record == Comparison(prompt=[system, user], chosen="Hello!", rejected="No.")


def test_trl_conversation_that_contradicts_the_prompt_is_refused():
    row = {
        "prompt": "Something else?",
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    with pytest.raises(RecordError, match="disagrees with the prompt") as info:
        from_dict(row)
    assert info.value.field == "chosen"


def test_trl_messages_with_a_prompt_text_column_keeps_the_text_in_meta():
    """The ultrachat_200k layout: prompt, prompt_id and messages; the messages are the data."""
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]
    record = from_dict({"prompt": "Hi?", "prompt_id": "abc", "messages": messages})
    assert isinstance(record, Demonstration)
    assert (record.prompt, record.response) == (messages[:1], "Hello!")
    assert record.meta == {"prompt": "Hi?", "prompt_id": "abc"}
    assert from_dict(record.to_dict(), "demonstration") == record


def test_trl_messages_is_a_demonstration():
    record = from_dict({"messages": [*CHAT, {"role": "assistant", "content": "Hey."}]})
    assert isinstance(record, Demonstration)
    assert (record.prompt, record.response) == (CHAT, "Hey.")


def test_trl_prompt_completion_is_a_demonstration_and_label_makes_it_binary():
    demo = from_dict({"prompt": "Q", "completion": "A"})
    assert demo == Demonstration(prompt="Q", response="A")
    kto = from_dict({"prompt": "Q", "completion": "A", "label": True})
    assert kto == BinaryFeedback(prompt="Q", response="A", label=True)
    chat = from_dict(
        {"prompt": CHAT, "completion": [{"role": "assistant", "content": "A"}], "label": False}
    )
    assert chat == BinaryFeedback(prompt=CHAT, response="A", label=False)


def test_trl_completion_messages_must_end_with_the_assistant():
    with pytest.raises(RecordError) as info:
        from_dict({"prompt": "Q", "completion": [{"role": "user", "content": "A"}]})
    assert info.value.field == "completion[0].role"


# ---------------------------------------------------------------------------------------------
# Ranking expansion: C(K, 2) pairs
# ---------------------------------------------------------------------------------------------


def test_ranking_of_four_expands_to_six_pairs_of_weight_one_sixth():
    """Ranks [2, 0, 3, 1] on a, b, c, d mean b > d > a > c.

    Pairs in combinations order (i, j), better one first:
    (0,1) b>a, (0,2) a>c, (0,3) d>a, (1,2) b>c, (1,3) b>d, (2,3) d>c; C(4,2) = 6, weight 1/6.
    """
    ranking = Ranking(
        prompt="p", responses=["a", "b", "c", "d"], ranks=[2, 0, 3, 1], id="r4", annotator="ann"
    )
    pairs = ranking.to_comparisons()
    assert [(c.chosen, c.rejected) for c in pairs] == [
        ("b", "a"),
        ("a", "c"),
        ("d", "a"),
        ("b", "c"),
        ("b", "d"),
        ("d", "c"),
    ]
    assert all(c.weight == pytest.approx(1 / 6) for c in pairs)
    assert math.fsum(c.weight for c in pairs) == pytest.approx(1.0)
    assert {c.group for c in pairs} == {"r4"}
    assert [c.id for c in pairs] == ["r4:0-1", "r4:0-2", "r4:0-3", "r4:1-2", "r4:1-3", "r4:2-3"]
    assert all(c.annotator == "ann" and c.prompt == "p" and not c.tie for c in pairs)
    assert all(c.margin is None for c in pairs)


def test_ranking_ties_are_kept_as_tie_pairs_in_listed_order():
    """Ranks [0, 0, 1]: x and y tie (kept, tie=True, listed order), both beat z; weight 1/3."""
    pairs = Ranking(prompt="p", responses=["x", "y", "z"], ranks=[0, 0, 1]).to_comparisons()
    assert [(c.chosen, c.rejected, c.tie) for c in pairs] == [
        ("x", "y", True),
        ("x", "z", False),
        ("y", "z", False),
    ]
    assert [c.weight for c in pairs] == pytest.approx([1 / 3] * 3)
    assert all(c.group is None and c.id is None for c in pairs)


def test_ranking_by_scores_higher_is_better_and_margin_is_the_difference():
    """Scores [0.5, 2.0, 2.0]: b and c beat a by 1.5; b and c tie with margin 0."""
    ranking = Ranking(prompt="p", responses=["a", "b", "c"], scores=[0.5, 2.0, 2.0], id="s")
    pairs = ranking.to_comparisons()
    assert [(c.chosen, c.rejected, c.tie, c.margin) for c in pairs] == [
        ("b", "a", False, 1.5),
        ("c", "a", False, 1.5),
        ("b", "c", True, 0.0),
    ]


def test_ranking_of_two_is_one_pair_of_weight_one():
    (pair,) = Ranking(prompt="p", responses=["a", "b"], ranks=[1, 0]).to_comparisons()
    assert (pair.chosen, pair.rejected, pair.weight) == ("b", "a", 1.0)


def test_ranking_of_nine_gives_thirty_six_pairs():
    ranking = Ranking(prompt="p", responses=[str(i) for i in range(9)], ranks=list(range(9)))
    pairs = ranking.to_comparisons(group="g")
    assert len(pairs) == 36
    assert all(c.weight == pytest.approx(1 / 36) and c.group == "g" for c in pairs)
    assert all(int(c.chosen) < int(c.rejected) for c in pairs)


def test_as_comparisons_flattens_and_counts_ties():
    records = [
        Comparison(prompt="p", chosen="a", rejected="b", tie=True),
        Ranking(prompt="q", responses=["x", "y", "z"], ranks=[0, 0, 1]),  # no id, one tie
        Comparison(prompt="p", chosen="c", rejected="d", group="own"),
        Ranking(prompt="q", responses=["a", "b", "c", "d"], ranks=[2, 0, 3, 1], id="r4"),
    ]
    result = as_comparisons(records)
    assert len(result.pairs) == 1 + 3 + 1 + 6
    assert result.n_ties == 2
    assert result.n_rankings == 2
    assert result.pairs[0] is records[0] and result.pairs[4] is records[2]
    assert [c.group for c in result.pairs[1:4]] == ["ranking-1"] * 3
    assert [c.group for c in result.pairs[5:]] == ["r4"] * 6
    assert [c.weight for c in result.pairs[5:]] == pytest.approx([1 / 6] * 6)

    dropped = as_comparisons(records, drop_ties=True)
    assert len(dropped.pairs) == 9 and dropped.n_ties == 2
    assert not any(c.tie for c in dropped.pairs)


def test_as_comparisons_refuses_other_kinds():
    with pytest.raises(TypeError, match="record 1 is a BinaryFeedback"):
        as_comparisons(
            [
                Comparison(prompt="p", chosen="a", rejected="b"),
                BinaryFeedback(prompt="p", response="r", label=True),
            ]
        )


# ---------------------------------------------------------------------------------------------
# Bad records: each names the field and what was expected
# ---------------------------------------------------------------------------------------------

RANK3 = {"prompt": "p", "responses": ["a", "b", "c"]}
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}
BAD = [
    # (case, kind, fields, the field named, words in the expectation)
    (
        "duplicate response",
        "ranking",
        {**RANK3, "responses": ["a", "b", "a"], "ranks": [0, 1, 2]},
        "responses[2]",
        "distinct",
    ),
    ("K = 1", "ranking", {**RANK3, "responses": ["a"], "ranks": [0]}, "responses", "2..9"),
    (
        "K = 10",
        "ranking",
        {**RANK3, "responses": list("abcdefghij"), "ranks": list(range(10))},
        "responses",
        "2..9",
    ),
    ("ranks too short", "ranking", {**RANK3, "ranks": [0, 1]}, "ranks", "3 values"),
    ("scores too long", "ranking", {**RANK3, "scores": [1.0, 2.0, 3.0, 4.0]}, "scores", "3 values"),
    (
        "ranks and scores",
        "ranking",
        {**RANK3, "ranks": [0, 1, 2], "scores": [1, 2, 3]},
        "ranks",
        "exactly one",
    ),
    ("neither ranks nor scores", "ranking", RANK3, "ranks", "exactly one"),
    ("negative rank", "ranking", {**RANK3, "ranks": [0, -1, 2]}, "ranks[1]", "int >= 0"),
    ("bool rank", "ranking", {**RANK3, "ranks": [0, True, 2]}, "ranks[1]", "int >= 0"),
    (
        "nan score",
        "ranking",
        {**RANK3, "scores": [0.0, float("nan"), 1.0]},
        "scores[1]",
        "finite number",
    ),
    ("empty chosen", "comparison", {**PAIR, "chosen": ""}, "chosen", "non-empty string"),
    ("chosen == rejected", "comparison", {**PAIR, "rejected": "a"}, "rejected", "tie"),
    ("number as rejected", "comparison", {**PAIR, "rejected": 5}, "rejected", "string"),
    ("missing rejected", "comparison", {"prompt": "p", "chosen": "a"}, "rejected", "string"),
    ("negative margin", "comparison", {**PAIR, "margin": -1}, "margin", ">= 0"),
    ("zero weight", "comparison", {**PAIR, "weight": 0}, "weight", "> 0"),
    ("text tie", "comparison", {**PAIR, "tie": "no"}, "tie", "bool"),
    ("empty prompt", "comparison", {**PAIR, "prompt": ""}, "prompt", "chat messages"),
    ("number prompt", "prompt", {"prompt": 42}, "prompt", "chat messages"),
    (
        "message without content",
        "prompt",
        {"prompt": [{"role": "user"}]},
        "prompt[0].content",
        "string",
    ),
    (
        "messages not ending with assistant",
        "demonstration",
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]},
        "messages[1].role",
        "assistant",
    ),
    ("demonstration without response", "demonstration", {"prompt": "p"}, "response", "string"),
    ("int label", "binary", {"prompt": "p", "response": "r", "label": 1}, "label", "bool"),
    ("text label", "binary", {"prompt": "p", "response": "r", "label": "yes"}, "label", "bool"),
    (
        "text score",
        "score",
        {"prompt": "p", "response": "r", "score": "high"},
        "score",
        "finite number",
    ),
    (
        "bool score",
        "score",
        {"prompt": "p", "response": "r", "score": True},
        "score",
        "finite number",
    ),
    (
        "span past the end",
        "span",
        {"prompt": "p", "response": "abc", "spans": [{"start": 1, "end": 4, "category": "x"}]},
        "spans[0].end",
        "end <= 3",
    ),
    (
        "span start >= end",
        "span",
        {"prompt": "p", "response": "abc", "spans": [{"start": 2, "end": 2, "category": "x"}]},
        "spans[0].end",
        "end > start",
    ),
    (
        "negative span start",
        "span",
        {"prompt": "p", "response": "abc", "spans": [{"start": -1, "end": 2, "category": "x"}]},
        "spans[0].start",
        "int >= 0",
    ),
    (
        "span without category",
        "span",
        {"prompt": "p", "response": "abc", "spans": [{"start": 0, "end": 2}]},
        "spans[0].category",
        "value",
    ),
    (
        "text missing list",
        "span",
        {"prompt": "p", "response": "abc", "missing": "all"},
        "missing",
        "list of strings",
    ),
    (
        "unknown source",
        "binary",
        {"prompt": "p", "response": "r", "label": True, "source": "crowd"},
        "source",
        "human, simulated, ai",
    ),
    (
        "bad timestamp",
        "prompt",
        {"prompt": "p", "created_at": "yesterday"},
        "created_at",
        "ISO 8601",
    ),
    ("number id", "prompt", {"prompt": "p", "id": 7}, "id", "string"),
    ("list meta", "prompt", {"prompt": "p", "meta": [1]}, "meta", "dict"),
    ("kind disagrees", "comparison", {**PAIR, "kind": "ranking"}, "kind", "'comparison'"),
]


@pytest.mark.parametrize(
    ("case", "kind", "fields", "field", "expected"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_record_names_field_and_expectation(case, kind, fields, field, expected):
    with pytest.raises(RecordError) as info:
        from_dict(fields, kind)
    err = info.value
    assert err.field == field, case
    assert expected in str(err), case
    assert f"field '{field}'" in str(err)
    assert isinstance(err, ValueError)


def test_chosen_equal_to_rejected_is_fine_as_a_tie():
    assert Comparison(prompt="p", chosen="a", rejected="a", tie=True).tie


def test_direct_construction_validates_too():
    with pytest.raises(RecordError, match="field 'label'"):
        BinaryFeedback(prompt="p", response="r", label="true")
    with pytest.raises(RecordError, match="field 'end'"):
        Span(3, 1, "x")


def test_from_dict_refuses_a_non_dict_and_an_unknown_kind():
    with pytest.raises(RecordError, match="JSON object"):
        from_dict(["prompt", "p"], "prompt")
    with pytest.raises(RecordError, match="one of prompt, demonstration") as info:
        from_dict({"prompt": "p"}, "essay")
    assert info.value.field == "kind"


def test_record_error_message_layout_and_pickling():
    err = RecordError("got '' (str)", field="chosen", expected="a non-empty string")
    assert str(err) == "field 'chosen': expected a non-empty string; got '' (str)"
    err.at(file="prefs.jsonl", line=3)
    assert (
        str(err) == "prefs.jsonl, line 3, field 'chosen': expected a non-empty string; got '' (str)"
    )
    err.at(file="other.jsonl", line=9)  # the first location wins
    assert (err.file, err.line) == ("prefs.jsonl", 3)
    row_err = RecordError("x", field="label").at(file="t.csv", row=0)
    assert str(row_err) == "t.csv, row 0 (0-based data row), field 'label': x"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)
