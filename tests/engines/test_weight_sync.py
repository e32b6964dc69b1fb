"""Weight sync to engines apart, without vLLM: the engine's side of the protocol on a stand-in.

The engine process's command loop (``engines.remote._answer``) runs in a thread with an engine
that only records what it is given; the trainer's :class:`RemoteBackend` syncs a tiny model
into it over the real gloo weight channel. Checked: every weight arrives, cast to the engine's
dtype, the tied output layer once, in as many buckets as ``--sync-bucket-mb`` gives; and an
engine that stops answering is an error within ``--engine-timeout``, not a hang.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import Listener

import pytest
import torch

from rlhfkit.engines.buckets import plan_for
from rlhfkit.engines.remote import EngineClient, RemoteBackend, RemoteEngineError, _answer
from rlhfkit.engines.vllm import retied
from rlhfkit.models.loading import checkpoint_weights, load_causal_lm

KEY = "test-key"


class RecordingEngine:
    """Stands in for a VLLMEngine: keeps the weights it is given."""

    model_path = "stand-in"
    dtype = torch.bfloat16

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.version = None

    def load_weights(self, named, version=None):
        self.weights = {n: t.clone() for n, t in named}
        self.version = version


def serve(engine, listener: Listener, answer: bool = True) -> threading.Thread:
    def run():
        with listener.accept() as conn:
            if answer:
                _answer(engine, conn)
            else:  # take commands and never answer (a hung engine)
                while True:
                    try:
                        conn.recv()
                    except (EOFError, OSError):
                        return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_bucketed_sync_delivers_every_weight_cast_and_tied_once(tiny_lm):
    lm = load_causal_lm(str(tiny_lm))
    assert lm.config.tie_word_embeddings
    engine = RecordingEngine()
    with Listener(("127.0.0.1", 0), authkey=KEY.encode()) as listener:
        serve(engine, listener)
        client = EngineClient(f"127.0.0.1:{listener.address[1]}", KEY, timeout_s=60)
        backend = RemoteBackend([client], checkpoint_weights, sync="gloo", bucket_mb=0.05)
        assert backend.dtype == torch.bfloat16  # asked of the engine
        assert backend.sync(lm, 3)
        sent = dict(checkpoint_weights(lm))
        assert engine.version == 3
        assert engine.weights.keys() == sent.keys() and "lm_head.weight" not in sent
        for name, tensor in sent.items():
            assert torch.equal(engine.weights[name], tensor.to(torch.bfloat16)), name
        buckets, _ = plan_for(sent.items(), int(0.05 * 2**20), torch.bfloat16)
        assert backend.last_sync["buckets"] == len(buckets) > 1
        megabytes = sum(t.numel() * 2 for t in sent.values()) / 2**20
        assert backend.last_sync["megabytes"] == pytest.approx(megabytes, rel=0.01)
        assert not backend.sync(lm, 3)  # the same version again: nothing sent
        client.send("close")


def test_the_engine_ties_the_output_layer_again():
    embed = torch.randn(4, 2)
    named = [("model.embed_tokens.weight", embed), ("model.norm.weight", torch.ones(2))]
    out = dict(retied(named, tied=True))
    assert out["lm_head.weight"] is embed
    assert "lm_head.weight" not in dict(retied(named, tied=False))


def test_an_engine_that_stops_answering_is_an_error_within_the_timeout():
    with Listener(("127.0.0.1", 0), authkey=KEY.encode()) as listener:
        serve(None, listener, answer=False)
        client = EngineClient(f"127.0.0.1:{listener.address[1]}", KEY, timeout_s=1.5)
        start = time.monotonic()
        with pytest.raises(RemoteEngineError, match=r"did not answer within 1.5 s "
                                                    r"\(--engine-timeout\)"):
            client.call("ping")
        assert time.monotonic() - start < 10
