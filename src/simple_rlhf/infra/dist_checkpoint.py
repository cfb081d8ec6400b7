"""Resumable checkpoints of one or several engines (every rank calls these).

Without DeepSpeed every rank holds the same model and optimiser state, so rank 0 writes them with
:func:`simple_rlhf.infra.checkpoint.save_checkpoint` (the single-process format). With DeepSpeed
the optimiser states are sharded: each DeepSpeed engine writes its shards through
``engine.save_checkpoint(path, tag=name)``, the others go to ``<name>.pt`` from rank 0, and
``state.json`` is written last, after a barrier, so its presence marks a complete checkpoint
(:func:`~simple_rlhf.infra.checkpoint.latest_checkpoint` looks for it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from simple_rlhf.infra import checkpoint as ck
from simple_rlhf.infra.distributed import is_4bit_param

KEEP = 2
# The classes besides tensors and plain data that DeepSpeed's own checkpoint files hold (its ZeRO
# optimiser state records the loss scaler, the stage and fragment addresses).
DEEPSPEED_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


@contextlib.contextmanager
def safe_deepspeed_loads(engine: Any) -> Iterator[None]:
    """Within the block, ``engine``'s checkpoint reads (DeepSpeed's own ``torch.load``, which
    would unpickle anything) go through :func:`~simple_rlhf.infra.checkpoint.safe_torch_load`,
    allowing only :data:`DEEPSPEED_CLASSES` beyond tensors and plain data."""
    allowed = [_resolve(name) for name in DEEPSPEED_CLASSES]
    allowed = [c for c in allowed if c is not None]
    ce = engine.checkpoint_engine

    def load(path: str, map_location: Any = None) -> Any:
        return ck.safe_torch_load(path, allowed=allowed, map_location=map_location)

    ce.load = load  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        del ce.load


def _resolve(dotted: str) -> Any:
    """The class named ``dotted``, or None when this DeepSpeed version has no such class."""
    import importlib

    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def save_checkpoint(
    out_dir: str | Path, step: int, engines: Mapping[str, Any], state: Mapping[str, Any]
) -> Path:
    """Write ``<out_dir>/checkpoints/step-<step>`` for ``engines`` (role name -> Engine) and the
    JSON-able trainer ``state``; keeps the last two checkpoints."""
    dist = next(iter(engines.values())).dist
    path = Path(out_dir) / ck.CHECKPOINTS / f"step-{step}"
    if not any(e.kind == "ds" for e in engines.values()):
        if dist.is_main:
            ck.save_checkpoint(
                out_dir,
                step,
                models={k: e.module for k, e in engines.items()},
                optimizers={k: e.optimizer for k, e in engines.items()},
                schedulers={k: e.scheduler for k, e in engines.items()},
                state=state,
                keep=KEEP,
            )
        dist.barrier()
        return path
    import torch

    from simple_rlhf.infra.seed import rng_state

    for name, e in engines.items():
        if e.kind == "ds":
            e.model.save_checkpoint(str(path), tag=name)  # every rank writes its shard
    dist.barrier()
    if dist.is_main:
        for name, e in engines.items():
            if e.kind != "ds":
                blob = {
                    "model": e.module.state_dict(),
                    "optimizer": e.optimizer.state_dict(),
                    "scheduler": e.scheduler.state_dict(),
                }
                torch.save(blob, path / f"{name}.pt")
        torch.save({"rng": rng_state()}, path / "rng.pt")
        (path / "state.json").write_text(json.dumps({"step": step, **dict(state)}, indent=2))
        done = [p for p in ck._checkpoints(path.parent) if (p / "state.json").exists()]
        for old in sorted(done, key=ck._step_of)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def load_checkpoint(path: str | Path, engines: Mapping[str, Any]) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into live engines; returns the trainer state."""
    path = Path(path)
    if not any(e.kind == "ds" for e in engines.values()):
        return ck.load_checkpoint(
            path,
            models={k: e.module for k, e in engines.items()},
            optimizers={k: e.optimizer for k, e in engines.items()},
            schedulers={k: e.scheduler for k, e in engines.items()},
        )
    from simple_rlhf.infra.seed import set_rng_state

    for name, e in engines.items():
        if e.kind == "ds":
            # a 4-bit (QLoRA) base keeps quantisation state tensors the checkpoint does not hold
            # (the base is rebuilt exactly at load); everything trainable is still restored
            quantized = any(is_4bit_param(p) for p in e.module.parameters())
            with safe_deepspeed_loads(e.model):
                e.model.load_checkpoint(str(path), tag=name, load_module_strict=not quantized)
        else:
            blob = ck.safe_torch_load(path / f"{name}.pt")
            e.module.load_state_dict(blob["model"])
            e.optimizer.load_state_dict(blob["optimizer"])
            e.scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(ck.safe_torch_load(path / "rng.pt")["rng"])
    return json.loads((path / "state.json").read_text())
