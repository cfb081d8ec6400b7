"""Speed of simple-rlhf against TRL 1.16.0 on the CPU: SFT, reward model, DPO and GRPO.

What it measures. For each trainer and model size, both frameworks train the same model on the same
records with the same settings (fp32, batch size, gradient accumulation 1, maximum lengths, learning
rate and schedule, AdamW hyper-parameters, number of optimiser steps, logging every step, no
evaluation, no checkpoint during the run). Runs alternate (simple-rlhf, TRL, simple-rlhf, TRL, ...,
``--pairs`` pairs), each in its own process with ``OMP_NUM_THREADS=--threads``. Per run:

* **s/step**: steady-state seconds per optimiser step, the median of the per-step durations after
  the first 20% of the steps. simple-rlhf: the ``time_s`` of consecutive ``step`` rows of the run's
  ``metrics.jsonl``; TRL: a ``TrainerCallback`` that stamps ``time.perf_counter()`` at every
  ``on_step_end`` (TRL runs through ``<work>/trl_driver.py``, written by this script);
* **wall**: the whole process, from launch to exit (imports, model and data loading, tokenisation,
  training, final save: TRL's driver calls ``save_model`` at the end, as simple-rlhf always saves);
* **peak RSS**: the process's maximum resident set size, from ``/usr/bin/time -v``.

The table gives, per trainer, the median over the pairs of each side and the ratios TRL / ours
(> 1: simple-rlhf is faster or smaller). Each run is checked: exit code 0, the expected number of
optimiser steps, finite losses, a non-zero gradient norm. Steps per run: 60 (GRPO: 30, each one
generation batch and one update); ``--steps`` sets them all, ``--quick`` is 10 steps, 1 pair, tiny.

Shared inputs (in ``--work``, default ``/tmp/vs_trl``): the built-in tiny model (0.73M-parameter
Llama, ``simple_rlhf.models.tiny.ensure_tiny``) copied as a plain HF folder; with ``--size 25m`` a
~25M Llama (hidden 512, intermediate 1536, 8 layers, 8 heads, the same tokenizer and chat template,
random init); records of the built-in tiny task (``simple_rlhf.data.tiny_task.raw_records``) in the
conversational format both frameworks read (``sft.jsonl``: prompt/completion, ``pairs.jsonl``:
prompt/chosen/rejected, ``prompts.jsonl``: prompt); ``reward.py``, the tiny task's gold reward for
GRPO, which loads ``tiny_task.py`` by its path so that TRL's venv needs nothing of simple-rlhf.
GRPO starts, on both sides, from the model after 200 steps of simple-rlhf SFT on the tiny task
(made once per work folder): from the random-init base every answer scores 0 and nothing trains.

TRL lives in its own venv (``--trl-venv``, default ``/work/trl-venv``), created when missing: torch
pinned first (a local CPU wheel), then ``trl==1.16.0`` with the transformers version of this
venv (if pip cannot resolve that, pip's own choice; the versions are in the report).

Regenerate on an otherwise idle machine (the full run: about 70 minutes with one thread on a
2-core Xeon, an hour of it at 25m; ``--quick``: about a minute)::

    .venv/bin/python benchmarks/vs_trl.py                       # tiny and 25m, 5 pairs each
    .venv/bin/python benchmarks/vs_trl.py --trainers sft,dpo --size 25m --pairs 3
    .venv/bin/python benchmarks/vs_trl.py --quick --out /tmp/vs_trl_quick.md   # smoke test

Every run's log, output folder and timings stay in ``<work>/runs``; all results in
``<work>/results.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRL_VERSION = "1.16.0"
TORCH_VERSION = "2.13.0"
TRAINERS = ("sft", "reward", "dpo", "grpo")
SIZES = ("tiny", "25m")
SIDES = ("ours", "trl")
SEED = 1234
QUICK_STEPS = 10
GRPO_INIT_STEPS = 200  # SFT steps of the model GRPO starts from
WARMUP_FRACTION = 0.2  # per-step durations of the first 20% of the steps are left out
REPO = Path(__file__).resolve().parents[1]
OURS_CLI = Path(sys.executable).with_name("simple-rlhf")


@dataclass(frozen=True)
class Spec:
    """The settings a trainer runs with on both sides."""

    batch: int  # records per optimiser step: examples (SFT), pairs (reward, DPO), prompts (GRPO)
    lr: float
    steps: int
    max_length: int = 128  # prompt + response tokens (SFT, reward, DPO)
    beta: float = 0.1  # DPO
    generations: int = 4  # GRPO: completions per prompt
    max_new_tokens: int = 48  # GRPO
    temperature: float = 1.0  # GRPO


DEFAULT_SPECS: dict[str, Spec] = {
    "sft": Spec(batch=16, lr=1e-3, steps=60),
    "reward": Spec(batch=16, lr=1e-3, steps=60),
    "dpo": Spec(batch=8, lr=3e-5, steps=60),
    # one step = 8 prompts x 4 sampled completions of up to 48 tokens, then one update
    "grpo": Spec(batch=8, lr=1e-5, steps=30),
}

# AdamW and schedule, identical on both sides (TRL/transformers defaults, set on ours)
OPTIM = {
    "optim": "adamw_torch_fused",
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
}


@dataclass
class RunResult:
    """One process of one side."""

    size: str
    trainer: str
    side: str
    pair: int
    rc: int
    wall_s: float
    peak_rss_mib: float | None
    steps_done: int = 0
    step_s: float | None = None  # steady-state median seconds per optimiser step
    losses: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    log: str = ""

    def problems(self, steps: int) -> list[str]:
        out = []
        if self.rc != 0:
            out.append(f"exit code {self.rc}")
        if self.steps_done != steps:
            out.append(f"{self.steps_done} optimiser steps, expected {steps}")
        if not self.losses:
            out.append("no loss logged")
        elif not all(math.isfinite(x) for x in self.losses):
            out.append("non-finite loss")
        if self.step_s is None:
            out.append("no per-step timings")
        if not self.extra.get("grad_norm", 0.0) > 0:
            out.append("no gradient (grad norm 0 or not logged)")
        return out


# ---------------------------------------------------------------------------- environment
def child_env(threads: int, work: Path) -> dict[str, str]:
    """The environment of every benchmarked process (same on both sides)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(work / "hf-home"),
        SIMPLE_RLHF_HOME=str(work / "simple-rlhf-home"),
        PYTHONUNBUFFERED="1",
    )
    return env


