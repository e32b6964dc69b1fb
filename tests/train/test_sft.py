"""SFT: the fast paths agree with plain computations, and a tiny model learns."""


import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data.records import Demonstration
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.models.policy import SelectiveLM, targets_of
from rlhfkit.train.sft import (
    SFTConfig,
    collate_packed,
    collate_padded,
    encode_demonstrations,
    pack,
    sft_step,
    train_sft,
)

DEMOS = [
    Demonstration(prompt="The plot was thin, but", response="the acting was wonderful."),
    Demonstration(prompt="I expected little from this sequel.", response="It surprised me."),
    Demonstration(prompt="Two hours of", response="pure joy and great music from start to end."),
]


def test_selective_logits_match_full_model(tiny_lm, tokenizer):
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    items = encode_demonstrations(tokenizer, DEMOS, 128, None)
    batch = collate_padded(items, tokenizer.pad_token_id)
    logits = SelectiveLM(lm)(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
    full = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = full[:, :-1][batch["target_mask"][:, 1:]]
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-4)
    # The targets are exactly the response tokens (prompt masked), end-of-turn included.
    n_response = sum(e.response_len for e in items)
    assert batch["num_units"] == n_response == len(targets_of(batch["input_ids"],
                                                             batch["target_mask"]))
    assert (targets_of(batch["input_ids"], batch["target_mask"]) == tokenizer.eos_token_id).sum() \
        == len(DEMOS)


def test_packed_loss_equals_padded_loss(tiny_lm, tokenizer):
    """Packing with restarted position ids gives the same summed NLL as one row per example."""
    lm = SelectiveLM(AutoModelForCausalLM.from_pretrained(tiny_lm))
    items = encode_demonstrations(tokenizer, DEMOS, 128, None)
    padded_loss, _ = sft_step(lm, collate_padded(items, tokenizer.pad_token_id))
    rows = pack(items, max_length=256)
    assert len(rows) == 1  # all three fit in one row
    packed = collate_packed(rows, tokenizer.pad_token_id)
    packed_loss, _ = sft_step(lm, packed)
    assert packed["num_units"] == sum(e.response_len for e in items)
    assert torch.allclose(packed_loss, padded_loss, rtol=1e-4)


def test_sft_learns_on_builtin_task(tiny_lm, tmp_path):
    cfg = SFTConfig(model=str(tiny_lm), output_dir=str(tmp_path / "sft"), max_steps=24,
                    batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, eval_every=12,
                    progress=False, precision="fp32")
    out = train_sft(cfg)
    lines = read_metrics(tmp_path / "sft")
    train = [x["loss/sft"] for x in lines if "loss/sft" in x]
    evals = [x["eval/sft_nll"] for x in lines if "eval/sft_nll" in x]
    assert len(train) == 24 and len(evals) == 3  # before, at step 12, at the end
    assert sum(train[-4:]) / 4 < sum(train[:4]) / 4 - 1.0  # the training loss falls
    assert evals[-1] < evals[0]  # and the held-out NLL with it
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert (tmp_path / "sft" / "config.yaml").read_text().count("max_steps: 24") == 1


def test_sft_bf16_trains(tiny_lm, tmp_path):
    """bf16 autocast (the CPU default where supported) also lowers the loss."""
    cfg = SFTConfig(model=str(tiny_lm), output_dir=str(tmp_path / "bf16"), max_steps=12,
                    batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, progress=False,
                    precision="bf16", eval_fraction=0.0)
    train_sft(cfg)
    lines = read_metrics(tmp_path / "bf16")
    losses = [x["loss/sft"] for x in lines]
    assert losses[-1] < losses[0] - 0.5


def test_sft_lora_trains_and_merges(tiny_lm, tmp_path):
    cfg = SFTConfig(model=str(tiny_lm), output_dir=str(tmp_path / "lora"), max_steps=8,
                    batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, progress=False,
                    precision="fp32", lora=True, lora_r=4, eval_fraction=0.0)
    out = train_sft(cfg)
    lines = read_metrics(tmp_path / "lora")
    assert lines[-1]["loss/sft"] < lines[0]["loss/sft"]
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain HF folder, adapters merged in
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    changed = [n for (n, p), (_, q) in zip(merged.named_parameters(), base.named_parameters())
               if not torch.equal(p, q)]
    assert changed and all("proj" in n for n in changed)


def test_gradient_checkpointing_gives_the_same_weights(tiny_lm, tmp_path):
    """Recomputing activations changes memory, not the maths."""
    from safetensors.torch import load_file

    outs = []
    for gc in (False, True):
        cfg = SFTConfig(model=str(tiny_lm), output_dir=str(tmp_path / f"gc{gc}"), max_steps=3,
                        batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, progress=False,
                        precision="fp32", eval_fraction=0.0, gradient_checkpointing=gc)
        outs.append(load_file(str(train_sft(cfg) / "model.safetensors")))
    worst = max((outs[0][k] - outs[1][k]).abs().max().item() for k in outs[0])
    assert worst < 1e-5
