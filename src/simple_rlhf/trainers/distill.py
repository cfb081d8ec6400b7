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

Measured (``benchmarks/distill_results.md``; seed 1234; student = the tiny SFT model, greedy gold
0.755; 125 steps of 16, lr 1e-3): from the step-3 PPO teacher (0.962) supervised KD reaches 0.967,
GKD (lmbda 1, beta 0.5) 0.979, SeqKD 0.979; from a rejection-sampling teacher (0.977) the six
runs lmbda {0, 1} x beta {0, 0.5, 1} reach 0.948-0.964 (forward KL to the teacher 0.134 ->
0.007-0.035) and SeqKD 0.977. A fresh tiny student (500 steps, lr 3e-3) from the PPO teacher:
supervised KD 0 -> 0.990 at beta 0, 0.693 at beta 0.5, 0.015 at beta 1, and GKD (lmbda 1, beta
0.5) 0.054: from scratch use forward KL on data first (the paper also starts GKD from an SFT
student).

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

One process only: this trainer is not wired to ``infra/distributed.py`` yet (under ``torchrun``
every rank would train its own copy).
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
    LogArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.data.tokenize import IGNORE_INDEX, pad
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.distill import generalized_jsd
from simple_rlhf.models.forward import forward
from simple_rlhf.models.loading import ModelLoadError, count_parameters, load_tokenizer
from simple_rlhf.models.logprobs import token_logprobs
from simple_rlhf.rollout.generate import Rollout, SamplingArgs, generate, left_pad
from simple_rlhf.trainers import common

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
    gold_eval_prompts: int = fld(64, "held-out tiny-task prompts for greedy gold (0: off)")

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

    def __post_init__(self) -> None:
        if self.data.train_on_prompt:
            raise ConfigError("train_on_prompt: distillation is on response tokens only")


# ---- pieces (tested on their own) ----------------------------------------------------------------


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
) -> dict[str, float]:
    """Held-out token means over the dataset responses: the training divergence
    (``eval/distill_loss``, this run's beta/temperature/top-k), and, comparable across runs,
    ``eval/forward_kl`` = KL(p_T || p_S) at temperature 1 on the full vocabulary and the student's
    ``eval/nll`` = -log p_S(y_t | y_<t, x) with ``eval/perplexity`` = exp(nll)."""
    was_training = student.training
    student.eval()
    sums, count = torch.zeros(3, dtype=torch.float64), 0
    for chunk in common.batches(pairs, batch_size, shuffle=False):
        r = pack(chunk, pad_id, eos_id)
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
    loss, fkl, nll = (sums / max(count, 1)).tolist()
    return {
        "eval/distill_loss": loss,
        "eval/forward_kl": fkl,
        "eval/nll": nll,
        "eval/perplexity": math.exp(min(nll, 50.0)),
    }


def load_teacher(cfg: DistillConfig, student_tok: Any) -> Any:
    """The frozen teacher (eval mode, dropout off, never 4-bit), after checking its tokenizer."""
    name = cfg.distill.teacher_model_name_or_path
    try:
        teacher_tok = load_tokenizer(name, trust_remote_code=cfg.model.trust_remote_code)
        check_same_vocab(student_tok, teacher_tok)
        return common.load_frozen_lm(name, teacher_tok, cfg.model)
    except ModelLoadError as e:
        raise ModelLoadError(f"teacher (--teacher-model-name-or-path): {e}") from e


def step_rollouts(
    student: Any,
    tokenizer: Any,
    chunks: Sequence[Sequence[Pair]],
    first_index: int,
    args: DistillArgs,
    sampling: SamplingArgs,
    seed: int,
) -> tuple[list[Rollout], list[bool]]:
    """The responses of one optimiser step's micro-batches (global indices ``first_index``, ...):
    the student's samples where the seeded coin says on-policy, else the given ones (dataset or
    SeqKD teacher responses). Returns the rollouts and the coins."""
    rollouts, flags = [], []
    for k, chunk in enumerate(chunks):
        on = is_on_policy(seed, first_index + k, args.lmbda)
        if on:
            prompts = [p for p, _ in chunk]
            gen_seed = generation_seed(seed, first_index + k)
            rollouts.append(generate(student, tokenizer, prompts, sampling, seed=gen_seed))
        else:
            rollouts.append(pack(chunk, tokenizer.pad_token_id, tokenizer.eos_token_id))
        flags.append(on)
    return rollouts, flags


