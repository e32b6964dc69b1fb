"""A newcomer's mistakes, each answered in one line before any model loads, and the run folder
and logs behaving as a user expects (issue: "A newcomer's first hour")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhfkit.cli.main import main


def one_line_error(capsys, argv, code=1) -> str:
    """The one line printed for ``argv``, whose exit status (argparse's ``SystemExit`` or the
    status ``main`` returns) must be ``code``."""
    try:
        status = main(argv)
    except SystemExit as stop:  # the parser's own refusal
        status = stop.code
    assert status == code
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize("argv, code, says", [
    (["--lr", "1e-4"], 2, "unrecognized arguments: --lr"),  # no abbreviation of --lr-scheduler
    (["--precision", "fp16"], 2, "invalid choice: 'fp16'"),
    (["--lr-scheduler", "bogus"], 2, "invalid choice: 'bogus'"),
    # a value out of range: the same status as argparse's own refusals
    (["--learning-rate", "-1"], 2, "--learning-rate must be > 0, got -1.0"),
    (["--batch-size", "0"], 2, "--batch-size must be >= 1, got 0"),
    (["--max-length", "0"], 2, "--max-length must be >= 8, got 0"),
])
def test_bad_options_are_one_line_before_anything_loads(capsys, tmp_path, argv, code, says):
    line = one_line_error(capsys, ["sft", "--output-dir", str(tmp_path / "x"), *argv], code)
    assert says in line
    assert not (tmp_path / "x").exists()  # refused before the run folder was made


def test_an_unknown_scorer_is_one_line(capsys, tiny_lm, tmp_path):
    line = one_line_error(capsys, ["grpo", "--model", str(tiny_lm), "--reward-model",
                                   "scorer:nosuch", "--output-dir", str(tmp_path / "g"),
                                   "--max-steps", "1", "--no-progress"])
    assert "unknown gold scorer 'nosuch'; known:" in line


def test_top_level_help_does_not_import_torch():
    code = ("import sys; from rlhfkit.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "grpo" in out.stdout and out.stdout.strip().endswith("False")


def test_grpo_help_shows_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    text = capsys.readouterr().out
    assert "--loss-type {bnpo,grpo,dr_grpo,dapo}" in text and "--clip-range-high FLOAT" in text
    for reinforce_only in ("--baseline", "--reward-to-go", "--vf-coef", "--grad-accum",
                           "--group-by-length", "--log-every"):
        assert reinforce_only not in text
    assert "VALUE" not in text


def test_a_used_output_folder_is_refused_unless_resumed_or_overwritten(capsys, tiny_lm,
                                                                        tmp_path):
    args = ["sft", "--model", str(tiny_lm), "--output-dir", str(tmp_path / "s"), "--max-steps",
            "1", "--batch-size", "4", "--max-length", "64", "--no-progress", "--report-to",
            "none", "--precision", "fp32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "items sit out each epoch" in out  # the rows % batch that a step cannot take
    line = one_line_error(capsys, args)
    assert "already holds a run" in line and "--overwrite" in line
    assert main([*args, "--overwrite"]) == 0
    rows = (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows if "loss/sft" in json.loads(r)] == [1]
    assert "report.html" in {p.name for p in (tmp_path / "s").iterdir()}


def test_nothing_held_out_is_said_and_no_none_is_printed(capsys, tiny_lm, tmp_path):
    from rlhfkit.data.io import write_records
    from rlhfkit.data.records import BinaryFeedback

    data = write_records([BinaryFeedback(prompt=f"p{i}", response=f"r{i}", label=i % 2 == 0)
                          for i in range(16)], tmp_path / "thumbs.jsonl")
    common = ["--model", str(tiny_lm), "--data", str(data), "--max-steps", "1",
              "--batch-size", "4", "--no-progress", "--report-to", "none", "--precision", "fp32"]
    assert main(["rm", *common, "--output-dir", str(tmp_path / "a"), "--eval-fraction",
                 "0"]) == 0
    out = capsys.readouterr().out
    assert "[warning] no records held out" in out and "no held-out evaluation" in out
    (saved_line,) = [x for x in out.splitlines() if "saved reward model" in x]
    assert "None" not in saved_line and "nan" not in saved_line
    assert main(["rm", *common, "--output-dir", str(tmp_path / "b"), "--eval-fraction",
                 "0.5"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert f"binary_accuracy {saved['eval/binary_accuracy']:.3f}" in out


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
    ours = [json.loads(r)["loss/sft"] for r in (out / "metrics.jsonl").read_text().splitlines()
            if "loss/sft" in json.loads(r)]
    assert logged == pytest.approx(ours)
