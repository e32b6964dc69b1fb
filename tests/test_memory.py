"""Stage meters, and memory a stage leaves behind: engines, model copies, the runs that held them."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rlhfkit import memory
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.memory import GIB, StageMeter
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.train.rl import RLRun
from rlhfkit.train.trainer import rl_config, train_rl

LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="the resident set is read from /proc")
def test_a_stage_peak_is_its_own_and_the_stages_around_it_see_it():
    meter = StageMeter()
    memory.release()  # what a stage before would have done on closing (a stage only trims)
    with meter.stage("small"):
        small = np.ones(2**24)  # 128 MiB
        time.sleep(0.1)
        del small
    with meter.stage("outer"):
        memory.note_live(lambda: 1.0)
        with meter.stage("inner"):
            big = np.ones(2**26)  # 512 MiB, inside the inner stage only
            time.sleep(0.1)
            del big
            memory.note_live(lambda: 2.0)
        memory.note_live(lambda: 0.5)  # the outer stage is still metered after the inner one
    rec = meter.stages
    assert not rec["small"].peak_is_lifetime
    assert rec["inner"].peak_rss_gib - rec["small"].peak_rss_gib > 0.3
    assert rec["outer"].peak_rss_gib >= rec["inner"].peak_rss_gib
    assert rec["outer"].rss_after_gib < rec["inner"].peak_rss_gib - 0.3  # released after
    assert (rec["inner"].live_gib, rec["outer"].live_gib) == (2.0, 2.0)
    table = meter.as_dict()
    assert table["peak_rss_gib"] == max(r.peak_rss_gib for r in rec.values())
    assert set(table["stages"]) == {"small", "outer", "inner"}
    # The kernel's high-water mark is left alone: /usr/bin/time -v still sees the true peak.
    assert memory.peak_rss_gib() >= rec["inner"].peak_rss_gib - 0.01


def test_the_tree_counts_a_child_once_and_pages_shared_by_a_fork_once():
    """A child holding 256 MiB shows in its parent's tree; two forked processes that share
    those pages unwritten hold them once in the PSS sum (the sum of RSS would count twice)."""
    hold = ("import os, time; x = bytearray(256 * 2**20)\n"
            "if os.fork() == 0: time.sleep(30)\n"  # the fork shares x, unwritten
            "time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", hold])
    try:
        deadline = time.time() + 20
        while len(memory.process_tree(child.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        pair = memory.process_tree(child.pid)
        assert pair[0] == child.pid and len(pair) == 2, pair  # the child and its fork
        tree = memory.process_tree(os.getpid())  # (with whatever else this process started)
        assert tree[0] == os.getpid() and set(pair) <= set(tree), tree
        pss, largest = memory.tree_memory_gib(child.pid)
        assert 0.25 <= largest < 0.35  # each of the two maps the 256 MiB
        assert 0.25 <= pss < 0.40, pss  # the pair holds them once, not twice
        whole, _ = memory.tree_memory_gib(os.getpid())
        assert whole > pss + 0.05  # this process's own memory comes on top
    finally:
        for p in memory.process_tree(child.pid)[::-1]:
            os.kill(p, 9)
        child.wait()
    assert memory.process_tree(child.pid) == []


def test_a_repeated_stage_adds_its_seconds_and_keeps_the_larger_peak():
    meter = StageMeter()
    meter._add("eval", memory.StageRecord(1.0, 2.0, 1.0, None))
    meter._add("eval", memory.StageRecord(0.5, 1.5, 0.9, 3.0))
    assert meter.stages["eval"] == memory.StageRecord(1.5, 2.0, 0.9, 3.0)


def test_note_live_counts_only_inside_a_stage():
    calls = []
    memory.note_live(lambda: calls.append(1) or 1.0)
    assert calls == []  # no stage open: the (slow) counter is not called
    meter = StageMeter()
    with meter.stage("train"):
        memory.note_live(lambda: 2.0)
        memory.note_live(lambda: 1.5)
    assert meter.stages["train"].live_gib == 2.0


def test_an_rl_run_is_freed_when_it_ends_and_reports_its_phases_and_what_it_held(tiny_lm, tmp_path):
    meter = StageMeter()
    with meter.stage("rl"):
        train_rl(rl_config("ppo", model=str(tiny_lm), reward_model="task:reviews",
                           data="task:reviews", output_dir=str(tmp_path / "rl"), max_steps=1,
                           batch_size=2, max_new_tokens=4, eval_prompts=0, precision="fp32",
                           generation_backend="hf"))
    gc.unfreeze()  # conftest froze what was alive before this test: get_objects skips it
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, RLRun)] == []
    line = read_metrics(tmp_path / "rl", required=True)[0]
    phases = [line[f"time/{p}_s"] for p in ("sample", "passes", "reward", "update")]
    assert all(p > 0 for p in phases) and sum(phases) <= line["perf/step_s"]
    live = meter.stages["rl"].live_gib
    # At least the policy's weights, gradients and Adam's two moments, and the reference (fp32).
    n = sum(p.numel() for p in load_causal_lm(str(tiny_lm)).parameters())
    assert live is not None and live * GIB >= 5 * 4 * n


def hold(mib: int) -> int:
    """Run in a fresh process: hold ``mib`` MiB for a moment and report them as live tensors."""
    block = np.ones(mib * 2**20 // 8)
    time.sleep(0.2)  # the meter reads every 20 ms
    memory.note_live(lambda: mib / 1024)
    return int(block.size)


def fail() -> None:
    raise ValueError("raised in the child")


@pytest.mark.skipif(not LINUX, reason="the resident set is read from /proc")
def test_a_stage_in_a_fresh_process_counts_its_peak_there_and_leaves_nothing_here():
    meter = StageMeter()
    memory.release()
    before = memory.rss_gib()
    with meter.stage("outer"):
        assert meter.run("empty", hold, 0, fresh_process=True) == 0
        assert meter.run("child", hold, 512, fresh_process=True) == 2**26
    rec = meter.stages
    # The child meters itself: its 512 MiB show in its own peak...
    _, empty, _ = memory.in_fresh_process(memory._in_child, hold, (0,), {})
    _, full, live = memory.in_fresh_process(memory._in_child, hold, (512,), {})
    assert full - empty > 0.4 and live == 0.5
    # ...and a stage run there peaks at least there and at least here (this process's RSS).
    assert rec["child"].peak_rss_gib >= max(empty + 0.4, before - 0.01)
    assert rec["outer"].peak_rss_gib >= rec["child"].peak_rss_gib
    assert (rec["child"].live_gib, rec["outer"].live_gib) == (0.5, 0.5)
    assert rec["child"].rss_after_gib < before + 0.2 and memory.rss_gib() < before + 0.2
    with pytest.raises(ValueError, match="raised in the child"):
        memory.in_fresh_process(fail)
    with pytest.raises(RuntimeError, match="died before it finished"):
        memory.in_fresh_process(os._exit, 3)  # a child that vanishes, as one killed for memory
    assert meter.run("here", hold, 0) == 0 and not rec["here"].peak_is_lifetime  # in-process


ENGINE_SCRIPT = textwrap.dedent("""
    import gc, json, sys, weakref
    import torch
    from rlhfkit.rollout import SamplingConfig, make_backend, sample
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    path = sys.argv[1]
    tokenizer = load_tokenizer(path)

    def one_round(seed):
        lm = load_causal_lm(path)  # a model the stage holds while its engine starts
        held = weakref.ref(lm)
        backend = make_backend("vllm", path, None, seed=seed, max_model_len=128)
        sample(lm, tokenizer, ["Hello there"], SamplingConfig(max_new_tokens=4), backend=backend)
        backend.close()
        return held

    held = [one_round(0)]  # both leaks show on the first engine; a second costs 7 s more
    gc.collect()
    layers = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)
              and type(o).__module__.startswith("vllm.")]
    print(json.dumps({"held": [h() is not None for h in held], "vllm_layers": len(layers)}))
""")


@pytest.mark.skipif(not importlib.util.find_spec("vllm"),
                    reason="needs the vllm extra")
def test_closed_engines_leave_neither_their_layers_nor_the_callers_models_behind(tmp_path,
                                                                                tokenizer):
    """Both leaks, in a fresh process (vLLM's first import is what pinned the caller's frames):
    vLLM kept each closed engine's layers in its reload records, and the traceback of an optional
    import it failed held every frame on the stack of the first engine, with the stage's model."""
    from rlhfkit.testing import make_tiny_lm

    path = make_tiny_lm(tmp_path / "lm", tokenizer, heads=1)
    done = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"held": [False], "vllm_layers": 0}
