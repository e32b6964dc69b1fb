"""Generation engines apart from the trainer: other processes, other machines, Ray actors.

Each engine is a process holding one :class:`~rlhfkit.engines.vllm.VLLMEngine` and answering
commands on a socket (``multiprocessing.connection``, with an auth key):

- ``generate``: sample from token-id prompts; returns token ids and the engine's log-probs;
- weights: either a broadcast over a process group of its own (``gloo`` on CPU, ``nccl`` on
  GPUs) that the trainer's rank 0 and every engine join (rank 0 sends, the engines receive),
  or a safetensors file the trainer writes (``--weight-sync file``, e.g. in ``/dev/shm``)
  that every engine reloads.

The trainer side is :class:`RemoteBackend`, a ``GenerationBackend``: it spreads the prompts of
a rollout over the engines (keeping the k copies of a prompt on one engine, so its prefill is
shared) and syncs all engines when the policy's version changes. Trainer processes that are
more than the engines share them through :class:`SharedEngines`: process 0 syncs and feeds
every engine, with the prompts of all processes. Engines start with
``rlhfkit engine --model PATH --port P`` (any machine that can load the model), or are started
here by the RL stage (``--vllm-engines N``), or as Ray actors (:mod:`rlhfkit.engines.placement`).
"""

from __future__ import annotations

import atexit
import datetime
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from rlhfkit.config import only, stage_defaults
from rlhfkit.data.chat import repeats
from rlhfkit.engines.buckets import pack, plan_for, total_bytes, unpack
from rlhfkit.engines.vllm import VLLMEngine, engine_visible_devices
from rlhfkit.options import ModelOptions, RunOptions

KEY_ENV = "RLHFKIT_ENGINE_KEY"
"""The environment variable that holds the engines' auth key (the trainer and every engine)."""


class RemoteEngineError(RuntimeError):
    """An engine apart from the trainer failed or went away; the message says which and why."""

    user_facing = True


# ---------------------------------------------------------------------------------------------
# The weight channel: a process group of its own between rank 0 and the engines
# ---------------------------------------------------------------------------------------------


class WeightChannel:
    """A standalone process group (not the trainer's): rank 0 broadcasts, engines receive.

    Args:
        host: Address of rank 0 (it holds the rendezvous store).
        port: Port of the store.
        rank: 0 for the trainer, 1..N for the engines.
        world: 1 + the number of engines.
        backend: ``gloo`` (CPU tensors) or ``nccl`` (CUDA tensors).
        timeout_s: How long a broadcast may wait for the others.
    """

    def __init__(self, host: str, port: int, rank: int, world: int, backend: str = "gloo",
                 timeout_s: float = 600.0) -> None:
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world, rank == 0, timeout=timeout)
        prefixed = dist.PrefixStore("rlhfkit-weights", store)
        if backend == "gloo":
            self.group = dist.ProcessGroupGloo(prefixed, rank, world, timeout)
        elif backend == "nccl":
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world)
        else:
            raise ValueError(f"weight channel backend must be gloo or nccl, got {backend!r}")
        self.store, self.rank, self.world = store, rank, world
        self.device = "cuda" if backend == "nccl" else "cpu"

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (in place on the receivers)."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([tensor], opts).wait()
        return tensor


def free_port() -> int:
    """A TCP port that is free on this machine now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The engine process
# ---------------------------------------------------------------------------------------------


@stage_defaults(model="runs/sft/model")
@dataclass
class EngineConfig(only(RunOptions, "seed"), only(ModelOptions, "model")):
    """A generation engine for RL stages on other processes or machines (``rlhfkit engine``)."""

    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 for trainers on other machines)."""
    port: int = 7100
    """Port to listen on."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """The engine's weight dtype: bfloat16 or float32."""
    max_model_len: int = 1024
    """Longest prompt + response in tokens."""
    kv_cache_gb: float = 0.25
    """Memory for the KV cache, GiB."""


def serve_engine(cfg: EngineConfig) -> None:
    """Run one engine until a trainer tells it to stop (the auth key comes from the environment)."""
    key = os.environ.get(KEY_ENV)
    if not key:
        raise RemoteEngineError(f"set {KEY_ENV} to the same secret on the engines and the trainer")
    engine = VLLMEngine(cfg.model, dtype=cfg.dtype, seed=cfg.seed, max_model_len=cfg.max_model_len,
                        kv_cache_gb=cfg.kv_cache_gb)
    with Listener((cfg.host, cfg.port), authkey=key.encode()) as listener:
        print(f"[engine] serving {cfg.model} on {cfg.host}:{cfg.port}", flush=True)
        while True:
            with listener.accept() as conn:
                if _answer(engine, conn) == "close":
                    return


