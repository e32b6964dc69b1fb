"""The plumbing every trainer shares: one :class:`Run` per stage, and the supervised :class:`Loop`.

A :class:`Run` owns what any training run needs whatever it optimises: the accelerator (devices,
precision, processes), the run folder with ``config.yaml``, ``metrics.jsonl`` and the trackers of
``--report-to``, resumable checkpoints, the step loop with its progress bar, evaluation and
checkpoint cadence, the guard that stops every process together when a loss turns NaN, and the
optimizer step (clipping, schedule). A supervised stage hands a :class:`Loop` its items::

    run = Run(cfg, "sft")
    loop = Loop(run, model, items, collate)
    loop.run(step)          # step(model, batch) -> (loss_sum, metric_sums)

and an RL stage (:class:`rlhfkit.train.rl.RLRun`) holds a ``Run`` and writes its own loop over
``run.steps(...)``.

Supervised batching is explicit so that results do not depend on the number of processes.
Optimizer step ``s`` uses the global batch ``order[s*G:(s+1)*G]`` with
``G = batch_size * grad_accum * world``; each process takes a contiguous slice and splits it into
micro-batches. Every collated batch says how many loss *units* it holds (tokens for SFT, weighted
pairs for reward models); the step returns the *sum* of the loss over those units, and the loop
divides by the global unit count (summed over micro-batches and processes). The gradient is
therefore that of the mean over the global batch whether it ran as 1x8, 2x4 or 4x2
micro-batches, and a resumed run replays exactly the batches an uninterrupted one would have
seen. The ``len(items) % G`` items left over at the end of an epoch are not dropped for good:
each epoch is a fresh shuffle, so a different remainder sits out each time (the stage says how
many at start).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlhfkit import config as cfglib
from rlhfkit.evaluate.report import training_section, write_sections
from rlhfkit.memory import GIB, note_live
from rlhfkit.models.loading import quiet_library_progress_bars, resolve_precision
from rlhfkit.options import (  # re-exported
    DataOptions,
    MicroBatchOptions,
    ModelOptions,
    OptimOptions,
    RunOptions,
)
from rlhfkit.train.microbatch import plan_by_tokens
from rlhfkit.train.sharding import FSDPOptions as FSDPOptions  # re-exported: an option group
from rlhfkit.train.sharding import load_sharded, save_sharded, shard_model, unsharded_copy

StepFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, torch.Tensor]]]

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive",
            "swanlab")
"""Trackers ``--report-to`` can name: Accelerate's (``metrics.jsonl`` is always written)."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says why."""

    user_facing = True


# ---------------------------------------------------------------------------------------------
# Options: the groups live in rlhfkit/options.py (each option declared once); a supervised stage
# composes them all
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig(RunOptions, OptimOptions, DataOptions, ModelOptions,
                  cfglib.only(MicroBatchOptions, "micro_batch_tokens")):
    """Options every supervised stage shares (SFT, reward models, DPO, preference models)."""


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


def trackers_of(report_to: str) -> list[str]:
    """The tracker names of ``--report-to`` (``none`` or empty: no tracker)."""
    names = [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]
    unknown = [t for t in names if t not in TRACKERS]
    if unknown:
        raise cfglib.ConfigError(f"--report-to: unknown tracker(s) {', '.join(unknown)}; "
                                 f"choose from {', '.join(TRACKERS)} or none")
    return names