def pip_versions(python: Path, packages: list[str]) -> dict[str, str]:
    """Installed versions of ``packages`` in the environment of ``python`` (missing: absent)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout)


def ensure_trl_venv(venv: Path) -> dict[str, Any]:
    """Create TRL's venv if it lacks trl or torch at the pinned versions; return its versions."""
    python = venv / "bin" / "python"
    ours = pip_versions(Path(sys.executable), ["transformers"])["transformers"]
    have = pip_versions(python, ["trl", "torch"]) if python.exists() else {}
    if have.get("trl") != TRL_VERSION or not have.get("torch", "").startswith(TORCH_VERSION):
        if not python.exists():
            print(f"[vs_trl] creating {venv}", flush=True)
            subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        # torch first and pinned: an unpinned torch would pull the CUDA build
        subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
        if subprocess.run([*pip, f"trl=={TRL_VERSION}", f"transformers=={ours}"]).returncode:
            print(f"[vs_trl] trl {TRL_VERSION} + transformers {ours} do not resolve: pip chooses")
            subprocess.run([*pip, f"trl=={TRL_VERSION}", f"torch=={TORCH_VERSION}"], check=True)
    versions = pip_versions(python, ["trl", "transformers", "torch", "accelerate", "datasets"])
    return {
        "python": str(python),
        "versions": versions,
        "transformers_as_ours": versions.get("transformers") == ours,
    }


def ours_versions() -> dict[str, str]:
    versions = pip_versions(
        Path(sys.executable), ["simple-rlhf", "transformers", "torch", "accelerate", "datasets"]
    )
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        versions["git"] = rev
    except (OSError, subprocess.CalledProcessError):
        pass
    return versions


# ---------------------------------------------------------------------------- shared inputs
def prepare_models(work: Path, sizes: list[str]) -> dict[str, Path]:
    """Plain HF folders of the models: the built-in tiny one, and a random-init ~25M Llama."""
    from simple_rlhf.models.tiny import ensure_tiny

    tiny_src = Path(ensure_tiny())
    models: dict[str, Path] = {}
    tiny = work / "models" / "tiny"
    if not (tiny / "config.json").exists():
        shutil.copytree(tiny_src, tiny, ignore=shutil.ignore_patterns(".complete"))
    models["tiny"] = tiny
    if "25m" in sizes:
        models["25m"] = build_25m(tiny, work / "models" / "25m")
    return models


def build_25m(tiny: Path, dest: Path) -> Path:
    """A ~25M-parameter Llama with the tiny model's tokenizer and chat template (random init)."""
    if (dest / "model.safetensors").exists():
        return dest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size = 512
    config.intermediate_size = 1536
    config.num_hidden_layers = 8
    config.num_attention_heads = 8
    config.num_key_value_heads = 8
    config.head_dim = 64
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, dest / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"[vs_trl] 25m model: {n / 1e6:.1f}M parameters in {dest}", flush=True)
    return dest


