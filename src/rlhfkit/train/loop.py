"""The plumbing every trainer shares.

Devices, precision, batching, accumulation, clipping, schedule, logging, progress, checkpoints,
resume, and a guard against NaN/inf.

A trainer hands the loop a list of items, a ``collate`` function and a ``step`` function::

    loop = Loop(cfg, model, items, collate, stage="sft")
    loop.run(step)          # step(model, batch) -> (loss_sum, metric_sums)

Batching is explicit so that results do not depend on the number of processes. Optimizer step
``s`` uses the global batch ``order[s*G:(s+1)*G]`` with ``G = batch_size * grad_accum * world``;
each process takes a contiguous slice and splits it into micro-batches. Every collated batch says
how many loss *units* it holds (tokens for SFT, weighted pairs for reward models); the step
returns the *sum* of the loss over those units, and the loop divides by the global unit count
(summed over micro-batches and processes). The gradient is therefore that of the mean over the
global batch whether it ran as 1x8, 2x4 or 4x2 micro-batches, and a resumed run replays exactly
the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.models.loading import DEFAULT_MODEL, resolve_precision

StepFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says why."""


@dataclass
class TrainConfig:
    """Options every training stage shares."""

    model: str = DEFAULT_MODEL
    """Model to start from: a HF id, a local folder, a .gguf file, or the alias smollm2-135m."""
    data: str = "task:reviews"
    """Training records: a JSONL/JSON/CSV/TSV/Parquet file (.gz too), a HF datasets folder, a
    dataset id or folder for datasets.load_dataset, db:URL, or task:NAME."""
    split: str | None = None
    """Split of --data to train on (a dataset id, a folder with splits); default: its only
    split, or train."""
    eval_data: str | None = None
    """Held-out records; default: --eval-split of --data, else a share of it (--eval-fraction)."""
    eval_split: str | None = None
    """Split held out for evaluation (e.g. test): of --eval-data if given, else of --data."""
    eval_fraction: float = 0.1
    """Share of --data held out for evaluation when neither --eval-data nor --eval-split is
    given."""
    output_dir: str = "runs/run"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/, model/."""
    max_length: int = 256
    """Longest sequence in tokens (prompt + response); longer ones are truncated."""
    lora: bool = False
    """Train LoRA adapters instead of all weights; the run saves the adapter (output_dir/adapter,
    for PeftModel.from_pretrained) and the merged model (output_dir/model)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    precision: str = "auto"
    """fp32, bf16 (autocast, fp32 master weights), or auto: bf16 where the hardware has it."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: str = "cosine"
    """constant, linear or cosine decay after warm-up."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up linearly from 0."""
    epochs: float = 1.0
    """Passes over the training data (may be fractional); ignored when --max-steps > 0."""
    max_steps: int = 0
    """Number of optimizer steps; 0 means derive from --epochs."""
    batch_size: int = 8
    """Micro-batch size per process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: ~10% less peak memory for ~18% less speed
    (SmolLM2-135M on CPU); the default, as in TRL. --no-gradient-checkpointing for speed."""
    group_by_length: bool = True
    """Batch items of similar length together to waste less compute on padding."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""
    log_every: int = 1
    """Write metrics every this many steps."""
    eval_every: int = 0
    """Evaluate before training and every this many steps (0 = only at the end)."""
    save_every: int = 0
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Continue from the newest checkpoint in --output-dir."""
    tensorboard: bool = True
    """Also log to TensorBoard (output_dir/tb)."""
    progress: bool = True
    """Show a progress bar."""


