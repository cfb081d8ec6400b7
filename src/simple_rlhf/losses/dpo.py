"""Direct preference optimisation and its pairwise relatives, on sequence log-probabilities.

Notation (all ``[B]``): ``c = log π(y_c|x) - log π_ref(y_c|x)`` and ``r = log π(y_r|x) -
log π_ref(y_r|x)`` are the chosen / rejected *log-ratios*; ``h = c - r``; ``β`` is the KL
strength (or its analogue); ``ε`` is ``label_smoothing``. Reference-free mode sets the reference
log-probs to 0, so ``c`` and ``r`` become plain policy log-probs.

Every per-pair loss in :data:`DPO_LOSSES` has the same signature::

    fn(chosen_logratios [B], rejected_logratios [B], *, beta, label_smoothing=0.0, bco_delta=0.0)
        -> losses [B]

and ignores the keyword arguments it does not use. :func:`dpo_loss` picks one or a weighted sum
of several by name.

Length normalisation: IPO (Azar et al.) is defined on per-token *average* log-probs; the trainer
passes length-averaged sequence log-probs (``sequence_logprobs(..., average=True)``) when the loss
type is ``"ipo"``. All other types here use summed log-probs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

EXO_DEFAULT_EPS = 1e-3


class PairLossFn(Protocol):
    def __call__(
        self,
        chosen_logratios: torch.Tensor,
        rejected_logratios: torch.Tensor,
        *,
        beta: float,
        label_smoothing: float = 0.0,
        bco_delta: float | torch.Tensor = 0.0,
    ) -> torch.Tensor: ...


def logistic_losses(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Label-smoothed logistic loss ``-(1-ε) log σ(z) - ε log σ(-z)`` elementwise.

    Shared by DPO (``z = β h``), SimPO and CPO (``z = β h - γ``).
    """
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses


def sigmoid_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """DPO: ``-(1-ε) log σ(βh) - ε log σ(-βh)``.

    Rafailov et al. 2023, arXiv 2305.18290, eq. 7; ``ε > 0`` is conservative DPO (Mitchell 2023,
    "A note on DPO with noisy preferences"), i.e. preferences flipped with probability ε.
    """
    return logistic_losses(beta * (chosen_logratios - rejected_logratios), label_smoothing)


def hinge_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """SLiC hinge: ``max(0, 1 - βh)`` (Zhao et al. 2023, SLiC-HF, arXiv 2305.10425;
    ``1/β`` plays the role of the margin δ)."""
    return torch.relu(1.0 - beta * (chosen_logratios - rejected_logratios))


def ipo_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """IPO: ``(h - 1/(2β))^2`` (Azar et al. 2023, arXiv 2310.12036, eq. 17, β = τ).

    Defined on length-averaged log-probs: pass ``sequence_logprobs(..., average=True)``.
    """
    return (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2


def robust_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Robust DPO: ``((1-ε)(-log σ(βh)) - ε(-log σ(-βh))) / (1 - 2ε)``.

    Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409: an unbiased estimate
    of the clean-label DPO loss when labels are flipped with known rate ``ε < 1/2``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    z = beta * (chosen_logratios - rejected_logratios)
    eps = label_smoothing
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def bco_pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """BCO on pairs: ``-log σ(βc - δ) - log σ(-(βr - δ))``.

    Jung et al. 2024, "Binary Classifier Optimization for LLM Alignment", arXiv 2404.04656: a
    binary classifier on the implicit reward ``βc`` / ``βr`` with a reward shift ``δ``; ``δ``
    (``bco_delta``) is a running mean of the rewards ``β·[c, r]`` kept by the trainer (the
    ``bco/reward_mean`` metric of :func:`dpo_loss` is the current batch's value).
    """
    delta = bco_delta.detach() if isinstance(bco_delta, torch.Tensor) else bco_delta
    return -F.logsigmoid(beta * chosen_logratios - delta) - F.logsigmoid(
        -(beta * rejected_logratios - delta)
    )


def sppo_hard_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """SPPO with hard win probabilities: ``(c - 1/(2β))^2 + (r + 1/(2β))^2``.

    Wu et al. 2024, "Self-Play Preference Optimization", arXiv 2405.00675, eq. 4.7 with
    ``P(y_c ≻ π) = 1`` and ``P(y_r ≻ π) = 0`` (the paper estimates them softly with a preference
    model; ``1/β`` is its ``η``): each log-ratio is regressed to ``±η/2``.
    """
    target = 0.5 / beta
    return (chosen_logratios - target) ** 2 + (rejected_logratios + target) ** 2


def nca_pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """NCA (pairwise): ``-log σ(βc) - ½ log σ(-βc) - ½ log σ(-βr)``.

    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv 2402.05369 (NCA loss for K = 2): optimises absolute likelihoods, so unlike DPO the
    chosen log-prob is not pushed down together with the rejected one.
    """
    zc = beta * chosen_logratios
    zr = beta * rejected_logratios
    return -F.logsigmoid(zc) - 0.5 * F.logsigmoid(-zc) - 0.5 * F.logsigmoid(-zr)


def apo_zero_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """APO-zero: ``(1 - σ(βc)) + σ(βr)`` — raise chosen, lower rejected likelihood.

    D'Oosterlinck et al. 2024, "Anchored Preference Optimization", arXiv 2408.06266, eq. 7; for
    when the chosen answers are better than what the model already produces.
    """
    return (1.0 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)


def apo_down_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """APO-down: ``σ(βc) + (1 - σ(β(c - r)))`` — lower both, the rejected one more.

    D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 8; for when the chosen answers are still
    worse than the model's own outputs.
    """
    return torch.sigmoid(beta * chosen_logratios) + (
        1.0 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
    )


def exo_pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    bco_delta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """EXO (pairwise): reverse KL ``KL(p_θ || p_ε)`` over the pair {chosen, rejected}.

    ``σ(βh)(log σ(βh) - log(1-ε)) + σ(-βh)(log σ(-βh) - log ε)``, where ``p_θ = (σ(βh), σ(-βh))``
    and the label distribution is ``p_ε = (1-ε, ε)``. Ji et al. 2024, "Towards Efficient Exact
    Optimization of Language Model Alignment", arXiv 2402.00856, eq. 16. ``ε`` must be in (0, 1);
    ``label_smoothing = 0`` means the default ``ε = 1e-3``.
    """
    eps = label_smoothing if label_smoothing > 0 else EXO_DEFAULT_EPS
    if not eps < 1.0:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1, got {label_smoothing}")
    z = beta * (chosen_logratios - rejected_logratios)
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )


DPO_LOSSES: dict[str, PairLossFn] = {
    "sigmoid": sigmoid_losses,
    "hinge": hinge_losses,
    "ipo": ipo_losses,
    "robust": robust_losses,
    "bco_pair": bco_pair_losses,
    "sppo_hard": sppo_hard_losses,
    "nca_pair": nca_pair_losses,
    "apo_zero": apo_zero_losses,
    "apo_down": apo_down_losses,
    "exo_pair": exo_pair_losses,
}


def get_pair_loss(name: str) -> PairLossFn:
    """The per-pair loss called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return DPO_LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown DPO loss type {name!r}; valid names: {', '.join(sorted(DPO_LOSSES))}"
        ) from None


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    bco_delta: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = sum_k w_k · mean_b loss_k(c_b, r_b)`` over the named loss types (see module doc).

    ``c = policy_chosen_logps - ref_chosen_logps``, ``r = policy_rejected_logps -
    ref_rejected_logps`` (reference log-probs taken as 0 if ``reference_free``; they may then be
    ``None``). ``loss_type`` is one name or a list (weights default to 1 each, as in
    MPO-style mixtures, e.g. ``["sigmoid", "bco_pair"]``). Unknown names raise ``ValueError``.

    Shapes: all log-prob inputs ``[B]`` (sequence log-probs; length-averaged for ``"ipo"``).
    Metrics (detached scalars): ``rewards/chosen`` = mean βc, ``rewards/rejected`` = mean βr,
    ``rewards/accuracy`` = mean[βc > βr], ``rewards/margin`` = mean(βc - βr),
    ``logps/chosen``, ``logps/rejected`` (policy means), ``loss/<type>`` per type when several are
    mixed, and ``bco/reward_mean`` = mean of β·[c, r] when ``bco_pair`` is used (to update the
    trainer's running ``bco_delta``).
    """
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not names:
        raise ValueError("loss_type must name at least one DPO loss")
    weights = [1.0] * len(names) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} loss_weights given for {len(names)} loss types")
    fns = [get_pair_loss(n) for n in names]

    if reference_free:
        chosen_logratios, rejected_logratios = policy_chosen_logps, policy_rejected_logps
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("reference log-probs are required unless reference_free=True")
        chosen_logratios = policy_chosen_logps - ref_chosen_logps
        rejected_logratios = policy_rejected_logps - ref_rejected_logps

    metrics: dict[str, torch.Tensor] = {}
    loss = policy_chosen_logps.new_zeros(())
    for name, fn, w in zip(names, fns, weights, strict=True):
        term = fn(
            chosen_logratios,
            rejected_logratios,
            beta=beta,
            label_smoothing=label_smoothing,
            bco_delta=bco_delta,
        ).mean()
        loss = loss + w * term
        if len(names) > 1:
            metrics[f"loss/{name}"] = term.detach()

    with torch.no_grad():
        chosen_rewards = beta * chosen_logratios.detach()
        rejected_rewards = beta * rejected_logratios.detach()
        metrics.update(
            {
                "rewards/chosen": chosen_rewards.mean(),
                "rewards/rejected": rejected_rewards.mean(),
                "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
                "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
                "logps/chosen": policy_chosen_logps.detach().mean(),
                "logps/rejected": policy_rejected_logps.detach().mean(),
            }
        )
        if "bco_pair" in names:
            metrics["bco/reward_mean"] = torch.cat([chosen_rewards, rejected_rewards]).mean()
    return loss, metrics