def prepare_grpo_init(work: Path, size: str, base: Path, env: dict[str, str]) -> Path:
    """The model GRPO starts from: ``base`` after 200 steps of simple-rlhf SFT on the tiny task.

    From the random-init base every sampled answer has gold reward 0, so every advantage and every
    gradient would be 0; after this SFT the answers have the task's form (short, with EOS) and some
    score, as in a real RLHF pipeline. Made once per work folder, used by both sides.
    """
    dest = work / "models" / f"{size}-sft"
    done = dest / ".vs_trl_done"
    if done.exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [
        str(OURS_CLI), "sft",
        "--model-name-or-path", str(base),
        "--data-path", "tiny",
        "--max-steps", str(GRPO_INIT_STEPS),
        "--output-dir", str(dest),
        "--data-cache-dir", str(work / "init-data-cache"),
        "--gold-eval-prompts", "0",
        "--report-to", "none",
        "--no-progress-bar",
        "--no-resume",
    ]  # fmt: skip
    print(f"[vs_trl] GRPO start model: {GRPO_INIT_STEPS} SFT steps of {base.name}", flush=True)
    log = work / "models" / f"{size}-sft.log"
    with log.open("w") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    done.write_text("ok\n")
    return dest


def parameter_count(folder: Path) -> int:
    """Parameters stored in a model folder's safetensors file (read from its header)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_data(work: Path, specs: dict[str, Spec]) -> dict[str, Path]:
    """The tiny task's training records as conversational JSONL (enough for one pass of every
    run plus one batch, so neither side reaches an epoch boundary)."""
    from simple_rlhf.data import tiny_task

    need = max(s.batch * (s.steps + 1) for s in specs.values())
    records = tiny_task.raw_records("train", n=need, seed=0)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {
        "sft": data / "sft.jsonl",
        "pairs": data / "pairs.jsonl",
        "prompts": data / "prompts.jsonl",
    }
    write_jsonl(paths["sft"], [{"prompt": r["prompt"], "completion": r["chosen"]} for r in records])
    write_jsonl(paths["pairs"], records)
    write_jsonl(paths["prompts"], [{"prompt": r["prompt"]} for r in records])
    return paths


REWARD_FILE = '''"""GRPO reward of the vs_trl benchmark: the tiny task's gold reward, both sides.

