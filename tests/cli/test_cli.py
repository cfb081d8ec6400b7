"""The command line: help from field docs, unknown commands, python -m entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simple_rlhf.cli.main import COMMANDS, main


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "sft", "reward", "ppo", "dpo", "chat"):
        assert name in out


def test_command_help_shows_field_docs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sft", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--learning-rate" in out and "peak learning rate" in out
    assert "--lora-dim" in out and "LoRA rank" in out
    assert "trust_remote_code" in out or "--trust-remote-code" in out


def test_unknown_command(capsys):
    assert main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_every_registered_module_exists():
    import importlib.util

    for name, (module, *_rest) in COMMANDS.items():
        assert importlib.util.find_spec(module) is not None, f"{name}: {module} missing"


def test_python_dash_m_and_fast_import():
    """`python -m simple_rlhf --help` works, and importing the package pulls in no torch."""
    out = subprocess.run(
        [sys.executable, "-m", "simple_rlhf", "--help"], capture_output=True, text=True, check=True
    )
    assert "commands:" in out.stdout
    code = "import sys, simple_rlhf, simple_rlhf.cli.main; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_config_error_is_said_once_under_a_launcher(capsys, monkeypatch):
    """One process: the error as is. Under torchrun (RANK set) rank 0 says it with its rank and
    the other ranks, which read the same options, stay quiet; all exit with 2."""
    argv = ["sft", "--max-seq-len", "8", "--max-prompt-len", "16"]
    assert main(argv) == 2
    assert "simple-rlhf sft: error: " in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    assert "simple-rlhf sft [rank 0]: error: " in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2
    assert capsys.readouterr().err == ""
