"""``simple-rlhf train``: step 1 (SFT) -> step 2 (reward model) -> step 3 (PPO), one command.

With no options it runs the offline tiny default end to end and leaves, under ``--output-dir``
(default ``outputs/rlhf``)::

    actor-sft/    step 1: a loadable causal LM (+ logs, metrics.jsonl, summary.json)
    reward/       step 2: the reward model (a causal LM scoring by likelihood, or a sequence
                  classifier with --set reward.kind=value) with reward_stats.json
    actor-ppo/    step 3: the aligned actor (critic/ beside it)
    report.md     wall time per step, key metrics, plots (report.json, plots/*.png)

Each step runs as its own process with its own log (``<step-dir>/training.log``) and the exact
command printed, so a step can be rerun by hand. ``--deployment-type`` picks the launcher:
``single_gpu`` (one process), ``single_node`` (``torchrun`` or ``deepspeed`` over all local
devices), ``multi_node`` (``deepspeed --hostfile``). A finished step (its ``summary.json`` exists)
is reused unless ``--force``; ``--step 2 3`` runs a subset and checks that what it needs exists.

Per-step options: a YAML recipe (``--config``) with global keys and one section per step
(``sft:``, ``reward:``, ``ppo:``), and ``--set sft.learning_rate=1e-4`` flags that override it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simple_rlhf.config import ConfigError, fld, load_yaml

STEP_DIRS = {1: "actor-sft", 2: "reward", 3: "actor-ppo"}
STEP_COMMANDS = {1: "sft", 2: "reward", 3: "ppo"}
STEP_NAMES = {1: "SFT", 2: "Reward model", 3: "PPO"}
SECTION = {1: "sft", 2: "reward", 3: "ppo"}
STEP_CONFIGS = {
    1: ("simple_rlhf.trainers.sft", "SFTConfig"),
    2: ("simple_rlhf.trainers.reward", "RewardConfig"),
    3: ("simple_rlhf.trainers.ppo", "PPOConfig"),
}
DEPLOYMENTS = ("single_gpu", "single_node", "multi_node")

HINTS = (
    "what to try: a smaller --set <step>.per_device_train_batch_size (with more "
    "gradient_accumulation_steps), --set <step>.gradient_checkpointing=true, a higher ZeRO stage "
    "(--actor-zero-stage / --reward-zero-stage 2 or 3, with offload), or LoRA "
    "(--set <step>.lora_dim=64)"
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The three-step RLHF pipeline."""

    actor_model: str = fld("tiny", "base model of the actor (step 1 starts from it)")
    reward_model: str | None = fld(
        None, "base model of the reward model (default: the step-1 SFT model)"
    )
    step: list[int] = fld([1, 2, 3], "which steps to run (any subset of 1 2 3)")
    output_dir: str = fld("outputs/rlhf", "root folder; one sub-folder per step")
    deployment_type: str = fld(
        "single_gpu", "single_gpu (one process), single_node (all local devices), multi_node"
    )
    num_gpus: int | None = fld(None, "processes per node for single_node/multi_node (default: all)")
    hostfile: str | None = fld(None, "DeepSpeed hostfile for multi_node")
    launcher: str = fld("torchrun", "launcher for single_node: torchrun or deepspeed")
    actor_zero_stage: int | None = fld(None, "ZeRO stage of the actor (steps 1 and 3)")
    reward_zero_stage: int | None = fld(None, "ZeRO stage of the reward model and critic")
    data_path: list[str] | None = fld(None, "data sources for every step (default: each step's)")
    data_split: str = fld(
        "2,4,4",
        "per-step shares of every pair dataset (DeepSpeed-Chat --data_split: disjoint data for "
        "SFT, reward model and PPO); 'all' gives every step all pairs, 'auto' splits only 'tiny' "
        "and named Hub datasets",
    )
    recipe: str | None = fld(None, "YAML recipe: global keys plus sft:/reward:/ppo: sections")
    set: list[str] = fld([], "per-step overrides like sft.learning_rate=1e-4 (repeatable)")
    force: bool = fld(False, "rerun steps whose output already exists")
    dry_run: bool = fld(
        False, "write each step's step_config.yaml and print the commands without running them"
    )

    def __post_init__(self) -> None:
        bad = [s for s in self.step if s not in (1, 2, 3)]
        if bad or not self.step:
            raise ConfigError(f"step: choose from 1 2 3, got {self.step}")
        if self.deployment_type not in DEPLOYMENTS:
            raise ConfigError(
                f"deployment_type: {self.deployment_type!r} is not one of {', '.join(DEPLOYMENTS)}"
            )
        if self.launcher not in ("torchrun", "deepspeed"):
            raise ConfigError("launcher: torchrun or deepspeed")
        if self.deployment_type == "multi_node" and not self.hostfile:
            raise ConfigError("multi_node needs --hostfile (DeepSpeed's format: 'host slots=N')")
        for z in (self.actor_zero_stage, self.reward_zero_stage):
            if z is not None and z not in (0, 1, 2, 3):
                raise ConfigError(f"ZeRO stage must be 0-3, got {z}")


