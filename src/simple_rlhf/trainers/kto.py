"""KTO: Kahneman–Tversky optimisation on unpaired desirable / undesirable completions.

Ethayarajh et al. 2024, arXiv 2402.01306; the loss is ``losses.kto.kto_loss``. Variant:

* Data: records of kind ``unpaired`` (prompt, completion, label) from step 2 of the DeepSpeed-Chat
  split by default (``--data-step``). Sources that only hold pairs are split by the data layer into
  one desirable (chosen) and one undesirable (rejected) example per pair; the tiny task serves its
  own labelled completions (label = gold reward >= 0.75, 10% flipped).
* Reference point ``z0``: the paper's estimate of ``KL(π || π_ref)`` from *mismatched* pairs —
  each prompt with another example's completion, swapped within consecutive pairs of the
  micro-batch (examples 0 <-> 1, 2 <-> 3, ...; an odd batch rotates its last three), log-probs of
  policy and reference under ``no_grad``, ``z0 = max(0, mean(log π - log π_ref))``, detached.
  Needs micro-batches of at least 2 examples. (TRL and the paper shift the whole batch by one;
  swapping within pairs keeps the estimate the same under any split of the batch into even
  slices, which makes the multi-process run exact, below.)
* ``--desirable-weight`` / ``--undesirable-weight`` (λ_D, λ_U); the run prints
  ``λ_D n_D / (λ_U n_U)``, which the paper recommends keeping in [1, 4/3].
* Sequence log-probs are sums over response tokens; reference = frozen copy of the initial policy,
  or the policy with its LoRA adapter disabled.

Metrics: ``loss``, ``kl`` (z0), ``rewards/chosen`` / ``rewards/rejected`` (mean βρ over the
desirable / undesirable examples), ``rewards/margin`` (their difference), ``logps/*`` and
``logits/*`` likewise; on held-out data also ``eval/rewards/accuracy`` and ``eval/pairs/margin``:
how often (and by how much) the implicit reward ``β(log π - log π_ref)`` prefers the chosen answer
of held-out *pairs*, comparable with the DPO family; on the tiny task the gold reward of greedy
held-out answers, before and after.

One CPU, tiny default (after ``simple-rlhf sft --output-dir outputs/sft``)::

    simple-rlhf kto --config configs/tiny/kto.yaml

A real model, LoRA::

    simple-rlhf kto --model-name-or-path outputs/opt-sft --data-path Dahoas/rm-static \\
        --lora-dim 64 --beta 0.1 --learning-rate 5e-6 --output-dir outputs/opt-kto

Several GPUs (or CPU processes over gloo): the same command under ``torchrun`` or ``deepspeed``
with ``--zero-stage`` / ``--offload`` as for DPO (``trainers/preference_loop.py``)::

    torchrun --nproc_per_node 8 -m simple_rlhf kto --config configs/tiny/kto.yaml --zero-stage 2

Across ranks, the mismatched pairs are formed within each rank's micro-batch, and ``z0`` is the
mean log-ratio over *all* ranks' mismatched pairs (sums all-reduced, then clamped at 0; as TRL,
which gathers the per-process KL means): one shared reference point per global micro-batch, with
the variance of the global batch. With an even ``per_device_train_batch_size`` the pairs are those
of one process with the whole global batch, so ``N`` ranks x ``B`` equal one process x ``N B``.
"""

from __future__ import annotations

import dataclasses
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
from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_pairs, collate_sft
from simple_rlhf.infra.distributed import Dist, Engine, init_distributed
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.dpo import dpo_loss
from simple_rlhf.losses.kto import kto_loss, kto_reference_point
from simple_rlhf.trainers import common
from simple_rlhf.trainers.pair_forward import Reference, batch_forward
from simple_rlhf.trainers.preference_loop import (
    PreferenceTrainArgs,
    build_engine,
    evaluate_loss,
    fit,
    heldout_metrics,
    optim_defaults,
    setup_models,
    sharded_means,
)


@dataclasses.dataclass(frozen=True)
class KTOArgs:
    """KTO loss (losses/kto.py)."""

    beta: float = fld(0.1, "β: scale of the implied reward β(log π - log π_ref)")
    desirable_weight: float = fld(1.0, "λ_D: weight of the desirable examples' loss")
    undesirable_weight: float = fld(1.0, "λ_U: weight of the undesirable examples' loss")

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"beta: must be > 0, got {self.beta}")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ConfigError("desirable_weight, undesirable_weight: must be >= 0")


