"""Machine annotators: simulated labelers label through the HTTP API with their own accounts."""

from __future__ import annotations

import pytest

from conftest import PASSWORD
from rlhfkit.feedback.client import FeedbackClient, FeedbackError, label_project, labeler_answerer
from rlhfkit.feedback.simulated import SimulatedLabeler


def test_simulated_labelers_label_through_the_api(live):
    url, store = live
    admin = FeedbackClient(url, "admin", PASSWORD)
    for name in ("sim-a", "sim-b"):
        admin.create_user(name, PASSWORD, source="simulated")
    # the longer response is always better for a length labeler
    short, long_ = "Ok.", "Here is a much longer and more detailed answer for you."
    items = [{"prompt": f"Question {i}?", "responses": [short + f" {i}", long_ + f" {i}"]} for i in range(8)]
    admin.create_project("pairs", ["pairwise"], items, overlap=2)
    admin.create_project("ranks", ["rank", ], [{"prompt": "Q?", "responses": ["a", "bb bb", "ccc ccc ccc"]}])
    admin.create_project("thumbs", ["binary", "likert"], [{"prompt": "Q?", "responses": ["fine"]}])
    for name, seed in (("sim-a", 1), ("sim-b", 2)):
        client = FeedbackClient(url, name, PASSWORD)
        answer = labeler_answerer(SimulatedLabeler("length", temperature=0.0, seed=seed, name=name))
        assert label_project(client, "pairs", answer) == 8
        label_project(client, "ranks", answer)
        label_project(client, "thumbs", answer)
        mine = client.labels("pairs")
        assert len(mine) == 8 and {lab["annotator"] for lab in mine} == {name}
        with pytest.raises(FeedbackError) as err:  # annotators cannot read the stats
            client.stats("pairs")
        assert err.value.status == 403
    stats = admin.stats("pairs")
    assert stats["progress"]["labels"] == 16
    assert {a["source"] for a in stats["annotators"]} == {"simulated"}
    # noiseless length labelers always pick the long response, whatever side it was on
    records = [line for line in admin.export_jsonl("pairs").splitlines()]
    assert len(records) == 16 and all(long_ in r.split('"chosen": ')[1].split('"rejected"')[0] for r in records)
    ranks = store.labels("ranks")
    assert ranks[0]["answers"]["rank"]["ranks"] == [2, 1, 0]


def test_client_retries_a_submission_once_stored(live):
    url, store = live
    admin = FeedbackClient(url, "admin", PASSWORD)
    admin.create_project("p", ["binary"], [{"prompt": "Q?", "responses": ["r"]}])
    task = admin.next("p")
    first = admin.submit("p", task["item_id"], {"binary": {"value": "up"}}, submission_key="same-key-1")
    again = admin.submit("p", task["item_id"], {"binary": {"value": "up"}}, submission_key="same-key-1")
    assert first["duplicate"] is False and again["duplicate"] is True
    assert len(store.labels("p")) == 1
    assert admin.next("p") is None
