"""Projects whose K responses per prompt a policy samples (a tiny random model here)."""

from __future__ import annotations

import pytest

from rlhfkit.cli.main import main
from rlhfkit.data import records as R
from rlhfkit.data.chat import encode, prompt_text
from rlhfkit.data.io import read_records
from rlhfkit.feedback.store import Store
from rlhfkit.rollout import generate_responses


def test_create_project_with_k_sampled_responses_per_prompt(tiny_lm, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'f.db'}"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Give me a tip for sleeping better.\nName a fruit.\nWhat is rain?\n")
    assert main(["label", "create-project", "--db", db, "--name", "ranked", "--questions", "rank",
                 "--file", str(prompts), "--generate-from", str(tiny_lm), "--k", "4",
                 "--model-name", "policy-v1", "--max-new-tokens", "8", "--overlap", "2"]) == 0
    assert "ranked: 3 items" in capsys.readouterr().out
    store = Store(db)
    items = store.items("ranked")
    assert [it.prompt for it in items] == ["Give me a tip for sleeping better.", "Name a fruit.", "What is rain?"]
    for it in items:
        texts = [r["text"] for r in it.responses]
        assert len(texts) == 4 and len(set(texts)) == 4 and all(t.strip() for t in texts)
        assert {r["model"] for r in it.responses} == {"policy-v1"}  # stored ...
        assert it.meta["generated_by"] == "policy-v1" and it.meta["sampling"]["max_new_tokens"] == 8
    # ... but not shown, and the items can be labelled by two annotators and exported
    for name in ("alice", "bob"):
        user = store.create_user(name, "password-1")
        while (task := store.next_task(user, "ranked")) is not None:
            assert "policy-v1" not in str(task.to_json())
            store.submit(user, "ranked", task.item_id, {"rank": {"ranks": [1, 2, 3, 4]}},
                         task.submission_key)
    out = tmp_path / "ranked.jsonl"
    assert main(["label", "export", "--db", db, "--project", "ranked", "--out", str(out)]) == 0
    back = read_records(out)
    assert len(back) == 6 and all(isinstance(r, R.Ranking) and len(r.responses) == 4 for r in back)
    assert all(r.meta["models"] == ["policy-v1"] * 4 for r in back)
    # pairwise from the same policy: C(4, 2) = 6 pairs per prompt
    assert main(["label", "create-project", "--db", db, "--name", "pairs", "--questions", "pairwise",
                 "--file", str(prompts), "--generate-from", str(tiny_lm), "--k", "4",
                 "--max-new-tokens", "8"]) == 0
    assert len(store.items("pairs")) == 18
    assert store.items("pairs")[0].responses[0]["model"] == str(tiny_lm)  # default: MODEL as given
    # errors before any sampling
    assert main(["label", "create-project", "--db", db, "--name", "pairs", "--questions", "pairwise",
                 "--file", str(prompts), "--generate-from", str(tiny_lm)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["label", "create-project", "--db", db, "--name", "x", "--questions", "rank",
                 "--file", str(prompts), "--generate-from", str(tmp_path / "nope"), "--k", "2"]) == 1
    assert "nope: model folder not found" in capsys.readouterr().err


class RepeatingBackend:
    """A sampler that answers every prompt with the same tokens in the first round, so the
    repeats have to be sampled again; it records the prompts it was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls, self.n = tokenizer, [], 0

    def generate(self, model, prompt_ids, sampling, eos_token_ids, pad_token_id):
        self.calls.append([list(p) for p in prompt_ids])
        out = []
        for _ in prompt_ids:
            word = " same" if len(self.calls) == 1 else f" answer {self.n}"
            self.n += 1
            out.append(self.tokenizer(word, add_special_tokens=False)["input_ids"] + list(eos_token_ids[:1]))
        return out


def test_prompts_are_written_as_in_training_and_repeats_resampled(tiny_lm, tokenizer):
    backend = RepeatingBackend(tokenizer)
    chat = [{"role": "user", "content": "Hello?"}]
    got = generate_responses(str(tiny_lm), ["Name a fruit.", chat], 3, backend=backend,
                             system_prompt="Be brief.", batch_size=16)
    # round 1: 3 slots per prompt, all " same" -> one kept each; round 2 fills the other two
    assert [len(set(g)) for g in got] == [3, 3] and got[0][0] == " same"
    assert len(backend.calls) == 2 and len(backend.calls[0]) == 6 and len(backend.calls[1]) == 4
    expected = encode(tokenizer, prompt_text(tokenizer, "Name a fruit.", "Be brief."))
    assert backend.calls[0][0] == expected
    assert backend.calls[0][3] == encode(tokenizer, prompt_text(tokenizer, chat, "Be brief."))
    with pytest.raises(ValueError, match="got only 1 distinct"):
        generate_responses(str(tiny_lm), ["x"], 2, backend=_Stuck(tokenizer), max_rounds=2)


class _Stuck(RepeatingBackend):
    def generate(self, model, prompt_ids, sampling, eos_token_ids, pad_token_id):
        self.calls = []  # always the first round: always " same"
        return super().generate(model, prompt_ids, sampling, eos_token_ids, pad_token_id)
