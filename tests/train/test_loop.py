"""The shared loop: exact resume, process-count invariance, the NaN guard, data order, trackers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.train.loop import TrainingError, build_scheduler, epoch_order
from rlhfkit.train.sft import SFTConfig, train_sft

HERE = Path(__file__).parent


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


def sft_cfg(tiny_lm, out, **kw):
    base = dict(model=str(tiny_lm), output_dir=str(out), max_steps=6, batch_size=4, grad_accum=2,
                learning_rate=1e-3, warmup_ratio=0.0, progress=False, precision="fp32",
                eval_fraction=0.0)
    base.update(kw)
    return SFTConfig(**base)


def test_resume_matches_uninterrupted_run(tiny_lm, tmp_path):
    full = train_sft(sft_cfg(tiny_lm, tmp_path / "full", save_every=3))
    assert (tmp_path / "full" / "checkpoints" / "step-0000003").exists()
    # A run that "stopped" after step 3: start a new folder from that checkpoint and resume.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    os.symlink(tmp_path / "full" / "checkpoints" / "step-0000003",
               part / "checkpoints" / "step-0000003")
    resumed = train_sft(sft_cfg(tiny_lm, part, resume=True))
    assert_same(weights(full), weights(resumed), atol=0.0)
    assert len(read_metrics(part)) == 3  # only steps 4..6 were run again


def test_nan_guard_stops_with_a_clear_message(tmp_path):
    """A step that produces NaN at step 3 stops training before any update from it."""
    from rlhfkit.train.loop import Loop, Run, TrainConfig

    model = torch.nn.Linear(2, 1)
    items = [torch.tensor([float(i), 1.0]) for i in range(16)]

    def collate(batch):
        return {"x": torch.stack(batch), "num_units": len(batch)}

    calls = {"n": 0}

    def step(m, batch):
        calls["n"] += 1
        loss = m(batch["x"]).pow(2).sum()
        return (loss * float("nan") if calls["n"] == 3 else loss), {}

    cfg = TrainConfig(output_dir=str(tmp_path), batch_size=4, max_steps=4, progress=False,
                      precision="fp32", learning_rate=0.01)
    loop = Loop(Run(cfg, "toy"), model, items, collate)
    with pytest.raises(TrainingError, match=r"\[toy\] the loss became NaN or infinite at step 3"):
        loop.run(step)
    assert loop.step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fewer_items_than_a_batch_is_an_error(tiny_lm, tmp_path):
    with pytest.raises(TrainingError, match="fewer than one global batch"):
        train_sft(sft_cfg(tiny_lm, tmp_path / "big", batch_size=4096))


def test_epoch_order_is_a_deterministic_permutation_grouped_by_length():
    lengths = [i % 17 for i in range(200)]
    a = epoch_order(lengths, 0, 1, 8, True)
    assert sorted(a) == list(range(200)) and a == epoch_order(lengths, 0, 1, 8, True)
    assert a != epoch_order(lengths, 1, 1, 8, True)
    spread = [max(lengths[i] for i in a[k:k + 8]) - min(lengths[i] for i in a[k:k + 8])
              for k in range(0, 192, 8)]
    assert sum(spread) / len(spread) <= 2  # batches hold items of similar length


def test_scheduler_shapes():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, "cosine", warmup=2, total=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05


@pytest.mark.multiproc
def test_two_processes_match_one(tiny_lm, tmp_path):
    """Global batch 8: one process with 2x4 accumulation vs two processes with 1x4 each."""
    one = train_sft(sft_cfg(tiny_lm, tmp_path / "one", batch_size=4, grad_accum=2))
    script = HERE / "multiproc_sft.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", str(script), str(tiny_lm), str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two" / "model"
    assert_same(weights(one), weights(two), atol=2e-5)
    # Metrics are written once, by the main process.
    assert len(read_metrics(tmp_path / "two")) == 6
    # Cut by tokens over both processes instead (at most 120 tokens: two short items or one
    # long one per micro-batch, each process running as many as the other): the same run.
    plans = [json.loads((tmp_path / "two-tokens" / f"plans-rank{r}.json").read_text())
             for r in (0, 1)]
    assert plans[0] == plans[1] and {len(step) for step in plans[0]} == {2, 4}, plans
    assert_same(weights(one), weights(tmp_path / "two-tokens" / "model"), atol=5e-5)
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two-tokens"),
                    strict=True):
        assert b["loss/sft"] == pytest.approx(a["loss/sft"], rel=1e-5)


def test_report_to_tensorboard_and_mlflow(tiny_lm, tmp_path):
    """--report-to tensorboard,mlflow: an event file in tb/rlhfkit and an MLflow run in
    tb/mlflow.db holding the same loss curve as metrics.jsonl."""
    import os

    import mlflow

    from rlhfkit.train.sft import SFTConfig, train_sft

    out = tmp_path / "run"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        train_sft(SFTConfig(model=str(tiny_lm), output_dir=str(out), max_steps=2, batch_size=4,
                            max_length=64, progress=False, precision="fp32",
                            report_to="tensorboard,mlflow"))
        uri = os.environ["MLFLOW_TRACKING_URI"]
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert uri == f"sqlite:///{(out / 'tb' / 'mlflow.db').resolve()}"
    assert list((out / "tb" / "rlhfkit").glob("events.out.tfevents.*"))
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "rlhfkit"]
    (run,) = client.search_runs([experiment.experiment_id])
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "loss/sft")]
    ours = [row["loss/sft"] for row in read_metrics(out) if "loss/sft" in row]
    assert logged == pytest.approx(ours)
