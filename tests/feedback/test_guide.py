"""The quick start of docs/feedback.md, command by command.

Each command below is checked to stand in the guide word for word, then run (in a temporary
folder, the training ones on a tiny model for one step). Between them, Alice and Bob label
through the app as the guide says, Bob through his invite link; Alice also labels the project
of the ``medical`` workspace, which Bob cannot see.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from fastapi.testclient import TestClient

from conftest import csrf_of
from rlhfkit.cli import main
from rlhfkit.feedback.server import create_app
from rlhfkit.feedback.store import Store

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "feedback.md"
SETUP = [
    "rlhfkit label add-user --db sqlite:///feedback.db --name admin --role admin",
    "rlhfkit label create-project --db sqlite:///feedback.db --name sleep --questions pairwise \\\n"
    "    --file pairs.jsonl --overlap 2 --guidelines \"Prefer the more helpful answer.\"",
    "rlhfkit label add-user --db sqlite:///feedback.db --name alice --password 'alice-password'",
    "rlhfkit label add-user --db sqlite:///feedback.db --name bob --invite",
    "rlhfkit label workspace --db sqlite:///feedback.db medical --add alice",
    "rlhfkit label create-project --db sqlite:///feedback.db --name triage --questions pairwise \\\n"
    "    --file pairs.jsonl --workspace medical",
]
AFTER = [
    "rlhfkit label stats --db sqlite:///feedback.db --project sleep",
    "rlhfkit label export --db sqlite:///feedback.db --project sleep --out sleep.jsonl",
    "rlhfkit rm --data sleep.jsonl --output-dir runs/rm-sleep",
    "rlhfkit rm --data 'db:sqlite:///feedback.db?project=sleep' --weight-by reliability --output-dir runs/rm-w",
    "rlhfkit label export --db sqlite:///feedback.db --project sleep --format trl --out sleep-trl.jsonl",
]
PAIRS = [{"prompt": "Give me a tip for sleeping better.", "responses": ["Keep a regular bedtime.", "Sleep."],
          "models": ["rlhf", "sft"]},
         {"prompt": "Name a fruit.", "chosen": "A banana.", "rejected": "Car."}]
TRAIN = ["--max-steps", "1", "--batch-size", "2", "--max-length", "48", "--eval-fraction", "0",
         "--no-progress", "--precision", "fp32"]


def run(line: str, tmp: Path, tiny: Path, capsys) -> str:
    argv = shlex.split(line.replace("\\\n", " "))[1:]
    argv = [a.replace("sqlite:///feedback.db", f"sqlite:///{tmp / 'feedback.db'}") for a in argv]
    argv = [str(tmp / a) if a in ("pairs.jsonl", "sleep.jsonl", "sleep-trl.jsonl") or a.startswith("runs/")
            else a for a in argv]
    if argv[0] in ("rm", "sft", "dpo"):
        argv += ["--model", str(tiny), *TRAIN]
    assert main(argv) == 0, (line, capsys.readouterr().err)
    return capsys.readouterr().out


def label(client: TestClient, project: str, prefer: str) -> int:
    n = 0
    while (r := client.get(f"/api/projects/{project}/next")).status_code == 200:
        t = r.json()
        side = "left" if t["responses"][0].startswith(prefer) or t["responses"][1] == "Car." else "right"
        r = client.post(f"/api/projects/{project}/items/{t['item_id']}/labels",
                        json={"answers": {"pairwise": {"choice": side}}, "submission_key": t["submission_key"]},
                        headers={"X-CSRF-Token": client.csrf})
        assert r.status_code == 201, r.text
        n += 1
    return n


def browser(app, name=None, password=None, invite=None) -> TestClient:
    c = TestClient(app)
    if invite:
        c.post(invite, data={"password": password, "csrf_token": csrf_of(c.get(invite).text)})
    else:
        c.post("/login", data={"username": name, "password": password,
                               "csrf_token": csrf_of(c.get("/login").text)})
    c.csrf = csrf_of(c.get("/login").text)
    return c


def test_the_quick_start_works_as_written(tmp_path, tiny_lm, capsys, monkeypatch):
    text = GUIDE.read_text()
    for line in SETUP + AFTER:
        assert line in text, f"the guide no longer says: {line}"
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    key = tmp_path / "session.key"
    key.write_text("k" * 43 + "\n")
    monkeypatch.setattr("getpass.getpass", lambda prompt: "admin-password")
    outputs = [run(line, tmp_path, tiny_lm, capsys) for line in SETUP]
    invite = outputs[3].split("/invite/")[1].split()[0]

    store = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    app = create_app(store, secret_file=key)  # rlhfkit label serve ... --secret-file session.key
    alice = browser(app, "alice", "alice-password")
    bob = browser(app, password="bobs-password", invite=f"/invite/{invite}")
    assert label(alice, "sleep", "Keep") == 2 and label(bob, "sleep", "Sleep.") == 2
    assert bob.get("/api/projects/triage/next").status_code == 404  # not in medical
    assert label(alice, "triage", "Keep") == 2
    store.close()

    stats = json.loads(run(AFTER[0], tmp_path, tiny_lm, capsys))
    assert stats["progress"]["labels"] == 4 and {r["annotator"] for r in stats["reliability"]} == {"alice", "bob"}
    for line in AFTER[1:]:
        run(line, tmp_path, tiny_lm, capsys)
    assert json.loads((tmp_path / "runs" / "rm-w" / "reliability.json").read_text())
    trl = [json.loads(x) for x in (tmp_path / "sleep-trl.jsonl").read_text().splitlines()]
    assert {tuple(r) for r in trl} == {("prompt", "chosen", "rejected")} and len(trl) == 4


def test_every_label_action_has_a_help_line_and_a_description():
    import argparse

    from rlhfkit.feedback.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    label = parser._subparsers._group_actions[0].choices["label"]
    actions = label._subparsers._group_actions[0]
    helps = {a.dest: a.help for a in actions._choices_actions}
    assert set(helps) == {"serve", "create-project", "add-user", "workspace", "import", "export", "stats"}
    for name, sub in actions.choices.items():
        assert helps[name] and len(helps[name]) < 100, name
        assert sub.description and len(sub.description) > len(helps[name]), name
        for action in sub._actions:  # and every option says what it does
            assert action.help, (name, action.dest)
