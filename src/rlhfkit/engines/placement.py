"""RL across machines on Ray: the trainer group and the generation engines as placed actors.

``rlhfkit grpo --ray auto --ray-trainers 2 --ray-engines 2 ...`` (or ``--ray ADDRESS`` for a
cluster started with ``ray start --head`` / ``ray start --address``) does this:

1. connects to Ray and reserves one placement group: a bundle per trainer process and one per
   engine (``--ray-gpus-per-trainer``, ``--ray-gpus-per-engine``, ``--ray-cpus-per-worker``),
   packed onto as few nodes as fit (``PACK``), or spread (``--ray-strategy SPREAD``);
2. starts an engine actor in each engine bundle: it serves a vLLM engine on its node
   (:func:`rlhfkit.engines.remote.serve_engine`) and reports its address;
3. starts the trainer actors: together they are one ``torch.distributed`` world (rank 0's node
   is the rendezvous), each runs the same stage function with ``--vllm-engines`` set to the
   engines' addresses, so rollouts are spread over the engines and weights reach them over a
   process group of their own (:class:`rlhfkit.engines.remote.RemoteBackend`);
   With ``--ray-ref-actor`` / ``--ray-reward-actor`` one more bundle each holds the reference
   policy / the reward sources on a model actor (``model_actor``, the trainer's
   :class:`rlhfkit.train.services.ModelActor`), which every trainer process calls instead of
   holding its own copy;
4. waits; when an actor dies (its node went away) the run stops with one line naming it, and
   the stage can go on from its last checkpoint with ``--resume``.

Ray is an optional extra (``pip install 'rlhfkit[ray]'``), imported only here.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable
from typing import Any

from rlhfkit.engines.remote import KEY_ENV, EngineConfig, RemoteEngineError, free_port, serve_engine

RAY_EXTRA = "--ray needs the 'ray' extra: pip install 'rlhfkit[ray]'"

SERVICES: dict[str, Any] = {}
"""The model actors' handles this trainer process was given (``reference``, ``rewards``), set
by :class:`_TrainerActor` before the stage starts."""


class ServiceError(RuntimeError):
    """A model actor is asked for where none was started."""


def service(name: str) -> Any:
    """The handle of the ``name`` model actor (``reference`` or ``rewards``) of this process."""
    if name not in SERVICES:
        raise ServiceError("--ray-ref-actor and --ray-reward-actor place models on Ray actors: "
                           "they need --ray (e.g. --ray auto)")
    return SERVICES[name]


def _ray() -> Any:
    try:
        import ray  # an optional extra
    except ImportError:
        raise RemoteEngineError(RAY_EXTRA) from None
    return ray


class _EngineActor:
    """Serves one engine on the actor's node (run as a Ray actor)."""

    def address(self) -> str:
        import ray

        self.host = ray.util.get_node_ip_address()
        self.port = free_port()
        return f"{self.host}:{self.port}"

    def serve(self, cfg: EngineConfig) -> None:
        serve_engine(dataclasses.replace(cfg, host="0.0.0.0", port=self.port))