def step_dir(cfg: PipelineConfig, step: int) -> Path:
    return Path(cfg.output_dir) / STEP_DIRS[step]


def is_done(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def step_options(cfg: PipelineConfig, step: int) -> dict[str, Any]:
    """The options handed to one step: pipeline wiring < recipe section < --set overrides."""
    opts: dict[str, Any] = {"output_dir": str(step_dir(cfg, step)), "progress_bar": False}
    if cfg.data_path:
        opts["data_path"] = list(cfg.data_path)
    if cfg.data_split:
        opts["data_split"] = cfg.data_split
    sft_out, rm_out = str(step_dir(cfg, 1)), str(step_dir(cfg, 2))
    if step == 1:
        opts["model_name_or_path"] = cfg.actor_model
        if cfg.actor_zero_stage is not None:
            opts["zero_stage"] = cfg.actor_zero_stage
    elif step == 2:
        opts["model_name_or_path"] = cfg.reward_model or sft_out
        if cfg.reward_zero_stage is not None:
            opts["zero_stage"] = cfg.reward_zero_stage
    else:
        opts["actor_model_name_or_path"] = sft_out
        opts["reward_model"] = rm_out
        if cfg.actor_zero_stage is not None:
            opts["actor_zero_stage"] = cfg.actor_zero_stage
        if cfg.reward_zero_stage is not None:
            opts["critic_zero_stage"] = cfg.reward_zero_stage
    if cfg.recipe:
        recipe = load_yaml(cfg.recipe)
        opts.update(recipe.get(SECTION[step]) or {})
    for item in cfg.set:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in SECTION.values():
            raise ConfigError(f"--set {item!r}: expected <sft|reward|ppo>.<option>=<value>")
        if section == SECTION[step]:
            opts[name.replace("-", "_")] = value
    return opts


def launcher(name: str) -> str:
    """The launcher script installed beside this Python (so an un-activated venv works), else the
    bare name looked up on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def launch_prefix(cfg: PipelineConfig) -> list[str]:
    """The launcher part of a step's command line for the deployment type."""
    if cfg.deployment_type == "single_gpu":
        return [sys.executable, "-m", "simple_rlhf"]
    n = cfg.num_gpus
    if cfg.deployment_type == "single_node":
        if cfg.launcher == "torchrun":
            return [launcher("torchrun"), f"--nproc_per_node={n or 'gpu'}", "-m", "simple_rlhf"]
        return (
            [launcher("deepspeed")]
            + ([f"--num_gpus={n}"] if n else [])
            + ["--module", "simple_rlhf"]
        )
    return (
        [launcher("deepspeed"), f"--hostfile={cfg.hostfile}"]
        + ([f"--num_gpus={n}"] if n else [])
        + ["--module", "simple_rlhf"]
    )


def step_command(cfg: PipelineConfig, step: int) -> tuple[list[str], Path]:
    """(argv, recipe path): each step reads its options from a YAML file written beside it."""
    folder = step_dir(cfg, step)
    recipe = folder / "step_config.yaml"
    return launch_prefix(cfg) + [STEP_COMMANDS[step], "--config", str(recipe)], recipe


def check_inputs(cfg: PipelineConfig, step: int) -> None:
    """A later step needs the earlier outputs: say what to run if they are missing."""
    needs = {2: [1] if cfg.reward_model is None else [], 3: [1, 2]}.get(step, [])
    for s in needs:
        if s not in cfg.step and not is_done(step_dir(cfg, s)):
            raise ConfigError(
                f"step {step} needs the output of step {s} ({STEP_NAMES[s]}) in "
                f"{step_dir(cfg, s)}, which does not exist; run `simple-rlhf train --step {s} "
                f"{step} --output-dir {cfg.output_dir}` (or add {s} to --step)"
            )


def check_options(cfg: PipelineConfig, step: int) -> None:
    """Validate a step's options with its own config class before anything runs, so a typo in
    ``--set ppo.…`` fails in a second, not after steps 1 and 2 have trained."""
    import importlib

    from simple_rlhf.config import load_config

    module, name = STEP_CONFIGS[step]
    config_cls = getattr(importlib.import_module(module), name)
    try:
        load_config(config_cls, overrides=step_options(cfg, step))
    except ConfigError as e:
        raise ConfigError(f"step {step} ({STEP_NAMES[step]}): {e}") from None


class StepFailed(RuntimeError):
    """A pipeline step exited with an error."""


def write_step_config(cfg: PipelineConfig, step: int) -> tuple[list[str], Path]:
    """Write the step's ``step_config.yaml`` (its options) and return its command and the file."""
    import yaml

    argv, recipe = step_command(cfg, step)
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(step_options(cfg, step), allow_unicode=True))
    return argv, recipe