def _answer(engine: Any, conn: Connection) -> str:
    """Answer one trainer's commands until it disconnects or says ``close``."""
    channel: WeightChannel | None = None
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):
            return "disconnected"
        try:
            if command == "close":
                conn.send(("ok", None))
                return "close"
            if command == "generate":
                result = engine.generate(*args)
            elif command == "join":
                channel = WeightChannel(*args)
                result = None
            elif command == "receive":  # one broadcast per bucket, unpacked as it arrives
                buckets, version = args
                tensors = (pair for b in buckets for pair in unpack(b, channel.broadcast(
                    torch.empty(b.nbytes, dtype=torch.uint8, device=channel.device))))
                engine.load_weights(tensors, version)
                result = None
            elif command == "load_file":
                from safetensors.torch import load_file

                path, version = args
                engine.load_weights(load_file(path).items(), version)
                result = None
            elif command == "ping":
                result = engine.model_path
            elif command == "dtype":
                result = str(engine.dtype).removeprefix("torch.")
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", result))
        except Exception as err:  # noqa: BLE001 - reported to the trainer, which raises it
            conn.send(("error", f"{type(err).__name__}: {err}"))


# ---------------------------------------------------------------------------------------------
# The trainer side
# ---------------------------------------------------------------------------------------------


class EngineClient:
    """A connection to one engine: send a command now, collect its answer later.

    Args:
        address: ``HOST:PORT`` of the engine.
        key: The engines' auth key.
        connect_timeout_s: How long to wait for the engine to answer at all.
        timeout_s: How long any one answer may take (``--engine-timeout``): an engine that has
            died or hangs is then a :class:`RemoteEngineError`, never a silent wait.
    """

    def __init__(self, address: str, key: str, connect_timeout_s: float = 600.0,
                 timeout_s: float = 600.0) -> None:
        host, _, port = address.rpartition(":")
        self.address, self.timeout_s = address, timeout_s
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                self.conn = Client((host or "127.0.0.1", int(port)), authkey=key.encode())
                break
            except (ConnectionRefusedError, OSError) as err:
                if time.monotonic() > deadline:
                    raise RemoteEngineError(f"no engine answers at {address}: {err}") from None
                time.sleep(0.5)

    def send(self, command: str, *args: Any) -> None:
        """Start a command."""
        try:
            self.conn.send((command, args))
        except (OSError, EOFError) as err:
            raise RemoteEngineError(self._gone(err)) from None

    def result(self) -> Any:
        """The answer of the command sent last (raises :class:`RemoteEngineError` on failure)."""
        try:
            if not self.conn.poll(self.timeout_s):
                raise RemoteEngineError(
                    f"engine {self.address} did not answer within {self.timeout_s:g} s "
                    "(--engine-timeout); if it died, the run can go on from its last checkpoint "
                    "with --resume once the engine is back")
            status, value = self.conn.recv()
        except (OSError, EOFError) as err:
            raise RemoteEngineError(self._gone(err)) from None
        if status != "ok":
            raise RemoteEngineError(f"engine {self.address}: {value}")
        return value

    def call(self, command: str, *args: Any) -> Any:
        """Send a command and wait for its answer."""
        self.send(command, *args)
        return self.result()

    def _gone(self, err: Exception) -> str:
        return (f"engine {self.address} went away ({type(err).__name__}); the run can go on from "
                "its last checkpoint with --resume once the engine is back")


