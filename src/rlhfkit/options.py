"""The option groups the stages share: every such option is declared here once.

Each group is a small dataclass for one concern; a field carries its type, default, range
(:func:`rlhfkit.config.bounds`) and, in the string under it, its ``--help``. A stage config
composes the groups it uses side by side (a whole group, or a part of one with
:func:`rlhfkit.config.only`), gives an option another default with
:func:`rlhfkit.config.stage_defaults`, and declares only the options no other stage has::

    @stage_defaults(output_dir="runs/accuracy", max_new_tokens=48)
    @dataclass
    class AccuracyConfig(only(RunOptions, "output_dir", "seed"), only(SamplingOptions, ...)):
        greedy: bool = True     # the string under it is its --help

The groups read by one stage family stay with it: ``train/rl.py`` (``UpdateOptions``,
``PlacementOptions``), ``train/trainer.py`` (``AlgorithmOptions``, with ``algo``),
``train/episodes.py``, ``train/rlvr.py``, ``train/nash.py``, ``train/dpo.py``,
``train/inputs.py`` (``LabelWeightOptions``), ``train/sharding.py`` (``FSDPOptions``).

This module imports only :mod:`rlhfkit.config` (the floor below), nothing heavy: ``rlhfkit
--help`` reads it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhfkit.config import bounds

DEFAULT_MODEL = "smollm2-135m"
"""The model every stage starts from unless told otherwise (SmolLM2-135M-Instruct)."""


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunOptions:
    """The run folder, processes, logging and checkpoints (read by ``train.loop.Run``)."""

    output_dir: str = "runs/run"
    """Run folder: config.yaml and what the command writes (metrics.jsonl, checkpoints/,
    model/, ...; a sub-folder per stage for the commands that run several)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """fp32, bf16 (autocast, fp32 master weights), or auto: bf16 where the hardware has it."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""
    eval_every: int = field(default=0, metadata=bounds(ge=0))
    """Evaluate before training and every this many steps (0 = only at the end)."""
    save_every: int = field(default=0, metadata=bounds(ge=0))
    """Write a resumable checkpoint every this many steps (0 = none; the final model is always
    saved in model/)."""
    keep_checkpoints: int = field(default=2, metadata=bounds(ge=1))
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Go on from where a stopped run in --output-dir left off (the newest checkpoint; the
    rounds or points already done)."""
    overwrite: bool = False
    """Start again in an --output-dir that holds an earlier run (its metrics, trackers and
    checkpoints are deleted); without it (or --resume) such a folder is refused."""
    report_to: str = "tensorboard"
    """Trackers besides metrics.jsonl, comma-separated: tensorboard, wandb, mlflow (into
    output_dir/tb/mlflow.db unless MLFLOW_TRACKING_URI is set; the 'trackers' extra), trackio,
    comet_ml, aim, clearml, dvclive, swanlab, or none."""
    progress: bool = True
    """Show progress bars (off also silences those of transformers and datasets)."""