tiny_task.py is loaded by its path (it imports only the standard library), so TRL's venv needs
nothing of simple-rlhf. TRL hands conversational completions as message lists, simple-rlhf as
strings: both are accepted.
"""

import importlib.util

_SPEC = importlib.util.spec_from_file_location("vs_trl_tiny_task", {path!r})
_TINY = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_TINY)


def _text(completion):
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion.get("content", "")
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


def reward(prompts, completions, **kw):
    return _TINY.gold_reward_batch(list(prompts), [_text(c) for c in completions])
'''


def write_reward_file(work: Path) -> Path:
    from simple_rlhf.data import tiny_task

    path = work / "reward.py"
    path.write_text(REWARD_FILE.replace("{path!r}", repr(str(Path(tiny_task.__file__)))))
    return path


# ---------------------------------------------------------------------------- simple-rlhf side
def ours_common(spec: Spec, model: Path, data: Path, run: Path) -> list[str]:
    """Flags every simple-rlhf run gets: the model, data, optimiser, logging; no eval, no saves."""
    return [
        "--model-name-or-path", str(model),
        "--data-path", str(data),
        "--data-cache-dir", str(run / "data-cache"),  # fresh: tokenised in every run, as TRL
        "--output-dir", str(run / "out"),
        "--dtype", "float32",
        "--seed", str(SEED),
        "--max-steps", str(spec.steps),
        "--gradient-accumulation-steps", "1",
        "--learning-rate", str(spec.lr),
        "--optim", OPTIM["optim"],
        "--lr-scheduler-type", OPTIM["lr_scheduler_type"],
        "--num-warmup-steps", str(OPTIM["warmup_steps"]),
        "--warmup-ratio", "0",
        "--weight-decay", str(OPTIM["weight_decay"]),
        "--adam-beta1", str(OPTIM["adam_beta1"]),
        "--adam-beta2", str(OPTIM["adam_beta2"]),
        "--adam-epsilon", str(OPTIM["adam_epsilon"]),
        "--max-grad-norm", str(OPTIM["max_grad_norm"]),
        "--eval-fraction", "0",
        "--eval-steps", "0",
        "--gold-eval-prompts", "0",
        "--save-steps", "0",
        "--no-resume",
        "--logging-steps", "1",
        "--report-to", "jsonl",
        "--no-progress-bar",
    ]  # fmt: skip


def ours_sft(spec: Spec, model: Path, inputs: dict[str, Path], run: Path) -> list[str]:
    return [
        "sft",
        *ours_common(spec, model, inputs["sft"], run),
        "--per-device-train-batch-size", str(spec.batch),
        "--max-seq-len", str(spec.max_length),
        "--max-prompt-len", str(spec.max_length - 32),  # not binding: prompts <= 18 tokens
        "--no-train-on-prompt",
        "--prompt-format", "chat",
    ]  # fmt: skip


def ours_reward(spec: Spec, model: Path, inputs: dict[str, Path], run: Path) -> list[str]:
    return [
        "reward",
        *ours_common(spec, model, inputs["pairs"], run),
        "--per-device-train-batch-size", str(spec.batch),
        "--max-seq-len", str(spec.max_length),
        "--max-prompt-len", str(spec.max_length - 32),
        "--loss-type", "pairwise",
        "--margin", "0",
        "--center-coef", "0",
        "--policy-check-samples", "0",
        # after training ours scores the train chosen answers for reward_stats.json (in wall time)
        "--stats-reference", "train_chosen",
    ]  # fmt: skip


def ours_dpo(spec: Spec, model: Path, inputs: dict[str, Path], run: Path) -> list[str]:
    return [
        "dpo",
        *ours_common(spec, model, inputs["pairs"], run),
        "--per-device-train-batch-size", str(spec.batch),
        "--max-seq-len", str(spec.max_length),
        "--max-prompt-len", str(spec.max_length - 32),
        "--beta", str(spec.beta),
        "--loss-type", "sigmoid",
        "--label-smoothing", "0",
        "--rpo-alpha", "0",  # TRL 1.16's DPO has no RPO term
        "--no-reference-free",
        "--no-precompute-ref-log-probs",
        "--disable-dropout",
    ]  # fmt: skip


def ours_grpo(spec: Spec, model: Path, inputs: dict[str, Path], run: Path) -> list[str]:
    rows = spec.batch * spec.generations
    return [
        "grpo",
        *ours_common(spec, model, inputs["prompts"], run),
        "--reward-funcs", f"{inputs['reward']}:reward",
        "--prompts-per-rollout", str(spec.batch),
        "--num-generations", str(spec.generations),
        "--per-device-train-batch-size", str(rows),
        "--num-iterations", "1",
        "--num-rollouts", str(spec.steps),
        "--max-new-tokens", str(spec.max_new_tokens),
        "--max-prompt-len", str(spec.max_length),
        "--max-seq-len", str(spec.max_length + spec.max_new_tokens),
        "--temperature", str(spec.temperature),
        "--top-p", "1.0",
        "--top-k", "0",
        "--advantage-estimator", "grpo",
        "--loss-aggregation", "seq_mean_token_mean",
        "--clip-range", "0.2",
        "--kl-mode", "none",
        "--kl-coef", "0",
        "--no-dynamic-sampling",
        "--no-mask-truncated",
        "--no-whiten-advantages",
        "--sample-every", "0",
    ]  # fmt: skip


OURS = {"sft": ours_sft, "reward": ours_reward, "dpo": ours_dpo, "grpo": ours_grpo}

# what each side logs per step: the loss, and the columns averaged into RunResult.extra
OURS_LOSS_KEYS = ("train/loss", "policy/loss")
TRL_LOSS_KEYS = ("loss",)
EXTRA_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "grad_norm": {"ours": ("train/grad_norm", "policy/grad_norm"), "trl": ("grad_norm",)},
    "completion_length": {"ours": ("rollout/response_len",), "trl": ("completions/mean_length",)},
    "reward": {"ours": ("reward/reward_mean",), "trl": ("reward",)},
}


def step_rows(rows: list[dict[str, Any]], side: str) -> tuple[list[float], dict[str, float]]:
    """(losses, extra means) of the per-step log rows of one side."""
    loss_keys = OURS_LOSS_KEYS if side == "ours" else TRL_LOSS_KEYS
    losses: list[float] = []
    values: dict[str, list[float]] = {}
    for row in rows:
        key = next(k for k in loss_keys if k in row)
        losses.append(math.nan if row[key] is None else float(row[key]))
        for name, keys in EXTRA_KEYS.items():
            found = next((row[k] for k in keys[side] if row.get(k) is not None), None)
            if found is not None:
                values.setdefault(name, []).append(float(found))
    return losses, {k: statistics.fmean(v) for k, v in values.items()}


def ours_command(
    trainer: str, spec: Spec, model: Path, inputs: dict[str, Path], run: Path
) -> list[str]:
    return [str(OURS_CLI), *OURS[trainer](spec, model, inputs, run)]


def read_ours(run: Path) -> tuple[list[float], list[float], dict[str, float]]:
    """(step end times, losses, extra means) from the run's metrics.jsonl."""
    path = run / "out" / "metrics.jsonl"
    if not path.exists():
        return [], [], {}
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("step", 0) >= 1 and any(k in row for k in OURS_LOSS_KEYS):
            rows[row["step"]] = row  # one training row per optimiser step
    ordered = [rows[s] for s in sorted(rows)]
    losses, extra = step_rows(ordered, "ours")
    return [row["time_s"] for row in ordered], losses, extra


