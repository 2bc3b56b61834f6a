"""The mambakit command: generate streams text, convert and doctor work, user errors are one line."""
import subprocess
import sys

import pytest

from mambakit.cli import main
from tiny_models import hf_model, save_hf


def test_generate_on_the_default_model(capsys):
    assert main(["generate", "--max-new-tokens", "12", "--temperature", "0", "Once upon a time"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time")


def test_generate_with_a_bf16_state(capsys):
    assert main(["generate", "--max-new-tokens", "8", "--temperature", "0", "--state-dtype", "bfloat16", "Once"]) == 0
    assert capsys.readouterr().out.startswith("Once")


def test_generate_prompt_file_and_no_echo(tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("A story:")
    assert main(["generate", "--prompt-file", str(prompt), "--no-echo", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert not capsys.readouterr().out.startswith("A story:")


def test_generate_stats_go_to_stderr(capsys):
    assert main(["generate", "--max-new-tokens", "6", "--temperature", "0", "--stats", "--no-echo", "Once"]) == 0
    captured = capsys.readouterr()
    assert "prompt tokens" not in captured.out
    assert "6 new tokens" in captured.err and "tok/s" in captured.err and "prefill" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "/no/such/folder", "x"], "no checkpoint folder"),
    (["generate", "--top-p", "2", "x"], "top_p must be in (0, 1]"),
    (["generate", "--temperature", "-1", "x"], "temperature must be >= 0"),
    (["generate", ""], "prompt is empty"),
    (["generate"], "give a prompt"),
    (["generate", "--prompt-file", "/no/file", "x"], "--prompt-file /no/file does not exist"),
    (["generate", "--dtype", "int3", "x"], "dtype 'int3' is not supported"),
    (["generate", "--state-dtype", "int8", "x"], "state dtype 'int8' is not supported"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_convert_and_doctor(tmp_path, capsys):
    src = save_hf(hf_model("mamba2"), tmp_path / "src")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--to", "state-spaces"]) == 0
    assert "logits max |diff|" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "dst"), "--to", "hf"]) == 2
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "selective_scan" in out and "torch" in out


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "mambakit.cli", "generate", "--max-new-tokens", "3", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("hi")
