"""Knowledge distillation of a teacher LM into a student: supervised KD, SeqKD and on-policy GKD.

Variant (Agarwal et al. 2024, "On-Policy Distillation of Language Models", GKD): every micro-batch
is a set of (prompt, response) sequences on which the student's next-token distributions are pulled
towards the teacher's, token by token, over the response positions only (prompt and padding never
enter the loss), with the generalised Jensen-Shannon divergence of ``losses/distill.py``::

    L = sum over response tokens t of JSD_beta(p_T(. | y_<t, x) || p_S(. | y_<t, x))
        / (response tokens in the optimiser step)

    beta = 0: forward KL(p_T || p_S)   (supervised KD when the responses are the dataset's)
    beta = 1: reverse KL(p_S || p_T)   (mode seeking)
    0 < beta < 1: beta KL(p_T || m) + (1 - beta) KL(p_S || m), m = beta p_T + (1 - beta) p_S

Where the responses come from: ``--lmbda`` in [0, 1] is the share of micro-batches whose
responses the *student* samples from the prompts (on-policy, ``rollout/generate.py``), decided by a
coin seeded by (seed, micro-batch index), so reproducible across resume (0 = supervised KD on the
dataset responses, 1 = fully on-policy GKD); the rest use the dataset responses, or with
``--seq-kd`` the teacher's own generations made once before training (SeqKD, Kim & Rush 2016;
greedy unless ``--seq-kd-temperature``). ``--temperature`` divides both models' logits in the loss
and is the student's sampling temperature (as in the paper); ``--top-k-logits`` restricts the loss
to the teacher's top-k tokens per position (both distributions renormalised on that support).

Deviations from the paper: the coin is flipped per micro-batch, not per optimiser step; the
student starts wherever ``--model-name-or-path`` points (default: a fresh tiny model). Data: the SFT
examples of ``--data-step`` (default 1), split where ``labels`` stop being -100. Teacher and student
must share the tokenizer (vocabulary size and a sample of token -> id are checked; a clear error
otherwise). ``--load-in-4bit`` (QLoRA, with ``--lora-dim``) applies to the student only. Evaluation
(before, per epoch, end): on the held-out SFT examples the run's divergence, the forward
KL(teacher || student) and the student's NLL of the dataset responses; on the tiny task the greedy
gold reward of the student (and once of the teacher).

Measured (``benchmarks/distill_results.md``; seed 1234). A fresh tiny student from the actor of a
default ``simple-rlhf train`` run (gold 0.914), lr 3e-3: supervised KD (lmbda 0) in 1500 steps
reaches 0.967 / 0.779 / 0.638 at beta 0 / 0.5 / 1 and SeqKD 0.980; fully on-policy (lmbda 1) in
4500 steps 0.961 / 0.758 / 0.762 (at beta 0.5 only 0.147 over a 1500-step schedule: on its own
samples a random student learns to copy the asked things late, after the cosine lr has decayed).
From the SFT student (0.755), 125 steps at lr 1e-3, every lmbda x beta run reaches 0.95-0.98. A
run that starts far from its teacher with beta > 0 or lmbda > 0 prints a note
(:func:`slow_start_note`): supervised forward KL first is the fast route, and the GKD paper too
starts on-policy distillation from a supervised student.

One CPU, tiny task: a fresh tiny student (the default) by supervised KD, then GKD from the SFT one::

    simple-rlhf distill --teacher-model-name-or-path outputs/ppo --output-dir outputs/distill \\
        --lmbda 0 --beta 0
    simple-rlhf distill --model-name-or-path outputs/sft --teacher-model-name-or-path outputs/ppo \\
        --lmbda 1 --beta 0.5 --max-steps 125 --learning-rate 1e-3 --output-dir outputs/gkd

A real pair of models, QLoRA on the student::

    simple-rlhf distill --model-name-or-path Qwen/Qwen2.5-0.5B-Instruct \\
        --teacher-model-name-or-path Qwen/Qwen2.5-7B-Instruct --data-path my_sft.jsonl \\
        --lora-dim 64 --load-in-4bit --learning-rate 1e-4 --lmbda 0.5 --beta 0.5 \\
        --output-dir outputs/gkd

Several processes: the same command under a launcher, DDP or DeepSpeed ZeRO 0-3 for the student,
the teacher following its stage; N ranks x ``per_device_train_batch_size`` equal one process with
N x the batch (semantics, sampling, SeqKD, evaluation: ``trainers/distill_dist.py``)::

    torchrun --nproc_per_node 8 -m simple_rlhf distill --zero-stage 3 --dtype bfloat16 ...
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
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
from simple_rlhf.data.tokenize import IGNORE_INDEX, pad
from simple_rlhf.infra.checkpoint import latest_checkpoint
from simple_rlhf.infra.dist_checkpoint import load_checkpoint, save_checkpoint
from simple_rlhf.infra.distributed import count_parameters, init_distributed
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.distill import generalized_jsd
from simple_rlhf.models.forward import forward
from simple_rlhf.models.logprobs import token_logprobs
from simple_rlhf.rollout.generate import Rollout, SamplingArgs, generate, left_pad
from simple_rlhf.trainers import common
from simple_rlhf.trainers import distill_dist as dd
from simple_rlhf.trainers.distill_dist import (  # noqa: F401 - the trainer's pieces, re-exported
    FAR_FROM_TEACHER_KL,
    VocabMismatchError,
    check_same_vocab,
    load_teacher,
    rollout_metrics,
    slow_start_note,
)

Pair = tuple[list[int], list[int]]  # (prompt_ids, response_ids)


@dataclasses.dataclass(frozen=True)
class DistillArgs:
    """Teacher, divergence and where the responses come from."""

    teacher_model_name_or_path: str = fld("outputs/ppo", "teacher LM (same tokenizer as student)")
    lmbda: float = fld(0.5, "share of micro-batches on student samples (0: KD, 1: GKD)")
    beta: float = fld(0.5, "JSD weight: 0 = forward KL(teacher||student), 1 = reverse KL")
    seq_kd: bool = fld(False, "SeqKD: train on teacher generations, not dataset responses")
    seq_kd_temperature: float = fld(0.0, "teacher's sampling temperature for SeqKD (0: greedy)")
    temperature: float = fld(1.0, "softmax temperature in the loss and student sampling")
    top_k_logits: int = fld(0, "restrict the loss to the teacher's top-k tokens (0: full vocab)")
    max_new_tokens: int = fld(48, "maximum tokens per generated response (on-policy and SeqKD)")
    generation_batch_size: int = fld(64, "prompts per generate() call")
    data_step: int = fld(1, "which step's share of the data split gives the SFT examples")

    def __post_init__(self) -> None:
        for name, value in (("lmbda", self.lmbda), ("beta", self.beta)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {value}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if self.seq_kd_temperature < 0:
            raise ConfigError("seq_kd_temperature: must be >= 0")
        if self.top_k_logits < 0:
            raise ConfigError("top_k_logits: must be >= 0")
        if self.max_new_tokens < 1 or self.generation_batch_size < 1:
            raise ConfigError("max_new_tokens and generation_batch_size: must be >= 1")
        if self.data_step not in (1, 2, 3):
            raise ConfigError(f"data_step: must be 1, 2 or 3, got {self.data_step}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (supervised KD, SeqKD, on-policy GKD)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(
        lambda: OptimArgs(learning_rate=3e-3, num_train_epochs=4, per_device_train_batch_size=16)
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/distill"))
    distill: DistillArgs = section(DistillArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    dist: DistArgs = section(DistArgs)

    def __post_init__(self) -> None:
        if self.data.train_on_prompt:
            raise ConfigError("train_on_prompt: distillation is on response tokens only")


# ---- pieces (tested on their own) ----------------------------------------------------------------


def split_prompt_response(example: dict[str, list[int]]) -> Pair:
    """An SFT example ``{input_ids, labels}`` -> ``(prompt_ids, response_ids)``: the prompt is the
    leading run of ``labels == -100``."""
    labels = example["labels"]
    n = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    if n == len(labels):
        raise ValueError("an SFT example has no response token (all labels are -100)")
    ids = list(example["input_ids"])
    return ids[:n], ids[n:]


def pack(pairs: Sequence[Pair], pad_id: int, eos_id: int) -> Rollout:
    """(prompt, response) id lists -> a :class:`Rollout` laid out as generation returns it:
    prompts left-padded ``[B, P]``, responses right-padded ``[B, R]``."""
    prompt_ids, prompt_mask = left_pad([p for p, _ in pairs], pad_id)
    responses = [r for _, r in pairs]
    response_ids = pad(responses, pad_id)  # [B, R]
    response_mask = pad([[1] * len(r) for r in responses], 0)  # [B, R]
    has_eos = torch.tensor([bool(r) and r[-1] == eos_id for r in responses])
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, has_eos)


def unpack(rollout: Rollout) -> list[Pair]:
    """A Rollout -> (prompt, response) id lists without padding (inverse of :func:`pack`)."""

    def strip(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]

    prompts = strip(rollout.prompt_ids, rollout.prompt_mask)
    return list(zip(prompts, strip(rollout.response_ids, rollout.response_mask), strict=True))


def is_on_policy(seed: int, micro_index: int, lmbda: float) -> bool:
    """The seeded coin deciding whether micro-batch ``micro_index`` uses student samples."""
    if lmbda <= 0.0:
        return False
    if lmbda >= 1.0:
        return True
    return random.Random(f"{seed}-gkd-{micro_index}").random() < lmbda


def generation_seed(seed: int, micro_index: int) -> int:
    return random.Random(f"{seed}-gen-{micro_index}").randrange(2**31)


def teacher_generations(
    teacher: Any, tokenizer: Any, pairs: Sequence[Pair], sampling: SamplingArgs, seed: int
) -> list[Pair]:
    """SeqKD data: the same prompts, each with the teacher's generated response (incl. its EOS;
    a response that hit ``max_new_tokens`` is kept as generated)."""
    rollout = generate(teacher, tokenizer, [p for p, _ in pairs], sampling, seed=seed)
    return unpack(rollout)


def response_logits(model: Any, rollout: Rollout, vocab: int) -> torch.Tensor:
    """``[B, R, vocab]`` logits at the positions predicting each response token."""
    P = rollout.prompt_ids.shape[1]
    logits = forward(model, rollout.input_ids, rollout.attention_mask).logits  # [B, P+R, V]
    return logits[:, P - 1 : -1, :vocab]


def divergence(
    s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor, args: DistillArgs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The run's token-mean ``JSD_beta`` (beta, temperature, top-k as configured)."""
    top_k = args.top_k_logits or None
    return generalized_jsd(
        s_logits, t_logits, mask, beta=args.beta, temperature=args.temperature, top_k=top_k
    )