# ---------------------------------------------------------------------------- TRL side
def trl_common(spec: Spec, run: Path) -> dict[str, Any]:
    """TrainingArguments every TRL run gets (TRL's defaults of bf16 and gradient checkpointing
    are switched off: fp32, no recomputation, as on our side)."""
    return {
        "output_dir": str(run / "out"),
        "max_steps": spec.steps,
        "per_device_train_batch_size": spec.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": spec.lr,
        **OPTIM,
        "seed": SEED,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "model_init_kwargs": {"dtype": "float32"},
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def trl_sft(spec: Spec, run: Path) -> dict[str, Any]:
    return {
        **trl_common(spec, run),
        "max_length": spec.max_length,
        "completion_only_loss": True,
        "packing": False,
    }


def trl_reward(spec: Spec, run: Path) -> dict[str, Any]:
    return {**trl_common(spec, run), "max_length": spec.max_length}


def trl_dpo(spec: Spec, run: Path) -> dict[str, Any]:
    return {
        **trl_common(spec, run),
        "max_length": spec.max_length,
        "beta": spec.beta,
        "loss_type": ["sigmoid"],
        "label_smoothing": 0.0,
        "precompute_ref_log_probs": False,
    }


def trl_grpo(spec: Spec, run: Path) -> dict[str, Any]:
    rows = spec.batch * spec.generations
    return {
        **trl_common(spec, run),
        "per_device_train_batch_size": rows,  # completions: 8 prompts x 4
        "num_generations": spec.generations,
        "steps_per_generation": 1,  # = gradient_accumulation_steps: one update per generation
        "num_iterations": 1,
        "max_completion_length": spec.max_new_tokens,
        "temperature": spec.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "beta": 0.0,  # TRL's default: no reference model
        "loss_type": "grpo",  # per-sequence token mean, as our seq_mean_token_mean
        "scale_rewards": "group",
        "epsilon": 0.2,
        "mask_truncated_completions": False,
        "log_completions": False,
    }


TRL = {"sft": trl_sft, "reward": trl_reward, "dpo": trl_dpo, "grpo": trl_grpo}
TRL_DATA = {"sft": "sft", "reward": "pairs", "dpo": "pairs", "grpo": "prompts"}

TRL_DRIVER = '''"""One TRL run of the vs_trl benchmark (written by benchmarks/vs_trl.py).

Usage: python trl_driver.py RUN.json   (trainer, model, data, reward file, config, result path)
"""

import importlib.util
import json
import sys
import time

import trl
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback


class StepClock(TrainerCallback):
    """perf_counter() at the start of training and at the end of every optimiser step."""

    def __init__(self):
        self.begin, self.ends, self.logs = None, [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def records(path):
    with open(path, encoding="utf-8") as f:
        return Dataset.from_list([json.loads(line) for line in f if line.strip()])


def build_sft(job, data, tokenizer):
    args = trl.SFTConfig(**job["config"])
    return trl.SFTTrainer(
        model=job["model"], args=args, train_dataset=data, processing_class=tokenizer
    )


def build_reward(job, data, tokenizer):
    args = trl.RewardConfig(**job["config"])
    return trl.RewardTrainer(
        model=job["model"], args=args, train_dataset=data, processing_class=tokenizer
    )


def build_dpo(job, data, tokenizer):
    args = trl.DPOConfig(**job["config"])
    return trl.DPOTrainer(
        model=job["model"], args=args, train_dataset=data, processing_class=tokenizer
    )


def build_grpo(job, data, tokenizer):
    spec = importlib.util.spec_from_file_location("vs_trl_reward", job["reward_file"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = trl.GRPOConfig(**job["config"])
    return trl.GRPOTrainer(
        model=job["model"], reward_funcs=[module.reward], args=args, train_dataset=data,
        processing_class=tokenizer,
    )


BUILD = {"sft": build_sft, "reward": build_reward, "dpo": build_dpo, "grpo": build_grpo}


def main():
    job = json.load(open(sys.argv[1], encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    trainer = BUILD[job["trainer"]](job, records(job["data"]), tokenizer)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    trainer.save_model(job["config"]["output_dir"])  # simple-rlhf saves its model at the end too
    result = {
        "begin": clock.begin,
        "ends": clock.ends,
        "global_step": trainer.state.global_step,
        "logs": clock.logs,
    }
    with open(job["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
'''


def trl_command(
    trainer: str, spec: Spec, model: Path, inputs: dict[str, Path], run: Path, trl_python: str
) -> list[str]:
    job = {
        "trainer": trainer,
        "model": str(model),
        "data": str(inputs[TRL_DATA[trainer]]),
        "reward_file": str(inputs["reward"]),
        "config": TRL[trainer](spec, run),
        "result": str(run / "clock.json"),
    }
    (run / "job.json").write_text(json.dumps(job, indent=1))
    return [trl_python, str(inputs["trl_driver"]), str(run / "job.json")]


def read_trl(run: Path) -> tuple[list[float], list[float], dict[str, float]]:
    """(step end times, losses, extra means) from the driver's clock.json."""
    path = run / "clock.json"
    if not path.exists():
        return [], [], {}
    clock = json.loads(path.read_text())
    ends = [t - clock["begin"] for t in clock["ends"]]
    losses, extra = step_rows([row for row in clock["logs"] if "loss" in row], "trl")
    return ends, losses, extra


# ---------------------------------------------------------------------------- measuring
def steady_step_s(ends: list[float]) -> float | None:
    """Median duration of the optimiser steps after the first 20% (from step end times)."""
    durations = [ends[i + 1] - ends[i] for i in range(len(ends) - 1)]  # [i]: step i + 2
    skip = max(0, math.ceil(WARMUP_FRACTION * len(ends)) - 1)
    kept = durations[skip:]
    return statistics.median(kept) if kept else None


def peak_rss_mib(time_file: Path) -> float | None:
    """Maximum resident set size reported by ``/usr/bin/time -v``."""
    if not time_file.exists():
        return None
    for line in time_file.read_text().splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) / 1024
    return None