@dataclass
class OptimOptions:
    """AdamW and its schedule (read by ``Run.prepare`` and ``Run.optimizer_step``)."""

    learning_rate: float = field(default=1e-5, metadata=bounds(gt=0))
    """Peak learning rate of AdamW."""
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    """AdamW weight decay."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    """constant, linear or cosine decay after warm-up."""
    warmup_ratio: float = field(default=0.05, metadata=bounds(ge=0, lt=1))
    """Share of the steps spent warming the learning rate up linearly from 0."""
    max_grad_norm: float = field(default=1.0, metadata=bounds(ge=0))
    """Clip the global gradient norm to this (0 = no clipping)."""


@dataclass
class ModelOptions:
    """The model to start from, and how it trains (read by the stages' ``build_*`` functions)."""

    model: str = DEFAULT_MODEL
    """Model to start from (or to sample from, or to evaluate): a HF id, a local folder, a
    .gguf file, or the alias smollm2-135m."""
    lora: bool = False
    """Train LoRA adapters instead of all weights; the run saves the adapter (output_dir/adapter,
    for PeftModel.from_pretrained) and the merged model (output_dir/model)."""
    lora_r: int = field(default=16, metadata=bounds(ge=1))
    """LoRA rank."""
    lora_alpha: int = field(default=32, metadata=bounds(gt=0))
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    """Dropout on the LoRA input."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: ~10% less peak memory for ~18% less speed
    (SmolLM2-135M on CPU); the default, as in TRL. --no-gradient-checkpointing for speed."""


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class DataOptions:
    """Records, held-out data and batching (read by ``stage_inputs`` and the supervised ``Loop``)."""

    data: str = "task:reviews"
    """Records to train on, or prompts to sample from: a JSONL/JSON/CSV/TSV/Parquet file (.gz
    too), a HF datasets folder, a dataset id or folder for datasets.load_dataset, db:URL, or
    task:NAME (a built-in task's records, or its train prompts)."""
    split: str | None = None
    """Split of --data to use (of a dataset id or a folder with splits; a task's train or
    eval); default: its only split, or train."""
    eval_data: str | None = None
    """Held-out records or prompts; default: --eval-split of --data, else a share of it
    (--eval-fraction; a task's eval prompts for task:NAME)."""
    eval_split: str | None = None
    """Split held out for evaluation (e.g. test): of --eval-data if given, else of --data."""
    eval_fraction: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    """Share of --data held out for evaluation when neither --eval-data nor --eval-split is
    given."""
    system_prompt: str | None = None
    """System message added to prompts that have none (default: the task's, else none)."""
    max_length: int = field(default=256, metadata=bounds(ge=8))
    """Longest training sequence in tokens (prompt + response; prompt + both responses for a
    duel; for RL, a PPO-ptx demonstration); longer ones are cut (segment-rm skips them)."""
    epochs: float = field(default=1.0, metadata=bounds(gt=0))
    """Passes over the training data (may be fractional; RL: over the prompts; self-improve:
    over each round's new data); ignored when --max-steps > 0."""
    max_steps: int = field(default=0, metadata=bounds(ge=0))
    """Optimizer steps (RL: rollout batches); 0 = derive from --epochs."""
    batch_size: int = field(default=8, metadata=bounds(ge=1))
    """Training items per micro-batch and process: demonstrations (sft, self-improve), groups
    (rm: a ranking, or up to --pairs-per-group comparisons of one prompt; dpo: a ranking with
    all its pairs, one comparison, or one KTO example), duels (preference; each
    runs in both orders) or responses with all their segments (segment-rm)."""
    grad_accum: int = field(default=1, metadata=bounds(ge=1))
    """Micro-batches accumulated per optimizer step."""
    group_by_length: bool = True
    """Batch items of similar length together to waste less compute on padding."""
    log_every: int = field(default=1, metadata=bounds(ge=1))
    """Write metrics every this many steps."""


@dataclass
class MicroBatchOptions:
    """How the sequences of one optimizer step are cut into forwards (the gradient unchanged)."""

    micro_batch_size: int = field(default=0, metadata=bounds(ge=0))
    """Sequences per forward/backward: each mini-batch's gradients accumulate over its
    micro-batches into one optimizer step, the loss unchanged; the reference, old-policy,
    value and reward passes use the same cut (0 = a mini-batch at once)."""
    micro_batch_tokens: int = field(default=0, metadata=bounds(ge=0))
    """Tokens per forward/backward at most: dynamic micro-batches, short sequences together and
    a long one alone (never cut), balanced over processes. RL: prompt + response tokens of a
    rollout's sequences (wins over --micro-batch-size). Supervised stages: the items of each
    optimizer step (batch size x accumulation per process) are re-cut by their tokens (all of a
    group's or duel's sequences), so the accumulation no longer fixes the forwards; 0 = off."""
    pack_micro_batches: bool = False
    """RL: run each micro-batch's sequences packed into one row without padding (positions
    restart per sequence; flash-attention's variable-length kernels on GPU). The same
    log-probs and values as padded; on a CPU it is slower (GRPO 1.15x, docs/scale.md)."""


# ---------------------------------------------------------------------------------------------
# Sampling and the generation engine
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplingOptions:
    """How responses are sampled (``rollout.SamplingConfig`` holds the first four)."""

    max_new_tokens: int = field(default=32, metadata=bounds(ge=1))
    """Longest response in tokens (per turn with --environment)."""
    temperature: float = field(default=1.0, metadata=bounds(ge=0))
    """Sampling temperature (0 = greedy, which RL and online-dpo refuse; RL takes its log-probs
    at the same temperature)."""
    top_p: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)."""
    top_k: int = field(default=0, metadata=bounds(ge=0))
    """Keep only the k most likely tokens (0 = off)."""
    max_prompt_tokens: int = field(default=128, metadata=bounds(ge=1))
    """Keep at most this many prompt tokens (the most recent)."""
    n: int = 4
    """Responses sampled per prompt: best-of-n's N, accuracy's n of pass@k."""
    samples_per_prompt: int = 4
    """K responses sampled per prompt: detox scores them for the average max toxicity of each
    held-out prompt (Gehman et al. use 25)."""
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    """Sequences sampled per generate call (Hugging Face backend)."""


@dataclass
class GenerationOptions:
    """The sampler's backend, and the vLLM engines of an RL run (read by ``make_backend``)."""

    generation_backend: Literal["auto", "hf", "vllm"] = "auto"
    """Sampler: hf (transformers generate), vllm (a vLLM engine in this process; the vllm-cpu or
    vllm-cuda extra), or auto (vLLM where installed and it can serve the model, else hf, said in
    one line)."""
    async_generation: bool = False
    """Sample the next batch while the trainer updates on this one (one update off-policy: the
    trainer's own log-probs are the ratio's, each token weighted by min(pi_trainer / pi_engine,
    --tis-cap)). Needs a vLLM backend."""
    max_staleness: int = field(default=1, metadata=bounds(ge=1))
    """--async-generation: how many updates sampling may run ahead. K batches are sampled one
    after another on the weights of one update, so each is at most K updates behind when the
    trainer takes it (1: the next batch while the trainer updates on this one)."""
    vllm_kv_cache_gb: float = field(default=0.25, metadata=bounds(gt=0))
    """vLLM: memory for the engine's KV cache, GiB (0.25 holds ~11k tokens of SmolLM2-135M)."""
    vllm_engines: str = ""
    """vLLM engines apart from the trainer: N (start N engine processes here) or HOST:PORT,...
    (engines started with rlhfkit engine); empty = one engine in the trainer's process."""
    weight_sync: Literal["gloo", "nccl", "file"] = "gloo"
    """How weights reach engines apart: gloo (CPU) or nccl (GPU) broadcast, or file."""
    sync_bucket_mb: float = field(default=256.0, metadata=bounds(gt=0))
    """Weights reach engines apart in buckets of this many MiB (one flat buffer each, in the
    engine's dtype, each tied weight once)."""
    engine_timeout: float = field(default=600.0, metadata=bounds(gt=0))
    """Seconds an engine apart may take to answer (a sample, a weight sync) before the run
    stops with an error naming it."""
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata=bounds(gt=0, le=1))
    """vLLM on a GPU: the share of the GPU's memory the engine takes (weights and KV cache)."""
    vllm_tensor_parallel_size: int = field(default=1, metadata=bounds(ge=1))
    """vLLM on GPUs: GPUs per engine (tensor parallelism; CUDA only)."""
    vllm_sleep: int = field(default=0, metadata=bounds(ge=0, le=2))
    """vLLM on a GPU, the engine in the trainer's process: put it to sleep while the trainer
    updates (1: weights to CPU memory, KV cache freed; 2: both freed, the sync refills them;
    0 = never; CUDA only)."""


