"""The config mechanism: defaults < YAML < flags, validation, --help from field docs."""

from __future__ import annotations

import argparse

import pytest

from simple_rlhf.config import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    flat_fields,
    load_config,
)
from simple_rlhf.trainers.sft import SFTConfig


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, SFTConfig)
    return config_from_args(SFTConfig, p.parse_args(argv))


def test_stage_defaults_and_flat_flags():
    cfg = parse([])
    assert cfg.optim.learning_rate == 1e-3  # SFT's own default for the tiny model
    cfg = parse(
        ["--learning-rate", "1e-4", "--per_device_train_batch_size", "4", "--lora-dim", "8"]
    )
    assert cfg.optim.learning_rate == 1e-4
    assert cfg.optim.per_device_train_batch_size == 4
    assert cfg.lora.lora_dim == 8
    assert parse(["--data-path", "a.jsonl", "b.jsonl"]).data.data_path == ["a.jsonl", "b.jsonl"]
    assert parse(["--gradient-checkpointing"]).model.gradient_checkpointing is True
    # a list flag with no values sets the empty list (e.g. no TensorBoard, no JSONL)
    assert parse(["--report-to"]).log.report_to == []


def test_yaml_nested_or_flat_and_flags_override(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("optim:\n  learning_rate: 0.01\n  seed: 7\nmax_seq_len: 128\nmax_prompt_len: 96\n")
    cfg = parse(["--config", str(y), "--seed", "9"])
    assert cfg.optim.learning_rate == 0.01
    assert cfg.optim.seed == 9  # flag beats YAML
    assert cfg.data.max_seq_len == 128


def test_unknown_and_invalid_values_are_clear(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'learnin_rate'.*learning_rate"):
        load_config(SFTConfig, y)
    with pytest.raises(ConfigError, match="dtype"):
        load_config(SFTConfig, overrides={"dtype": "float8"})
    with pytest.raises(ConfigError, match="per_device_train_batch_size: cannot read .many."):
        load_config(SFTConfig, overrides={"per_device_train_batch_size": "many"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, tmp_path / "missing.yaml")


def test_configs_are_read_only():
    cfg = load_config(SFTConfig)
    with pytest.raises(AttributeError):
        cfg.optim.learning_rate = 1.0  # type: ignore[misc]


def test_every_field_has_help_and_unique_name():
    fields = list(flat_fields(SFTConfig))
    names = [f.name for f in fields]
    assert len(names) == len(set(names))
    assert all(f.help for f in fields), [f.name for f in fields if not f.help]