def run_one(
    size: str,
    trainer: str,
    side: str,
    pair: int,
    cmd: list[str],
    run: Path,
    env: dict[str, str],
) -> RunResult:
    """Launch one process under ``/usr/bin/time -v``; time it from launch to exit."""
    log = run / "log.txt"
    time_file = run / "time.txt"
    with log.open("w") as out:
        out.write(shlex.join(cmd) + "\n\n")
        out.flush()
        t0 = time.perf_counter()
        rc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", str(time_file), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run,
        ).returncode
        wall = time.perf_counter() - t0
    ends, losses, extra = read_ours(run) if side == "ours" else read_trl(run)
    return RunResult(
        size=size,
        trainer=trainer,
        side=side,
        pair=pair,
        rc=rc,
        wall_s=wall,
        peak_rss_mib=peak_rss_mib(time_file),
        steps_done=len(ends),
        step_s=steady_step_s(ends),
        losses=losses,
        extra=extra,
        log=str(log),
    )


# ---------------------------------------------------------------------------- report
def median_of(results: list[RunResult], attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
    return statistics.median(values) if values else None


def mean_extra(results: list[RunResult], key: str) -> float | None:
    values = [r.extra[key] for r in results if key in r.extra]
    return statistics.fmean(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def machine() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu, "nproc": str(nproc)}


def report(
    results: list[RunResult],
    specs: dict[str, Spec],
    args: argparse.Namespace,
    versions: dict[str, Any],
    started: datetime.datetime,
    elapsed_s: float,
) -> str:
    m = machine()
    lines = [
        "# simple-rlhf vs TRL: seconds per optimiser step on the CPU",
        "",
        "Generated by `benchmarks/vs_trl.py` (its docstring says what is measured and how).",
        "",
        f"- command: `{shlex.join(['python', 'benchmarks/vs_trl.py', *args.argv])}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; the whole benchmark took {elapsed_s / 60:.1f} min",
        f"- machine: {m['platform']}, {m['cpu']}, nproc {m['nproc']}",
        f"- threads per run: OMP_NUM_THREADS={args.threads}; pairs per trainer: {args.pairs}"
        " (runs alternate simple-rlhf, TRL, ...)",
        "- models: "
        + ", ".join(f"{k} {n / 1e6:.2f}M parameters" for k, n in versions["models"].items())
        + f" (GRPO starts from each after {GRPO_INIT_STEPS} SFT steps)",
        "- simple-rlhf: " + ", ".join(f"{k} {v}" for k, v in versions["ours"].items()),
        "- TRL side: "
        + ", ".join(f"{k} {v}" for k, v in versions["trl"]["versions"].items())
        + ("" if versions["trl"]["transformers_as_ours"] else " (transformers chosen by pip)"),
        "",
        "s/step: median over the pairs of each run's steady-state median per-step time (steps after"
        " the first 20%). wall: launch to exit. RSS: peak resident set size. Ratios are TRL / ours"
        " (> 1: simple-rlhf is faster / smaller).",
        "",
        "| size | trainer | steps | ours s/step | TRL s/step | step TRL/ours | ours wall s "
        "| TRL wall s | wall TRL/ours | ours RSS MiB | TRL RSS MiB | last loss ours / TRL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        for trainer in args.trainers:
            ours = [r for r in results if (r.size, r.trainer, r.side) == (size, trainer, "ours")]
            trl = [r for r in results if (r.size, r.trainer, r.side) == (size, trainer, "trl")]
            if not ours and not trl:
                continue
            o_step, t_step = median_of(ours, "step_s"), median_of(trl, "step_s")
            o_wall, t_wall = median_of(ours, "wall_s"), median_of(trl, "wall_s")
            o_rss, t_rss = median_of(ours, "peak_rss_mib"), median_of(trl, "peak_rss_mib")
            o_loss = ours[-1].losses[-1] if ours and ours[-1].losses else None
            t_loss = trl[-1].losses[-1] if trl and trl[-1].losses else None
            lines.append(
                f"| {size} | {trainer} | {specs[trainer].steps} | {fmt(o_step, '.4f')} "
                f"| {fmt(t_step, '.4f')} | {ratio(t_step, o_step)} | {fmt(o_wall, '.1f')} "
                f"| {fmt(t_wall, '.1f')} | {ratio(t_wall, o_wall)} | {fmt(o_rss, '.0f')} "
                f"| {fmt(t_rss, '.0f')} | {fmt(o_loss, '.4g')} / {fmt(t_loss, '.4g')} |"
            )
    grpo = [r for r in results if r.trainer == "grpo"]
    if grpo:
        lines += [
            "",
            "GRPO work per step, mean over the steps and runs of each side (sampled completions"
            " differ between runs, and so does the time to generate them):",
            "",
            "| size | side | completion tokens | gold reward |",
            "|---|---|---|---|",
        ]
        for size in args.sizes:
            for side in SIDES:
                runs = [r for r in grpo if (r.size, r.side) == (size, side)]
                if runs:
                    length = mean_extra(runs, "completion_length")
                    gold = mean_extra(runs, "reward")
                    lines.append(f"| {size} | {side} | {fmt(length, '.1f')} | {fmt(gold, '.3f')} |")
    lines += ["", "## Settings (both sides)", ""]
    lines += [
        "fp32 on the CPU, seed 1234, gradient accumulation 1, AdamW (fused) lr as below, linear"
        " decay, no warm-up, betas (0.9, 0.999), eps 1e-8, weight decay 0, gradient clipping 1.0,"
        " logging every step, no evaluation, no checkpoint during training, the model saved at the"
        " end; TRL's defaults bf16 and gradient checkpointing off. Records of the built-in tiny"
        " task (conversational, the tokenizer's chat template; prompts <= 18 tokens, whole"
        " examples <= 36, so no length limit binds), one pass, no epoch boundary.",
        "",
    ]
    for trainer in args.trainers:
        s = specs[trainer]
        lines.append(f"- **{trainer}**: {describe(trainer, s)}")
    return "\n".join(lines) + "\n"


def describe(trainer: str, s: Spec) -> str:
    if trainer == "sft":
        return (
            f"batch {s.batch}, lr {s.lr:g}, {s.steps} steps, max length {s.max_length}, loss on the"
            " completion only (ours: `--no-train-on-prompt`; TRL: `completion_only_loss=True`)"
        )
    if trainer == "reward":
        return (
            f"batch {s.batch} pairs, lr {s.lr:g}, {s.steps} steps, max length {s.max_length},"
            " Bradley-Terry loss at the last token, no margin, no centring"
        )
    if trainer == "dpo":
        return (
            f"batch {s.batch} pairs, lr {s.lr:g}, {s.steps} steps, max length {s.max_length},"
            f" beta {s.beta}, sigmoid loss, reference model computed on the fly (ours:"
            " `--rpo-alpha 0`)"
        )
    return (
        f"{s.batch} prompts x {s.generations} completions per step, up to {s.max_new_tokens} new"
        f" tokens, temperature {s.temperature}, lr {s.lr:g}, {s.steps} steps, one optimiser step"
        " per generation batch (ours: `--per-device-train-batch-size 32 --num-iterations 1`; TRL:"
        " `per_device_train_batch_size=32, steps_per_generation=1, num_iterations=1`), no KL /"
        " reference model (ours `--kl-mode none --kl-coef 0`, TRL `beta=0`), group-normalised"
        " advantages, clip 0.2, per-sequence token-mean loss; reward: the tiny task's gold reward;"
        f" from the base model after {GRPO_INIT_STEPS} steps of simple-rlhf SFT (both sides)"
    )


# ---------------------------------------------------------------------------- main
def split_list(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    out: list[str] = []
    for v in values:
        for item in v.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in allowed:
                raise SystemExit(f"--{what}: {item!r} is not one of {', '.join(allowed)}")
            if item not in out:
                out.append(item)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainers", action="append", default=[], help="comma list (default: all)")
    p.add_argument(
        "--size",
        action="append",
        default=[],
        help="tiny and/or 25m, repeatable or a comma list (default: tiny,25m; --quick: tiny)",
    )
    p.add_argument("--pairs", type=int, default=None, help="runs per side (default 5; quick 1)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps of every run "
        f"(default: sft/reward/dpo 60, grpo 30; --quick {QUICK_STEPS})",
    )
    p.add_argument(
        "--quick", action="store_true", help="1 pair, few steps, tiny size: a smoke test"
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    p.add_argument("--trl-venv", type=Path, default=Path("/work/trl-venv"))
    p.add_argument("--work", type=Path, default=Path("/tmp/vs_trl"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "vs_trl_results.md")
    args = p.parse_args(argv)
    args.argv = argv
    args.trainers = split_list(args.trainers, TRAINERS, "trainers") or list(TRAINERS)
    args.sizes = split_list(args.size, SIZES, "size") or (["tiny"] if args.quick else list(SIZES))
    if args.pairs is None:
        args.pairs = 1 if args.quick else 5
    if args.steps is None and args.quick:
        args.steps = QUICK_STEPS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not OURS_CLI.exists():
        raise SystemExit(f"{OURS_CLI} not found: run this script with the project venv's python")
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    specs = {
        t: Spec(**{**asdict(DEFAULT_SPECS[t]), **({"steps": args.steps} if args.steps else {})})
        for t in args.trainers
    }
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    versions = {"ours": ours_versions(), "trl": ensure_trl_venv(args.trl_venv)}
    models = prepare_models(work, args.sizes)
    versions["models"] = {size: parameter_count(models[size]) for size in args.sizes}
    inputs = prepare_data(work, specs)
    inputs["reward"] = write_reward_file(work)
    inputs["trl_driver"] = work / "trl_driver.py"
    inputs["trl_driver"].write_text(TRL_DRIVER)
    env = child_env(args.threads, work)
    trl_python = versions["trl"]["python"]
    if "grpo" in args.trainers:
        for size in args.sizes:
            models[f"{size}-sft"] = prepare_grpo_init(work, size, models[size], env)

    results: list[RunResult] = []
    failures: list[str] = []
    for size in args.sizes:
        for trainer in args.trainers:
            spec = specs[trainer]
            model = models[f"{size}-sft" if trainer == "grpo" else size]
            for pair in range(args.pairs):
                for side in SIDES:
                    run = work / "runs" / size / trainer / f"{side}_{pair}"
                    shutil.rmtree(run, ignore_errors=True)
                    run.mkdir(parents=True)
                    if side == "ours":
                        cmd = ours_command(trainer, spec, model, inputs, run)
                    else:
                        cmd = trl_command(trainer, spec, model, inputs, run, trl_python)
                    r = run_one(size, trainer, side, pair, cmd, run, env)
                    results.append(r)
                    bad = r.problems(spec.steps)
                    loss = r.losses[-1] if r.losses else None
                    print(
                        f"[vs_trl] {size} {trainer} {side} #{pair}: {fmt(r.step_s, '.4f')} s/step,"
                        f" wall {r.wall_s:.1f} s, RSS {fmt(r.peak_rss_mib, '.0f')} MiB, steps"
                        f" {r.steps_done}, last loss {fmt(loss, '.4g')}"
                        + (f"  PROBLEM: {'; '.join(bad)} (see {r.log})" if bad else ""),
                        flush=True,
                    )
                    failures += [f"{size} {trainer} {side} #{pair}: {b}" for b in bad]
                    (work / "results.json").write_text(
                        json.dumps([asdict(x) for x in results], indent=1)
                    )
    text = report(results, specs, args, versions, started, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"[vs_trl] table written to {args.out}; runs in {work / 'runs'}")
    if failures:
        print("[vs_trl] problems:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
