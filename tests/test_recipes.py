"""Every shipped YAML recipe loads with the config of the command it is written for."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from simple_rlhf.cli.main import COMMANDS
from simple_rlhf.config import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_with_its_command(path):
    command = path.stem.split(".")[0].replace("_", "-")  # reward.value.yaml: a variant of reward
    assert command in COMMANDS, f"{path.name}: no command {command!r}"
    module, config_name, _, _ = COMMANDS[command]
    cls = getattr(importlib.import_module(module), config_name)
    load_config(cls, path)
