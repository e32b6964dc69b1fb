"""Fine-grained RLHF on tiny models: a segment reward model learns to find the marked sentences,
PPO against it raises the per-segment reward with a bounded KL, and the CLI runs it end to end.

The toy language: responses are three one-word sentences, "Good." or "Bad!", and a closing
"End."; span feedback marks each "Bad!" sentence ``untruthful``. The SFT policy writes a random
mix, so the factuality reward (+1 per clean sentence, -1 per marked one) starts near 2 - 1.5 and
has room to grow. The mark is visible at the token that ends the sentence ("!" or "."): a tiny
random model has no attention head that looks back one token yet and did not learn the
"Good." / "Bad." version in 60 steps here; a pretrained backbone does (docs/finegrained.md).
"""

import json
import random

import pytest

from rlhfkit.cli.main import main
from rlhfkit.data.io import write_records
from rlhfkit.data.records import Comparison, Demonstration, Span, SpanFeedback
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.tasks import get_task

SYSTEM = "Answer in a few short sentences."


def sentences(rng: random.Random, n: int = 3) -> str:
    return " ".join([rng.choice(["Good.", "Bad!"]) for _ in range(n)] + ["End."])


def span_record(prompt: str, text: str) -> SpanFeedback:
    spans, pos = [], 0
    for word in text.split(" "):
        if word == "Bad!":
            spans.append(Span(pos, pos + len(word), "untruthful"))
        pos += len(word) + 1
    return SpanFeedback(prompt=prompt, response=text, spans=spans)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_lm):
    """Folder with demos.jsonl, spans.jsonl and the SFT policy (sft/model)."""
    from rlhfkit.train.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("good-bad-sentences")
    rng = random.Random(0)
    prompts = get_task("reviews").prompts("train")[:96]
    write_records([Demonstration(prompt=p, response=sentences(rng)) for p in prompts[:64]],
                  root / "demos.jsonl")
    write_records([span_record(p, sentences(rng)) for p in prompts for _ in range(2)],
                  root / "spans.jsonl")
    train_sft(SFTConfig(
        model=str(tiny_lm), data=str(root / "demos.jsonl"), output_dir=str(root / "sft"),
        max_steps=24, batch_size=16, learning_rate=1e-2, precision="fp32", progress=False,
        max_length=96, eval_fraction=0.0, system_prompt=SYSTEM, warmup_ratio=0.0,
        lr_scheduler="constant", report_to="none", gradient_checkpointing=False))
    return root


@pytest.fixture(scope="module")
def segment_rm(toy):
    """A factuality segment RM trained on spans.jsonl; returns its run folder."""
    from rlhfkit.train.segment_rm import SegmentRMConfig, train_segment_rm

    out = toy / "rm-fact"
    train_segment_rm(SegmentRMConfig(
        model=str(toy / "sft" / "model"), data=str(toy / "spans.jsonl"), output_dir=str(out),
        category="factuality", max_steps=8, batch_size=8, learning_rate=3e-3, eval_every=4,
        eval_fraction=0.2, precision="fp32", progress=False, system_prompt=SYSTEM,
        warmup_ratio=0.0, lr_scheduler="constant", report_to="none",
        gradient_checkpointing=False, max_length=128))
    return out


def rows(out):
    return read_metrics(out)


def test_segment_rm_accuracy_rises(segment_rm):
    evals = [r for r in rows(segment_rm) if "eval/segment_accuracy" in r]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and first["eval/segment_accuracy"] < 0.7
    assert last["eval/segment_accuracy"] > 0.9 and last["eval/segment_f1"] > 0.9
    result = read_json(segment_rm)
    assert result["segment_unit"] == "sentence" and result["category"] == "factuality"
    assert result["eval/segment_accuracy"] == last["eval/segment_accuracy"]
    assert all("loss/segment_rm" in r for r in rows(segment_rm) if "lr" in r)