def make_accelerator(precision: str, log_with: Sequence[str] = (), out: Path | None = None):
    """An ``Accelerator`` with ``precision`` resolved for the current device.

    Args:
        precision: ``fp32``, ``bf16`` or ``auto``.
        log_with: Accelerate trackers to report to (their files go under ``out/tb``).
        out: The run folder.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = resolve_precision(precision, device)
    # Accelerate keeps one global state per process; a pipeline runs several stages (possibly at
    # different precisions) in one process, so start each stage from a fresh state. The
    # distributed part (process group, rank) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True is what makes accelerate set up a gloo process group under torchrun on a machine
    # without GPUs; without it every process believes it is alone.
    project = (ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tb"))
               if log_with and out is not None else None)
    return Accelerator(mixed_precision="bf16" if resolved == "bf16" else "no", cpu=device == "cpu",
                       log_with=list(log_with) or None, project_config=project)


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


def reachable_tensor_gib(*roots: Any) -> float:
    """GiB of the distinct host-memory tensor storages reachable from ``roots`` (gradients too).

    Follows references between objects (attributes, containers, closures) but not into modules,
    classes or functions' globals, so it measures what a trainer holds: its models, their
    gradients, the optimizer state, a frozen reference, reward models, an in-process engine's
    weights and KV cache. (A scan of ``gc.get_objects()`` would miss what vLLM has frozen.)
    """
    stop = {id(m.__dict__) for m in list(sys.modules.values()) if hasattr(m, "__dict__")}
    seen: set[int] = set()
    storages: dict[int, int] = {}
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, type | types.ModuleType):
            continue
        seen.add(id(obj))
        if torch.is_tensor(obj):
            for t in (obj, obj.grad):
                try:
                    if t is not None and not t.is_meta and t.device.type == "cpu":
                        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                except (RuntimeError, NotImplementedError):  # no real storage (fake tensors)
                    pass
        elif isinstance(obj, types.FunctionType):  # its closure's cells, not its globals
            todo.extend(obj.__closure__ or ())
        else:
            todo.extend(gc.get_referents(obj))
    return sum(storages.values()) / GIB


def seed_everything(seed: int) -> None:
    """Seed Python, and torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class MetricsLog:
    """``metrics.jsonl`` in a run folder, written by one process, and Accelerate's trackers."""

    def __init__(self, out: Path, enabled: bool, accelerator: Any = None) -> None:
        self.out, self.enabled, self.accelerator = out, enabled, accelerator
        self._file = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Append one record ``{"step": step, **metrics}``; nothing for an empty dict."""
        if not metrics:
            return
        values = {k: float(v) for k, v in metrics.items()}
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(values, step=step)  # every process calls; the main one writes
        if not self.enabled:
            return
        if self._file is None:
            self._file = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file and the trackers."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.accelerator is not None:
            # Not accelerator.end_training(): it also destroys the process group, which the
            # stage (and a pipeline's later stages) still need.
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []


class Checkpoints:
    """``step-NNNNNNN`` folders under ``root``: accelerate state plus the step, for exact resume.

    Under ``--fsdp`` (:attr:`sharded` set by :meth:`Run.prepare`) the models and the optimizer
    are not accelerate's: their state goes to ``sharded/``, a ``torch.distributed.checkpoint``
    folder that every process writes its own shards to; accelerate's part then holds the
    schedule, the registered state and the RNG.
    """

    def __init__(self, accelerator: Any, root: Path, keep: int) -> None:
        self.acc, self.root, self.keep = accelerator, root, keep
        self.sharded: tuple[list[torch.nn.Module], torch.optim.Optimizer] | None = None
        """The sharded models and their optimizer (``--fsdp``), else None."""

    def save(self, step: int) -> Path:
        """Write model, optimizer, registered objects and RNG state; keep the newest ``keep``."""
        path = self.root / f"step-{step:07d}"
        self.acc.save_state(str(path))
        if self.sharded is not None:
            save_sharded(path / "sharded", *self.sharded)
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
        written_sharded = (path / "sharded").is_dir()
        if written_sharded != (self.sharded is not None):
            how = "with --fsdp" if written_sharded else "without --fsdp (or on one process)"
            raise TrainingError(f"[{stage}] --resume: {path} was written {how}; resume it the "
                                f"same way")
        self.acc.load_state(str(path))
        if self.sharded is not None:
            load_sharded(path / "sharded", *self.sharded)
        step = json.loads((path / "loop_state.json").read_text())["step"]
        if self.acc.is_main_process:
            print(f"[{stage}] resumed from {path} at step {step}")
        return step


RUN_FILES = ("metrics.jsonl", "tb", "checkpoints", "samples.jsonl", "report.html")
"""What a run leaves in its folder that a fresh run must not mix with (``--overwrite``)."""


def claim_output_dir(out: Path, resume: bool, overwrite: bool, extra: Sequence[str] = ()) -> None:
    """Refuse a folder that holds an earlier run unless resuming it or asked to overwrite it.

    Args:
        out: The run folder.
        resume: The run continues the one there.
        overwrite: Delete what an earlier run left (``RUN_FILES`` and ``extra``).
        extra: More names that mark a stage's earlier run (``rounds.jsonl``, ``round-1``...).
    """
    used = [name for name in (*RUN_FILES, *extra) if (out / name).exists()]
    if not used or resume:
        return
    if not overwrite:
        raise TrainingError(
            f"{out} already holds a run ({', '.join(used)}); pass --resume to continue it, "
            f"--overwrite to start again there, or another --output-dir")
    for name in used:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Run:
    """One training run: see the module docstring.

    Args:
        cfg: The stage config (a :class:`RunOptions` and :class:`OptimOptions`).
        stage: Name used in logs and metric names (``sft``, ``rm``, ``ppo``, ...).
        seed_per_process: Add the process index to the seed (RL stages: each process samples
            its own responses, which one shared seed would correlate).
        accelerator: Reuse one (a stage that runs several loops), else a new one is made.
    """

    def __init__(self, cfg: Any, stage: str, seed_per_process: bool = False,
                 accelerator: Any = None) -> None:
        self.cfg, self.stage = cfg, stage
        self._noted_live = False
        self.live_roots: list[Any] = []
        """What the stage holds beyond this run (its RL state, a reference): memory.note_live."""
        if not cfg.progress:  # also the bars transformers and datasets draw while loading
            quiet_library_progress_bars()
        trackers = trackers_of(cfg.report_to)
        self.out = Path(cfg.output_dir)
        self.accelerator = acc = accelerator or make_accelerator(cfg.precision, trackers, self.out)
        seed_everything(cfg.seed + (acc.process_index if seed_per_process else 0))
        self.world, self.rank = acc.num_processes, acc.process_index
        self.device = acc.device
        self.is_main = acc.is_main_process
        if self.is_main:
            claim_output_dir(self.out, cfg.resume, cfg.overwrite)
            self.out.mkdir(parents=True, exist_ok=True)
            cfglib.save_yaml(cfg, self.out / "config.yaml")
        acc.wait_for_everyone()
        if "mlflow" in trackers:  # MLflow's default store is ./mlflow.db: keep it in the run
            os.environ.setdefault("MLFLOW_TRACKING_URI",
                                  f"sqlite:///{(self.out / 'tb' / 'mlflow.db').resolve()}")
            (self.out / "tb").mkdir(parents=True, exist_ok=True)
        if trackers and accelerator is None:
            acc.init_trackers("rlhfkit", config=_flat_config(cfg))  # tensorboard: out/tb/rlhfkit
        self.metrics_log = MetricsLog(self.out, self.is_main, acc)
        self.checkpoints = Checkpoints(acc, self.out / "checkpoints", cfg.keep_checkpoints)
        self.sharded = bool(getattr(cfg, "fsdp", False)) and self.world > 1
        """Models are sharded with FSDP2 (``--fsdp`` on several processes) instead of DDP."""
        if getattr(cfg, "fsdp", False) and self.world == 1 and self.is_main:
            print(f"[{stage}] --fsdp on one process: nothing to shard, training unsharded")
        if self.sharded and acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
            raise cfglib.ConfigError(f"--fsdp shards the models itself; launch without "
                                     f"accelerate's {acc.distributed_type.name} configuration")
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.postfix: dict[str, str] = {}
        """What the progress bar shows after the step just taken (set by the trainer)."""
        self.final_eval: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up
    def prepare(self, models: Sequence[torch.nn.Module], params: Sequence[torch.nn.Parameter],
                total_updates: int, state: Sequence[Any] = ()) -> list[torch.nn.Module]:
        """Make the optimizer and schedule, wrap ``models`` for the processes, register state.

        Models are wrapped by accelerate (DDP), or under ``--fsdp`` on several processes
        sharded in place with FSDP2 (:meth:`shard`), the optimizer then being built over the
        shards and checkpointed with ``torch.distributed.checkpoint``.

        Args:
            models: Modules to wrap, in order.
            params: The parameters the optimizer updates (inside ``models``).
            total_updates: Optimizer steps of the whole run (the schedule's length).
            state: More objects with ``state_dict``/``load_state_dict`` to checkpoint (after
                the schedule, in order: the order is the checkpoint format).

        Returns:
            The wrapped models, in order.
        """
        cfg = self.cfg
        if not params:
            raise TrainingError(f"{self.stage}: the model has no trainable parameters")
        if self.sharded:  # the optimizer must see the shards, so it is built after sharding
            params = self.shard(models, params)
        optimizer = make_optimizer(params, cfg.learning_rate, cfg.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.lr_scheduler,
                                    int(cfg.warmup_ratio * total_updates), total_updates)
        if self.sharded:
            wrapped, self.optimizer = list(models), optimizer
            self.checkpoints.sharded = (wrapped, optimizer)
        else:
            *wrapped, self.optimizer = self.accelerator.prepare(*models, optimizer)
        # The schedule is a function of the optimizer step, which is the same on every process;
        # accelerate's prepared scheduler would advance once per process. Keep ours, checkpointed.
        self.scheduler = scheduler
        self.accelerator.register_for_checkpointing(scheduler)
        for obj in state:
            self.accelerator.register_for_checkpointing(obj)
        return wrapped

    def shard(self, models: Sequence[torch.nn.Module], params: Sequence[torch.nn.Parameter]
              ) -> list[torch.nn.Parameter]:
        """Shard ``models`` in place with FSDP2 (``--fsdp``); returns the shards of ``params``.

        ``fully_shard`` replaces every parameter by a ``DTensor`` shard under the same name, so
        the optimizer's parameters are found again by name.
        """
        from torch.distributed.device_mesh import init_device_mesh

        wanted = {id(p) for p in params}
        names: dict[int, tuple[int, str]] = {}
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                if id(p) in wanted:
                    names.setdefault(id(p), (i, name))
        if len(names) != len(wanted):
            raise TrainingError(f"{self.stage}: --fsdp needs every trained parameter inside "
                                f"one of the models it shards")
        mesh = init_device_mesh(self.device.type, (self.world,))
        for model in models:
            shard_model(model, self.cfg, mesh)
        return [models[i].get_parameter(name) for i, name in names.values()]

    def export_copy(self, module: torch.nn.Module, build: Callable[[], torch.nn.Module]
                    ) -> torch.nn.Module | None:
        """The trained ``module`` as a plain module to save from the main process.

        Unsharded, that is ``module`` itself. Under ``--fsdp`` every process must call: the
        weights are gathered (``DTensor.full_tensor()``) and loaded into ``build()`` on the
        main process, which gets the copy; the others get None.
        """
        return unsharded_copy(module, build) if self.sharded else module

    # ------------------------------------------------------------------ updates
    def stop_if_nonfinite(self, nonfinite: bool | float, hint: str = "") -> None:
        """Raise the same :class:`TrainingError` on every process if any saw a NaN/inf loss.

        Every process must stop at the same point: one that raised alone would leave the
        others waiting in the next collective (the gradient all-reduce) forever.
        """
        flag = float(nonfinite)
        if self.world > 1:
            flag = reduce_sums(self.accelerator, {"nonfinite": flag})["nonfinite"]
        if flag > 0:
            raise TrainingError(
                f"[{self.stage}] the loss became NaN or infinite at step {self.step + 1}; "
                f"nothing was updated at this step. Try a lower --learning-rate, "
                f"--precision fp32{hint}, or check the data; resume from "
                f"{self.latest_checkpoint() or 'the start'} with --resume.")

    def backward(self, loss: torch.Tensor, hint: str = "") -> None:
        """Backward pass, after every process has checked that its loss is finite."""
        self.stop_if_nonfinite(not bool(torch.isfinite(loss.detach())), hint)
        self.accelerator.backward(loss)

    def optimizer_step(self) -> float:
        """Clip, step, advance the schedule, zero the gradients; returns the gradient norm."""
        norm = 0.0
        if self.cfg.max_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = float(self.accelerator.clip_grad_norm_(params, self.cfg.max_grad_norm))
            if not math.isfinite(norm):  # the global norm: the same on every process
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(f"[{self.stage}] non-finite gradient norm at step "
                                    f"{self.step + 1}; nothing was updated")
        self.optimizer.step()
        if not self._noted_live:  # the fullest moment: weights, gradients, optimizer state
            self._noted_live = True
            note_live(lambda: reachable_tensor_gib(self, *self.live_roots))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------ the loop
    def steps(self, total: int, evaluate: Callable[[], dict[str, float]] | None = None,
              unit: str = "step") -> Iterator[int]:
        """Yield step numbers from the resumed one up to ``total``.

        The caller does step ``s`` in the body of its loop; between steps this evaluates and
        checkpoints as configured, and shows progress. With ``evaluate``, it also evaluates
        before the first step (when ``--eval-every`` is set) and after the last one
        (:attr:`final_eval`).
        """
        cfg = self.cfg
        self.maybe_resume()
        bar = tqdm(total=total, initial=self.step, desc=self.stage, unit=unit,
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        if evaluate is not None and cfg.eval_every and self.step == 0:
            self.log(evaluate())  # the starting point, for comparison
        while self.step < total:
            yield self.step
            self.step += 1
            bar.update(1)
            if self.postfix:
                bar.set_postfix(self.postfix)
            if evaluate is not None and cfg.eval_every and self.step % cfg.eval_every == 0 \
                    and self.step < total:
                self.log(evaluate())
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < total:
                self.save_checkpoint()
        bar.close()
        if evaluate is not None:
            self.final_eval = evaluate()
            self.log(self.final_eval)

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append ``metrics`` to metrics.jsonl and the trackers (main process writes)."""
        self.metrics_log.log(metrics, self.step if step is None else step)

    def reduce_sums(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Sum scalars over processes (the same dict keys on every process)."""
        return reduce_sums(self.accelerator, values)

    def close(self) -> None:
        """Flush and close the logs."""
        self.metrics_log.close()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write model(s), optimizer, schedule, registered state and RNG for an exact resume."""
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


def held_out_summary(result: dict[str, Any]) -> str:
    """The held-out figures of an ``eval.json`` in one phrase (never a bare None).

    Counts and losses are left out when a rate is there; with nothing held out it says so and
    what to set.
    """
    shown = {k[len("eval/"):]: v for k, v in result.items()
             if k.startswith("eval/") and isinstance(v, int | float) and v == v}
    if not shown or shown.get("pairs") == 0:
        return ("no held-out evaluation (nothing was held out: give --eval-data, or an "
                "--eval-fraction that leaves some prompts out)")
    return "held-out " + ", ".join(f"{k} {v:.0f}" if float(v).is_integer() and abs(v) >= 1
                                   else f"{k} {v:.3f}" for k, v in shown.items())


def _flat_config(cfg: Any) -> dict[str, Any]:
    """The config as tracker hyper-parameters (scalars only; None as a string)."""
    return {k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in cfglib.to_dict(cfg).items()}


# ---------------------------------------------------------------------------------------------
# The supervised loop
# ---------------------------------------------------------------------------------------------


class Loop:
    """Optimizer steps over a list of items for a supervised stage; see the module docstring.

    Args:
        run: The stage's :class:`Run`.
        model: The module to train (its forward is what ``step`` calls).
        items: Training items; ``collate`` turns a list of them into a batch dict with
            ``num_units`` (and optionally ``num_tokens``).
        collate: Items -> batch.
        lengths: Item lengths, for grouping by length (default: all equal).
    """

    def __init__(
        self,
        run: Run,
        model: torch.nn.Module,
        items: Sequence[Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        lengths: Sequence[int] | None = None,
    ) -> None:
        self.run_ = run
        run.live_roots.append(self)
        cfg = self.cfg = run.cfg
        self.stage, self.items, self.collate = run.stage, items, collate
        self.accelerator, self.world, self.rank = run.accelerator, run.world, run.rank
        self.out = run.out
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.world
        if len(items) < self.global_batch:
            raise TrainingError(
                f"{self.stage}: {len(items)} training items is fewer than one global batch "
                f"({cfg.batch_size} per process x {cfg.grad_accum} accumulation x {self.world} "
                f"processes = {self.global_batch}); lower --batch-size or --grad-accum"
            )
        self.lengths = list(lengths) if lengths is not None else [1] * len(items)
        self.steps_per_epoch = len(items) // self.global_batch
        self.left_over = len(items) % self.global_batch
        self.total_steps = cfg.max_steps or max(1, int(self.steps_per_epoch * cfg.epochs))
        params = [p for p in model.parameters() if p.requires_grad]
        (self.model,) = run.prepare([model], params, self.total_steps)
        self._orders: dict[int, list[int]] = {}

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return self.run_.step

    # ------------------------------------------------------------------ data
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {
                epoch: epoch_order(
                    self.lengths, epoch, self.cfg.seed, self.global_batch, self.cfg.group_by_length
                )
            }
        return self._orders[epoch]

    def micro_batches(self, step: int) -> list[dict[str, Any] | None]:
        """The collated micro-batches this process runs at optimizer step ``step``.

        With ``--micro-batch-tokens`` the step's global batch is cut by tokens over all
        processes (:func:`rlhfkit.train.microbatch.plan_by_tokens`); ``None`` stands for an
        empty micro-batch, which a process with fewer items than the others runs as a forward
        and backward that changes nothing (each backward is a collective).
        """
        epoch, b = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        budget = self.cfg.micro_batch_tokens
        if budget:
            chosen = order[b * self.global_batch:(b + 1) * self.global_batch]
            plan = plan_by_tokens([self.lengths[i] for i in chosen], budget, self.world)
            return [self.collate([self.items[chosen[j]] for j in rows]) if rows else None
                    for rows in plan.rank(self.rank)]
        per_rank = self.cfg.batch_size * self.cfg.grad_accum
        start = b * self.global_batch + self.rank * per_rank
        local = order[start:start + per_rank]
        size = self.cfg.batch_size
        return [self.collate([self.items[i] for i in local[k:k + size]])
                for k in range(0, per_rank, size)]

    def describe(self) -> str:
        """One line on the batching, for the stage's start message."""
        note = (f"; {self.left_over} items sit out each epoch (a different {self.left_over} "
                f"each time)" if self.left_over else "")
        budget = self.cfg.micro_batch_tokens
        cut = f"; micro-batches of at most {budget} tokens" if budget else ""
        return (f"{self.total_steps} steps of {self.global_batch} ({self.cfg.batch_size} x "
                f"{self.cfg.grad_accum} accumulation x {self.world} process(es)){cut}{note}")

    # ------------------------------------------------------------------ helpers for stages
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append ``metrics`` to metrics.jsonl from the main process."""
        self.run_.log(metrics, step)

    def reduce_sums(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Sum scalars over processes (the same dict keys on every process)."""
        return self.run_.reduce_sums(values)

    def latest_checkpoint(self) -> Path | None:
        """Newest complete checkpoint in the run folder, if any."""
        return self.run_.latest_checkpoint()

    # ------------------------------------------------------------------ the loop
    def train_step(self, step_fn: StepFn) -> dict[str, float]:
        """One optimizer step over this step's global batch; returns averaged metrics."""
        acc = self.accelerator
        batches = self.micro_batches(self.step)
        real = [b for b in batches if b is not None]
        totals = self.reduce_sums({"units": sum(float(b["num_units"]) for b in real),
                                   "tokens": sum(float(b.get("num_tokens", 0)) for b in real)})
        global_units = max(totals["units"], 1e-12)
        sums: dict[str, float] = {}
        nonfinite = 0.0
        self.model.train()
        for k, batch in enumerate(batches):
            last = k == len(batches) - 1
            ctx = acc.no_sync(self.model) if (self.world > 1 and not last) else \
                contextlib.nullcontext()
            empty = batch is None  # this process has fewer items: one item's backward, times 0
            with ctx:
                with acc.autocast():
                    loss_sum, metric_sums = step_fn(
                        self.model, self.collate([self.items[0]]) if empty else batch)
                if empty:
                    acc.backward(loss_sum * 0.0)
                    continue
                if not torch.isfinite(loss_sum.detach()):
                    nonfinite = 1.0
                # DDP and FSDP average gradients over processes, hence the factor ``world``.
                acc.backward(loss_sum * (self.world / global_units))
            sums["loss"] = sums.get("loss", 0.0) + float(loss_sum.detach())
            for name, value in metric_sums.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        sums["_nonfinite"] = nonfinite
        reduced = self.reduce_sums(sums)  # the NaN flag travels with the metrics: no extra sync
        if reduced.pop("_nonfinite") > 0:
            self.run_.stop_if_nonfinite(True)  # world is summed already: raises everywhere
        grad_norm = self.run_.optimizer_step()
        metrics = {f"loss/{self.stage}" if k == "loss" else k: v / global_units
                   for k, v in reduced.items()}
        if self.cfg.max_grad_norm > 0:
            metrics["grad_norm"] = grad_norm
        metrics["lr"] = self.run_.lr
        metrics["_tokens"] = totals["tokens"]
        return metrics

    def run(
        self,
        step_fn: StepFn,
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Train to ``total_steps``, evaluating and checkpointing as configured.

        Returns:
            The last training metrics and the last evaluation's metrics.
        """
        run = self.run_
        last: dict[str, float] = {}
        t0, tokens = time.perf_counter(), 0.0
        for step in run.steps(self.total_steps, evaluate):
            metrics = self.train_step(step_fn)
            tokens += metrics.pop("_tokens")
            metrics["perf/tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
            metrics["epoch"] = (step + 1) / self.steps_per_epoch
            last = metrics
            run.postfix = {"loss": f"{metrics[f'loss/{self.stage}']:.4f}",
                           "tok_s": f"{metrics['perf/tokens_per_s']:.0f}"}
            if (step + 1) % self.cfg.log_every == 0 or step + 1 == self.total_steps:
                run.log(metrics, step + 1)
        run.close()
        if run.is_main:
            write_sections(run.out / "report.html", f"rlhfkit {self.stage}: {run.out}",
                           [training_section(run.out, self.stage)])
        return {**last, **run.final_eval}
