"""One metrics logger for every trainer: progress bar, JSONL, TensorBoard, optional wandb.

Keys are namespaced (``train/loss``, ``eval/perplexity``, ``policy/clipfrac``, ``time/generate_s``).
``report_to=[]`` (or ``["none"]``) is the no-op backend: nothing is written, nothing imported.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simple_rlhf.config import SINKS


def _scalar(value: Any) -> float | None:
    if hasattr(value, "item"):
        value = value.detach().float().mean().item() if hasattr(value, "detach") else value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class MetricsLogger:
    """Writes metrics to the chosen sinks; prints a compact line to the progress bar / stdout."""

    def __init__(
        self,
        output_dir: str | Path | None,
        report_to: Sequence[str] = ("jsonl", "tensorboard"),
        *,
        total_steps: int | None = None,
        progress_bar: bool = True,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
        keep_until: int | None = None,
    ) -> None:
        """``keep_until``: resuming at that step, drop the rows of an existing ``metrics.jsonl``
        logged after it (the stopped run's, from after its checkpoint: they are logged again)."""
        unknown = [s for s in report_to if s not in SINKS]
        if unknown:
            raise ValueError(f"unknown metric sink {unknown[0]!r}; valid: {', '.join(SINKS)}")
        self.enabled = enabled
        sinks = set(report_to) - {"none"} if enabled and output_dir is not None else set()
        self.dir = Path(output_dir) if output_dir is not None else None
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if "jsonl" in sinks:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / "metrics.jsonl"
            if keep_until is not None and path.exists():
                _truncate_after(path, keep_until)
            self._jsonl = path.open("a", encoding="utf-8")
        if "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        if "wandb" in sinks:
            import wandb  # optional dependency, imported only when asked for

            self._wandb = wandb.init(name=run_name, config=dict(config or {}), dir=str(self.dir))
        self._bar = None
        if enabled and progress_bar and total_steps:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, dynamic_ncols=True, leave=True, file=sys.stderr)
        self._t0 = time.perf_counter()

    def log(self, metrics: Mapping[str, Any], step: int) -> dict[str, float]:
        """Record scalar metrics at ``step``; non-scalars are skipped. Returns what was logged."""
        clean = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        if not self.enabled:
            return clean
        if self._jsonl is not None:
            row = {"step": step, "time_s": round(time.perf_counter() - self._t0, 3)}
            row.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
            self._jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        return clean

    def progress(self, n: int = 1, postfix: Mapping[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{_scalar(v):.4g}" for k, v in postfix.items()})

    def print(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the rows of ``path`` up to ``step`` (rewritten atomically; unreadable lines dropped:
    a crash can cut the last one short)."""
    import os

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def format_metrics(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
    """``k=v`` pairs, 4 significant digits, in the given key order."""
    keys = list(keys) if keys is not None else sorted(metrics)
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl back (for reports and tests)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
