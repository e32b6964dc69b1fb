"""Run by test_rl.py under torchrun: GRPO with 2 processes, each 2 prompts x 4 samples.

Besides the run folder, every process writes ``rank{N}.json``: the prompts it sampled at each
step, its own (local) ``reward/score`` per step, its torch seed, and a checksum of its policy
weights at the end, so the test can check how the global batch was split and that the
processes stayed in sync.

The arguments after the first three name the variants to run (default: ``plain``). With
``micro`` the processes cut their mini-batches differently: rank 0 into
micro-batches of 3 sequences (3 of them), rank 1 into one by tokens, padded to 3 (an empty
micro-batch's backward carries no gradient): the weights must come out as without the cut.
``shared-engine`` and ``fsdp-shared-engine`` sample on one engine each, the first and the second
address in ``RLHFKIT_TEST_ENGINES`` (``A;B``): process 0 syncs it and feeds it both processes'
prompts.
``ppo`` and ``fsdp-ppo`` train PPO with rewards from the reward model in ``RLHFKIT_TEST_RM`` and
a critic started from it, replicated and sharded (policy, reference, critic and reward model).
With ``fsdp`` the policy and the reference are sharded with FSDP2 (``--fsdp``) instead of
replicated (DDP): the same samples, losses and weights; it saves a sharded checkpoint after
step 2, and ``fsdp-resume`` resumes from it (its folder's checkpoints hold only that one).
``vllm`` samples on an engine in each process (the model must suit vLLM's CPU attention), and
``fsdp-vllm`` does so with the policy sharded: each engine is synced from the shards. Both
record, at the end, the greedy responses of their engine synced to the final weights and those
of transformers on the gathered final weights.
"""

import json
import os
import sys
from pathlib import Path

import torch

from rlhfkit.train import rl
from rlhfkit.train.trainer import rl_config, train_rl


def good_share(prompts, texts, rollout=None):
    return [sum(w == "good" for w in t.split()) / max(len(t.split()), 1) for t in texts]


def greedy_pair(run: rl.RLRun, model: str) -> dict:
    """Greedy responses of the run's engine synced to the final weights, and of transformers.

    The sync gathers every sharded parameter (each process takes part); transformers runs on
    a plain copy loaded with the gathered weights.
    """
    from rlhfkit.models.loading import checkpoint_weights, load_causal_lm
    from rlhfkit.models.policy import SelectiveLM
    from rlhfkit.rollout import HFBackend, SamplingConfig, response_logprobs, sample
    from rlhfkit.train.sharding import full_state_dict

    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    prompts = ["Tell me about a film.", "Hello there", "What did you think of the ending?"]
    run.backend.sync(run.lm, run.policy_version)  # the final evaluation synced it already
    engine = sample(run.lm, run.tokenizer, prompts, greedy, run.system_prompt,
                    backend=run.backend)
    plain = load_causal_lm(model, dtype=torch.float32).eval()
    if run.cfg.lora:  # the adapters merged into the gathered weights (the tied head once)
        plain.load_state_dict(dict(checkpoint_weights(run.lm)), strict=False)
        plain.tie_weights()
    else:
        plain.load_state_dict(full_state_dict(run.lm, all_ranks=True) if run.run.sharded
                              else {k: v.detach().clone() for k, v in run.lm.state_dict().items()})
    hf = sample(plain, run.tokenizer, prompts, greedy, run.system_prompt, backend=HFBackend(None))
    # What the engine said of its tokens, against the final and the starting weights.
    said, mask = engine.extras["engine_logprobs"], engine.response_mask
    gaps = {}
    for name, lm in (("final", plain), ("start", load_causal_lm(model, dtype=torch.float32))):
        with torch.no_grad():
            lps = response_logprobs(SelectiveLM(lm.eval()), engine, 1.0)
        gaps[name] = float(((said - lps).abs() * mask).max())
    return {"versions": [run.backend.engine.version, run.policy_version],
            "engine_greedy": engine.response_ids, "hf_greedy": hf.response_ids,
            "gap": gaps, "sync": run.backend.last_sync}