def test_ppo_with_a_segment_source_raises_its_reward(toy, segment_rm):
    """PPO against the segment RM (a +-1 reward after each sentence) and a holistic scorer:
    the per-segment reward rises, the KL stays bounded, and report.html shows both sources."""
    from rlhfkit.train.trainer import rl_config, train_rl

    out = toy / "ppo"
    train_rl(rl_config("ppo",
        model=str(toy / "sft" / "model"), output_dir=str(out), data="task:reviews",
        reward_model=f"fact={segment_rm / 'model'},sent=scorer:sentiment",
        rewards="fact=1,sent=0.5", max_steps=5, batch_size=8, mini_batch_size=4,
        update_epochs=2, max_new_tokens=10, learning_rate=1e-3, precision="fp32",
        progress=False, eval_prompts=8, kl_coef=0.01, reward_clip=0.0, system_prompt=SYSTEM,
        report_to="none", gradient_checkpointing=False))
    train = [r for r in rows(out) if "reward/fact" in r]
    assert len(train) == 5 and all("reward/sent" in r for r in train)
    last = sum(r["reward/fact"] for r in train[-2:]) / 2
    assert last > train[0]["reward/fact"] + 1.0, [r["reward/fact"] for r in train]
    assert all(r["kl/seq"] < 10 for r in train)
    report = (out / "report.html").read_text()
    assert "Fine-grained rewards" in report
    assert "<img" in report and "fact" in report and "sent" in report


def test_cli_segment_rm_end_to_end_and_errors(toy, tmp_path, capsys):
    out = tmp_path / "rm"
    assert main(["segment-rm", "--model", str(toy / "sft" / "model"), "--data",
                 str(toy / "spans.jsonl"), "--category", "untruthful", "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--no-progress", "--precision", "fp32",
                 "--reward", "prob", "--report-to", "none"]) == 0
    assert "held-out segment accuracy" in capsys.readouterr().out
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["rlhfkit_reward_type"] == "segment"
    assert config["rlhfkit_span_categories"] == ["untruthful"]
    assert config["rlhfkit_segment_reward"] == "prob"
    assert "eval/segment_f1" in read_json(out)
    # a category no span has: the error names the file, the field and what is there
    assert main(["segment-rm", "--model", str(toy / "sft" / "model"), "--data",
                 str(toy / "spans.jsonl"), "--category", "relevance", "--output-dir",
                 str(tmp_path / "bad"), "--max-steps", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "spans.jsonl" in err and "spans[].category" in err and "untruthful (" in err
    # a bad record: file, line and field
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "Good.",
                               "spans": [{"start": 0, "end": 9, "category": "untruthful"}]})
                   + "\n")
    assert main(["segment-rm", "--model", str(toy / "sft" / "model"), "--data", str(bad),
                 "--output-dir", str(tmp_path / "bad2"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 1" in err and "spans[0].end" in err
    # no span record at all (a comparison file): said so
    pairs = tmp_path / "pairs.jsonl"
    write_records([Comparison(prompt="p", chosen="a", rejected="b")], pairs)
    assert main(["segment-rm", "--model", str(toy / "sft" / "model"), "--data", str(pairs),
                 "--output-dir", str(tmp_path / "bad4"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "pairs.jsonl" in err and "no span records (found 1 comparison)" in err
    with pytest.raises(SystemExit) as stop:  # the parser refuses a unit it does not know
        main(["segment-rm", "--segment-unit", "paragraph", "--output-dir", str(tmp_path / "bad3")])
    assert stop.value.code == 2 and "--segment-unit: invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "bad3").exists()


# ---------------------------------------------------------------------------------------
# Training items
# ---------------------------------------------------------------------------------------


def test_build_items_puts_labels_on_the_tokens_that_end_segments(tokenizer):
    from rlhfkit.train.segment_rm import build_items, collate_segments

    response = "It is old. I hope this helps. It lies on the river Tull."
    record = SpanFeedback(prompt="Where is it?", response=response,
                          spans=[Span(11, 29, "irrelevant")])
    items, counts = build_items([record], tokenizer, "sentence", ("irrelevant",), 512)
    assert counts == {"responses": 1, "segments": 3, "errors": 1, "skipped": 0}
    (item,) = items
    assert item.labels == [0, 1, 0]
    ends = ["It is old.", "It is old. I hope this helps.", response]
    for pos, want in zip(item.positions, ends):
        start = item.positions[0] - len(tokenizer(ends[0], add_special_tokens=False)
                                         ["input_ids"]) + 1
        got = tokenizer.decode(item.input_ids[start:pos + 1], skip_special_tokens=True)
        assert got.strip() == want
    assert tokenizer.convert_ids_to_tokens(item.input_ids[item.positions[-1]]) == "<|im_end|>"
    _, short = build_items([record], tokenizer, "sentence", ("irrelevant",), 24)
    assert short["skipped"] == 1  # the response would be cut: its last segments have no end
    batch = collate_segments(items + items, tokenizer.pad_token_id)
    assert batch["rows"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["labels"].tolist() == [0, 1, 0, 0, 1, 0] and batch["num_units"] == 6