def run_step(cfg: PipelineConfig, step: int) -> float:
    """Run one step in its own process, tee its output to training.log; returns seconds."""
    argv, _ = write_step_config(cfg, step)
    folder = step_dir(cfg, step)
    log = folder / "training.log"
    print(f"\n=== step {step}: {STEP_NAMES[step]} ===\n$ {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        code = proc.wait()
    seconds = time.perf_counter() - t0
    if code != 0:
        raise StepFailed(
            f"step {step} ({STEP_NAMES[step]}) failed with exit code {code}; its log is {log}; "
            f"rerun it alone with: {shlex.join(argv)}\n{HINTS.replace('<step>', SECTION[step])}"
        )
    return seconds


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the requested steps in order, reuse finished ones, then write the report."""
    from simple_rlhf.report import write_report

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    times_file = root / "step_times.json"
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.exists() else {}
    for step in sorted(cfg.step):
        check_inputs(cfg, step)
        if cfg.force or not is_done(step_dir(cfg, step)):
            check_options(cfg, step)
    for step in sorted(cfg.step):
        folder = step_dir(cfg, step)
        if is_done(folder) and not cfg.force:
            print(f"=== step {step}: {STEP_NAMES[step]}: reusing {folder} (--force to rerun)")
            continue
        if cfg.dry_run:  # the step configs are written, so the commands can be run by hand
            argv, recipe = write_step_config(cfg, step)
            print(f"# step {step} ({STEP_NAMES[step]}), options written to {recipe}")
            print(shlex.join(argv))
            continue
        try:
            times[str(step)] = run_step(cfg, step)
        except StepFailed as e:
            raise ConfigError(str(e)) from None
        times_file.write_text(json.dumps(times, indent=2))
    if cfg.dry_run:
        return {}
    report = write_report(root, {int(k): v for k, v in times.items()})
    print(f"\nreport: {root / 'report.md'}")
    if is_done(step_dir(cfg, 3)):
        print(f"chat with the result: simple-rlhf chat --path {step_dir(cfg, 3)}")
    return report