@dataclasses.dataclass(frozen=True)
class KTOConfig:
    """KTO on unpaired desirable / undesirable completions."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(optim_defaults(learning_rate=2e-5, min_train_steps=0))
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/kto"))
    train: PreferenceTrainArgs = section(PreferenceTrainArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    kto: KTOArgs = section(KTOArgs)
    dist: DistArgs = section(DistArgs)

    def __post_init__(self) -> None:
        if self.optim.per_device_train_batch_size < 2:
            raise ConfigError(
                "per_device_train_batch_size: KTO needs >= 2 (the KL reference point pairs each "
                "prompt with another example's completion)"
            )


def mismatch_partner(i: int, n: int) -> int:
    """Whose completion prompt ``i`` of a batch of ``n`` gets for the KL estimate: its neighbour in
    consecutive pairs (``i ^ 1``: 0 <-> 1, 2 <-> 3, ...); when ``n`` is odd the last three rotate
    (``n-3 <- n-1``, ``n-2 <- n-3``, ``n-1 <- n-2``; n = 3 is the paper's shift by one); ``n = 1``
    has no other example. Any even-sized contiguous slice gets the pairs the whole batch has."""
    if n == 1:
        return 0
    if n % 2 and i >= n - 3:
        return n - 3 + (i - (n - 3) - 1) % 3
    return i ^ 1


def collate_unpaired(
    chunk: list[dict[str, Any]], pad_id: int, max_len: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """(matched batch ``[B, T]``, mismatched batch ``[B, T']``, labels ``[B]`` bool).

    The mismatched batch pairs prompt ``i`` with the completion of :func:`mismatch_partner`
    ``(i, B)``, cut to ``max_len`` tokens; labels are -100 on prompt tokens in both.
    """

    def row(prompt: list[int], completion: list[int]) -> dict[str, list[int]]:
        completion = completion[: max(1, max_len - len(prompt))]
        return {
            "input_ids": prompt + completion,
            "labels": [IGNORE_INDEX] * len(prompt) + completion,
        }

    n = len(chunk)
    matched = [row(ex["prompt_ids"], ex["completion_ids"]) for ex in chunk]
    shifted = [
        row(ex["prompt_ids"], chunk[mismatch_partner(i, n)]["completion_ids"])
        for i, ex in enumerate(chunk)
    ]
    labels = torch.tensor([bool(ex["label"]) for ex in chunk])
    return collate_sft(matched, pad_id), collate_sft(shifted, pad_id), labels


@torch.no_grad()
def class_means(
    dist: Dist, values: dict[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, float]:
    """``{name}/chosen`` and ``{name}/rejected``: the mean of each ``[B]`` tensor over the
    desirable / undesirable examples of the micro-batch on *all* ranks (sums and counts
    all-reduced in one collective; 0 for a class with no example), so the metric does not depend
    on how the examples of each class fell on the ranks."""
    parts: list[float] = []
    for v in values.values():
        v = v.double()
        parts += [float(v[labels].sum()), float(v[~labels].sum())]
    parts += [float(labels.sum()), float((~labels).sum())]
    sums = dist.all_reduce_sum(parts)
    n_d, n_u = sums[-2], sums[-1]
    out = {}
    for i, name in enumerate(values):
        out[f"{name}/chosen"] = sums[2 * i] / n_d if n_d else 0.0
        out[f"{name}/rejected"] = sums[2 * i + 1] / n_u if n_u else 0.0
    return out


@torch.no_grad()
def reference_point(
    engine: Engine, reference: Reference, kl_batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """KTO's ``z0`` from this rank's mismatched batch, averaged over all ranks' mismatched pairs
    (``sum log π - log π_ref`` and the count all-reduced; a collective), clamped at 0."""
    ratio = batch_forward(engine.module, kl_batch).logps - reference.logps(kl_batch).logps  # [B]
    total, count = engine.dist.all_reduce_sum([float(ratio.double().sum()), ratio.numel()])
    mean = torch.tensor([total / count], dtype=ratio.dtype)
    return kto_reference_point(mean, torch.zeros_like(mean))


def kto_loss_fn(
    a: KTOArgs, engine: Engine, reference: Reference, pad_id: int, max_len: int
) -> Callable[[list[dict[str, Any]], bool], tuple[torch.Tensor, dict]]:
    """``examples -> (loss, metrics)``: the no-grad passes first (reference, ``z0``), then the
    policy forward — through ``engine.model`` when training (gradients synchronise)."""

    def loss_fn(chunk: list[dict[str, Any]], training: bool) -> tuple[torch.Tensor, dict]:
        batch, kl_batch, labels = collate_unpaired(chunk, pad_id, max_len)
        batch, kl_batch = engine.dist.to_device(batch), engine.dist.to_device(kl_batch)
        labels = labels.to(batch["input_ids"].device)
        ref = reference.logps(batch)
        z0 = reference_point(engine, reference, kl_batch)
        policy = batch_forward(engine.model if training else engine.module, batch)  # [B]
        loss, metrics = kto_loss(
            policy.logps,
            ref.logps,
            labels,
            z0,
            beta=a.beta,
            desirable_weight=a.desirable_weight,
            undesirable_weight=a.undesirable_weight,
        )
        per_example = {
            "rewards": a.beta * (policy.logps - ref.logps).detach(),
            "logps": policy.logps.detach(),
            "logits": policy.logits_mean,
        }
        metrics.update(class_means(engine.dist, per_example, labels))
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return loss, metrics

    return loss_fn


def run(cfg: KTOConfig) -> dict[str, Any]:
    """Train, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    set_seed(cfg.optim.seed)
    ds = cfg.train.data_step
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        tokenizer = common.load_run_tokenizer(cfg.model)
        train, stats = load_encoded(tokenizer, cfg.data, "unpaired", step=ds, split="train")
        evals, _ = load_encoded(tokenizer, cfg.data, "unpaired", step=ds, split="eval")
        eval_pairs = held_out_pairs(tokenizer, cfg, ds)
    if not train:
        raise DataError("no training examples left after length filtering: raise --max-seq-len")
    models = setup_models(cfg, dist, tokenizer, with_reference=True)
    engine, total_steps = build_engine(cfg, dist, models, len(train))
    reference = models.reference
    assert reference is not None
    a, pad_id, eval_bs = cfg.kto, tokenizer.pad_token_id, cfg.optim.per_device_eval_batch_size
    n_d = sum(ex["label"] for ex in train)
    n_u = len(train) - n_d
    balance = a.desirable_weight * n_d / max(a.undesirable_weight * n_u, 1e-9)
    header = (
        f"train examples (step {ds}): {stats.describe()}; {n_d} desirable, {n_u} undesirable "
        f"(λ_D n_D / λ_U n_U = {balance:.2f}; the paper suggests 1 to 1.33); eval: {len(evals)} "
        f"examples, {len(eval_pairs)} pairs"
    )
    loss_fn = kto_loss_fn(a, engine, reference, pad_id, cfg.data.max_seq_len)
    heldout = common.heldout_evaluator(cfg, tokenizer)
    header += f"; {heldout.describe()}"

    def evaluate() -> dict[str, float]:
        metrics = evaluate_loss(engine, loss_fn, evals, eval_bs) if evals else {}
        metrics.update(pair_accuracy(engine, reference, eval_pairs, a.beta, pad_id, eval_bs))
        metrics.update(heldout_metrics(heldout, engine, tokenizer))
        return metrics

    return fit(cfg, "kto", engine, total_steps, tokenizer, train, loss_fn, evaluate, {}, header)


def held_out_pairs(tokenizer: Any, cfg: KTOConfig, step: int) -> list[dict[str, Any]]:
    """Held-out preference pairs for the implicit-reward accuracy, when the data has pairs (the
    tiny task, a pair file); unpaired ``prompt``/``completion``/``label`` files have none, and
    then the accuracy is simply not measured (the training records were already checked)."""
    try:
        return load_encoded(tokenizer, cfg.data, "pair", step=step, split="eval")[0]
    except DataError:
        return []


@torch.no_grad()
def pair_accuracy(
    engine: Engine,
    reference: Reference,
    pairs: list[dict],
    beta: float,
    pad_id: int,
    batch_size: int,
) -> dict[str, float]:
    """How often the implicit reward ``β(log π - log π_ref)`` ranks held-out chosen over rejected
    (``eval/rewards/accuracy``) and the mean reward gap (``eval/pairs/margin``), over all ranks."""
    if not pairs:
        return {}
    was_training = engine.module.training
    engine.train(False)

    def one(chunk: list[dict[str, Any]]) -> dict[str, Any]:
        batch = engine.dist.to_device(collate_pairs(chunk, pad_id))
        rc, rr = reference.logps(batch).halves()
        pc, pr = batch_forward(engine.module, batch).halves()
        _, m = dpo_loss(pc.logps, pr.logps, rc.logps, rr.logps, beta=beta)
        return {"accuracy": m["rewards/accuracy"], "margin": m["rewards/margin"]}

    out = sharded_means(engine.dist, pairs, batch_size, one)
    engine.train(was_training)
    return {"eval/rewards/accuracy": out["accuracy"], "eval/pairs/margin": out["margin"]}
