"""PPO's actor EMA (``--ema-decay``) across processes: creation, ZeRO-3 refusal, checkpointing.

With the actor at ZeRO 0-2 (or DDP) every rank holds the full, identical actor after each
optimiser step, so every rank keeps the same EMA copy ``e <- d * e + (1 - d) * w`` of the
trainable weights (no communication); rank 0 saves it. At ZeRO-3 a rank holds only its partition
of each weight: refused (:data:`EMA_ZERO3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simple_rlhf.trainers.ppo_update import EMA

EMA_ZERO3 = (
    "ema_decay: not supported with the actor at ZeRO-3 (its parameters are partitioned over the "
    "ranks); use --actor-zero-stage 0, 1 or 2, or drop --ema-decay"
)
EMA_FILE = "actor_ema.safetensors"


def ema_of(model: Any, decay: float | None, device: torch.device | None = None) -> EMA | None:
    """An EMA copy of ``model`` (the plain HF module, before any wrapper) on ``device``, or
    ``None`` without ``decay``."""
    if not decay:
        return None
    ema = EMA(model, decay)
    if device is not None:
        ema.model.to(device)
    return ema


def save_ema(ckpt: str | Path, ema: EMA | None, dist: Any) -> None:
    """Rank 0 adds the EMA's moving (trainable) weights to a multi-process checkpoint
    ``ckpt`` (the frozen rest equals the loaded model); every rank calls it."""
    if ema is not None and dist.is_main:
        from safetensors.torch import save_file

        params = dict(ema.model.named_parameters())
        state = {n: params[n].detach().to("cpu", copy=True).contiguous() for n in ema.names}
        save_file(state, str(Path(ckpt) / EMA_FILE))
    dist.barrier()


def load_ema(ckpt: str | Path, ema: EMA | None) -> None:
    """Every rank restores the EMA weights :func:`save_ema` wrote (exactly its moving ones)."""
    if ema is None:
        return
    from safetensors.torch import load_file

    state = load_file(str(Path(ckpt) / EMA_FILE))
    if sorted(state) != sorted(ema.names):
        raise RuntimeError(f"{ckpt}/{EMA_FILE} does not hold this actor's trainable weights")
    params = dict(ema.model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v.to(params[n].device, params[n].dtype))
