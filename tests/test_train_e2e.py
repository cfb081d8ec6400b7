"""`simple-rlhf train` for real: three child processes, loadable outputs, report, failure hints.

The run is shortened with per-step overrides (a few optimiser steps and rollouts each), so this
checks the wiring of the pipeline, not learning (each trainer's own test checks that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHORT = [
    "sft.max_steps=6",
    "sft.gold_eval_prompts=4",
    "sft.max_eval_samples=16",
    "reward.max_steps=6",
    "reward.max_eval_samples=16",
    "ppo.num_rollouts=2",
    "ppo.prompts_per_rollout=8",
    "ppo.gold_eval_prompts=4",
]


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["SIMPLE_RLHF_RUN_TIMEOUT_S"] = "540"  # a hung step prints its stacks and exits
    return subprocess.run(
        [sys.executable, "-m", "simple_rlhf", "train", "--output-dir", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_three_steps_run_report_and_reuse(tmp_path, tiny_base):
    out = tmp_path / "rlhf"
    res = train(out, "--set", *SHORT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "actor-sft")
    AutoModelForCausalLM.from_pretrained(out / "reward")  # the default RM kind: likelihood
    AutoModelForCausalLM.from_pretrained(out / "actor-ppo")
    assert (out / "reward" / "reward_stats.json").is_file()
    md = (out / "report.md").read_text()
    assert "| Step 1 (SFT) | Step 2 (RM) | Step 3 (PPO) | Total |" in md
    report = json.loads((out / "report.json").read_text())
    assert set(report["steps"]) == {"1", "2", "3"}
    assert "eval/gold_greedy" in report["steps"]["3"]["metrics"]
    assert "simple-rlhf chat --path" in res.stdout
    for step in ("actor-sft", "reward", "actor-ppo"):
        assert (out / step / "training.log").stat().st_size > 0

    # a second run reuses all three steps and trains nothing
    again = train(out, "--set", *SHORT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") == 3


@pytest.mark.slow
def test_a_failing_step_names_itself_its_log_and_what_to_try(tmp_path, tiny_base):
    out = tmp_path / "rlhf"
    # valid options (checked before anything runs), but no model at that path: fails at run time
    res = train(out, "--step", "1", "--actor-model", str(tmp_path / "no-model"))
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "step 1 (SFT) failed" in text
    assert str(out / "actor-sft" / "training.log") in text
    assert "what to try" in text
    assert "no-model" in text  # the step's own error (the model path) is shown too
    assert not (out / "actor-sft" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.multiproc
def test_single_node_runs_every_step_under_torchrun_with_zero2(tmp_path, tiny_base):
    """`--deployment-type single_node --num-gpus 2` launches each step with torchrun on 2 CPU
    processes (DeepSpeed ZeRO-2 for the actor and for the reward model/critic) and still leaves
    loadable folders and the report."""
    out = tmp_path / "rlhf"
    env_before = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on its CPU accelerator (no GPU here)
    try:
        res = train(
            out,
            *("--deployment-type", "single_node", "--num-gpus", "2"),
            *("--actor-zero-stage", "2", "--reward-zero-stage", "2"),
            "--set",
            # a rollout must fill the global minibatch (8 per device x 2 processes)
            *[o.replace("prompts_per_rollout=8", "prompts_per_rollout=16") for o in SHORT],
        )
    finally:
        if env_before is None:
            os.environ.pop("DS_ACCELERATOR")
        else:
            os.environ["DS_ACCELERATOR"] = env_before
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("torchrun --nproc_per_node=2 -m simple_rlhf") == 3
    assert res.stdout.count("2 processes (DeepSpeed over gloo, device cpu); ZeRO-2") == 4
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "actor-ppo")
    assert (out / "report.md").is_file()
