"""Test configuration: fully offline, caches in a temporary folder, tiny artefacts built once.

Session fixtures build the tiny base model and a short SFT of it once per test run; trainer tests
of later steps start from them instead of training their own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="simple-rlhf-tests-"))
# The training seed of the learning tests (and of the shared tiny_sft / tiny_rm fixtures):
# benchmarks/learning_tests.py runs them under several seeds to measure their margins.
LEARNING_SEED = int(os.environ.get("SIMPLE_RLHF_TEST_SEED", "1234"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ["SIMPLE_RLHF_HOME"] = str(_SESSION_HOME / "home")
    os.environ["HF_HOME"] = str(_SESSION_HOME / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    # OMP_NUM_THREADS wins (1 is much faster on a machine shared with other jobs)
    threads = int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


class Learning:
    """The assertions of the learning tests: each checks a measured value against its bound.
    When ``SIMPLE_RLHF_LEARNING_LOG`` names a file, it instead appends ``{test, metric, value,
    bound, seed}`` to it and does not assert, so that ``benchmarks/learning_tests.py`` sees every
    value of every seed (a failed bound shows as a negative margin there)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.log = os.environ.get("SIMPLE_RLHF_LEARNING_LOG")

    def _record(self, test: str, metric: str, value: float, op: str, bound: float) -> None:
        if self.log:
            row = {"test": test, "metric": metric, "value": float(value), "op": op}
            row.update({"bound": float(bound), "seed": self.seed})
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def at_least(self, test: str, metric: str, value: float, bound: float) -> None:
        self._record(test, metric, value, ">=", bound)
        ok = self.log or value >= bound
        assert ok, f"{test}: {metric} = {value:.4g} < {bound:g} (seed {self.seed})"

    def at_most(self, test: str, metric: str, value: float, bound: float) -> None:
        self._record(test, metric, value, "<=", bound)
        ok = self.log or value <= bound
        assert ok, f"{test}: {metric} = {value:.4g} > {bound:g} (seed {self.seed})"


@pytest.fixture(scope="session")
def learning() -> Learning:
    return Learning(LEARNING_SEED)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    """Folder of the tiny base model (random init) with its tokenizer."""
    from simple_rlhf.models.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def tiny_sft(tiny_base: Path, session_dir: Path) -> Path:
    """The tiny SFT model of 6 epochs (the default before min_train_steps; ~40 s alone on 2
    cores; held-out greedy gold 0.69-0.79 over 5 seeds), shared by the trainer tests of later
    steps."""
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.sft import SFTConfig, run

    out = session_dir / "sft"
    cfg = load_config(
        SFTConfig,
        overrides={
            "output_dir": str(out),
            "seed": LEARNING_SEED,
            "report_to": ["none"],
            "progress_bar": False,
            "gold_eval_prompts": 32,
            "max_eval_samples": 64,
            "min_train_steps": 0,  # 6 epochs (750 steps) at lr 3e-3 (the defaults before
            "learning_rate": 3e-3,  # session 6): the model the learning bounds assume
        },
    )
    run(cfg)
    return out


@pytest.fixture(scope="session")
def tiny_rm(tiny_sft: Path, session_dir: Path) -> Path:
    """A tiny reward model trained from ``tiny_sft`` (short run; its folder holds summary.json with
    the held-out metrics before/after training and reward_stats.json)."""
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.reward import RewardConfig, run

    out = session_dir / "reward"
    cfg = load_config(
        RewardConfig,
        overrides={
            "model_name_or_path": str(tiny_sft),
            "output_dir": str(out),
            "kind": "value",  # the scalar-head RM (tests of the likelihood kind: test_reward.py)
            "learning_rate": 1e-3,
            "max_steps": 300,
            "seed": LEARNING_SEED,
            "report_to": ["none"],
            "progress_bar": False,
            "max_eval_samples": 128,
        },
    )
    run(cfg)
    return out