class RemoteBackend:
    """``GenerationBackend`` over engines apart from the trainer (see the module docstring).

    Args:
        clients: One :class:`EngineClient` per engine.
        weights: ``weights(model) -> (name, tensor)`` pairs in HF checkpoint names.
        sync: ``gloo`` or ``nccl`` (a broadcast) or ``file`` (a safetensors file).
        sync_dir: Where ``file`` writes (a folder every engine can read; ``/dev/shm`` on one
            machine).
        channel_host: The address the engines reach this process at, for the broadcast.
    """

    def __init__(self, clients: Sequence[EngineClient], weights: Any, sync: str = "gloo",
                 sync_dir: str | Path = "/dev/shm", channel_host: str = "127.0.0.1",
                 bucket_mb: float = 256.0, timeout_s: float = 600.0) -> None:
        if sync not in ("gloo", "nccl", "file"):
            raise ValueError(f"--weight-sync must be gloo, nccl or file, got {sync!r}")
        self.clients, self.weights, self.sync_mode = list(clients), weights, sync
        self.sync_dir, self.channel_host = Path(sync_dir), channel_host
        self.bucket_bytes, self.timeout_s = max(1, int(bucket_mb * 2**20)), timeout_s
        self.dtype = getattr(torch, self.clients[0].call("dtype")) if self.clients else \
            torch.bfloat16
        """The engines' weight dtype: tensors are cast to it before they are sent."""
        self.last_sync: dict[str, float] = {}
        """``seconds`` and ``megabytes`` of the latest sync (logged as ``sync/...``)."""
        self.channel: WeightChannel | None = None
        self.version: int | None = 0
        self.seed: int | None = None
        self.last_logprobs: list[list[float]] | None = None
        self._synced_model: int | None = None

    # ------------------------------------------------------------------ weights
    def _open_channel(self) -> WeightChannel:
        if self.channel is None:
            port, world = free_port(), 1 + len(self.clients)
            for rank, client in enumerate(self.clients, start=1):
                client.send("join", self.channel_host, port, rank, world, self.sync_mode,
                            self.timeout_s)
            self.channel = WeightChannel(self.channel_host, port, 0, world, self.sync_mode,
                                         timeout_s=self.timeout_s)
            for client in self.clients:
                client.result()
        return self.channel

    def sync(self, model: torch.nn.Module, version: int) -> bool:
        """Send the policy's weights to every engine unless they hold this version already.

        Broadcast: the weights go in buckets of ``--sync-bucket-mb`` (one flat buffer each,
        cast to the engines' dtype, each tied weight once); the engines unpack each bucket as
        it arrives. ``last_sync`` holds the time and megabytes sent.
        """
        if self.version == version and self._synced_model == id(model):
            return False
        start = time.perf_counter()
        buckets, tensors = plan_for(self.weights(model), self.bucket_bytes, self.dtype)
        if self.sync_mode == "file":
            self._sync_file(tensors.items(), version)
        else:
            channel = self._open_channel()
            device = "cuda" if self.sync_mode == "nccl" else "cpu"
            for client in self.clients:
                client.send("receive", buckets, version)
            for bucket in buckets:
                channel.broadcast(pack(bucket, tensors, device))
            for client in self.clients:
                client.result()
        self.last_sync = {"seconds": time.perf_counter() - start,
                          "megabytes": total_bytes(buckets) / 2**20, "buckets": len(buckets)}
        self.version, self._synced_model = version, id(model)
        return True

    def _sync_file(self, named: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        from safetensors.torch import save_file

        self.sync_dir.mkdir(parents=True, exist_ok=True)
        path = self.sync_dir / f"rlhfkit-weights-{os.getpid()}.safetensors"
        # safetensors refuses tensors that share memory (tied embeddings): one copy each
        save_file({n: t.detach().cpu().contiguous().clone() for n, t in named}, str(path))
        for client in self.clients:
            client.send("load_file", str(path), version)
        for client in self.clients:
            client.result()
        path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]],
                 sampling: Any, eos_token_ids: Sequence[int], pad_token_id: int
                 ) -> list[list[int]]:
        """Sample on the engines, whole groups of k copies spread over them in turn."""
        if self._synced_model != id(model):
            self.sync(model, self.version if self.version is not None else -1)
        k = repeats(prompt_ids)
        groups = [list(range(i, i + k)) for i in range(0, len(prompt_ids), k)]
        shares = [groups[e::len(self.clients)] for e in range(len(self.clients))]
        plain = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                 "top_p": sampling.top_p, "top_k": sampling.top_k}
        busy = []
        for e, (client, share) in enumerate(zip(self.clients, shares)):
            if share:
                rows = [i for g in share for i in g]
                seed = None if self.seed is None else self.seed + 10_007 * e
                client.send("generate", [list(prompt_ids[i]) for i in rows], _Sampling(**plain),
                            list(eos_token_ids), k, seed)
                busy.append((client, rows))
        ids: list[list[int]] = [[] for _ in prompt_ids]
        logprobs: list[list[float]] = [[] for _ in prompt_ids]
        for client, rows in busy:
            for i, (row_ids, row_lps) in zip(rows, client.result()):
                ids[i], logprobs[i] = row_ids, row_lps
        self.last_logprobs = logprobs
        return ids

    def close(self) -> None:
        """Tell the engines to stop."""
        for client in self.clients:
            try:
                client.call("close")
            except RemoteEngineError:
                pass