def distill_loss(
    student: Any, teacher: Any, rollout: Rollout, args: DistillArgs, vocab: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean ``JSD_beta`` over the rollout's response tokens (prompt and pad excluded)."""
    with torch.no_grad():
        t_logits = response_logits(teacher, rollout, vocab)  # [B, R, V]
    s_logits = response_logits(student, rollout, vocab)  # [B, R, V]
    return divergence(s_logits, t_logits, rollout.response_mask, args)


@torch.no_grad()
def evaluate_divergence(
    student: Any,
    teacher: Any,
    pairs: Sequence[Pair],
    args: DistillArgs,
    vocab: int,
    batch_size: int,
    pad_id: int,
    eos_id: int,
    dist: Any = None,
) -> dict[str, float]:
    """Held-out token means over the dataset responses: the training divergence
    (``eval/distill_loss``, this run's beta/temperature/top-k), and, comparable across runs,
    ``eval/forward_kl`` = KL(p_T || p_S) at temperature 1 on the full vocabulary and the student's
    ``eval/nll`` = -log p_S(y_t | y_<t, x) with ``eval/perplexity`` = exp(nll).

    With ``dist`` the pairs are split over the ranks, every rank the same count
    (``Dist.shard_padded``: the padding copies get response mask 0, so they weigh nothing), and
    the token sums are added over ranks: every rank returns the global means."""
    n_real = len(pairs)
    if dist is not None:
        pairs, n_real = dist.shard_padded(pairs)
    was_training = student.training
    student.eval()
    sums, count = torch.zeros(3, dtype=torch.float64), 0
    for i, chunk in enumerate(common.batches(pairs, batch_size, shuffle=False)):
        r = pack(chunk, pad_id, eos_id)
        real = (torch.arange(len(chunk)) + i * batch_size < n_real).long()  # [B]
        r = dataclasses.replace(r, response_mask=r.response_mask * real[:, None])
        t_logits = response_logits(teacher, r, vocab)  # [B, R, V]
        s_logits = response_logits(student, r, vocab)  # [B, R, V]
        loss, _ = divergence(s_logits, t_logits, r.response_mask, args)
        fkl, _ = generalized_jsd(s_logits, t_logits, r.response_mask, beta=0.0)
        nll = -token_logprobs(s_logits, r.response_ids)  # [B, R]
        n = int(r.response_mask.sum())
        sums += torch.tensor(
            [float(loss) * n, float(fkl) * n, float((nll * r.response_mask).sum())]
        )
        count += n
    student.train(was_training)
    if dist is not None:
        *sum_list, count = dist.all_reduce_sum([*sums.tolist(), count])
        sums = torch.tensor(sum_list, dtype=torch.float64)
    loss, fkl, nll = (sums / max(count, 1)).tolist()
    return {
        "eval/distill_loss": loss,
        "eval/forward_kl": fkl,
        "eval/nll": nll,
        "eval/perplexity": math.exp(min(nll, 50.0)),
    }


def step_rollouts(
    student: Any,
    tokenizer: Any,
    chunks: Sequence[Sequence[Pair]],
    first_index: int,
    args: DistillArgs,
    sampling: SamplingArgs,
    seed: int,
    dist: Any = None,
    plan: Any = None,
) -> tuple[list[Rollout], list[bool]]:
    """The responses of one optimiser step's micro-batches (global indices ``first_index``, ...):
    the student's samples where the seeded coin says on-policy, else the given ones (dataset or
    SeqKD teacher responses). Returns the rollouts and the coins. Several processes: ``chunks``
    are this rank's slices of the global micro-batches, whose coins every rank shares; sampling
    as :func:`distill_dist.sample_student`."""
    rollouts, flags = [], []
    for k, chunk in enumerate(chunks):
        on = is_on_policy(seed, first_index + k, args.lmbda)
        if on:
            prompts = [p for p, _ in chunk]
            gen_seed = generation_seed(seed, first_index + k)
            rollouts.append(
                dd.sample_student(student, tokenizer, prompts, sampling, gen_seed, dist, plan)
            )
        else:
            rollouts.append(pack(chunk, tokenizer.pad_token_id, tokenizer.eos_token_id))
        flags.append(on)
    return rollouts, flags


def accumulate_distill(
    student: Any,
    teacher: Any,
    rollouts: Sequence[Rollout],
    args: DistillArgs,
    vocab: int,
    engine: Any = None,
) -> tuple[float, int, dict[str, float]]:
    """Backward of one optimiser step: each micro-batch's token-mean loss weighted by its share of
    the step's response tokens, so the gradient is that of the token mean over the whole step.

    With an ``engine`` (``infra/distributed.py``; ``rollouts`` = this rank's slices) the forwards
    go through ``engine.model`` (DDP / DeepSpeed), the share is of the step's tokens over all
    ranks (all-reduced), times ``N`` (the engine averages gradients over ranks):
    ``N * n_rj / n`` for micro-batch ``j`` of rank ``r`` with ``n_rj`` of the ``n`` tokens.

    Returns ``(loss, tokens, extra)``: the step's token-mean loss, the tokens the student read
    (prompt + response, for throughput; all ranks) and extra metrics (top-k mass)."""
    dist = engine.dist if engine is not None else None
    world = dist.world_size if dist is not None else 1
    n_tokens = sum(int(r.response_mask.sum()) for r in rollouts)
    if dist is not None:
        (n_tokens,) = dist.all_reduce_sum([n_tokens])
    model = engine.model if engine is not None else student
    loss_sum, tokens, extra = 0.0, 0, {}
    for r in engine.accumulate(rollouts) if engine is not None else rollouts:
        loss, metrics = distill_loss(model, teacher, r, args, vocab)
        n = int(r.response_mask.sum())
        weighted = loss * (n * world / max(n_tokens, 1))
        if engine is not None:
            engine.backward(weighted)
        else:
            weighted.backward()
        loss_sum += float(loss.detach()) * n
        tokens += int(r.attention_mask.sum())
        if "distill/topk_mass" in metrics:
            extra["distill/topk_mass"] = float(metrics["distill/topk_mass"])
    if dist is not None:
        loss_sum, tokens = dist.all_reduce_sum([loss_sum, tokens])
        extra = dist.mean_metrics(extra)
    return loss_sum / max(n_tokens, 1), int(tokens), extra


# ---- the run -------------------------------------------------------------------------------------


def run(cfg: DistillConfig) -> dict[str, Any]:
    """Distil, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    set_seed(cfg.optim.seed)  # the same on every rank: the student's and LoRA's init agree
    d, o = cfg.distill, cfg.optim
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        tokenizer = common.load_run_tokenizer(cfg.model)
        train_ex, train_stats = load_encoded(tokenizer, cfg.data, "sft", d.data_step, "train")
        eval_ex, _ = load_encoded(tokenizer, cfg.data, "sft", d.data_step, "eval")
    train = [split_prompt_response(e) for e in train_ex]
    evals = [split_prompt_response(e) for e in eval_ex]
    if not train:
        raise DataError("no training examples left after length filtering: raise --max-seq-len")
    total_steps = common.total_training_steps(o, len(train), dist.world_size)
    models = dd.setup_models(cfg, tokenizer, dist, total_steps)
    engine, teacher, plan = models.student, models.teacher.module, models.plan
    student = engine.module  # generation, evaluation (engine.model: the training forwards)
    if dist.world_size > 1:
        set_seed(dist.rank_seed(o.seed))  # dropout differs per rank
    vocab, pad_id, eos_id = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    logger = common.start_logger(cfg, dist, total_steps)  # writes on rank 0 only
    logger.print(
        f"[distill] student: {engine.describe()}\n[distill] teacher "
        f"{count_parameters(teacher)[0] / 1e6:.2f}M; lmbda={d.lmbda} beta={d.beta} "
        f"seq_kd={d.seq_kd}; train examples: {train_stats.describe()}; eval examples: "
        f"{len(evals)}; {total_steps} optimiser steps of "
        f"{o.per_device_train_batch_size * dist.world_size * o.gradient_accumulation_steps} examples"
    )
    sampling = SamplingArgs(
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        generation_batch_size=d.generation_batch_size,
    )
    timer = common.Timer()
    summary: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(evals)}
    if d.seq_kd:  # deterministic given the seed, so a resumed run regenerates the same data;
        # every rank generates all (ZeRO-3: the teacher's forwards are collective anyway)
        with timer("seq_kd"), plan.hf_current():
            seq_sampling = dataclasses.replace(sampling, temperature=d.seq_kd_temperature)
            train = teacher_generations(teacher, tokenizer, train, seq_sampling, seed=o.seed)
        summary["seq_kd_eos_rate"] = sum(bool(r) and r[-1] == eos_id for _, r in train) / len(train)
        logger.print(
            f"[distill] SeqKD: {len(train)} teacher responses in {timer.totals['seq_kd']:.1f}s "
            f"(EOS rate {summary['seq_kd_eos_rate']:.3f})"
        )
    ckpt = latest_checkpoint(cfg.log.output_dir) if cfg.log.resume else None
    state = load_checkpoint(ckpt, {"model": engine}) if ckpt is not None else {}
    step, epoch, skip = (state.get(k, 0) for k in ("step", "epoch", "micro_in_epoch"))
    n_micro, n_on_policy = state.get("n_micro", 0), state.get("n_on_policy", 0)
    if state:
        logger.print(f"[distill] resumed from {ckpt} at step {step}")

    heldout = common.heldout_evaluator(cfg, tokenizer, max_new_tokens=d.max_new_tokens)
    logger.print(f"[distill] {heldout.describe()}")
    if heldout:  # generation: rank 0 alone (ZeRO-3: every rank, parameters gathered)
        t_gold = models.teacher.on_main(lambda m: heldout(m, tokenizer, prefix="teacher"))
        summary["teacher"] = common.log_eval(logger, "distill", "teacher", step, t_gold)
    eval_bs, last_eval = o.per_device_eval_batch_size, (-1, {})
    multi = dist if dist.initialized else None

    def evaluate(name: str) -> dict[str, float]:
        nonlocal last_eval
        metrics: dict[str, float] = {}
        if evals:  # split over the ranks, global means on every rank
            metrics.update(
                evaluate_divergence(
                    student, teacher, evals, d, vocab, eval_bs, pad_id, eos_id, dist=multi
                )
            )
        metrics.update(common.heldout_metrics(engine, heldout, tokenizer, logger))
        last_eval = (step, metrics)
        return common.log_eval(logger, "distill", name, step, metrics)

    if step == 0:
        summary["before"] = common.remember_before(cfg, evaluate("before training"))
        if note := slow_start_note(d, summary["before"].get("eval/forward_kl", 0.0)):
            logger.print(note)
    common.recall_before(cfg, summary)  # a resumed run: the metrics before training, as measured

    # ---- train loop ----
    engine.train()
    accum, bs = o.gradient_accumulation_steps, o.per_device_train_batch_size
    t_start, tokens_seen = time.perf_counter(), 0
    while step < total_steps:
        micro = common.rank_batches(train, bs, dist, shuffle=True, seed=o.seed + epoch)
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            # 1. responses: the student's samples (on-policy) or the dataset's / the teacher's;
            #    the coin of a micro-batch depends on its global index (the same on every rank),
            #    so it survives resume
            with timer("generate"):
                rollouts, flags = step_rollouts(
                    student, tokenizer, groups[gi], step * accum, d, sampling, o.seed,
                    dist=multi, plan=plan,
                )  # fmt: skip
            # 2. loss normalised by the response tokens of the whole optimiser step (all ranks)
            with timer("train"):
                loss, tokens, extra = accumulate_distill(
                    student, teacher, rollouts, d, vocab, engine=engine
                )
                norm = engine.step()
            step, tokens_seen = step + 1, tokens_seen + tokens
            n_micro, n_on_policy = n_micro + len(flags), n_on_policy + sum(flags)
            logger.progress(1, {"loss": loss, "lr": engine.lr})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                metrics = {
                    "distill/loss": loss,
                    "distill/on_policy_share": n_on_policy / max(n_micro, 1),
                    "train/lr": engine.lr,
                    "train/grad_norm": norm,
                    "train/epoch": epoch + (gi + 1) / len(groups),
                    "perf/tokens_per_s": tokens_seen / (time.perf_counter() - t_start),
                }
                logger.log({**metrics, **extra, **rollout_metrics(rollouts, flags, multi)}, step)
                logger.log(timer.pop(), step)
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = evaluate(f"step {step}")
            if cfg.log.save_steps and step % cfg.log.save_steps == 0:
                position = {"epoch": epoch, "micro_in_epoch": gi + 1}
                counts = {"n_micro": n_micro, "n_on_policy": n_on_policy}
                save_checkpoint(cfg.log.output_dir, step, {"model": engine}, {**position, **counts})
            if step >= total_steps:
                break
        else:  # a whole epoch done
            epoch, skip = epoch + 1, 0
            summary[f"epoch_{epoch}"] = evaluate(f"epoch {epoch}")

    # ---- save (rank 0; gathered under ZeRO-3) ----
    elapsed = time.perf_counter() - t_start
    summary["after"] = evaluate("final") if last_eval[0] != step else last_eval[1]
    summary.update(
        {
            "steps": step,
            "world_size": dist.world_size,
            "on_policy_share": n_on_policy / max(n_micro, 1),
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
        }
    )
    return common.finish_engine_training(engine, tokenizer, cfg, summary, logger, "distill")
