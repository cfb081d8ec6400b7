"""Per-token KL estimators and KL-coefficient controllers for online RL.

The policy samples token ``o_t`` and we know ``logp = log pi(o_t)`` and ``logp_ref = log pi_ref(o_t)``.
With ``x = logp_ref - logp`` (so ``E_pi[exp(x)] = 1``) the estimators of ``KL(pi || pi_ref)`` are
(J. Schulman, "Approximating KL divergence", 2020):

* ``k1 = logp - logp_ref = -x``                 unbiased, high variance, can be negative
* ``k2 = 1/2 (logp - logp_ref)^2``              biased, low variance, >= 0
* ``k3 = exp(x) - x - 1``                       unbiased, low variance, >= 0
* ``abs = |logp - logp_ref|``                   biased, >= 0

The coefficient that multiplies the penalty is either fixed or adapted towards a target KL with the
proportional controller of Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences" (Sec. 2.2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Bound on the log-ratio fed to exp() in k3 when ``clamp`` is given (exp(20) ~ 4.9e8 fits fp32).
_K3_LOG_RATIO_BOUND = 20.0


def _k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None) -> torch.Tensor:
    return logprobs - ref_logprobs


def _k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


def _k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None) -> torch.Tensor:
    x = ref_logprobs - logprobs
    if clamp is not None:  # keep exp() and its gradient finite before the output clamp
        x = x.clamp(-_K3_LOG_RATIO_BOUND, _K3_LOG_RATIO_BOUND)
    return torch.exp(x) - x - 1.0


def _abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None) -> torch.Tensor:
    return (logprobs - ref_logprobs).abs()


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
    "abs": _abs,
}


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kind: str = "k1",
    clamp: float | None = None,
) -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from sampled-token log-probabilities.

    Args:
        logprobs: ``[B, T]`` log pi(o_t) of the sampled tokens under the policy.
        ref_logprobs: ``[B, T]`` log pi_ref(o_t) under the frozen reference.
        kind: one of ``KL_ESTIMATORS`` (``k1``, ``k2``, ``k3``, ``abs``); see the module docstring.
        clamp: if given, the estimate is clamped to ``[-clamp, clamp]`` (verl clamps k3 to
            ``[-10, 10]``). For ``k3`` the log-ratio is additionally bounded to ``+-20`` before
            ``exp`` so neither the value nor its gradient overflows.

    Returns:
        ``[B, T]`` per-token estimates (no masking: callers mask with ``response_mask``).
    """
    try:
        fn = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {kind!r}; valid names: {', '.join(sorted(KL_ESTIMATORS))}"
        ) from None
    kl = fn(logprobs, ref_logprobs, clamp)
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    return kl


class FixedKLController:
    """A constant KL coefficient ``beta``; ``update`` is a no-op (kept for a uniform interface)."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards ``target`` (Ziegler et al. 2019).

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``;  ``beta <- beta * (1 + e * n_steps / horizon)``

    ``current_kl`` is the KL of the last rollout batch (summed over the tokens of a response,
    averaged over responses, as in the paper), ``n_steps`` the number of samples (or steps) it
    covered and ``horizon`` the number of samples over which the error is corrected.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Multiply the coefficient by ``1 + clip(kl/target - 1, +-0.2) * n_steps / horizon``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])
