"""The rlhfkit command: generated flags, stages end to end, and errors for people: each mistake
answered in one line before any model loads, and the run folder and logs behaving as a user
expects."""

import subprocess
import sys

import pytest

from rlhfkit.cli.main import build_parser, main
from rlhfkit.evaluate.runs import read_json, read_metrics


def test_help_lists_stages_and_field_docs(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    assert "--packing" in out and "Pack several demonstrations" in out
    assert "--learning-rate" in out and "--lora" in out
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"sft", "rm", "demo"} <= set(commands)


def test_sft_then_rm_from_the_command_line(tiny_lm, tmp_path, capsys):
    sft_dir, rm_dir = tmp_path / "sft", tmp_path / "rm"
    assert main(["sft", "--model", str(tiny_lm), "--output-dir", str(sft_dir), "--max-steps", "2",
                 "--batch-size", "4", "--no-progress", "--precision", "fp32"]) == 0
    assert (sft_dir / "model" / "model.safetensors").exists()
    assert main(["rm", "--model", str(sft_dir / "model"), "--output-dir", str(rm_dir),
                 "--max-steps", "2", "--batch-size", "2", "--no-progress"]) == 0
    result = read_json(rm_dir)
    assert 0.0 <= result["eval/rm_accuracy"] <= 1.0
    assert "held-out rm_accuracy" in capsys.readouterr().out


def test_config_file_and_override(tiny_lm, tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {tiny_lm}\nmax_steps: 1\nbatch_size: 2\nlearning_rate: 0.5\n")
    out = tmp_path / "run"
    assert main(["sft", "--config", str(cfg), "--output-dir", str(out), "--learning-rate", "0.001",
                 "--no-progress"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "learning_rate: 0.001" in saved and "max_steps: 1" in saved


def test_bad_record_names_file_line_and_field(tiny_lm, tmp_path, capsys):
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": 5}\n')
    code = main(["sft", "--model", str(tiny_lm), "--data", str(data), "--output-dir",
                 str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "demos.jsonl, line 2, field 'response'" in err


def test_wrong_kind_for_the_stage(tiny_lm, tmp_path, capsys):
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    assert main(["rm", "--model", str(tiny_lm), "--data", str(data), "--output-dir",
                 str(tmp_path / "x"), "--no-progress"]) == 1
    assert "'demonstration' record" in capsys.readouterr().err


def test_unknown_model_is_explained(tmp_path, capsys):
    assert main(["sft", "--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "x"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "nope: model folder not found" in err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "--version"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "0.1.0"


def test_every_command_has_working_help(capsys):
    """Every sub-command's --help renders (field docs go through argparse's % formatting)."""
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


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
    assert [row["step"] for row in read_metrics(tmp_path / "s") if "loss/sft" in row] == [1]
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
    saved = read_json(tmp_path / "b")
    assert f"binary_accuracy {saved['eval/binary_accuracy']:.3f}" in out
