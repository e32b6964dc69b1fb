"""LoRA runs save the adapter: ``PeftModel.from_pretrained(base, run/adapter)`` loads it and
gives the merged model's outputs, for sft, rm and dpo (each run through the CLI with --lora)."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.cli import main
from rlhfkit.data.io import write_records
from rlhfkit.data.records import Comparison, Demonstration

GOOD = ["a wonderful film", "truly great acting", "I loved every minute", "a joy to watch"]
BAD = ["a dull mess", "boring and far too long", "I hated it", "a waste of time"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-data")
    demos = [Demonstration(prompt=f"Review {i}:", response=GOOD[i % 4]) for i in range(16)]
    pairs = [Comparison(prompt=f"Review {i}:", chosen=GOOD[i % 4], rejected=BAD[i % 4])
             for i in range(16)]
    write_records(demos, root / "demos.jsonl")
    write_records(pairs, root / "pairs.jsonl")
    return root


def _run(stage, tiny_lm, data_file, out, *extra):
    rc = main([stage, "--model", str(tiny_lm), "--data", str(data_file), "--output-dir", str(out),
               "--lora", "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "4",
               "--batch-size", "4", "--learning-rate", "1e-2", "--warmup-ratio", "0",
               "--eval-fraction", "0", "--precision", "fp32", "--no-progress",
               "--report-to", "none", *extra])
    assert rc == 0
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").exists()
    assert (out / "model" / "model.safetensors").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_lm) and config["r"] == 4
    return adapter


def _ids(tokenizer):
    batch = tokenizer(["Review 3: a joy to watch", "Review 7: I hated it"], padding=True,
                      return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize(("stage", "file", "extra"),
                         [("sft", "demos.jsonl", ()), ("dpo", "pairs.jsonl", ("--loss", "dpo"))])
def test_policy_adapter_loads_and_matches_merged(tiny_lm, tokenizer, data, tmp_path, stage, file,
                                                 extra):
    adapter = _run(stage, tiny_lm, data / file, tmp_path / stage, *extra)
    ids, mask = _ids(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    with torch.no_grad():
        before = base(input_ids=ids, attention_mask=mask).logits
    peft = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / stage / "model").eval()
    with torch.no_grad():
        from_adapter = peft(input_ids=ids, attention_mask=mask).logits
        from_merged = merged(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(from_adapter, before, atol=1e-3)  # training moved the adapter
    torch.testing.assert_close(from_adapter, from_merged, atol=1e-4, rtol=1e-4)


def test_rm_adapter_loads_with_its_head_and_matches_merged(tiny_lm, data, tmp_path):
    adapter = _run("rm", tiny_lm, data / "pairs.jsonl", tmp_path / "rm")
    tok = AutoTokenizer.from_pretrained(adapter)  # the adapter's tokenizer pads like the merged
    assert tok.pad_token == AutoTokenizer.from_pretrained(tmp_path / "rm" / "model").pad_token
    ids, mask = _ids(tok)
    # The base's config says nothing about the RM's pad token: give it the adapter tokenizer's.
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_lm, num_labels=1, pad_token_id=tok.pad_token_id).eval()
    peft = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model").eval()
    with torch.no_grad():
        from_adapter = peft(input_ids=ids, attention_mask=mask).logits[:, 0]
        from_merged = merged(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert (from_merged.abs() > 1e-4).all()
    torch.testing.assert_close(from_adapter, from_merged, atol=1e-4, rtol=1e-4)
