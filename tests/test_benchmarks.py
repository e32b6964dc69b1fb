"""The benchmark scripts' arithmetic: parameter and FLOP counts, MFU, rollout timing, the demo's
summary. No model is loaded and nothing is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_demo  # noqa: E402
import bench_rl  # noqa: E402
import mfu  # noqa: E402

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                "num_key_value_heads": 3, "head_dim": 64, "num_hidden_layers": 30,
                "vocab_size": 49152, "tie_word_embeddings": True}


def test_parameter_count_from_config_matches_smollm2():
    """SmolLM2-135M by hand, per layer: q 576*576, k and v 192*576 each, o 576*576, gate/up
    1536*576 each, down 576*1536, two norms of 576: 3,540,096; 30 layers = 106,202,880, plus
    the final norm (576) = 106,203,456; the tied 49152*576 embedding (28,311,552) once:
    134,515,008 as a causal LM. As a reward model the table is a lookup and the head is
    576*1: 106,204,032."""
    counts = mfu.parameter_counts_of_config(SMOLLM2_135M)
    assert counts["total"] == 134_515_008
    assert counts["flop_lm"] == 134_515_008
    assert counts["flop_rm"] == 106_203_456 + 576


def tiny_folder(path: Path, tensors: dict[str, list[int]], tied: bool) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"hidden_size": 4, "tie_word_embeddings": tied}))
    save_file({k: torch.zeros(v) for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


def test_tied_embedding_counted_once_and_rm_head(tmp_path):
    """Embedding 10x4 = 40, one layer 4x4 = 16, norm 4. Tied, both stored: 60 in all, 60 as an
    LM (the table as its head), 16 + 4 + 4 = 24 as an RM. Untied: 100 in all, 60 as an LM (the
    input table is a lookup, the separate head counts). A
    reward-model folder (score 1x4) counts its own head: 16 + 4 + 4 = 24."""
    layer = {"model.layers.0.mlp.up_proj.weight": [4, 4], "model.norm.weight": [4]}
    both = {"model.embed_tokens.weight": [10, 4], "lm_head.weight": [10, 4], **layer}
    tied = mfu.parameter_counts(tiny_folder(tmp_path / "tied", both, tied=True))
    assert (tied["total"], tied["flop_lm"], tied["flop_rm"]) == (60, 60, 24)
    untied = mfu.parameter_counts(tiny_folder(tmp_path / "untied", both, tied=False))
    assert (untied["total"], untied["flop_lm"], untied["flop_rm"]) == (100, 60, 24)
    rm = {"model.embed_tokens.weight": [10, 4], "score.weight": [1, 4], **layer}
    assert mfu.flop_parameters(tiny_folder(tmp_path / "rm", rm, tied=True), "score") == 24


def test_flops_and_mfu():
    """RL per token: 2N + 2N + 6N = 10N; two epochs 16N; PPO adds 2 N_rm + (2 + 6) N_c.
    MFU: 1000 tokens x 6e9 FLOPs in 10 s = 6e11 FLOP/s over a 1.2 TFLOP/s peak = 0.5."""
    assert mfu.rl_flops_per_token(100) == 1000
    assert mfu.rl_flops_per_token(100, epochs=2) == 1600
    assert mfu.rl_flops_per_token(100, reward_model_n=10, critic_n=10) == 1000 + 20 + 80
    assert mfu.mfu(1000, 6e9, 10.0, 1.2) == pytest.approx(0.5)
    assert mfu.mfu(None, 6e9, 10.0, 1.2) is None
    amd, intel = "AMD EPYC 7B13", "Intel(R) Xeon(R) Processor"
    assert mfu.peak_tflops(1, model=amd)[0] == 0.39 and mfu.peak_tflops(2, model=amd)[0] == 0.71
    assert mfu.peak_tflops(2, model=intel)[0] == 1.399
    assert mfu.peak_tflops(3, model=amd)[0] is None
    assert mfu.peak_tflops(1, model="Some Other CPU")[0] is None
    assert mfu.peak_tflops(1, 2.0)[0] == 2.0


def test_rollout_timing_keeps_calls_started_in_the_timed_steps():
    """Window [10, 20): the sample at 12 (3 s, 30 tokens) and the sync at 11 (1 s) count, the
    sample at 5 (warm-up) and at 20 (after) do not: 30 tokens / 4 s = 7.5 tokens/s."""
    calls = [{"kind": "sample", "start": 5.0, "seconds": 2.0, "tokens": 99},
             {"kind": "sync", "start": 11.0, "seconds": 1.0, "tokens": 0},
             {"kind": "sample", "start": 12.0, "seconds": 3.0, "tokens": 30},
             {"kind": "sample", "start": 20.0, "seconds": 1.0, "tokens": 99}]
    t = bench_rl.rollout_timing(calls, 10.0, 20.0)
    assert (t["rollout_calls"], t["rollout_tokens"]) == (1, 30)
    assert t["rollout_tokens_per_s"] == pytest.approx(7.5)


def test_error_line_and_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("noise\n[rank0]: Traceback (most recent call last):\n"
                   '[rank0]:   File "/x/site-packages/trl/generation/vllm_generation.py", '
                   "line 511, in sync_weights\n[rank0]: AttributeError: no weight_loader\n"
                   "  0%|  | 0/2\n")
    tail = bench_rl.error_tail(log)
    assert tail[0].startswith("Traceback")
    assert bench_rl.error_line(tail) == "AttributeError: no weight_loader"
    assert bench_rl.error_where(log) == "trl/generation/vllm_generation.py:511 in sync_weights"


def test_demo_summary_mean_sd_and_targets():
    """Win rates 0.8 and 0.9: mean 0.85 meets >= 0.85 (1 of 2 seeds does), sd = 0.0707.
    Lengths 20/25 and 24/25 give ratios 0.8 and 0.96; a figure no run has is n = 0."""
    def run(seed, win, length, minutes):
        ev = {"gold/win_rate": win, "kl/final": 5.0, "length/final": length,
              "length/sft": 25.0, "distinct2/final": 0.5, "distinct2/sft": 0.5}
        return {"seed": seed, "backend": "vllm", "load_before": 0.5,
                "figures": bench_demo.figures_of({"eval": ev, "rm_eval": {}}, minutes * 60)}

    s = bench_demo.summarize([run(0, 0.8, 20.0, 11.0), run(1, 0.9, 24.0, 14.0)])
    win = s["gold/win_rate"]
    assert win["mean"] == pytest.approx(0.85) and win["sd"] == pytest.approx(0.0707, abs=1e-4)
    assert win["met"] and win["seeds_met"] == 1
    assert s["length_ratio"]["values"] == pytest.approx([0.8, 0.96])
    assert s["wall_minutes"]["target"] == 12.0 and not s["wall_minutes"]["met"]
    assert s["wall_minutes"]["seeds_met"] == 1
    assert s["rm/accuracy_on_final_policy"]["n"] == 0
    result = {"summary": s, "runs": [], "machine": {"cpu": "c", "nproc": 2, "memory_gib": 1},
              "versions": {"rlhfkit_commit": "x", "torch": "t", "transformers": "t"},
              "settings": {"demo_args": [], "max_load": 1.5}, "date": "d"}
    assert "0.850 ± 0.071 (n=2)" in bench_demo.table(result)


def test_the_demo_benchmark_reads_the_backend_from_the_log():
    warning = ("(MainProcess pid=1) WARNING 12-02 02:35:26 [vllm.py:1703] Enforce eager set, "
               "disabling torch.compile")
    assert bench_demo.backend_used([], f"[sft] saved\n{warning}\n") == "vllm"
    assert bench_demo.backend_used([], "[sft] saved\n[rm] saved\n") == "hf"
    assert bench_demo.backend_used([], f"{warning}\n[demo] vLLM not used: no engine\n") == "hf"
    assert bench_demo.backend_used(["--generation-backend", "hf"], warning) == "hf"


def test_the_demo_benchmark_reads_the_memory_of_the_whole_process_tree():
    """A process whose child holds 192 MiB: the tree's peak counts the child's memory, which
    the process itself never held."""
    hold = ("import subprocess, sys, time\n"
            "subprocess.run([sys.executable, '-c', "
            "'import time; x = bytearray(192 * 2**20); time.sleep(3)'])")
    peak = bench_demo.watch_tree(subprocess.Popen([sys.executable, "-c", hold]), every_s=0.2)
    assert 0.18 < peak["memory/largest_process_gib"] < 0.3, peak
    assert peak["memory/tree_pss_peak_gib"] > peak["memory/largest_process_gib"], peak
