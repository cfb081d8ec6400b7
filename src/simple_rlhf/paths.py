"""Where simple-rlhf keeps its caches: ``$SIMPLE_RLHF_HOME`` or ``~/.cache/simple_rlhf``."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """Root of the tiny artefacts and the tokenized-data cache."""
    env = os.environ.get("SIMPLE_RLHF_HOME")
    return Path(env) if env else Path.home() / ".cache" / "simple_rlhf"