def make_accelerator(precision: str):
    """An ``Accelerator`` with ``precision`` resolved for the current device."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = resolve_precision(precision, device)
    # Accelerate keeps one global state per process; a pipeline runs several stages (possibly at
    # different precisions) in one process, so start each stage from a fresh state. The
    # distributed part (process group, rank) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True is what makes accelerate set up a gloo process group under torchrun on a machine
    # without GPUs; without it every process believes it is alone.
    return Accelerator(mixed_precision="bf16" if resolved == "bf16" else "no", cpu=device == "cpu")


def epoch_order(
    lengths: Sequence[int], epoch: int, seed: int, global_batch: int, group_by_length: bool
) -> list[int]:
    """Item order for one epoch: a seeded shuffle, optionally grouped by length.

    With grouping, items are shuffled, cut into chunks of 64 global batches, sorted by length
    inside each chunk, cut into global batches, and the batches shuffled again; batches then hold
    items of similar length (less padding) while the order stays random between batches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return order
    chunk = global_batch * 64
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [part[i:i + global_batch] for i in range(0, len(part), global_batch)]
    full = [b for b in batches if len(b) == global_batch]
    rest = [i for b in batches if len(b) != global_batch for i in b]
    rng.shuffle(full)
    return [i for b in full for i in b] + rest