# ---------------------------------------------------------------------------------------------
# The KL penalty, the reward, evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class KLOptions:
    """What keeps the policy near its reference: the KL penalty (and the entropy bonus)."""

    reference: str | None = None
    """Reference policy (HF id, folder or .gguf) of the KL penalty, or of DPO's implicit reward;
    default: the starting policy --model (its base under --lora)."""
    kl_coef: float = field(default=0.05, metadata=bounds(ge=0))
    """beta: weight of the per-token KL penalty (in the reward, or in the loss for GRPO)."""
    kl_target: float = field(default=0.0, metadata=bounds(ge=0))
    """Adapt beta towards this KL per response in nats (Ziegler et al. 2019); 0 = fixed beta."""
    kl_horizon: int = field(default=10000, metadata=bounds(ge=1))
    """Samples over which the adaptive KL controller corrects an error."""
    entropy_coef: float = field(default=0.0, metadata=bounds(ge=0))
    """Weight of the entropy bonus in the loss."""


@dataclass
class RewardOptions:
    """Where the reward of an RL stage comes from, and how it is shaped (read by ``RLRun``)."""

    reward_model: str = "runs/rm/model"
    """Reward-model folder, scorer:SPEC (e.g. scorer:sentiment), segment-gain:SPEC (a scorer's
    change after each segment), or several sources as name=SPEC,name=SPEC (fine-grained RLHF;
    their weighted sum is the score). iterate: a reward-model folder that round 1 refits; empty
    = round 1 trains one on the policy's backbone."""
    rewards: str = ""
    """Weights of named reward sources, e.g. rel=0.3,fact=0.5,comp=0.3 (1 for a name not given)."""
    segment_unit: Literal["sentence", "subsentence", "response"] = "sentence"
    """Segments of a response for per-segment rewards: sentence, subsentence or response."""
    normalize_reward: bool = True
    """Standardise RM scores with the mean/std saved at RM training."""
    reward_clip: float = field(default=5.0, metadata=bounds(ge=0))
    """Clip (normalised) scores to [-clip, clip] (0 = off)."""
    length_debias: bool = False
    """Take the linear effect of response length out of the reward within each batch (the
    score minus its least-squares line on length), so neither shorter nor longer answers pay."""
    length_floor: float = field(default=0.0, metadata=bounds(ge=0))
    """Responses shorter than this many tokens (EOS included) lose --length-floor-penalty times
    the share of the floor they miss from their reward, after --length-debias (0 = off)."""
    length_floor_penalty: float = field(default=1.0, metadata=bounds(ge=0))
    """The reward a response of no tokens would lose under --length-floor, in the units of the
    normalised score."""


