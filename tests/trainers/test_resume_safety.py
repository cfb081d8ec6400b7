"""Resume under changed options: options that change the training stop the run with a list of them
(``--resume-with-changes`` or a fresh folder goes on); logging, saving and the run length may
change; ``metrics.jsonl`` stays continuous after a resume (no repeated steps)."""

from __future__ import annotations

import shutil

import yaml

from simple_rlhf.cli.main import main
from simple_rlhf.infra.checkpoint import latest_checkpoint
from simple_rlhf.infra.logging import read_jsonl


def _flags(tiny_base, out, *extra: str) -> list[str]:
    flags = ["--model-name-or-path", str(tiny_base), "--output-dir", str(out), "--no-progress-bar"]
    flags += ["--report-to", "jsonl", "--gold-eval-prompts", "0", "--max-eval-samples", "4"]
    flags += ["--logging-steps", "1", "--save-steps", "2", "--per-device-train-batch-size", "4"]
    return ["sft", *flags, *extra]


def test_changed_training_options_stop_the_resume_with_a_list(tmp_path, tiny_base, capsys):
    out = tmp_path / "run"
    assert main(_flags(tiny_base, out, "--max-steps", "2")) == 0
    saved = (out / "run_config.yaml").read_text()
    capsys.readouterr()
    changed = ["--learning-rate", "0.01", "--per-device-train-batch-size", "8", "--max-steps", "4"]
    assert main(_flags(tiny_base, out, *changed)) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate: 0.001 -> 0.01" in err
    assert "optim.per_device_train_batch_size: 4 -> 8" in err
    assert "max_steps" not in err and "--resume-with-changes" in err and "Traceback" not in err
    assert (out / "run_config.yaml").read_text() == saved  # still the checkpoint's settings
    # running longer, logging and saving differently: allowed
    assert main(_flags(tiny_base, out, "--max-steps", "3", "--logging-steps", "2")) == 0
    # the explicit flag goes on with the new values, and the run config says so
    assert main(_flags(tiny_base, out, *changed, "--resume-with-changes")) == 0
    now = yaml.safe_load((out / "run_config.yaml").read_text())
    assert now["optim"]["learning_rate"] == 0.01
    assert latest_checkpoint(out).name == "step-4"


def test_metrics_after_a_resume_do_not_repeat_steps(tmp_path, tiny_base):
    """A run that stopped after step 4 with its last checkpoint at step 2 (the step-4 checkpoint
    removed, as if killed before writing it): the resumed run logs steps 3 and 4 once."""
    out = tmp_path / "run"
    assert main(_flags(tiny_base, out, "--max-steps", "4")) == 0
    shutil.rmtree(out / "checkpoints" / "step-4")
    assert latest_checkpoint(out).name == "step-2"
    assert main(_flags(tiny_base, out, "--max-steps", "4")) == 0
    train_steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4]