class _TrainerActor:
    """One process of the trainer group (run as a Ray actor)."""

    def node(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        """A port free on this actor's node (rank 0's: the rendezvous listens there)."""
        return free_port()

    def train(self, fn: Callable[[Any], Any], cfg: Any, env: dict[str, str],
              services: dict[str, Any] | None = None) -> str:
        os.environ.update(env)
        SERVICES.update(services or {})  # the model actors (--ray-ref-actor, ...)
        return str(fn(cfg))


def run_on_ray(fn: Callable[[Any], Any], cfg: Any, log: Any = print,
               model_actor: type | None = None) -> Any:
    """Run the stage ``fn(cfg)`` on Ray as described in the module docstring.

    ``cfg`` needs ``ray`` (an address or ``auto``), ``ray_trainers``, ``ray_engines``,
    ``ray_gpus_per_trainer``, ``ray_gpus_per_engine``, ``ray_cpus_per_worker``,
    ``ray_strategy`` and the engine options (``model``, ``vllm_kv_cache_gb``, precision).
    Returns what rank 0's ``fn`` returned (the saved policy's folder, as a string).
    ``model_actor`` is the class of the actors that ``--ray-ref-actor`` and
    ``--ray-reward-actor`` start.
    """
    ray = _ray()
    if cfg.ray_engines < 1:
        raise RemoteEngineError("--ray needs at least one engine (--ray-engines 1)")
    if cfg.ray == "auto" and not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    elif not ray.is_initialized():
        ray.init(address=cfg.ray, ignore_reinit_error=True, log_to_driver=False)
    cpus, tg, eg = cfg.ray_cpus_per_worker, cfg.ray_gpus_per_trainer, cfg.ray_gpus_per_engine
    wanted = [name for name, on in (("reference", getattr(cfg, "ray_ref_actor", False)),
                                    ("rewards", getattr(cfg, "ray_reward_actor", False))) if on]
    if wanted and model_actor is None:
        raise RemoteEngineError("this stage has no model actors: leave --ray-ref-actor and "
                                "--ray-reward-actor off")
    bundles = ([{"CPU": cpus, **({"GPU": tg} if tg else {})}] * (cfg.ray_trainers + len(wanted))
               + [{"CPU": cpus, **({"GPU": eg} if eg else {})}] * cfg.ray_engines)
    group = ray.util.placement_group(bundles, strategy=cfg.ray_strategy)
    ray.get(group.ready(), timeout=600)
    key = os.environ.setdefault(KEY_ENV, secrets.token_hex(16))
    env = {KEY_ENV: key, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}

    def placed(cls: type, index: int, gpus: float) -> Any:
        strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=index)
        return ray.remote(cls).options(num_cpus=cpus, num_gpus=gpus,
                                       scheduling_strategy=strategy,
                                       runtime_env={"env_vars": env}).remote()

    first_engine = cfg.ray_trainers + len(wanted)  # bundles: trainers, model actors, engines
    engines = [placed(_EngineActor, first_engine + e, eg) for e in range(cfg.ray_engines)]
    services = {name: placed(model_actor, cfg.ray_trainers + i, tg)
                for i, name in enumerate(wanted)}
    addresses = ray.get([e.address.remote() for e in engines])
    dtype = "bfloat16" if cfg.precision in ("bf16", "auto") else "float32"
    engine_cfg = EngineConfig(model=cfg.model, dtype=dtype, kv_cache_gb=cfg.vllm_kv_cache_gb,
                              max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens + 1,
                              seed=cfg.seed)
    serving = [e.serve.remote(engine_cfg) for e in engines]
    log(f"[ray] {cfg.ray_engines} engine(s) at {', '.join(addresses)}; "
        f"{cfg.ray_trainers} trainer process(es)"
        + (f"; model actors: {', '.join(wanted)}" if wanted else ""))
    trainers = [placed(_TrainerActor, t, tg) for t in range(cfg.ray_trainers)]
    master = ray.get(trainers[0].node.remote())
    port = ray.get(trainers[0].free_port.remote())  # free where rank 0 listens, not here
    worker_cfg = dataclasses.replace(cfg, ray="", vllm_engines=",".join(addresses),
                                     generation_backend="vllm")
    runs = []
    for rank, trainer in enumerate(trainers):
        host = ray.get(trainer.node.remote())
        env_rank = {"MASTER_ADDR": master, "MASTER_PORT": str(port), "RANK": str(rank),
                    "WORLD_SIZE": str(cfg.ray_trainers), "LOCAL_RANK": "0",
                    "LOCAL_WORLD_SIZE": "1", "RLHFKIT_TRAINER_HOST": host}
        runs.append(trainer.train.remote(fn, worker_cfg, env_rank, services))
    try:
        # Wait for the first trainer to end: when one fails, the others are stuck in a
        # collective with it, so waiting for all of them in order could hang.
        pending = list(runs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        results = ray.get(runs)
    except ray.exceptions.RayActorError as err:
        raise RemoteEngineError(f"a trainer process died on Ray ({err.__class__.__name__}: its "
                                "node may have gone away); go on from the last checkpoint with "
                                "--resume") from None
    except ray.exceptions.RayTaskError as err:  # the stage raised in a trainer process
        cause = getattr(err, "cause", None) or err
        raise RemoteEngineError(f"a trainer process failed on Ray: {cause}; go on from the last "
                                "checkpoint with --resume") from None
    finally:
        for actor in (*trainers, *engines, *services.values()):
            ray.kill(actor)
        ray.util.remove_placement_group(group)
        del serving
    return results[0]