def accumulate_distill(
    student: Any, teacher: Any, rollouts: Sequence[Rollout], args: DistillArgs, vocab: int
) -> tuple[float, int, dict[str, float]]:
    """Backward of one optimiser step: each micro-batch's token-mean loss weighted by its share of
    the step's response tokens, so the gradient is that of the token mean over the whole step.

    Returns ``(loss, tokens, extra)``: the step's token-mean loss, the tokens the student read
    (prompt + response, for throughput) and extra metrics (top-k mass)."""
    n_tokens = sum(int(r.response_mask.sum()) for r in rollouts)
    loss_sum, tokens, extra = 0.0, 0, {}
    for r in rollouts:
        loss, metrics = distill_loss(student, teacher, r, args, vocab)
        n = int(r.response_mask.sum())
        (loss * n / max(n_tokens, 1)).backward()
        loss_sum += float(loss.detach()) * n
        tokens += int(r.attention_mask.sum())
        if "distill/topk_mass" in metrics:
            extra["distill/topk_mass"] = float(metrics["distill/topk_mass"])
    return loss_sum / max(n_tokens, 1), tokens, extra


def rollout_metrics(rollouts: Sequence[Rollout], flags: Sequence[bool]) -> dict[str, float]:
    """Mean length and EOS rate of the on-policy (student-sampled) responses, if any."""
    on = [r for r, f in zip(rollouts, flags, strict=True) if f]
    if not on:
        return {}
    lengths = torch.cat([r.response_lengths for r in on]).float()
    return {
        "rollout/response_len": float(lengths.mean()),
        "rollout/eos_rate": float(torch.cat([r.has_eos for r in on]).float().mean()),
    }


def uses_tiny_task(cfg: DistillConfig) -> bool:
    return "tiny" in cfg.data.data_path and cfg.distill.gold_eval_prompts > 0


# ---- the run -------------------------------------------------------------------------------------