class SharedEngines:
    """``GenerationBackend`` for trainer processes that share fewer engines than they are.

    Process 0 holds the connections (a :class:`RemoteBackend` over every engine) and syncs
    every engine once per policy version; every process hands its prompts to process 0, which
    spreads all of them over all the engines (a prompt's k copies together), and gets its own
    responses and their log-probs back. Each call is a collective over the trainer processes,
    so every process must make the same calls in the same order (the RL loop does: each
    samples once per step). Under FSDP2 (``gather_everywhere``) every process takes part in
    gathering each sharded parameter for the sync; only process 0 sends.

    Args:
        inner: The backend over every engine on process 0; None on the others.
        weights: ``weights(model) -> (name, tensor)`` pairs, as the inner backend's.
        gather_everywhere: The weights are sharded: every process must read them for a sync.
    """

    def __init__(self, inner: RemoteBackend | None, weights: Any,
                 gather_everywhere: bool = False) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if (inner is None) != (self.rank != 0):
            raise ValueError("SharedEngines: process 0, and only it, holds the engines")
        self.inner, self.weights, self.gather_everywhere = inner, weights, gather_everywhere
        self.version: int | None = 0
        self.seed: int | None = None
        self.last_logprobs: list[list[float]] | None = None
        self.last_sync: dict[str, float] = {}
        self._synced_model: int | None = None

    def sync(self, model: torch.nn.Module, version: int) -> bool:
        """Bring every engine to ``version`` (process 0 sends; see the class docstring)."""
        if self.version == version and self._synced_model == id(model):
            return False
        if self.inner is not None:
            self.inner.sync(model, version)
        elif self.gather_everywhere:  # each sharded parameter is gathered by all processes
            for _ in self.weights(model):
                pass
        # Every process logs the one sync's time and size (the metrics are averaged over
        # processes, and each must log the same keys).
        box = [dict(self.inner.last_sync) if self.inner is not None else None]
        dist.broadcast_object_list(box, src=0)
        self.last_sync = box[0] or {}
        self.version, self._synced_model = version, id(model)
        return True

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]],
                 sampling: Any, eos_token_ids: Sequence[int], pad_token_id: int
                 ) -> list[list[int]]:
        """Sample every process's prompts on the shared engines; returns this process's."""
        if self._synced_model != id(model):
            self.sync(model, self.version if self.version is not None else -1)
        asked: list[Any] = [None] * self.world
        dist.all_gather_object(asked, [list(p) for p in prompt_ids])
        answers: list[Any] | None = None
        if self.inner is not None:
            self.inner.seed = self.seed
            every = [p for share in asked for p in share]
            ids = self.inner.generate(model, every, sampling, eos_token_ids, pad_token_id)
            lps = self.inner.last_logprobs or [[] for _ in ids]
            answers, start = [], 0
            for share in asked:
                answers.append((ids[start:start + len(share)], lps[start:start + len(share)]))
                start += len(share)
        mine: list[Any] = [None]
        dist.scatter_object_list(mine, answers, src=0)
        ids, self.last_logprobs = mine[0]
        return ids

    def close(self) -> None:
        """Tell the engines to stop (process 0)."""
        if self.inner is not None:
            self.inner.close()


@dataclass
class _Sampling:
    """The sampling settings an engine needs (picklable, without rlhfkit's rollout module)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int


def start_local_engines(n: int, model: str, dtype: str = "bfloat16", max_model_len: int = 1024,
                        kv_cache_gb: float = 0.25, seed: int = 0, log: Any = print,
                        timeout_s: float = 600.0
                        ) -> tuple[list[EngineClient], list[subprocess.Popen]]:
    """Start ``n`` engine processes on this machine and connect to them.

    On a machine with GPUs each engine sees its own (``CUDA_VISIBLE_DEVICES``): the trainer's
    processes keep the first ones, and each trainer process's engines take the next
    (:func:`rlhfkit.engines.vllm.engine_visible_devices`).
    """
    key = os.environ.setdefault(KEY_ENV, secrets.token_hex(16))
    procs, addresses = [], []
    atexit.register(_stop, procs)  # a trainer that dies does not leave engines behind
    trainers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = engine_visible_devices(trainers * n, 1, gpus, trainers if gpus else 0)
    for i in range(n):
        port = free_port()
        cmd = [sys.executable, "-m", "rlhfkit.cli", "engine", "--model", model, "--port", str(port),
               "--dtype", dtype, "--max-model-len", str(max_model_len),
               "--kv-cache-gb", str(kv_cache_gb), "--seed", str(seed + i)]
        env = {**os.environ, KEY_ENV: key}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = devices[local * n + i]
        procs.append(subprocess.Popen(cmd, env=env))
        addresses.append(f"127.0.0.1:{port}")
    log(f"[generation] started {n} vLLM engine process(es) at {', '.join(addresses)}")
    clients = []
    for address, proc in zip(addresses, procs):
        try:
            clients.append(EngineClient(address, key, timeout_s=timeout_s))
        except RemoteEngineError:
            if proc.poll() is not None:
                raise RemoteEngineError(f"the engine at {address} exited with status "
                                        f"{proc.returncode} before answering") from None
            raise
    return clients, procs


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
