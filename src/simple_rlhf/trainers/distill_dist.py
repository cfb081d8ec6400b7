"""The distillation trainer (``trainers/distill.py``) on several processes: models on the engine
layer of ``infra/distributed.py``, the student's sampling, and the metrics of the global batch.

Semantics (as SFT): ``per_device_train_batch_size`` is per rank; a global micro-batch is
``per_device x N`` examples (the order one process with batch ``per_device x N`` reads), rank ``r``
runs its contiguous slice (``common.rank_batches``); an optimiser step is ``accumulation`` global
micro-batches. The loss of a step is normalised by the response tokens of the whole step over all
ranks (an all-reduce), times ``N`` because the engine averages gradients over ranks::

    rank r backward:  N * sum_j n_rj L_rj / n,   n = sum_r sum_j n_rj
    averaged over r:  sum_r sum_j n_rj L_rj / n  = the one-process token mean of the step

The lmbda coin of global micro-batch ``k`` (``step x accumulation + j``) is the same on every
rank, so the ranks agree on which micro-batches are on-policy. The student is the engine (DDP or
DeepSpeed ZeRO 0-3); the frozen teacher follows its stage (ZeRO-3: partitioned at load, every rank
runs the same teacher forwards). On-policy samples: each rank samples its slice (seed
``generation_seed + 1_000_003 x rank``); under ZeRO-3 ``generate`` runs with ``synced_gpus`` and
every rank samples the same number of rows (the slice padded with copies of its last prompt, then
trimmed), so the ranks make the same forwards.

SeqKD: every rank generates the teacher's responses to all training prompts (same seed and
batches: the same data on every rank as in one process; no speed-up, and under ZeRO-3 the
teacher's forwards are collective anyway). Held-out divergence: split over the ranks
(``Dist.shard_padded``), token sums all-reduced; gold evaluation (generation) by rank 0, under
ZeRO-3 by every rank on gathered parameters; printed and logged once (rank 0). Rank 0 saves
(gathered under ZeRO-3); ``--resume`` reads engine checkpoints (``infra/dist_checkpoint.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from simple_rlhf.config import ConfigError
from simple_rlhf.models.loading import ModelLoadError, load_tokenizer
from simple_rlhf.rollout.generate import Rollout, SamplingArgs, generate
from simple_rlhf.trainers import common


class VocabMismatchError(ConfigError):
    """Teacher and student tokenizers differ, so their distributions cannot be compared."""


def check_same_vocab(student_tok: Any, teacher_tok: Any, n_sample: int = 64) -> None:
    """Raise :class:`VocabMismatchError` unless both tokenizers have the same size and agree on
    the special tokens and on ``n_sample`` tokens spread evenly over the vocabulary."""
    n_s, n_t = len(student_tok), len(teacher_tok)
    if n_s != n_t:
        raise VocabMismatchError(
            f"teacher and student tokenizers differ: vocabulary sizes {n_t} (teacher) vs "
            f"{n_s} (student); distillation compares next-token distributions, so both models "
            "must use the same tokenizer"
        )
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    tokens = sorted(vs)
    sample = tokens[:: max(1, len(tokens) // max(n_sample, 1))][:n_sample]
    specials = ("eos_token", "pad_token", "bos_token", "unk_token")
    sample += [t for t in (getattr(student_tok, a, None) for a in specials) if t is not None]
    for tok in sample:
        if vt.get(tok) != vs.get(tok):
            raise VocabMismatchError(
                f"teacher and student tokenizers differ: token {tok!r} has id {vt.get(tok)} in "
                f"the teacher's and {vs.get(tok)} in the student's; both models must use the "
                "same tokenizer"
            )


def load_teacher(cfg: Any, student_tok: Any) -> Any:
    """The frozen teacher (eval mode, dropout off, never 4-bit), after checking its tokenizer."""
    name = cfg.distill.teacher_model_name_or_path
    try:
        teacher_tok = load_tokenizer(name, trust_remote_code=cfg.model.trust_remote_code)
        check_same_vocab(student_tok, teacher_tok)
        return common.load_frozen_lm(name, teacher_tok, cfg.model)
    except ModelLoadError as e:
        raise ModelLoadError(f"teacher (--teacher-model-name-or-path): {e}") from e


@dataclasses.dataclass
class Models:
    """The student's engine (``.model`` trains, ``.module`` samples/evaluates/saves), the frozen
    teacher's engine (``.module`` for forwards, ``.on_main`` for its gold evaluation) and the
    plan both follow."""

    student: Any  # infra.distributed.Engine
    teacher: Any  # infra.distributed.Engine (frozen)
    plan: Any  # infra.distributed.Plan


def setup_models(cfg: Any, tokenizer: Any, dist: Any, total_steps: int) -> Models:
    """Teacher first (checked tokenizer; ZeRO-3: partitioned), then the student (QLoRA's 4-bit
    base if asked, then LoRA), optimiser, schedule, engine. One process without ``--zero-stage``:
    plain models, exactly the single-process set-up."""
    from simple_rlhf.models.lora import apply_lora, check_qlora

    plan = dist.plan(cfg.optim, cfg.model.dtype)  # before loading: ZeRO-3 partitions at load
    check_qlora(cfg.lora, plan.zero_stage)
    with plan.loading():
        teacher = plan.wrap_frozen(load_teacher(cfg, tokenizer))
    with plan.loading():
        base = common.load_base_lm(cfg.model, tokenizer, load_in_4bit=cfg.lora.load_in_4bit)
    student = apply_lora(base, cfg.lora)  # outside loading(): the adapter init uses the run's RNG
    optimizer = common.build_optimizer(student, cfg.optim, cfg.lora)
    scheduler = common.build_scheduler(optimizer, cfg.optim, total_steps)
    return Models(plan.wrap(student, optimizer, scheduler), teacher, plan)


def sample_student(
    student: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingArgs,
    seed: int,
    dist: Any = None,
    plan: Any = None,
) -> Rollout:
    """The student's responses to this rank's ``prompts`` (seed ``seed + 1_000_003 x rank``).
    ZeRO-3: inside ``plan.hf_current()`` (``generate`` with ``synced_gpus``) and padded to the
    largest slice, ``ceil(global rows / N)``, so every rank makes the same ``generate`` calls; the
    padding rows are dropped from the result."""
    if dist is None or not dist.initialized:
        return generate(student, tokenizer, prompts, sampling, seed=seed)
    rows = list(prompts)
    n = len(rows)
    if plan.zero_stage == 3:
        (total,) = dist.all_reduce_sum([n])
        rows += [rows[-1]] * (-(-int(total) // dist.world_size) - n)
    with plan.hf_current():
        out = generate(student, tokenizer, rows, sampling, seed=dist.sampling_seed(seed))
    return out if len(out) == n else out.index(list(range(n)))


def rollout_metrics(
    rollouts: Sequence[Rollout], flags: Sequence[bool], dist: Any = None
) -> dict[str, float]:
    """Mean length and EOS rate of the on-policy (student-sampled) responses of the step over all
    ranks, if any (the coins agree on every rank, so either every rank reports or none)."""
    on = [r for r, f in zip(rollouts, flags, strict=True) if f]
    if not on:
        return {}
    lengths = torch.cat([r.response_lengths for r in on]).float()
    eos = torch.cat([r.has_eos for r in on]).float()
    sums = [float(lengths.sum()), float(eos.sum()), float(len(lengths))]
    if dist is not None:
        sums = dist.all_reduce_sum(sums)
    return {
        "rollout/response_len": sums[0] / max(sums[2], 1.0),
        "rollout/eos_rate": sums[1] / max(sums[2], 1.0),
    }


FAR_FROM_TEACHER_KL = 1.0  # nats per token; an SFT student of the tiny task starts at 0.03-0.13


def slow_start_note(args: Any, forward_kl: float) -> str | None:
    """Advice when a run is set up to learn slowly: a student far from its teacher (held-out
    forward KL above ``FAR_FROM_TEACHER_KL``) trained with any reverse-KL weight (``beta > 0``) or
    on its own samples (``lmbda > 0``). Measured on the tiny task from a random student
    (``benchmarks/distill_results.md``): supervised forward KL reaches the teacher in ~500 steps,
    fully on-policy reverse KL needs ~2000 steps of a 4500-step schedule (0.67-0.82) and stays
    near gold 0 over a 1500-step schedule.
    ``None`` when there is nothing to say."""
    if forward_kl <= FAR_FROM_TEACHER_KL or (args.beta == 0.0 and args.lmbda == 0.0):
        return None
    return (
        f"[distill] note: the student starts far from the teacher (forward KL {forward_kl:.2f} "
        f"nats/token). With lmbda={args.lmbda:g} beta={args.beta:g} it learns slowly from such a "
        "start (tiny task, random student: lmbda 0 beta 0 reaches the teacher in ~500 steps, "
        "lmbda 1 beta 1 needs ~2000 of a 4500-step schedule). Faster: first --lmbda 0 --beta 0 "
        "(supervised KD) or an SFT student, then this run from its output."
    )
