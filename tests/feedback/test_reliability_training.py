"""``rlhfkit rm`` / ``rlhfkit dpo --weight-by reliability``: the weights reach the loss.

A crowd labels a pairwise project in the store (two honest annotators, one who flips a
fifth of the time, one who flips nine in ten, and honeypots); the stages read it with
``--data db:...``, estimate each annotator's error rate ``e`` from all labels and honeypots,
and train on weight ``1 - 2e`` per pair (the adversary's labels, weight 0, are left out).
"""

from __future__ import annotations

import json
import random

import pytest

from rlhfkit.cli import main
from rlhfkit.feedback.store import Store
from rlhfkit.train.inputs import read_source, weigh_labels
from rlhfkit.train.rm import RMConfig, build_groups, collate_groups

CROWD = {"ann": 0.0, "ben": 0.0, "cat": 0.2, "eve": 0.9}
TRAIN = ["--max-steps", "1", "--batch-size", "4", "--max-length", "48", "--eval-fraction", "0.2",
         "--no-progress", "--precision", "fp32"]


@pytest.fixture(scope="module")
def crowd_db(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('crowd') / 'f.db'}"
    s = Store(url)
    items = [{"prompt": f"Which is kinder, {i}?", "responses": [f"Thank you kindly {i}.", f"Go away {i}."]}
             for i in range(40)]
    gold = [{"prompt": f"Honeypot {i}?", "responses": [f"With pleasure {i}.", f"No {i}."],
             "gold": {"pairwise": {"choice": 0}}} for i in range(8)]
    s.create_project("crowd", ["pairwise"], overlap=4, gold_every=5, items=items + gold)
    rng = random.Random(0)
    for who, flip in CROWD.items():
        user = s.create_user(who, "password-123", source="simulated")
        while (t := s.next_task(user, "crowd")) is not None:
            kind_left = not t.responses[0].startswith(("Go away", "No "))
            right, wrong = ("left", "right") if kind_left else ("right", "left")
            s.submit(user, "crowd", t.item_id,
                     {"pairwise": {"choice": wrong if rng.random() < flip else right}}, t.submission_key)
    s.close()
    return f"db:{url}?project=crowd"


def test_weights_reach_the_pair_weights_of_the_loss(crowd_db, tokenizer):
    records = read_source(crowd_db)
    cfg = RMConfig(data=crowd_db, weight_by="reliability")
    weighted, table = weigh_labels(cfg, records, [])
    errors = {row["annotator"]: row["error_rate"] for row in table}
    assert errors["ann"] < 0.05 and errors["ben"] < 0.05 and errors["eve"] > 0.8
    assert 0.08 < errors["cat"] < 0.35
    assert all(row["gold_n"] > 0 for row in table)  # the honeypots were read (db: with gold)
    assert {r.annotator for r in weighted} == {"ann", "ben", "cat"}  # eve's weight is 0
    groups, _ = build_groups(weighted, tokenizer, 48)
    batch = collate_groups(groups, tokenizer.pad_token_id)
    weight_of = {row["annotator"]: row["weight"] for row in table}
    expected = sorted(round(weight_of[r.annotator], 4) for r in weighted)
    assert sorted(round(float(w), 4) for w in batch["pair_weight"]) == expected
    # without --weight-by nothing changes
    same, none = weigh_labels(RMConfig(data=crowd_db), records, [])
    assert same is records and none == []


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_rm_and_dpo_weight_by_reliability_from_the_store(stage, crowd_db, tiny_lm, tmp_path, capsys):
    run = tmp_path / stage
    args = [stage, "--model", str(tiny_lm), "--data", crowd_db, "--output-dir", str(run),
            "--weight-by", "reliability", "--min-reliability", "0.7", *TRAIN]
    assert main(args) == 0
    table = json.loads((run / "reliability.json").read_text())
    assert {row["annotator"] for row in table} == set(CROWD)
    assert {row["annotator"] for row in table if row["weight"] == 0} == {"eve"}
    assert "training groups" in capsys.readouterr().out
    # a choice outside the list is refused by the parser itself, before any model loads
    with pytest.raises(SystemExit) as stop:
        main([stage, "--model", str(tiny_lm), "--data", crowd_db, "--output-dir", str(tmp_path / "x"),
              "--weight-by", "trust", *TRAIN])
    assert stop.value.code == 2
    assert "--weight-by: invalid choice: 'trust'" in capsys.readouterr().err
