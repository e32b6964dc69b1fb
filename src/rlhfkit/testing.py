"""Tiny random models for tests and examples: nothing is downloaded.

``make_tiny_lm`` builds a small random Llama with a given tokenizer's vocabulary and saves it as a
HF folder, so every stage can run end to end in seconds (the tests use the default model's
tokenizer with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_tiny_lm(path: Path, tokenizer: Any, seed: int = 0, hidden: int = 64,
                 layers: int = 2, heads: int = 4) -> Path:
    """Save a random causal LM (``layers`` x width ``hidden``) with ``tokenizer`` to ``path``.

    ``heads=1`` gives a head size of ``hidden``: vLLM's CPU attention needs 32 or more.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(2, heads),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
