"""KTO: Kahneman–Tversky optimisation on unpaired desirable / undesirable completions.

Ethayarajh et al. 2024, arXiv 2402.01306; the loss is ``losses.kto.kto_loss``. Variant:

* Data: records of kind ``unpaired`` (prompt, completion, label) from step 2 of the DeepSpeed-Chat
  split by default (``--data-step``). Sources that only hold pairs are split by the data layer into
  one desirable (chosen) and one undesirable (rejected) example per pair; the tiny task serves its
  own labelled completions (label = gold reward >= 0.75, 10% flipped).
* Reference point ``z0``: the paper's estimate of ``KL(π || π_ref)`` from *mismatched* pairs — the
  completions of the micro-batch shifted by one (prompt ``i`` with completion ``i - 1``), log-probs
  of policy and reference under ``no_grad``, ``z0 = max(0, mean(log π - log π_ref))``, detached.
  Needs micro-batches of at least 2 examples.
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

Single process for now: the multi-GPU plumbing of ``trainers/sft.py`` (``infra/distributed.py``,
``--zero-stage``) is not wired into this loop yet.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from simple_rlhf.config import (
    ConfigError,
    DataArgs,
    LogArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_pairs, collate_sft
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.dpo import dpo_loss
from simple_rlhf.losses.kto import kto_loss, kto_reference_point
from simple_rlhf.losses.reduce import masked_mean
from simple_rlhf.trainers import common
from simple_rlhf.trainers.pair_forward import Reference, batch_forward
from simple_rlhf.trainers.preference_loop import (
    MeanMetrics,
    PreferenceTrainArgs,
    evaluate_loss,
    fit,
    gold_metrics,
    setup_models,
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
    optim: OptimArgs = section(
        lambda: OptimArgs(
            learning_rate=1e-4,
            num_train_epochs=1,
            per_device_train_batch_size=16,
            lr_scheduler_type="linear",
        )
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/kto"))
    train: PreferenceTrainArgs = section(PreferenceTrainArgs)
    kto: KTOArgs = section(KTOArgs)

    def __post_init__(self) -> None:
        if self.optim.per_device_train_batch_size < 2:
            raise ConfigError(
                "per_device_train_batch_size: KTO needs >= 2 (the KL reference point pairs each "
                "prompt with another example's completion)"
            )


def collate_unpaired(
    chunk: list[dict[str, Any]], pad_id: int, max_len: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """(matched batch ``[B, T]``, mismatched batch ``[B, T']``, labels ``[B]`` bool).

    The mismatched batch pairs prompt ``i`` with completion ``i - 1`` (mod B), cut to ``max_len``
    tokens; labels are -100 on prompt tokens in both.
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
        row(ex["prompt_ids"], chunk[(i - 1) % n]["completion_ids"]) for i, ex in enumerate(chunk)
    ]
    labels = torch.tensor([bool(ex["label"]) for ex in chunk])
    return collate_sft(matched, pad_id), collate_sft(shifted, pad_id), labels


def run(cfg: KTOConfig) -> dict[str, Any]:
    """Train, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    set_seed(cfg.optim.seed)
    tokenizer, model, reference = setup_models(cfg, with_reference=True)
    assert reference is not None
    ds = cfg.train.data_step
    train, stats = load_encoded(tokenizer, cfg.data, "unpaired", step=ds, split="train")
    evals, _ = load_encoded(tokenizer, cfg.data, "unpaired", step=ds, split="eval")
    eval_pairs, _ = load_encoded(tokenizer, cfg.data, "pair", step=ds, split="eval")
    if not train:
        raise ValueError("no training examples left after length filtering: raise --max-seq-len")
    a, pad_id, max_len = cfg.kto, tokenizer.pad_token_id, cfg.data.max_seq_len
    n_d = sum(ex["label"] for ex in train)
    n_u = len(train) - n_d
    balance = a.desirable_weight * n_d / max(a.undesirable_weight * n_u, 1e-9)
    header = (
        f"train examples (step {ds}): {stats.describe()}; {n_d} desirable, {n_u} undesirable "
        f"(λ_D n_D / λ_U n_U = {balance:.2f}; the paper suggests 1 to 1.33); eval: {len(evals)} "
        f"examples, {len(eval_pairs)} pairs"
    )

    def loss_fn(chunk: list[dict[str, Any]], training: bool) -> tuple[torch.Tensor, dict]:
        batch, kl_batch, labels = collate_unpaired(chunk, pad_id, max_len)
        policy = batch_forward(model, batch)  # [B]
        ref = reference.logps(batch)
        with torch.no_grad():
            z0 = kto_reference_point(
                batch_forward(model, kl_batch).logps, reference.logps(kl_batch).logps
            )
        loss, metrics = kto_loss(
            policy.logps,
            ref.logps,
            labels,
            z0,
            beta=a.beta,
            desirable_weight=a.desirable_weight,
            undesirable_weight=a.undesirable_weight,
        )
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        for name, mask in (("chosen", labels), ("rejected", ~labels)):
            metrics[f"logps/{name}"] = masked_mean(policy.logps.detach(), mask)
            metrics[f"logits/{name}"] = masked_mean(policy.logits_mean, mask)
        return loss, metrics

    def evaluate() -> dict[str, float]:
        metrics = evaluate_loss(model, loss_fn, evals, cfg.optim.per_device_eval_batch_size)
        metrics.update(pair_accuracy(model, reference, eval_pairs, a.beta, pad_id, cfg))
        metrics.update(gold_metrics(cfg, model, tokenizer))
        return metrics

    return fit(cfg, "kto", model, tokenizer, train, loss_fn, evaluate, {}, header)


@torch.no_grad()
def pair_accuracy(
    model: Any, reference: Reference, pairs: list[dict], beta: float, pad_id: int, cfg: Any
) -> dict[str, float]:
    """How often the implicit reward ``β(log π - log π_ref)`` ranks held-out chosen over rejected
    (``eval/rewards/accuracy``) and the mean reward gap (``eval/pairs/margin``)."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    meter = MeanMetrics()
    for chunk in common.batches(pairs, cfg.optim.per_device_eval_batch_size, shuffle=False):
        batch = collate_pairs(chunk, pad_id)
        pc, pr = batch_forward(model, batch).halves()
        rc, rr = reference.logps(batch).halves()
        _, m = dpo_loss(pc.logps, pr.logps, rc.logps, rr.logps, beta=beta)
        meter.add({"accuracy": m["rewards/accuracy"], "margin": m["rewards/margin"]}, len(chunk))
    model.train(was_training)
    out = meter.pop()
    return {"eval/rewards/accuracy": out["accuracy"], "eval/pairs/margin": out["margin"]}
