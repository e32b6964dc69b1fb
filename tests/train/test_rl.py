"""Tiny-model RL runs: each algorithm raises a programmatic reward while the KL stays bounded.

The policy is the good/bad policy of ``tests/good_bad.py``: a tiny random Llama that answers
with a random mix of "good" and "bad", rewarded by the share of "good".

The fine-tuned policy is trained once per session, and each RL run once per module (``rl_runs``):
the PPO run is both the learning test and the baseline the PPO-ptx test compares with, the GRPO
run gives the metric names the two-process run must log.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from good_bad import SYSTEM, assert_learned, demos_of, good_share, rl_common, rl_metrics
from rlhfkit.data.io import read_records, write_records
from rlhfkit.data.records import Comparison, Demonstration
from rlhfkit.evaluate.runs import read_json, read_metrics
from rlhfkit.tasks import get_task

HERE = Path(__file__).parent


def ppo_kwargs(policy, out, **kw):
    # 4 optimizer steps per batch (2 epochs x 2 mini-batches): a smaller step than PG's.
    return rl_common(policy, out, **{"mini_batch_size": 4, "update_epochs": 2,
                                     "learning_rate": 1e-3, "max_steps": 6, **kw})


PG_EXTRA = {
    "reinforce": {"baseline": "mean"},
    "rloo": {"num_samples": 4, "batch_size": 2},
    "grpo": {"num_samples": 4, "batch_size": 2, "kl_coef": 0.04},
}


def run_named(name: str, policy: Path, out: Path) -> Path:
    """Train the run called ``name``; returns its run folder."""
    from rlhfkit.train.trainer import rl_config, train_rl

    if name == "ppo":
        train_rl(rl_config("ppo", **ppo_kwargs(policy, out)), reward_fn=good_share)
    elif name == "ppo-ptx":
        train_rl(rl_config("ppo", **ppo_kwargs(policy, out, ptx_coef=1.0,
                                         ptx_data=str(demos_of(policy)))),
                  reward_fn=good_share)
    else:
        train_rl(rl_config(name, **rl_common(policy, out, **PG_EXTRA[name])),
                 reward_fn=good_share)
    return out


@pytest.fixture(scope="module")
def rl_runs(good_bad_policy, tmp_path_factory):
    """``rl_runs(name)``: the run folder of a shared run, trained on first use."""
    root = tmp_path_factory.mktemp("rl-runs")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = run_named(name, good_bad_policy, root / name)
        return done[name]

    return get


def test_ppo_learns_with_bounded_kl(rl_runs):
    out = rl_runs("ppo")
    assert_learned(out)
    train, _ = rl_metrics(out)
    for key in ("loss/policy", "loss/value", "policy/entropy", "policy/approx_kl_k3",
                "policy/clipfrac", "value/clipfrac", "kl/coef", "gold/mean", "response/length"):
        assert key in train[-1], key
    assert "loss/ptx" not in train[-1]


@torch.no_grad()
def demo_nll(model_dir: Path, demos: Path) -> float:
    """Mean token NLL of the demonstrations' responses under the policy in ``model_dir``."""
    from rlhfkit.losses import token_nll
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.policy import SelectiveLM, targets_of
    from rlhfkit.train.sft import collate_padded, encode_demonstrations

    tok = load_tokenizer(str(model_dir))
    lm = load_causal_lm(str(model_dir)).eval()
    batch = collate_padded(encode_demonstrations(tok, read_records(demos), 96, SYSTEM),
                           tok.pad_token_id)
    logits = SelectiveLM(lm)(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
    return token_nll(logits, targets_of(batch["input_ids"], batch["target_mask"])).mean().item()


def test_ppo_ptx_keeps_the_demonstrations_likely(rl_runs, good_bad_policy):
    """PPO-ptx (Ouyang et al. 2022, eq. 2): the same run with the SFT loss mixed in ends with a
    lower NLL on the demonstrations than without it, while RL alone moved away from them."""
    plain, ptx = rl_runs("ppo"), rl_runs("ppo-ptx")
    demos = demos_of(good_bad_policy)
    nll_sft = demo_nll(good_bad_policy, demos)
    nll_plain = demo_nll(plain / "model", demos)
    nll_ptx = demo_nll(ptx / "model", demos)
    assert nll_plain > nll_sft, (nll_sft, nll_plain)  # otherwise the comparison shows nothing
    assert nll_ptx < nll_plain - 0.05, (nll_sft, nll_plain, nll_ptx)
    train, _ = rl_metrics(ptx)
    assert all("loss/ptx" in r for r in train)


@pytest.mark.parametrize("algo", list(PG_EXTRA))
def test_policy_gradient_methods_learn(rl_runs, algo):
    assert_learned(rl_runs(algo), min_gain=0.1)


def test_ppo_with_a_critic_initialised_from_the_reward_model(good_bad_policy, tmp_path):
    """--critic rm: a reward model trained to prefer "good" words is both the reward and the
    critic's starting point; the policy learns against it and the critic's weights move."""
    from rlhfkit.train.rm import RMConfig, train_rm
    from rlhfkit.train.trainer import rl_config, train_rl

    rng = random.Random(1)

    def words(n_good):
        w = ["good"] * n_good + ["bad"] * (4 - n_good)
        rng.shuffle(w)
        return " ".join(w)

    prompts = get_task("reviews").prompts("train")[:64]
    pairs = [Comparison(prompt=p, chosen=words(rng.choice([3, 4])),
                        rejected=words(rng.choice([0, 1, 2]))) for p in prompts]
    write_records(pairs, tmp_path / "pairs.jsonl")
    rm = train_rm(RMConfig(model=str(good_bad_policy), data=str(tmp_path / "pairs.jsonl"),
                           output_dir=str(tmp_path / "rm"), max_steps=16, batch_size=8,
                           learning_rate=3e-3, precision="fp32", progress=False, max_length=96,
                           eval_fraction=0.0, system_prompt=SYSTEM, warmup_ratio=0.0,
                           lr_scheduler="constant", report_to="none", gradient_checkpointing=False))
    out = tmp_path / "ppo"
    train_rl(rl_config("ppo", **ppo_kwargs(good_bad_policy, out, critic="rm", reward_model=str(rm),
                                     max_steps=4, save_every=2, reward_clip=5.0)))
    train, evals = rl_metrics(out)
    assert evals[-1]["eval/reward"] > train[0]["reward/score"] + 0.3, (train, evals)
    assert all(r["kl/seq"] < 10 for r in train)
    # accelerate saves the second prepared model (the critic) as model_1: it trained.
    critic = load_file(str(out / "checkpoints" / "step-0000002" / "model_1.safetensors"))
    start = load_file(str(rm / "model.safetensors"))
    head = next(k for k in critic if k.endswith("score.weight"))
    assert not torch.allclose(critic[head], start["score.weight"])
    assert train[-1]["loss/value"] < train[0]["loss/value"]


@pytest.fixture(scope="module")
def two_process_runs(good_bad_policy, tmp_path_factory) -> Path:
    """The folder of ``multiproc_rl.py``'s variants, all run in one launch of 2 processes:
    ``two`` (GRPO, replicated), ``two-micro``, ``two-fsdp``, ``two-fsdp-resume``, ``two-ppo``
    and ``two-fsdp-ppo`` (PPO on a reward model, with a critic started from it)."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward import RewardModel

    root = tmp_path_factory.mktemp("two-process")
    rm = root / "rm"  # a reward model with a fresh head: PPO here checks agreement, not learning
    RewardModel.from_pretrained(str(good_bad_policy)).save(rm, load_tokenizer(str(good_bad_policy)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29541", str(HERE / "multiproc_rl.py"), str(good_bad_policy),
           str(root / "two"), SYSTEM, "plain", "micro", "fsdp", "fsdp-resume", "ppo", "fsdp-ppo"]
    # A run that "stopped" after step 2 of the sharded run: its folder holds only that checkpoint.
    (root / "two-fsdp-resume" / "checkpoints").mkdir(parents=True)
    os.symlink(root / "two-fsdp" / "checkpoints" / "step-0000002",
               root / "two-fsdp-resume" / "checkpoints" / "step-0000002")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_TEST_RM": str(rm)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def two_process_variant(root: Path, name: str) -> tuple[Path, list[dict]]:
    """The run folder of ``multiproc_rl.py``'s variant ``name`` and its two ranks' records."""
    folder = root / ("two" if name == "plain" else f"two-{name}")
    return folder, [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.multiproc
def test_two_processes_split_the_global_batch_and_log_once(two_process_runs, rl_runs):
    """GRPO on 2 processes x 2 prompts x 4 samples: together they take the prompts one process
    with 4 prompts would; they sample with different seeds, stay in sync, and the main
    process writes one metrics row per step with the global means and the usual names."""
    out, ranks = two_process_variant(two_process_runs, "plain")
    train, evals = rl_metrics(out)
    assert len(train) == 3 and len(evals) == 1
    one_process = rl_metrics(rl_runs("grpo"))[0]
    assert set(train[0]) == set(one_process[0])
    # The global batch: what one process with batch 4 would take at the same step.
    from rlhfkit.train.rl import RLRun

    prompts = get_task("reviews").prompts("train")
    single = SimpleNamespace(train_prompts=prompts, batches_per_epoch=len(prompts) // 4,
                             cfg=SimpleNamespace(seed=0, batch_size=4), world=1, rank=0, k=4)
    for step in range(3):
        p0, p1 = ranks[0]["prompts"][step], ranks[1]["prompts"][step]
        assert len(p0) == len(p1) == 8
        assert p0[::4] + p1[::4] == RLRun.prompt_batch(single, step)[::4]
        # Logged: the mean over both processes, not process 0's share.
        local = [r["local_score"][step] for r in ranks]
        assert train[step]["reward/score"] == pytest.approx(sum(local) / 2, abs=1e-6)
    assert ranks[0]["seed"] != ranks[1]["seed"]
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-9)
    assert (out / "model" / "config.json").exists()
    # The same run with each process cutting its mini-batches its own way (rank 0: three
    # micro-batches; rank 1: one, padded to three): the same losses and the same weights.
    def variant(name: str) -> tuple[Path, list[dict]]:
        return two_process_variant(two_process_runs, name)

    cut, micro = variant("micro")
    assert micro[0]["weights"] == pytest.approx(micro[1]["weights"], rel=1e-9)
    assert micro[0]["weights"] == pytest.approx(ranks[0]["weights"], rel=1e-6)
    for a, b in zip(rl_metrics(cut)[0], train):
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)
    # The same run sharded with FSDP2 (policy and reference; sampling in step on the shards):
    # the same rewards, losses and final weights as replicated, and a whole model saved.
    sharded, fsdp = variant("fsdp")
    assert fsdp[0]["weights"] == pytest.approx(ranks[0]["weights"], rel=1e-6)
    for a, b in zip(rl_metrics(sharded)[0], train):
        assert a["reward/score"] == pytest.approx(b["reward/score"], abs=1e-6)
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)
    saved = load_file(str(sharded / "model" / "model.safetensors"))
    assert all(not k.startswith("_fsdp") for k in saved) and len(saved) > 5
    # Resumed from the sharded checkpoint of step 2: step 3 again, and the same weights.
    resumed, again = variant("fsdp-resume")
    (step_3,) = rl_metrics(resumed)[0]
    assert step_3["step"] == 3
    assert step_3["loss/total"] == rl_metrics(sharded)[0][2]["loss/total"]
    assert again[0]["weights"] == fsdp[0]["weights"]
    final = load_file(str(resumed / "model" / "model.safetensors"))
    assert final.keys() == saved.keys() and all((final[k] == v).all() for k, v in saved.items())


@pytest.mark.multiproc
def test_ppo_sharded_with_fsdp2_matches_replicated(two_process_runs):
    """PPO on 2 processes with a critic and rewards from a reward model: sharding the policy,
    reference, critic and reward model with FSDP2 (``--fsdp``) gives the same rewards, losses
    and final weights of policy and critic as replicating them (DDP)."""
    replicated, ddp = two_process_variant(two_process_runs, "ppo")
    sharded, fsdp = two_process_variant(two_process_runs, "fsdp-ppo")
    assert fsdp[0]["sharded"] == {"policy": True, "reference": True, "reward models": [True],
                                  "critic": True}
    assert ddp[0]["sharded"] == {"policy": False, "reference": False, "reward models": [False],
                                 "critic": False}
    assert fsdp[0]["weights"] == fsdp[1]["weights"] and fsdp[0]["critic"] == fsdp[1]["critic"]
    assert fsdp[0]["weights"] == pytest.approx(ddp[0]["weights"], rel=1e-6)
    assert fsdp[0]["critic"] == pytest.approx(ddp[0]["critic"], rel=1e-6)
    rows, reference = rl_metrics(sharded)[0], rl_metrics(replicated)[0]
    assert len(rows) == len(reference) == 3
    for a, b in zip(rows, reference):
        assert a["reward/score"] == pytest.approx(b["reward/score"], abs=1e-5)
        for key in ("loss/policy", "loss/value", "kl/seq"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert any(r["loss/value"] > 0 for r in rows)
    assert (sharded / "model" / "config.json").exists()


def test_best_of_n_selects_and_writes_demonstrations(good_bad_policy, tmp_path):
    from rlhfkit.train.best_of_n import BestOfNConfig, run_best_of_n

    out = run_best_of_n(BestOfNConfig(model=str(good_bad_policy), output_dir=str(tmp_path),
                                      n=4, max_prompts=8, max_new_tokens=6, precision="fp32",
                                      progress=False, system_prompt=SYSTEM),
                        reward_fn=good_share)
    summary = read_json(out)
    assert summary["reward/best"] >= summary["reward/first"]
    assert summary["reward/best"] > 0.7
    demos = read_records(out / "demonstrations.jsonl")
    assert len(demos) == 8 and all(isinstance(d, Demonstration) for d in demos)


def test_cli_has_the_rl_stages():
    from rlhfkit.cli.main import build_parser

    parser = build_parser()
    for stage in ("ppo", "reinforce", "rloo", "grpo", "best-of-n"):
        args = parser.parse_args([stage, "--seed", "3"])
        assert args._command.name == stage


@pytest.mark.multiproc
def test_nan_on_one_process_stops_every_process_with_the_same_message(good_bad_policy, tmp_path):
    """Rank 1's loss is NaN at step 2: both ranks raise the TrainingError there, none hangs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29547", str(HERE / "multiproc_nan.py"), str(good_bad_policy),
           str(tmp_path / "nan")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    message = "the loss became NaN or infinite at step 2"
    for rank in (0, 1):
        assert f"[rank{rank}]: rlhfkit.train.loop.TrainingError: [grpo] {message}" in proc.stderr, \
            proc.stderr[-3000:]


def test_length_debiasing_removes_the_batch_trend_of_reward_on_length_by_hand():
    """Lengths 1, 2, 3 with scores 1, 3, 2: mean length 2, x = (-1, 0, 1); slope
    b = sum(x (s - 2)) / sum(x^2) = (1 + 0 + 0) / 2 = 0.5; s - b x = (1.5, 3, 1.5). The mean
    (2) stays; the correction (+0.5, 0, -0.5) sits on each response's last token."""
    from rlhfkit.rewards.shaping import place_rewards
    from rlhfkit.rewards.sources import RewardTerms
    from rlhfkit.train.rl import length_debiased

    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    scores = torch.tensor([1.0, 3.0, 2.0])
    out = length_debiased(RewardTerms.holistic(scores, scores, mask), mask)
    assert torch.allclose(out.scores, torch.tensor([1.5, 3.0, 1.5]))
    assert out.weights == [1.0, 1.0]
    dense = sum(w * place_rewards(d, mask) for w, d in zip(out.weights, out.dense))
    assert torch.allclose(dense, torch.tensor([[1.5, 0, 0], [0, 3.0, 0], [0, 0, 1.5]]))
    # equal lengths: no trend to remove
    same = torch.ones(3, 2, dtype=torch.long)
    flat = length_debiased(RewardTerms.holistic(scores, scores, same), same)
    assert torch.allclose(flat.scores, scores)


def test_the_length_floor_takes_reward_from_short_responses_only_by_hand():
    """Floor 4 tokens, penalty 2: lengths 1, 2, 4, 5 miss 3/4, 2/4, 0, 0 of the floor, so they
    lose 1.5, 1.0, 0, 0; the loss sits on each response's last token."""
    from rlhfkit.rewards.shaping import place_rewards
    from rlhfkit.rewards.sources import RewardTerms
    from rlhfkit.train.rl import length_floored

    lengths = [1, 2, 4, 5]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    scores = torch.tensor([1.0, 1.0, 1.0, -1.0])
    out = length_floored(RewardTerms.holistic(scores, scores, mask), mask, 4.0, 2.0)
    assert torch.allclose(out.scores, torch.tensor([-0.5, 0.0, 1.0, -1.0]))
    dense = sum(w * place_rewards(d, mask) for w, d in zip(out.weights, out.dense))
    assert torch.allclose(dense.sum(-1), out.scores)
    assert dense[0, 0] == -0.5 and dense[1, 1] == 0.0 and dense[3, 4] == -1.0


def test_offload_frozen_frees_the_reference_and_reward_model_for_each_update_and_changes_nothing(
        good_bad_policy, tmp_path, monkeypatch):
    """--offload-frozen: the reference and the reward model are each freed once their pass is
    done, so that at most one is in memory at a time and neither during an update (no parameter
    left), and the run logs the same numbers and ends on the same weights as without it; the
    files are gone at the end."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.offload import Offloaded
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.train.rl import RLRun
    from rlhfkit.train.trainer import rl_config, train_rl

    tokenizer = load_tokenizer(str(good_bad_policy))
    rm = RewardModel.from_pretrained(str(good_bad_policy), pad_token_id=tokenizer.pad_token_id)
    rm.save(tmp_path / "rm", tokenizer)  # an untrained head: noise, but the same noise each run
    before_update: list[dict[str, int]] = []
    in_memory: list[int] = []  # after each mapping back: how many frozen models are in memory
    parts: list[Offloaded] = []
    release, restore, init = RLRun.release_frozen, Offloaded.restore, Offloaded.__init__

    def spy_release(run, kind=""):
        release(run, kind)
        if not kind:  # the call before the update
            before_update.append({name: sum(p.numel() for p in o.params.values())
                                  for name, o in run.offloaded.items()})

    def spy_restore(part):
        mapped = part.released
        restore(part)
        if mapped:
            in_memory.append(sum(not o.released for o in parts))

    def spy_init(part, *args):
        init(part, *args)
        parts.append(part)

    monkeypatch.setattr(RLRun, "release_frozen", spy_release)
    monkeypatch.setattr(Offloaded, "restore", spy_restore)
    monkeypatch.setattr(Offloaded, "__init__", spy_init)
    runs = {}
    for offload in (False, True):
        out = tmp_path / f"offload-{offload}"
        train_rl(rl_config("ppo", **ppo_kwargs(good_bad_policy, out, max_steps=3,
                                                reward_model=str(tmp_path / "rm"),
                                                offload_frozen=offload)))
        runs[offload] = out
    assert before_update[:3] == [{}] * 3  # off: nothing offloaded
    assert before_update[3:] == [{"reference": 0, "reward-0": 0}] * 3
    # each step and the evaluation map each model back once, and only that one
    assert len(parts) == 2 and len(in_memory) >= 6 and set(in_memory) == {1}, in_memory
    assert not (runs[True] / "offload").exists()

    def numbers(out):
        return [{k: v for k, v in row.items() if not k.startswith(("time/", "mem/", "perf/"))}
                for row in read_metrics(out)]

    assert numbers(runs[True]) == numbers(runs[False])
    a = load_file(str(runs[True] / "model" / "model.safetensors"))
    b = load_file(str(runs[False] / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