def run(model: str, out: Path, system: str, variant: str) -> None:
    micro: dict = {}
    if variant == "micro":
        micro = ({"micro_batch_size": 3} if os.environ["RANK"] == "0"
                 else {"micro_batch_tokens": 100_000})
    elif variant == "fsdp":
        micro = {"fsdp": True, "save_every": 2}  # a sharded checkpoint after step 2
    elif variant == "fsdp-resume":  # OUT/checkpoints holds only the fsdp run's step 2
        micro = {"fsdp": True, "resume": True}
    elif variant in ("vllm", "fsdp-vllm", "fsdp-lora-vllm"):
        micro = {"generation_backend": "vllm", "fsdp": variant != "vllm",
                 "lora": variant == "fsdp-lora-vllm"}
    elif variant in ("shared-engine", "fsdp-shared-engine"):  # one engine for both processes
        # a run stops its engines at the end: each variant has an engine of its own
        address = os.environ["RLHFKIT_TEST_ENGINES"].split(";")[variant.startswith("fsdp")]
        micro = {"generation_backend": "vllm", "vllm_engines": address,
                 "fsdp": variant.startswith("fsdp")}
    elif variant in ("ppo", "fsdp-ppo"):  # rewards from the reward model, a critic from it
        micro = {"fsdp": variant == "fsdp-ppo"}
    record: dict = {"prompts": [], "local_score": []}
    prompt_batch, rollout_metrics, finish = (rl.RLRun.prompt_batch, rl.RLRun.rollout_metrics,
                                             rl.RLRun.finish)

    def spy_prompt_batch(self, step):
        prompts = prompt_batch(self, step)
        record["prompts"].append(prompts)
        return prompts

    def spy_rollout_metrics(self, *args, **kwargs):
        metrics, kl = rollout_metrics(self, *args, **kwargs)
        record["local_score"].append(metrics["reward/score"])
        return metrics, kl

    def spy_finish(self):
        record["seed"] = torch.initial_seed()
        whole = [p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2: gather
                 for p in self.lm.parameters()]
        record["weights"] = sum(float(p.double().abs().sum()) for p in whole)
        from rlhfkit.train.sharding import is_sharded

        record["sharded"] = {"policy": is_sharded(self.model), "reference": is_sharded(
            self.reference.model), "reward models": [is_sharded(s.model) for s in self.sources
                                                     if s.model is not None]}
        if self.critic is not None:
            record["sharded"]["critic"] = is_sharded(self.critic)
            record["critic"] = sum(float((p.full_tensor() if hasattr(p, "full_tensor") else p)
                                         .double().abs().sum()) for p in self.critic.parameters())
        if self.cfg.generation_backend == "vllm" and not self.cfg.vllm_engines:
            record.update(greedy_pair(self, model))
        (out / f"rank{self.rank}.json").write_text(json.dumps(record))
        return finish(self)

    rl.RLRun.prompt_batch = spy_prompt_batch
    rl.RLRun.rollout_metrics = spy_rollout_metrics
    rl.RLRun.finish = spy_finish
    out.mkdir(parents=True, exist_ok=True)
    try:
        common = dict(model=model, output_dir=str(out), max_steps=3, max_new_tokens=6,
                      learning_rate=2e-3, precision="fp32", progress=False, eval_prompts=8,
                      system_prompt=system, report_to="none", gradient_checkpointing=False)
        if variant.endswith("ppo"):  # the reward model's folder comes in RLHFKIT_TEST_RM
            train_rl(rl_config("ppo", **common, batch_size=4, mini_batch_size=4,
                               update_epochs=2, critic="rm", kl_coef=0.05, reward_clip=5.0,
                               reward_model=os.environ["RLHFKIT_TEST_RM"], **micro))
        else:
            train_rl(rl_config("grpo", **common, batch_size=2, num_samples=4, kl_coef=0.04,
                               reward_clip=0.0, **micro), reward_fn=good_share)
    finally:
        rl.RLRun.prompt_batch, rl.RLRun.rollout_metrics, rl.RLRun.finish = (
            prompt_batch, rollout_metrics, finish)


if __name__ == "__main__":
    model, out, system = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    # The variants run one after another in the same two processes (one launch: each start of
    # two processes that import torch and transformers costs seconds); the plain run writes to
    # OUT, each other to OUT-NAME.
    for variant in sys.argv[4:] or ["plain"]:
        run(model, out if variant == "plain" else out.with_name(f"{out.name}-{variant}"),
            system, variant)
