"""The rlhfkit command: generated flags, stages end to end, and errors for people."""

import json
import subprocess
import sys

import pytest

from rlhfkit.cli.main import build_parser, main


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
    result = json.loads((rm_dir / "eval.json").read_text())
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
