"""Metrics logger sinks and atomic folder writes."""

from __future__ import annotations

import pytest
import torch

from simple_rlhf.infra.checkpoint import atomic_dir
from simple_rlhf.infra.logging import MetricsLogger, read_jsonl


def test_jsonl_and_tensorboard_sinks(tmp_path):
    log = MetricsLogger(tmp_path, ["jsonl", "tensorboard"], progress_bar=False)
    log.log({"train/loss": torch.tensor(1.5), "train/lr": 0.1, "note": "skipped"}, step=3)
    log.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["step"] == 3 and rows[0]["train/loss"] == 1.5 and "note" not in rows[0]
    assert any((tmp_path / "tensorboard").iterdir())


def test_noop_backend_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "x", ["none"], progress_bar=False)
    log.log({"a": 1.0}, step=1)
    log.close()
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown metric sink"):
        MetricsLogger(tmp_path, ["mlflow"])


def test_atomic_dir_keeps_old_copy_when_writing_fails(tmp_path):
    target = tmp_path / "model"
    atomic_dir(target, lambda d: (d / "w.txt").write_text("v1"))

    def broken(d):
        (d / "w.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_dir(target, broken)
    assert (target / "w.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary leftovers
