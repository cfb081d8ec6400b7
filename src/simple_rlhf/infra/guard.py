"""The non-finite guard: no optimiser step is taken on a NaN/inf gradient, and a run that keeps
producing them stops with a clear message instead of saving a broken model.

Every optimiser step of every trainer measures the global gradient norm before clipping (a NaN or
inf loss makes it NaN too). :meth:`NonFiniteGuard.allow` is asked before the optimiser steps: a
non-finite norm skips the update (gradients are cleared, the schedule still advances, so the step
count and a resume stay where they were), counts it, and after ``limit`` such steps in a row
raises :class:`NonFiniteError`: the trainer stops before its final save, so the output folder
keeps what it held (earlier checkpoints hold finite weights, since no non-finite update was ever
applied). Under DeepSpeed ZeRO the engine itself skips a step whose gradient norm is not finite
(fp32/fp16) and reports an infinite norm; the guard counts and stops the same way.

:func:`check_finite_logits` is the RL trainers' check before sampling: ``torch.multinomial`` on
NaN probabilities fails with an obscure error, this says what happened.
"""

from __future__ import annotations

import math
import os
import sys

import torch

# How many non-finite steps in a row end a run (SIMPLE_RLHF_MAX_NONFINITE_STEPS overrides).
DEFAULT_LIMIT = 3
ADVICE = (
    "the model diverged; nothing was saved over the output folder (its checkpoints, if any, "
    "hold the last finite weights). Lower --learning-rate, keep --max-grad-norm > 0, or check "
    "the data and the reward for extreme values"
)


class NonFiniteError(RuntimeError):
    """Training produced non-finite gradients (or logits) too often to go on."""


def _limit() -> int:
    raw = os.environ.get("SIMPLE_RLHF_MAX_NONFINITE_STEPS", "")
    return int(raw) if raw.strip().isdigit() and int(raw) > 0 else DEFAULT_LIMIT


class NonFiniteGuard:
    """Counts optimiser steps skipped for a non-finite gradient norm (``skipped``) and how many
    came in a row; ``name`` says which model in messages ("actor", "critic", ...)."""

    def __init__(self, name: str = "model", limit: int | None = None) -> None:
        self.name = name
        self.limit = limit if limit is not None else _limit()
        self.skipped = 0
        self.in_a_row = 0
        self.steps = 0

    def allow(self, grad_norm: float) -> bool:
        """True when an update with this gradient norm may be applied; False (skip it) when the
        norm is NaN or inf. Raises :class:`NonFiniteError` at ``limit`` skips in a row."""
        self.steps += 1
        if math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if os.environ.get("RANK", "0") == "0":  # every rank sees the same global norm
            print(
                f"warning: {self.name}: optimiser step {self.steps} skipped: gradient norm "
                f"{grad_norm} ({self.in_a_row} in a row, stopping at {self.limit})",
                file=sys.stderr,
                flush=True,
            )
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.name}: {self.in_a_row} optimiser steps in a row had a non-finite gradient "
                f"norm ({grad_norm}) (optimiser step {self.steps}; {self.skipped} skipped in all): "
                + ADVICE
            )
        return False


def check_finite_logits(logits: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteError` if ``logits`` hold a NaN (``-inf`` is a legitimate mask)."""
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise NonFiniteError(f"{where}: the policy's logits are not finite: " + ADVICE)
