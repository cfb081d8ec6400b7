"""`simple-rlhf train` wiring: step selection and reuse, missing outputs, launcher command lines,
per-step options, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.pipeline import (
    PipelineConfig,
    check_inputs,
    run,
    step_command,
    step_dir,
    step_options,
)
from simple_rlhf.report import write_report


def cfg(tmp_path, **kw):
    return load_config(PipelineConfig, overrides={"output_dir": str(tmp_path), **kw})


def test_launcher_command_lines(tmp_path):
    argv, recipe = step_command(cfg(tmp_path), 1)
    assert argv[1:4] == ["-m", "simple_rlhf", "sft"] and argv[-2:] == ["--config", str(recipe)]
    argv, _ = step_command(cfg(tmp_path, deployment_type="single_node", num_gpus=2), 3)
    # the launcher installed beside this Python (works in an un-activated venv)
    assert Path(argv[0]).name == "torchrun" and argv[1:3] == ["--nproc_per_node=2", "-m"]
    assert "ppo" in argv
    argv, _ = step_command(
        cfg(tmp_path, deployment_type="single_node", launcher="deepspeed", num_gpus=4), 2
    )
    assert Path(argv[0]).name == "deepspeed" and argv[1:3] == ["--num_gpus=4", "--module"]
    assert "reward" in argv
    argv, _ = step_command(cfg(tmp_path, deployment_type="multi_node", hostfile="/h"), 1)
    assert Path(argv[0]).name == "deepspeed" and argv[1] == "--hostfile=/h"
    with pytest.raises(ConfigError, match="hostfile"):
        cfg(tmp_path, deployment_type="multi_node")


def test_step_options_wire_outputs_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  learning_rate: 0.01\nppo:\n  kl_coef: 0.2\n")
    c = cfg(
        tmp_path,
        recipe=str(recipe),
        set=["sft.num_train_epochs=2", "ppo.kl_coef=0.3"],
        actor_zero_stage=2,
        data_path=["a.jsonl"],
    )
    sft = step_options(c, 1)
    assert sft["learning_rate"] == 0.01 and sft["num_train_epochs"] == "2"
    assert sft["zero_stage"] == 2 and sft["data_path"] == ["a.jsonl"]
    rm = step_options(c, 2)
    assert rm["model_name_or_path"] == str(step_dir(c, 1))
    ppo = step_options(c, 3)
    assert ppo["actor_model_name_or_path"] == str(step_dir(c, 1))
    assert ppo["reward_model"] == str(step_dir(c, 2)) and ppo["kl_coef"] == "0.3"
    with pytest.raises(ConfigError, match="expected"):
        step_options(cfg(tmp_path, set=["learning_rate=1"]), 1)


def test_missing_earlier_output_says_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match=r"step 3 needs the output of step 1 .*--step 1 3"):
        check_inputs(cfg(tmp_path, step=[3]), 3)
    check_inputs(cfg(tmp_path, step=[1, 2, 3]), 3)  # earlier steps in the same run: fine


def test_finished_steps_are_reused(tmp_path, capsys):
    c = cfg(tmp_path, step=[1])
    folder = step_dir(c, 1)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"after": {"eval/loss": 1.0}}))
    run(c)
    assert "reusing" in capsys.readouterr().out
    assert (tmp_path / "report.md").exists()


def test_report_table_metrics_and_plots(tmp_path):
    for folder, summary in (
        ("actor-sft", {"before": {"eval/loss": 6.5}, "after": {"eval/loss": 0.5}}),
        ("reward", {"after": {"eval/accuracy": 0.9}}),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps(summary))
    rows = "".join(json.dumps({"step": i, "train/loss": 5.0 / (i + 1)}) + "\n" for i in range(1, 6))
    (tmp_path / "actor-sft" / "metrics.jsonl").write_text(rows)
    report = write_report(tmp_path, {1: 30.0, 2: 95.0})
    md = (tmp_path / "report.md").read_text()
    assert "| Step 1 (SFT) | Step 2 (RM) | Step 3 (PPO) | Total |" in md
    assert "| 30 s | 1.6 min | - | 2.1 min |" in md
    assert "| eval/loss | 6.5 | 0.5 |" in md
    assert (tmp_path / "plots" / "step1.png").stat().st_size > 1000
    assert report["steps"]["2"]["metrics"]["eval/accuracy"]["after"] == 0.9


def test_dry_run_prints_commands(tmp_path, capsys):
    """The printed commands can be run by hand: the step configs they name are written (issue
    16, defect 8), and hold the options the step would get."""
    import yaml

    run(cfg(tmp_path, dry_run=True))
    out = capsys.readouterr().out
    assert out.count("simple_rlhf") == 3 and " ppo " in out
    for step in (1, 2, 3):
        recipe = step_dir(cfg(tmp_path), step) / "step_config.yaml"
        assert f"--config {recipe}" in out and recipe.is_file()
        assert yaml.safe_load(recipe.read_text())["data_split"] == "2,4,4"
        assert not (step_dir(cfg(tmp_path), step) / "summary.json").exists()


def test_bad_step_options_fail_before_any_step_runs(tmp_path):
    """A typo meant for step 3 stops the run at once, naming the step and the closest option,
    before step 1 has created anything."""
    with pytest.raises(ConfigError, match=r"step 3 \(PPO\): .*unknown option 'kl_cof'.*kl_coef"):
        run(cfg(tmp_path, set=["ppo.kl_cof=0.1"]))
    with pytest.raises(ConfigError, match=r"step 1 \(SFT\): .*learning_rate: cannot read 'fast'"):
        run(cfg(tmp_path, set=["sft.learning_rate=fast"]))
    assert not step_dir(cfg(tmp_path), 1).exists()