def make_optimizer(
    params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it for these parameters.

    The fused kernel updates each parameter in one pass; the default multi-tensor path
    allocates temporaries the size of the parameters, which showed up as peak memory in the
    benchmarks (SmolLM2-135M SFT on CPU: lower peak RSS and ~20% more samples/s with fused).
    """
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # e.g. parameters on a device without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up, then constant, linear or cosine decay to 0."""
    if kind not in ("constant", "linear", "cosine"):
        raise ValueError(f"lr_scheduler must be constant, linear or cosine, got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant" or total <= warmup:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def reduce_sums(accelerator: Any, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Sum scalars over processes (every process passes the same keys)."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return dict(zip(keys, t.tolist()))


class MetricsLog:
    """``metrics.jsonl`` (and optionally TensorBoard) in a run folder, written by one process."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.out, self.enabled, self.tensorboard = out, enabled, tensorboard
        self._file = None
        self._tb = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Append one record ``{"step": step, **metrics}``; nothing for an empty dict."""
        if not metrics or not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if self._file is None:
            self._file = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Checkpoints:
    """``step-NNNNNNN`` folders under ``root``: accelerate state plus the step, for exact resume."""

    def __init__(self, accelerator: Any, root: Path, keep: int) -> None:
        self.acc, self.root, self.keep = accelerator, root, keep

    def save(self, step: int) -> Path:
        """Write model, optimizer, registered objects and RNG state; keep the newest ``keep``."""
        path = self.root / f"step-{step:07d}"
        self.acc.save_state(str(path))
        if self.acc.is_main_process:
            (path / "loop_state.json").write_text(json.dumps({"step": step}))
            for old in sorted(self.root.glob("step-*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return path

    def latest(self) -> Path | None:
        """Newest complete checkpoint, if any."""
        done = [p for p in sorted(self.root.glob("step-*")) if (p / "loop_state.json").exists()]
        return done[-1] if done else None

    def resume(self, stage: str) -> int | None:
        """Load the newest checkpoint; returns its step, or None when there is none."""
        path = self.latest()
        if path is None:
            if self.acc.is_main_process:
                print(f"[{stage}] --resume: no checkpoint in {self.root}; starting from scratch")
            return None
        self.acc.load_state(str(path))
        step = json.loads((path / "loop_state.json").read_text())["step"]
        if self.acc.is_main_process:
            print(f"[{stage}] resumed from {path} at step {step}")
        return step


class Loop:
    """Runs optimizer steps over a list of items; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        items: Sequence[Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        stage: str,
        lengths: Sequence[int] | None = None,
        accelerator: Any = None,
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.items = items
        self.collate = collate
        self.accelerator = accelerator or make_accelerator(cfg.precision)
        acc = self.accelerator
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.out = Path(cfg.output_dir)
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.world
        if len(items) < self.global_batch:
            raise TrainingError(
                f"{stage}: {len(items)} training items is fewer than one global batch "
                f"({cfg.batch_size} per process x {cfg.grad_accum} accumulation x {self.world} "
                f"processes = {self.global_batch}); lower --batch-size or --grad-accum"
            )
        self.lengths = list(lengths) if lengths is not None else [1] * len(items)
        self.steps_per_epoch = len(items) // self.global_batch
        self.total_steps = cfg.max_steps or max(1, int(self.steps_per_epoch * cfg.epochs))
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"{stage}: the model has no trainable parameters")
        optimizer = make_optimizer(params, cfg.learning_rate, cfg.weight_decay)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        scheduler = build_scheduler(optimizer, cfg.lr_scheduler, warmup, self.total_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # The schedule is a function of the optimizer step, which is the same on every process;
        # accelerate's prepared scheduler would advance once per process. Keep ours, checkpointed.
        self.scheduler = scheduler
        acc.register_for_checkpointing(self.scheduler)
        self.step = 0
        self._orders: dict[int, list[int]] = {}
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_log = MetricsLog(self.out, acc.is_main_process, cfg.tensorboard)
        self.checkpoints = Checkpoints(acc, self.out / "checkpoints", cfg.keep_checkpoints)

    # ------------------------------------------------------------------ data
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {
                epoch: epoch_order(
                    self.lengths, epoch, self.cfg.seed, self.global_batch, self.cfg.group_by_length
                )
            }
        return self._orders[epoch]

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        """The collated micro-batches this process runs at optimizer step ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        per_rank = self.cfg.batch_size * self.cfg.grad_accum
        start = b * self.global_batch + self.rank * per_rank
        local = order[start:start + per_rank]
        size = self.cfg.batch_size
        return [self.collate([self.items[i] for i in local[k:k + size]])
                for k in range(0, per_rank, size)]

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append ``metrics`` to metrics.jsonl (and TensorBoard) from the main process only."""
        self.metrics_log.log(metrics, self.step if step is None else step)

    def reduce_sums(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Sum scalars over processes (the same dict keys on every process)."""
        return reduce_sums(self.accelerator, values)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_root(self) -> Path:
        """Folder holding ``step-N`` checkpoints."""
        return self.checkpoints.root

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, scheduler and RNG state for an exact resume."""
        return self.checkpoints.save(self.step)

    def latest_checkpoint(self) -> Path | None:
        """Newest complete checkpoint in the run folder, if any."""
        return self.checkpoints.latest()

    def maybe_resume(self) -> None:
        """With ``--resume``, load the newest checkpoint and continue after its step."""
        if self.cfg.resume:
            step = self.checkpoints.resume(self.stage)
            if step is not None:
                self.step = step

    # ------------------------------------------------------------------ the loop
    def train_step(self, step_fn: StepFn) -> dict[str, float]:
        """One optimizer step over this step's global batch; returns averaged metrics."""
        acc = self.accelerator
        batches = self.micro_batches(self.step)
        local_units = sum(float(b["num_units"]) for b in batches)
        totals = self.reduce_sums({"units": local_units,
                                   "tokens": sum(float(b.get("num_tokens", 0)) for b in batches)})
        global_units = max(totals["units"], 1e-12)
        sums: dict[str, float] = {}
        nonfinite = 0.0
        self.model.train()
        for k, batch in enumerate(batches):
            last = k == len(batches) - 1
            ctx = acc.no_sync(self.model) if (self.world > 1 and not last) else _null()
            with ctx:
                with acc.autocast():
                    loss_sum, metric_sums = step_fn(self.model, batch)
                if not torch.isfinite(loss_sum.detach()):
                    nonfinite = 1.0
                # DDP averages gradients over processes, hence the factor ``world``.
                acc.backward(loss_sum * (self.world / global_units))
            sums["loss"] = sums.get("loss", 0.0) + float(loss_sum.detach())
            for name, value in metric_sums.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        sums["_nonfinite"] = nonfinite
        reduced = self.reduce_sums(sums)
        if reduced.pop("_nonfinite") > 0:
            raise TrainingError(
                f"[{self.stage}] the loss became NaN or infinite at step {self.step + 1}. "
                f"Nothing was updated at this step. Try a lower --learning-rate, "
                f"--precision fp32, or check the data; resume from "
                f"{self.latest_checkpoint() or 'the start'} with --resume."
            )
        if self.cfg.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            reduced["grad_norm"] = float(grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics = {f"loss/{self.stage}" if k == "loss" else k: v / global_units
                   for k, v in reduced.items() if k != "grad_norm"}
        if "grad_norm" in reduced:
            metrics["grad_norm"] = reduced["grad_norm"]
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["_tokens"] = totals["tokens"]
        metrics["_units"] = global_units
        return metrics

    def run(
        self,
        step_fn: StepFn,
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Train to ``total_steps``, evaluating and checkpointing as configured.

        Returns:
            The last evaluation's metrics (or the last training metrics without ``evaluate``).
        """
        from tqdm.auto import tqdm

        acc = self.accelerator
        self.maybe_resume()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step",
                   disable=not (self.cfg.progress and acc.is_main_process), dynamic_ncols=True)
        last: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        if evaluate is not None and self.cfg.eval_every and self.step == 0:
            self.log(evaluate())  # the starting point, for comparison
        t0, tokens = time.perf_counter(), 0.0
        while self.step < self.total_steps:
            metrics = self.train_step(step_fn)
            tokens += metrics.pop("_tokens")
            metrics.pop("_units")
            elapsed = time.perf_counter() - t0
            metrics["perf/tokens_per_s"] = tokens / max(elapsed, 1e-9)
            metrics["epoch"] = self.step / self.steps_per_epoch
            last = metrics
            bar.update(1)
            bar.set_postfix(loss=f"{metrics[f'loss/{self.stage}']:.4f}",
                            tok_s=f"{metrics['perf/tokens_per_s']:.0f}")
            if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                self.log(metrics)
            if evaluate is not None and self.cfg.eval_every and self.step % self.cfg.eval_every == 0 \
                    and self.step < self.total_steps:
                eval_metrics = evaluate()
                self.log(eval_metrics)
            if self.cfg.save_every and self.step % self.cfg.save_every == 0 \
                    and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        if evaluate is not None:
            eval_metrics = evaluate()
            self.log(eval_metrics)
        self.close()
        return {**last, **eval_metrics}

    def close(self) -> None:
        """Flush and close the log files."""
        self.metrics_log.close()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def seed_everything(seed: int) -> None:
    """Seed Python, and torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class Stage:
    """What every supervised stage sets up before its own work (see :func:`start_stage`)."""

    accelerator: Any
    out: Path
    tokenizer: Any
    system_prompt: str | None
    train_records: list
    eval_records: list


def start_stage(cfg: TrainConfig, want: str, kinds: Sequence[str]) -> Stage:
    """Seed, make the accelerator, write ``config.yaml``, load the tokenizer and the records.

    Args:
        cfg: The stage config; it needs ``system_prompt`` besides the :class:`TrainConfig` fields.
        want: What a built-in task should supply (``demonstrations`` or ``preferences``).
        kinds: Record kinds the stage accepts.

    Returns:
        The accelerator, run folder, tokenizer, system prompt (the task's when the config gives
        none) and the train / held-out records (``--eval-data``, or a prompt-level split).
    """
    from rlhfkit import config as cfglib
    from rlhfkit.data.sources import train_and_eval_records
    from rlhfkit.models.loading import load_tokenizer

    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.precision)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfglib.save_yaml(cfg, out / "config.yaml")
    tokenizer = load_tokenizer(cfg.model)
    system_prompt = getattr(cfg, "system_prompt", None)
    if system_prompt is None and cfg.data.startswith("task:"):
        from rlhfkit.tasks import get_task

        system_prompt = get_task(cfg.data[len("task:"):]).system_prompt
    train_records, eval_records = train_and_eval_records(
        cfg.data, cfg.eval_data, want, kinds, split=cfg.split, eval_split=cfg.eval_split,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed)
    return Stage(accelerator, out, tokenizer, system_prompt, train_records, eval_records)

