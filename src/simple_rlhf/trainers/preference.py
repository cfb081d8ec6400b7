"""Preference optimisation on (prompt, chosen, rejected) pairs without a reward model: DPO and its
loss family, SimPO, CPO / CPO-SimPO and ORPO — one loop, the method picked by the config's type.

Variant: chosen and rejected are concatenated into one ``[2B, T]`` batch (``collate_pairs``) and go
through the policy in one forward; sequence log-probs sum the response tokens (length-averaged for
IPO, SimPO, CPO with ``ipo``/``simpo`` and ORPO, as their papers define them). The objective comes
from the :data:`METHODS` table (config class -> losses/ function):

* ``dpo`` — ``--loss-type`` one or several names of ``losses.dpo.DPO_LOSSES`` (sigmoid = DPO, hinge,
  ipo, robust, bco_pair, sppo_hard, nca_pair, apo_zero, apo_down, exo_pair), weighted by
  ``--loss-weights``; reference = a frozen copy of the initial policy, or with LoRA the same model
  with the adapter disabled; ``--precompute-ref-log-probs`` (one pass before training, kept in
  memory, the copy then freed) or on the fly; ``--reference-free``; ``--rpo-alpha`` adds the NLL of
  the chosen answers (RPO). ``bco_pair``'s reward shift δ is the running mean of all training
  rewards seen so far (checkpointed).
* ``simpo`` (reference-free, averaged log-probs, margin γ), ``cpo`` (reference-free preference
  term + α·NLL on chosen; ``--loss-type simpo`` with ``--cpo-alpha > 0`` is CPO-SimPO), ``orpo``
  (NLL + λ·odds-ratio term, no reference).

Data: the pairs of step 2 of the DeepSpeed-Chat split (``--data-split 2,4,4``: the share meant for
the reward model, i.e. the preference data) by default; ``--data-step`` picks another share (e.g. 1
when the SFT model was trained elsewhere). Deviation from TRL: dropout is off in the policy by
default (``--no-disable-dropout`` keeps it), so policy and reference log-probs agree at step 0.

Metrics on train and held-out pairs: ``loss``, ``rewards/{chosen,rejected,accuracy,margin}``
(implicit rewards; for reference-free methods β times the policy log-probs), ``logps/*``,
``logits/{chosen,rejected}`` (mean logit over response tokens) and the method's own terms; on the
tiny task also the gold reward of greedy answers to held-out prompts, before and after training.

One CPU, tiny default (after ``simple-rlhf sft --output-dir outputs/sft``; about a minute)::

    simple-rlhf dpo --config configs/tiny/dpo.yaml
    simple-rlhf dpo --config configs/tiny/dpo.yaml --loss-type sigmoid ipo --loss-weights 0.5 0.5

A real model, LoRA (the reference is the base with the adapter disabled)::

    simple-rlhf dpo --model-name-or-path outputs/opt-sft --data-path Dahoas/rm-static \\
        --lora-dim 64 --beta 0.1 --learning-rate 5e-6 --output-dir outputs/opt-dpo

Several GPUs (or CPU processes over gloo): the same command under a launcher, plain DDP or
DeepSpeed ZeRO 0-3 with offload (see ``trainers/preference_loop.py``: each rank takes a disjoint
slice of every global batch of ``per_device_train_batch_size x N`` pairs; N ranks x batch B equal
one process with batch N x B; the reference is partitioned like the policy under ZeRO-3;
precomputed reference log-probs are computed by all ranks, each on its shard; QLoRA
``--load-in-4bit`` at any stage, 3 included)::

    torchrun --nproc_per_node 8 -m simple_rlhf dpo --config configs/tiny/dpo.yaml --zero-stage 2
    deepspeed --num_gpus 8 --module simple_rlhf dpo --zero-stage 3 --offload all ...

``bco_pair``'s running reward mean δ is updated from the global micro-batch (all ranks).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from simple_rlhf.config import (
    ConfigError,
    DataArgs,
    DistArgs,
    HeldoutArgs,
    LogArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.errors import DataError
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.data.tokenize import collate_pairs
from simple_rlhf.infra.distributed import Dist, Engine, init_distributed
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.cpo import CPO_LOSS_TYPES, cpo_loss
from simple_rlhf.losses.dpo import DPO_LOSSES, dpo_loss
from simple_rlhf.losses.orpo import orpo_loss
from simple_rlhf.losses.sft import sft_loss
from simple_rlhf.losses.simpo import simpo_loss
from simple_rlhf.trainers import common
from simple_rlhf.trainers.pair_forward import (
    Reference,
    SeqLogps,
    batch_forward,
    cached_reference,
)
from simple_rlhf.trainers.preference_loop import (
    LossFn,
    Metrics,
    PreferenceTrainArgs,
    build_engine,
    evaluate_loss,
    fit,
    heldout_metrics,
    optim_defaults,
    precompute_sharded,
    setup_models,
)

# ---- configuration ---------------------------------------------------------------------------


def _check_beta(beta: float, name: str = "beta") -> None:
    if not beta > 0:
        raise ConfigError(f"{name}: must be > 0, got {beta}")


def _check_smoothing(eps: float) -> None:
    if not 0.0 <= eps < 0.5:
        raise ConfigError(f"label_smoothing: must be in [0, 0.5), got {eps}")


@dataclasses.dataclass(frozen=True)
class DPOArgs:
    """DPO and its pairwise loss family (losses/dpo.py)."""

    beta: float | None = fld(
        None,
        "β: strength of the implicit KL to the reference (IPO: τ; default 0.1, 0.5 for ipo alone: "
        "IPO's target margin 1/(2τ) is on per-token average log-ratios)",
    )
    loss_type: list[str] = fld(
        ["sigmoid"],
        f"one or several of {', '.join(DPO_LOSSES)} (several are summed with loss_weights)",
    )
    loss_weights: list[float] | None = fld(
        None, "weight of each loss_type in the sum (default: 1 each)"
    )
    label_smoothing: float = fld(
        0.0, "ε: assumed label-flip rate (conservative/robust DPO; exo_pair's ε, 0 = 1e-3)"
    )
    reference_free: bool = fld(False, "no reference model: log-ratios are plain policy log-probs")
    precompute_ref_log_probs: bool = fld(
        False, "compute reference log-probs in one pass before training (then free the reference)"
    )
    rpo_alpha: float = fld(
        1.0,
        "RPO: weight of the chosen answers' per-token NLL (0: the paper's plain DPO; the default 1 "
        "keeps the chosen answers' likelihood from falling with the rejected ones')",
    )

    @property
    def beta_value(self) -> float:
        """``beta``, or its default for the loss types: 0.5 for ``ipo`` alone, else 0.1."""
        if self.beta is not None:
            return self.beta
        return 0.5 if list(self.loss_type) == ["ipo"] else 0.1

    def __post_init__(self) -> None:
        if self.beta is not None:
            _check_beta(self.beta)
        _check_smoothing(self.label_smoothing)
        if not self.loss_type:
            raise ConfigError("loss_type: name at least one loss")
        for name in self.loss_type:
            if name not in DPO_LOSSES:
                raise ConfigError(
                    f"loss_type: unknown DPO loss type {name!r}; valid names: "
                    f"{', '.join(sorted(DPO_LOSSES))}"
                )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(
                f"loss_weights: {len(self.loss_weights)} weights for "
                f"{len(self.loss_type)} loss types"
            )
        if self.reference_free and self.precompute_ref_log_probs:
            raise ConfigError("precompute_ref_log_probs: there is no reference with reference_free")
        if self.rpo_alpha < 0:
            raise ConfigError(f"rpo_alpha: must be >= 0, got {self.rpo_alpha}")


@dataclasses.dataclass(frozen=True)
class SimPOArgs:
    """SimPO (losses/simpo.py): reference-free, length-averaged log-probs, target margin γ."""

    beta: float = fld(2.0, "β: scale of the average log-prob reward")
    simpo_gamma: float = fld(0.5, "γ: target reward margin (absolute; TRL's gamma_beta_ratio × β)")
    label_smoothing: float = fld(0.0, "ε: assumed label-flip rate")

    def __post_init__(self) -> None:
        _check_beta(self.beta)
        _check_smoothing(self.label_smoothing)


@dataclasses.dataclass(frozen=True)
class CPOArgs:
    """CPO (losses/cpo.py): reference-free preference term plus α·NLL on the chosen answers."""

    beta: float = fld(0.1, "β of the preference term")
    loss_type: str = fld(
        "sigmoid", f"preference term: {', '.join(CPO_LOSS_TYPES)} (simpo + cpo_alpha = CPO-SimPO)"
    )
    cpo_alpha: float = fld(1.0, "α: weight of the NLL of the chosen answers (0: off)")
    simpo_gamma: float = fld(0.5, "γ: target margin of the simpo preference term")
    label_smoothing: float = fld(0.0, "ε: assumed label-flip rate (sigmoid and simpo terms)")

    def __post_init__(self) -> None:
        _check_beta(self.beta)
        _check_smoothing(self.label_smoothing)
        if self.loss_type not in CPO_LOSS_TYPES:
            raise ConfigError(
                f"loss_type: unknown CPO loss type {self.loss_type!r}; valid names: "
                f"{', '.join(sorted(CPO_LOSS_TYPES))}"
            )
        if self.cpo_alpha < 0:
            raise ConfigError(f"cpo_alpha: must be >= 0, got {self.cpo_alpha}")


@dataclasses.dataclass(frozen=True)
class ORPOArgs:
    """ORPO (losses/orpo.py): NLL on chosen plus λ times the log-odds-ratio term."""

    orpo_lambda: float = fld(
        1.0, "λ: weight of the odds-ratio term (paper: 0.1; TRL calls it beta; tiny task: 1.0)"
    )

    def __post_init__(self) -> None:
        _check_beta(self.orpo_lambda, "orpo_lambda")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """DPO and its loss family on preference pairs."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(optim_defaults(learning_rate=3e-5))
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/dpo"))
    train: PreferenceTrainArgs = section(PreferenceTrainArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    dpo: DPOArgs = section(DPOArgs)
    dist: DistArgs = section(DistArgs)


@dataclasses.dataclass(frozen=True)
class SimPOConfig:
    """SimPO on preference pairs (no reference model)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(optim_defaults(learning_rate=5e-6))
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/simpo"))
    train: PreferenceTrainArgs = section(PreferenceTrainArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    simpo: SimPOArgs = section(SimPOArgs)
    dist: DistArgs = section(DistArgs)


@dataclasses.dataclass(frozen=True)
class CPOConfig:
    """CPO / CPO-SimPO on preference pairs (no reference model)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(optim_defaults(learning_rate=3e-4))
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/cpo"))
    train: PreferenceTrainArgs = section(PreferenceTrainArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    cpo: CPOArgs = section(CPOArgs)
    dist: DistArgs = section(DistArgs)


@dataclasses.dataclass(frozen=True)
class ORPOConfig:
    """ORPO on preference pairs (no reference model, NLL included)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(optim_defaults(learning_rate=3e-4))
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/orpo"))
    train: PreferenceTrainArgs = section(PreferenceTrainArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    orpo: ORPOArgs = section(ORPOArgs)
    dist: DistArgs = section(DistArgs)


# ---- objectives: (method args, policy [2B], reference [2B] | None, state, training) ------------

LENGTH_AVERAGED_DPO = frozenset({"ipo"})  # DPO loss types defined on per-token average log-probs


def chosen_nll(chosen: SeqLogps) -> torch.Tensor:
    """Token-mean NLL of the chosen responses (the SFT loss restricted to chosen rows)."""
    nll, _ = sft_loss(chosen.token_logprobs, chosen.mask)
    return nll


def dpo_objective(
    a: DPOArgs, policy: SeqLogps, ref: SeqLogps | None, state: dict, training: bool
) -> tuple[torch.Tensor, Metrics]:
    """``sum_k w_k dpo_loss_k (+ rpo_alpha · mean over pairs of the chosen answer's per-token NLL)``;
    each type gets the log-probs its paper uses (averaged for IPO). Reward metrics are those of the
    first loss type."""
    pc, pr = policy.halves()
    rc, rr = ref.halves() if ref is not None else (None, None)
    weights = a.loss_weights or [1.0] * len(a.loss_type)
    loss, metrics = policy.logps.new_zeros(()), {}
    for name, w in zip(a.loss_type, weights, strict=True):
        avg = name in LENGTH_AVERAGED_DPO
        term, m = dpo_loss(
            pc.pick(avg),
            pr.pick(avg),
            rc.pick(avg) if rc is not None else None,
            rr.pick(avg) if rr is not None else None,
            beta=a.beta_value,
            loss_type=name,
            label_smoothing=a.label_smoothing,
            reference_free=a.reference_free,
            bco_delta=state.get("bco_delta", 0.0),
        )
        loss = loss + w * term
        metrics = metrics or dict(m)
        if len(a.loss_type) > 1:
            metrics[f"loss/{name}"] = term.detach()
        if "bco/reward_mean" in m:  # the loop's update_bco_delta keeps BCO's running mean δ
            metrics["bco/reward_mean"] = m["bco/reward_mean"]
    if a.rpo_alpha:  # RPO (Pang et al. 2024): the chosen answers' length-normalised NLL, a mean
        nll = -pc.avg_logps.mean()  # over pairs, so 2 ranks x 4 pairs equal 1 process x 8
        loss = loss + a.rpo_alpha * nll
        metrics["nll"] = nll.detach()
    return loss, metrics


def simpo_objective(
    a: SimPOArgs, policy: SeqLogps, ref: SeqLogps | None, state: dict, training: bool
) -> tuple[torch.Tensor, Metrics]:
    pc, pr = policy.halves()
    return simpo_loss(
        pc.avg_logps,
        pr.avg_logps,
        beta=a.beta,
        gamma=a.simpo_gamma,
        label_smoothing=a.label_smoothing,
    )


def cpo_objective(
    a: CPOArgs, policy: SeqLogps, ref: SeqLogps | None, state: dict, training: bool
) -> tuple[torch.Tensor, Metrics]:
    pc, pr = policy.halves()
    avg = a.loss_type in ("ipo", "simpo")
    return cpo_loss(
        pc.pick(avg),
        pr.pick(avg),
        chosen_nll(pc),
        beta=a.beta,
        loss_type=a.loss_type,
        alpha=a.cpo_alpha,
        simpo_gamma=a.simpo_gamma,
        label_smoothing=a.label_smoothing,
    )


def orpo_objective(
    a: ORPOArgs, policy: SeqLogps, ref: SeqLogps | None, state: dict, training: bool
) -> tuple[torch.Tensor, Metrics]:
    """ORPO loss; implicit rewards reported as λ·(average log-prob), as TRL does."""
    pc, pr = policy.halves()
    loss, metrics = orpo_loss(pc.avg_logps, pr.avg_logps, chosen_nll(pc), lam=a.orpo_lambda)
    with torch.no_grad():
        rc, rj = a.orpo_lambda * pc.avg_logps, a.orpo_lambda * pr.avg_logps
        metrics.update(
            {
                "rewards/chosen": rc.mean(),
                "rewards/rejected": rj.mean(),
                "rewards/margin": (rc - rj).mean(),
                "logps/chosen": pc.avg_logps.mean(),
                "logps/rejected": pr.avg_logps.mean(),
            }
        )
    return loss, metrics


def update_bco_delta(state: dict[str, Any], metrics: Metrics, dist: Dist) -> None:
    """BCO's δ: running mean of the mean reward of every training micro-batch seen so far, the
    micro-batch taken over all ranks (mean of the ranks' means), so every rank holds the same δ.
    Needs ``bco/reward_mean`` in ``metrics`` (a ``bco_pair`` loss type); a collective."""
    (mean,) = dist.mean_metrics({"r": float(metrics["bco/reward_mean"])}).values()
    n = state.get("bco_n", 0)
    state["bco_delta"] = (state.get("bco_delta", 0.0) * n + mean) / (n + 1)
    state["bco_n"] = n + 1


def _never(args: Any) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Method:
    """How one config type trains: its args section, objective (uniform signature
    ``(args, policy [2B], reference [2B] | None, state, training) -> (loss, metrics)``), whether it
    has a reference model and whether the reference log-probs are computed once before training."""

    name: str
    args: Callable[[Any], Any]
    objective: Callable[..., tuple[torch.Tensor, Metrics]]
    uses_reference: Callable[[Any], bool] = _never
    precompute: Callable[[Any], bool] = _never


METHODS: dict[type, Method] = {
    DPOConfig: Method(
        "dpo",
        lambda c: c.dpo,
        dpo_objective,
        uses_reference=lambda a: not a.reference_free,
        precompute=lambda a: a.precompute_ref_log_probs,
    ),
    SimPOConfig: Method("simpo", lambda c: c.simpo, simpo_objective),
    CPOConfig: Method("cpo", lambda c: c.cpo, cpo_objective),
    ORPOConfig: Method("orpo", lambda c: c.orpo, orpo_objective),
}


# ---- the pair trainer ------------------------------------------------------------------------


def pair_loss_fn(
    method: Method, args: Any, engine: Engine, reference: Reference | None, pad_id: int, state: dict
) -> LossFn:
    """``examples -> (loss, metrics)``: reference log-probs from the examples' precomputed values
    or from ``reference`` (no grad, first: ZeRO-3 sees one forward per backward), then one
    concatenated policy forward — through ``engine.model`` when training (the DDP / DeepSpeed
    wrapper, so gradients synchronise), the raw module otherwise — then the method's objective."""

    def loss_fn(chunk: list[dict[str, Any]], training: bool) -> tuple[torch.Tensor, Metrics]:
        batch = engine.dist.to_device(collate_pairs(chunk, pad_id))  # [2B, T], chosen rows first
        ref = cached_reference(chunk)
        if ref is None and reference is not None:
            ref = reference.logps(batch)
        policy = batch_forward(engine.model if training else engine.module, batch)  # [2B]
        loss, metrics = method.objective(args, policy, ref, state, training)
        if training and "bco/reward_mean" in metrics:
            update_bco_delta(state, metrics, engine.dist)
        chosen, rejected = policy.halves()
        metrics["logits/chosen"] = chosen.logits_mean.mean()
        metrics["logits/rejected"] = rejected.logits_mean.mean()
        return loss, metrics

    return loss_fn


def run(cfg: DPOConfig | SimPOConfig | CPOConfig | ORPOConfig) -> dict[str, Any]:
    """Train with the method of ``cfg``'s type (see :data:`METHODS`); returns the summary."""
    method = METHODS.get(type(cfg))
    if method is None:
        raise TypeError(
            f"no preference method for {type(cfg).__name__}; known: "
            f"{', '.join(c.__name__ for c in METHODS)}"
        )
    args = method.args(cfg)
    # ---- setup ----
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    set_seed(cfg.optim.seed)  # the same on every rank: model and LoRA initialisation agree
    step = cfg.train.data_step
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        tokenizer = common.load_run_tokenizer(cfg.model)
        train, train_stats = load_encoded(tokenizer, cfg.data, "pair", step=step, split="train")
        evals, _ = load_encoded(tokenizer, cfg.data, "pair", step=step, split="eval")
    if not train:
        raise DataError("no training pairs left after length filtering: raise --max-seq-len")
    models = setup_models(cfg, dist, tokenizer, method.uses_reference(args))
    engine, total_steps = build_engine(cfg, dist, models, len(train))
    reference, pad_id = models.reference, tokenizer.pad_token_id
    eval_bs = cfg.optim.per_device_eval_batch_size
    if reference is not None and method.precompute(args):  # after wrapping: ZeRO-3 can run it
        collate = functools.partial(collate_pairs, pad_id=pad_id)
        train = precompute_sharded(dist, reference, train, collate, eval_bs)
        evals = precompute_sharded(dist, reference, evals, collate, eval_bs)
        reference = models.reference = models.ref_engine = None  # the cache replaces them
    state: dict[str, Any] = {}
    loss_fn = pair_loss_fn(method, args, engine, reference, pad_id, state)
    heldout = common.heldout_evaluator(cfg, tokenizer)

    def evaluate() -> dict[str, float]:
        metrics = evaluate_loss(engine, loss_fn, evals, eval_bs) if evals else {}
        metrics.update(heldout_metrics(heldout, engine, tokenizer))
        return metrics

    if not method.uses_reference(args):
        ref_kind = "none"
    else:
        ref_kind = "on the fly" if reference is not None else "precomputed"
    header = (
        f"train pairs (step {step}): {train_stats.describe()}; eval pairs: {len(evals)}; "
        f"reference: {ref_kind}; {heldout.describe()}"
    )
    summary = fit(
        cfg, method.name, engine, total_steps, tokenizer, train, loss_fn, evaluate, state, header
    )
    summary["eval_examples"] = len(evals)
    return summary