def run(cfg: DistillConfig) -> dict[str, Any]:
    """Distil, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    set_seed(cfg.optim.seed)
    d, o = cfg.distill, cfg.optim
    tokenizer = common.load_run_tokenizer(cfg.model)
    teacher = load_teacher(cfg, tokenizer)
    student = common.load_trained_lm(cfg.model, tokenizer, cfg.lora)  # QLoRA: 4-bit base
    vocab, pad_id, eos_id = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    train_ex, train_stats = load_encoded(tokenizer, cfg.data, "sft", d.data_step, "train")
    eval_ex, _ = load_encoded(tokenizer, cfg.data, "sft", d.data_step, "eval")
    train = [split_prompt_response(e) for e in train_ex]
    evals = [split_prompt_response(e) for e in eval_ex]
    if not train:
        raise ValueError("no training examples left after length filtering: raise --max-seq-len")
    tr = common.start_training(cfg, student, len(train))
    logger = tr.logger
    n_all, n_train = count_parameters(student)
    logger.print(
        f"[distill] student {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable), "
        f"teacher {count_parameters(teacher)[0] / 1e6:.2f}M; lmbda={d.lmbda} beta={d.beta} "
        f"seq_kd={d.seq_kd}; train examples: {train_stats.describe()}; eval examples: "
        f"{len(evals)}; {tr.total_steps} optimiser steps"
    )
    sampling = SamplingArgs(
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        generation_batch_size=d.generation_batch_size,
    )
    timer = common.Timer()
    summary: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(evals)}
    if d.seq_kd:  # deterministic given the seed, so a resumed run regenerates the same data
        with timer("seq_kd"):
            seq_sampling = dataclasses.replace(sampling, temperature=d.seq_kd_temperature)
            train = teacher_generations(teacher, tokenizer, train, seq_sampling, seed=o.seed)
        summary["seq_kd_eos_rate"] = sum(bool(r) and r[-1] == eos_id for _, r in train) / len(train)
        logger.print(
            f"[distill] SeqKD: {len(train)} teacher responses in {timer.totals['seq_kd']:.1f}s "
            f"(EOS rate {summary['seq_kd_eos_rate']:.3f})"
        )
    state = common.resume_training(cfg, student, tr)
    step, epoch, skip = (state.get(k, 0) for k in ("step", "epoch", "micro_in_epoch"))
    n_micro, n_on_policy = state.get("n_micro", 0), state.get("n_on_policy", 0)
    if state:
        logger.print(f"[distill] resumed from {state['checkpoint']} at step {step}")

    tiny = uses_tiny_task(cfg)
    if tiny:
        from simple_rlhf.rollout.evaluate import evaluate_gold

        t_gold = evaluate_gold(teacher, tokenizer, n_prompts=d.gold_eval_prompts, prefix="teacher")
        summary["teacher"] = common.log_eval(logger, "distill", "teacher", step, t_gold)
    eval_bs, last_eval = o.per_device_eval_batch_size, (-1, {})

    def evaluate(name: str) -> dict[str, float]:
        nonlocal last_eval
        metrics: dict[str, float] = {}
        if evals:
            metrics.update(
                evaluate_divergence(student, teacher, evals, d, vocab, eval_bs, pad_id, eos_id)
            )
        if tiny:
            metrics.update(evaluate_gold(student, tokenizer, n_prompts=d.gold_eval_prompts))
        last_eval = (step, metrics)
        return common.log_eval(logger, "distill", name, step, metrics)

    if step == 0:
        summary["before"] = evaluate("before training")

    # ---- train loop ----
    student.train()
    accum, bs = o.gradient_accumulation_steps, o.per_device_train_batch_size
    t_start, tokens_seen = time.perf_counter(), 0
    while step < tr.total_steps:
        micro = list(common.batches(train, bs, shuffle=True, seed=o.seed + epoch))
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            # 1. responses: the student's samples (on-policy) or the dataset's / the teacher's;
            #    the coin of a micro-batch depends on its global index, so it survives resume
            with timer("generate"):
                rollouts, flags = step_rollouts(
                    student, tokenizer, groups[gi], step * accum, d, sampling, o.seed
                )
            # 2. loss normalised by the response tokens of the whole optimiser step
            with timer("train"):
                loss, tokens, extra = accumulate_distill(student, teacher, rollouts, d, vocab)
                norm = common.optimizer_step(student, tr, o.max_grad_norm)
            step, tokens_seen = step + 1, tokens_seen + tokens
            n_micro, n_on_policy = n_micro + len(flags), n_on_policy + sum(flags)
            lr = tr.scheduler.get_last_lr()[0]
            logger.progress(1, {"loss": loss, "lr": lr})
            if step % cfg.log.logging_steps == 0 or step == tr.total_steps:
                metrics = {
                    "distill/loss": loss,
                    "distill/on_policy_share": n_on_policy / max(n_micro, 1),
                    "train/lr": lr,
                    "train/grad_norm": norm,
                    "train/epoch": epoch + (gi + 1) / len(groups),
                    "perf/tokens_per_s": tokens_seen / (time.perf_counter() - t_start),
                }
                logger.log({**metrics, **extra, **rollout_metrics(rollouts, flags)}, step)
                logger.log(timer.pop(), step)
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = evaluate(f"step {step}")
            if cfg.log.save_steps and step % cfg.log.save_steps == 0:
                position = {"epoch": epoch, "micro_in_epoch": gi + 1}
                counts = {"n_micro": n_micro, "n_on_policy": n_on_policy}
                common.save_training(cfg, step, student, tr, {**position, **counts})
            if step >= tr.total_steps:
                break
        else:  # a whole epoch done
            epoch, skip = epoch + 1, 0
            summary[f"epoch_{epoch}"] = evaluate(f"epoch {epoch}")

    # ---- save ----
    elapsed = time.perf_counter() - t_start
    summary["after"] = evaluate("final") if last_eval[0] != step else last_eval[1]
    summary.update(
        {
            "steps": step,
            "on_policy_share": n_on_policy / max(n_micro, 1),
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
        }
    )
    return common.finish_training(student, tokenizer, cfg, summary, logger, "distill")