@dataclass
class EvalOptions:
    """What the held-out evaluation of a sampling stage samples and how it is judged."""

    eval_prompts: int = field(default=32, metadata=bounds(ge=0))
    """Held-out prompts sampled at each evaluation (0 = none; demo: 0 = the preset's)."""
    gold: str = "task"
    """Gold scorer for evaluation only: task (the task's), a scorer spec, or none."""


# ---------------------------------------------------------------------------------------------
# The commands that chain stages: rounds (demo, iterate, self-improve), frontier
# ---------------------------------------------------------------------------------------------


@dataclass
class RoundsOptions:
    """The stages a command chains and their budgets (demo, iterate, frontier, detox, rounds)."""

    task: str = "reviews"
    """Built-in task that supplies the prompts, demonstrations, labeler and gold scorer."""
    rounds: int = field(default=3, metadata=bounds(ge=0))
    """Rounds of sampling the current policy, labeling (self-improve: keeping) and training
    (demo: of iterative RLHF for RL algorithms, docs/iterate.md; 1 = the classic single pass,
    0 = the preset's: 3, or 1 with --quick)."""
    prompts_per_round: int = 32
    """Prompts sampled and labeled in each round (the next ones each round, cycling through the
    prompts)."""
    rank_k: int = field(default=4, metadata=bounds(ge=2, le=9))
    """K: responses sampled and ranked per prompt (2..9; demo: with --rm-data samples)."""
    sft_model: str = ""
    """An SFT policy folder to start from instead of training one (e.g. another run's
    sft/model); frontier: the policy every point starts from (and the KL reference)."""
    sft_steps: int = 32
    """SFT optimizer steps on the task's demonstrations (demo: 0 = the preset's)."""
    rm_steps: int = 48
    """Reward-model optimizer steps (iterate: per round; demo: 0 = the preset's)."""
    rm_learning_rate: float = 1e-4
    """Reward-model learning rate (demo: 0 = the preset's: 1e-4 on policy samples, 2e-5 on the
    task's rankings)."""
    rl_steps: int = 16
    """RL rollout batches (iterate: per round; frontier: per point; demo: 0 = the preset's: 24
    in one pass, 12 in each of several rounds)."""
    rl_learning_rate: float = 1e-5
    """RL learning rate (demo: 0 = the preset's: 2e-5 with rounds, 1e-5 in one pass, 2e-4 with
    LoRA)."""
    length_floor: float = field(default=0.0, metadata=bounds(ge=0))
    """Keep RL's responses at least this share of the SFT policy's mean length (measured on its
    ranked samples): a shorter response loses a share of its reward in proportion to what it
    misses (iterate: times --length-floor-penalty; 0 = off; demo: needs --rm-data samples)."""
    fresh_processes: bool = True
    """Run each stage (SFT, sampling, a reward model, each round's RL and evaluation) in a new
    process, so that none inherits the memory the ones before it left behind: the peak is the
    largest stage's. Off: every stage in this process (saves the fork server's start, about 5 s
    once, and a third of a second a stage; a debugger can follow)."""


@dataclass
class FeedbackOptions:
    """The feedback store that people label in (``rlhfkit label serve``)."""

    feedback_db: str = "sqlite:///feedback.db"
    """Feedback store URL the app labeler (--labeler app) writes its questions to and reads the
    answers from (iterate: one project per round, FEEDBACK-PROJECT-rN)."""
