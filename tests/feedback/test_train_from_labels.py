"""The loop's hand-off: label through the app, export, and train on the labels.

Two annotators (simulated labelers with their own accounts) label pairwise, rank-K and
demonstration projects over the HTTP API; then ``rlhfkit label export`` writes records, and
``rlhfkit rm`` / ``rlhfkit sft`` train on the export file and straight from the store
(``--data db:sqlite:///…?project=NAME``). A tiny random model and two optimizer steps: this
checks the plumbing end to end, not learning (tests/train/test_rm.py and tests/train/test_sft.py do that).
"""

from __future__ import annotations

import math

from conftest import PASSWORD
from rlhfkit.cli.main import main
from rlhfkit.data import records as R
from rlhfkit.data.io import read_records
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.feedback.client import FeedbackClient, label_project, labeler_answerer
from rlhfkit.feedback.simulated import SimulatedLabeler

TRAIN = ["--max-steps", "2", "--batch-size", "2", "--max-length", "64", "--eval-fraction", "0.25",
         "--no-progress", "--precision", "fp32"]
TOPICS = ["sleep", "tea", "rain", "maps", "bread", "bikes", "tides", "salt", "owls", "glass",
          "clay", "kites"]


def test_label_export_and_train_reward_model_and_policy(live, tiny_lm, tmp_path, capsys):
    url, store = live
    admin = FeedbackClient(url, "admin", PASSWORD)
    admin.create_project("pairs", ["pairwise"], [
        {"prompt": f"Tell me about {t}.", "responses": [f"{t}.", f"Here is something useful about {t}."]}
        for t in TOPICS], overlap=2)
    admin.create_project("ranks", ["rank"], [
        {"prompt": f"Describe {t}.", "responses": [f"{t}", f"{t} are nice", f"{t} are nice and worth a look"]}
        for t in TOPICS[:8]], overlap=2)
    admin.create_project("demos", ["demonstration"], [{"prompt": f"Explain {t} simply."} for t in TOPICS],
                         overlap=2)
    for seed, name in enumerate(("sim-a", "sim-b")):
        admin.create_user(name, PASSWORD, source="simulated")
        client = FeedbackClient(url, name, PASSWORD)
        answer = labeler_answerer(SimulatedLabeler("length", temperature=0.0, seed=seed, name=name),
                                  writer=lambda task, q, who=name: f"{task['prompt']} In short: ask {who}.")
        assert [label_project(client, p, answer) for p in ("pairs", "ranks", "demos")] == [12, 8, 12]
    db = store.url  # sqlite:////abs/path/f.db

    # 1. export, then a reward model on the file
    export = tmp_path / "pairs.jsonl"
    assert main(["label", "export", "--db", db, "--project", "pairs", "--out", str(export)]) == 0
    records = read_records(export)
    assert len(records) == 24 and all(isinstance(r, R.Comparison) for r in records)
    assert {r.annotator for r in records} == {"sim-a", "sim-b"}
    run = tmp_path / "rm-file"
    assert main(["rm", "--model", str(tiny_lm), "--data", str(export), "--output-dir", str(run), *TRAIN]) == 0
    assert (run / "model").is_dir() and (run / "model" / "config.json").exists()
    result = read_json(run)
    assert 0 < result["train_pairs"] <= 24 and 0.0 <= result["eval/rm_accuracy"] <= 1.0

    # 2. a reward model straight from the store: rankings of K = 3 (3 pairs each)
    run = tmp_path / "rm-db"
    assert main(["rm", "--model", str(tiny_lm), "--data", f"db:{db}?project=ranks",
                 "--output-dir", str(run), *TRAIN]) == 0
    assert (run / "model").is_dir()
    result = read_json(run)
    # 8 items x 2 annotators = 16 rankings of 3, minus those of held-out prompts
    assert result["train_pairs"] % 3 == 0 and 0 < result["train_pairs"] < 16 * 3
    assert "db:sqlite:////" in (run / "config.yaml").read_text()

    # 3. supervised fine-tuning on demonstrations straight from the store
    run = tmp_path / "sft-db"
    assert main(["sft", "--model", str(tiny_lm), "--data", f"db:{db}?project=demos",
                 "--output-dir", str(run), *TRAIN]) == 0
    assert (run / "model" / "model.safetensors").exists()
    steps = read_metrics(run)
    losses = [v for s in steps for k, v in s.items() if k.startswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)

    # 4. mistakes are explained: a missing project, a wrong kind for the stage
    capsys.readouterr()
    assert main(["rm", "--model", str(tiny_lm), "--data", f"db:{db}?project=nope",
                 "--output-dir", str(tmp_path / "x"), *TRAIN]) == 1
    assert "no project named 'nope'" in capsys.readouterr().err
    assert main(["rm", "--model", str(tiny_lm), "--data", f"db:{db}?project=demos",
                 "--output-dir", str(tmp_path / "y"), *TRAIN]) == 1
    assert "'demonstration' record" in capsys.readouterr().err
