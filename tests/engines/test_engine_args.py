"""The engine's vLLM arguments and GPU assignment are pure functions: each case checked here.

These decide what a GPU run gets (CUDA graphs, chunked prefill, tensor parallelism, sleep mode,
the external launcher, which GPUs an engine process sees); on this CPU only the ``cpu`` case
runs for real (tests/engines/test_vllm.py), so each ``cuda`` case is pinned down here.
"""

from __future__ import annotations

import pytest

from rlhfkit.engines.vllm import engine_arguments, engine_visible_devices


def test_on_cpu_the_engine_is_eager_without_chunked_prefill_and_with_its_own_kv_cache():
    args = engine_arguments(device="cpu", kv_cache_gb=0.5, max_model_len=2048)
    assert args["enforce_eager"] is True and args["enable_chunked_prefill"] is False
    assert args["kv_cache_memory_bytes"] == 2**29
    assert args["max_num_batched_tokens"] == 8192 and args["max_model_len"] == 2048
    assert "tensor_parallel_size" not in args and "enable_sleep_mode" not in args
    assert args["logprobs_mode"] == "processed_logprobs" and args["enable_prefix_caching"]


def test_on_cuda_graphs_and_chunked_prefill_are_on_and_memory_is_a_share():
    args = engine_arguments(device="cuda", gpu_memory_utilization=0.5)
    assert args["enforce_eager"] is False and args["enable_chunked_prefill"] is True
    assert args["gpu_memory_utilization"] == 0.5 and "kv_cache_memory_bytes" not in args
    assert args["tensor_parallel_size"] == 1
    assert "enable_sleep_mode" not in args and "distributed_executor_backend" not in args


def test_cuda_options_each_reach_their_argument():
    args = engine_arguments(device="cuda", tensor_parallel_size=4, sleep_level=2,
                            cuda_graphs=False, chunked_prefill=False, external_launcher=True)
    assert args["tensor_parallel_size"] == 4 and args["enable_sleep_mode"] is True
    assert args["enforce_eager"] is True and args["enable_chunked_prefill"] is False
    assert args["distributed_executor_backend"] == "external_launcher"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tensor_parallel_size": 2}, "--vllm-tensor-parallel-size needs CUDA"),
    ({"sleep_level": 1}, "--vllm-sleep needs CUDA"),
    ({"external_launcher": True}, "the external launcher needs CUDA"),
])
def test_gpu_only_settings_are_refused_on_cpu(kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine_arguments(device="cpu", **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sleep_level": 3}, "--vllm-sleep must be 0, 1 or 2"),
    ({"gpu_memory_utilization": 0.0}, r"must be in \(0, 1\]"),
    ({"tensor_parallel_size": 0}, "must be >= 1"),
])
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine_arguments(device="cuda", **kwargs)


def test_engine_processes_get_the_gpus_after_the_trainers():
    assert engine_visible_devices(2, 1, gpus=4, trainer_gpus=2) == ["2", "3"]
    assert engine_visible_devices(2, 2, gpus=8, trainer_gpus=4) == ["4,5", "6,7"]
    assert engine_visible_devices(3, 1, gpus=0) == ["", "", ""]  # CPU
    with pytest.raises(ValueError, match="need 9 GPUs; this machine has 8"):
        engine_visible_devices(3, 2, gpus=8, trainer_gpus=3)


def test_a_sleeping_engine_wakes_before_the_next_sync():
    """--vllm-sleep: the engine sleeps after a rollout (until the trainer's update is done) and
    wakes before its weights are synced again; level 0 never sleeps. vLLM's ``LLM`` is a
    stand-in that records the calls (sleep mode itself needs CUDA)."""
    import torch

    from rlhfkit.engines.vllm import VLLMBackend, VLLMEngine

    calls = []

    class LLM:
        def sleep(self, level):
            calls.append(("sleep", level))

        def wake_up(self):
            calls.append(("wake",))

        def collective_rpc(self, *args, **kwargs):
            calls.append(("weights",))

        def reset_prefix_cache(self):
            pass

    engine = VLLMEngine.__new__(VLLMEngine)
    engine.llm, engine.sleep_level, engine.asleep = LLM(), 2, False
    engine.dtype, engine.tied, engine.version = torch.float32, False, 0
    backend = VLLMBackend(engine, lambda model: iter([("w", torch.zeros(2))]))
    model = torch.nn.Linear(2, 2)
    backend.sync(model, 1)
    backend.sleep()
    backend.sleep()  # already asleep: once
    backend.sync(model, 2)
    assert calls == [("weights",), ("sleep", 2), ("wake",), ("weights",)]
    engine.sleep_level, calls[:] = 0, []
    backend.sleep()
    assert calls == []


def test_each_torchrun_process_drives_its_own_gpu_engine(monkeypatch):
    """In-process engines under torchrun on GPUs take vLLM's external launcher (each on the
    GPU of its LOCAL_RANK); on CPU or in one process the default executor stays."""
    import torch.distributed as dist

    from rlhfkit.engines.vllm import external_launcher_here

    assert not external_launcher_here("cuda", 1)  # no process group: one process
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    assert external_launcher_here("cuda", 1)
    assert not external_launcher_here("cpu", 1)  # vLLM's CPU engines: one process each
    with pytest.raises(ValueError, match="--vllm-engines"):
        external_launcher_here("cuda", 2)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    assert not external_launcher_here("cuda", 1)
