"""Model loading: the default alias, the GGUF cache, precision, errors."""

import json

import pytest
import torch

from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.models import loading


def test_default_alias_converts_once_then_reads_the_cache(monkeypatch, tokenizer):
    # The session fixture `tokenizer` has already resolved the alias (converting if needed).
    folder = loading.resolve("smollm2-135m")
    assert (loading.Path(folder) / "model.safetensors").exists()
    config = json.loads((loading.Path(folder) / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 model, loadable by anyone
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576

    def no_second_conversion(*a, **k):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(loading, "_convert_gguf", no_second_conversion)
    assert loading.resolve("smollm2-135m") == folder
    assert len(loading.load_tokenizer("smollm2-135m")) == 49152


def test_reward_model_from_the_default_model_keeps_its_embeddings(tokenizer):
    """The converted folder stores the tied embedding under the input embedding's name, so a
    sequence-classification model (no LM head) loads the trained embeddings, not random ones."""
    from rlhfkit.models.reward import RewardModel

    lm = loading.load_causal_lm("smollm2-135m")
    rm = RewardModel.from_pretrained("smollm2-135m")
    assert torch.equal(rm.seq_model.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert torch.equal(lm.lm_head.weight, lm.model.embed_tokens.weight)  # still tied


def test_gguf_path_and_alias_resolve_to_the_same_cache():
    gguf = loading.find_alias_gguf("smollm2-135m")
    assert gguf.suffix == ".gguf"
    assert loading.resolve(str(gguf)) == loading.resolve("smollm2-135m")


def test_missing_things_are_explained(tmp_path):
    with pytest.raises(loading.ModelLoadError, match="GGUF file not found"):
        loading.resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(loading.ModelLoadError, match="no config.json"):
        loading.resolve(str(tmp_path / "empty"))
    with pytest.raises(loading.ModelLoadError, match="model folder not found"):
        loading.resolve(str(tmp_path / "absent"))


def test_precision_resolution():
    assert loading.resolve_precision("fp32") == "fp32"
    assert loading.resolve_precision("bf16") == "bf16"
    expected = "bf16" if loading.cpu_supports_bf16() else "fp32"
    assert loading.resolve_precision("auto", "cpu") == expected
    with pytest.raises(ValueError, match="precision must be"):
        loading.resolve_precision("fp8")


def test_lora_wraps_and_trains_only_adapters(tiny_lm):
    model = loading.apply_lora(loading.load_causal_lm(str(tiny_lm)), r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    body, head = loading.decoder_and_head(model)
    out = body(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    assert head(out).shape == (1, 3, model.config.vocab_size)


@pytest.mark.slow
def test_default_model_sft_step_in_bf16(tmp_path):
    """Opt-in (RLHFKIT_SLOW=1): the real SmolLM2-135M trains a few steps in bf16 autocast."""
    from rlhfkit.train.sft import SFTConfig, train_sft

    train_sft(SFTConfig(output_dir=str(tmp_path), max_steps=4, batch_size=4, max_length=96,
                        learning_rate=1e-4, warmup_ratio=0.0, eval_fraction=0.0,
                        progress=False, precision="bf16"))
    lines = read_metrics(tmp_path)
    assert lines[-1]["loss/sft"] < lines[0]["loss/sft"]


