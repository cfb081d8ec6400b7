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

Where the responses come from:

* ``--lmbda`` in [0, 1] is the share of micro-batches whose responses the *student* samples from the
  batch's prompts (on-policy, through ``rollout/generate.py``); the rest use the dataset responses.
  The choice is a seeded coin per micro-batch (``is_on_policy``), so it is reproducible and survives
  resume. lmbda 0 = supervised KD, 1 = fully on-policy GKD.
* ``--seq-kd`` replaces the dataset responses with the teacher's own generations once before
  training (Kim & Rush 2016; greedy by default, ``--seq-kd-temperature``), so the off-policy batches
  are teacher samples.
* ``--temperature`` divides both models' logits in the loss and is the student's sampling
  temperature for on-policy batches (as in the GKD paper); ``--top-k-logits`` restricts the loss to
  the teacher's top-k tokens per position (both distributions renormalised on that support).

Deviation from the paper: the coin is flipped per micro-batch, not per optimiser step, and the
student starts wherever ``--model-name-or-path`` points (default: a fresh tiny model, not an SFT
student). Data: the SFT examples of ``--data-step`` (default 1); their prompt/response boundary is
where ``labels`` stop being -100. Teacher and student must share the tokenizer (checked: vocabulary
size and a sample of token -> id; a clear error otherwise). On the tiny task the student's greedy
gold reward is measured before and after training, and the teacher's once.

One CPU, tiny default (teacher = a trained model, student = a fresh tiny model)::

    simple-rlhf distill --teacher-model-name-or-path outputs/ppo --output-dir outputs/distill \\
        --lmbda 0.5 --beta 0.5

A real pair of models, LoRA on the student::

    simple-rlhf distill --model-name-or-path Qwen/Qwen2.5-0.5B-Instruct \\
        --teacher-model-name-or-path Qwen/Qwen2.5-7B-Instruct --data-path my_sft.jsonl \\
        --lora-dim 64 --learning-rate 1e-4 --lmbda 0.5 --beta 0.5 --output-dir outputs/gkd

Several GPUs: the same command under ``torchrun --nproc_per_node N`` or ``deepspeed``.
"""

from __future__ import annotations

import dataclasses
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
from simple_rlhf.infra.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf_model,
)
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.distill import generalized_jsd
from simple_rlhf.models.forward import forward
from simple_rlhf.models.loading import (
    ModelLoadError,
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
)
from simple_rlhf.models.lora import apply_lora
from simple_rlhf.rollout.generate import Rollout, SamplingArgs, generate, left_pad
from simple_rlhf.trainers import common

Pair = tuple[list[int], list[int]]  # (prompt_ids, response_ids)


@dataclasses.dataclass(frozen=True)
class DistillArgs:
    """Teacher, divergence and where the responses come from."""

    teacher_model_name_or_path: str = fld(
        "outputs/ppo",
        "the teacher: HF name or folder of a causal LM sharing the student's tokenizer",
    )
    lmbda: float = fld(
        0.5, "share of micro-batches on student-generated responses (0: supervised KD, 1: GKD)"
    )
    beta: float = fld(
        0.5, "generalised JSD weight: 0 = forward KL(teacher||student), 1 = reverse KL"
    )
    seq_kd: bool = fld(
        False, "SeqKD: replace the dataset responses with teacher generations before training"
    )
    seq_kd_temperature: float = fld(0.0, "teacher's sampling temperature for SeqKD (0: greedy)")
    temperature: float = fld(
        1.0, "softmax temperature of both models in the loss; also the student's sampling one"
    )
    top_k_logits: int = fld(0, "restrict the loss to the teacher's top-k tokens (0: full vocab)")
    max_new_tokens: int = fld(48, "maximum tokens per generated response (on-policy and SeqKD)")
    generation_batch_size: int = fld(64, "prompts per generate() call")
    data_step: int = fld(1, "which step's share of the data split gives the SFT examples")
    gold_eval_prompts: int = fld(
        64, "held-out tiny-task prompts answered greedily to measure the gold reward (0: off)"
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ConfigError(f"lmbda: must be in [0, 1], got {self.lmbda}")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta: must be in [0, 1], got {self.beta}")
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
    stride = max(1, len(tokens) // max(n_sample, 1))
    sample = tokens[::stride][:n_sample]
    for attr in ("eos_token", "pad_token", "bos_token", "unk_token"):
        tok = getattr(student_tok, attr, None)
        if tok is not None:
            sample.append(tok)
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
    n = 0
    while n < len(labels) and labels[n] == IGNORE_INDEX:
        n += 1
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
    out = []
    for i in range(len(rollout)):
        p = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        r = rollout.response_ids[i][rollout.response_mask[i].bool()].tolist()
        out.append((p, r))
    return out


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


def distill_loss(
    student: Any, teacher: Any, rollout: Rollout, args: DistillArgs, vocab: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean ``JSD_beta`` over the rollout's response tokens (prompt and pad excluded)."""
    with torch.no_grad():
        t_logits = response_logits(teacher, rollout, vocab)  # [B, R, V]
    s_logits = response_logits(student, rollout, vocab)  # [B, R, V]
    return generalized_jsd(
        s_logits,
        t_logits,
        rollout.response_mask,
        beta=args.beta,
        temperature=args.temperature,
        top_k=args.top_k_logits or None,
    )


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
    """Held-out token-mean divergence to the teacher on the dataset responses."""
    was_training = student.training
    student.eval()
    total, count = 0.0, 0
    for chunk in common.batches(pairs, batch_size, shuffle=False):
        r = pack(chunk, pad_id, eos_id)
        loss, _ = distill_loss(student, teacher, r, args, vocab)
        n = int(r.response_mask.sum())
        total, count = total + float(loss) * n, count + n
    student.train(was_training)
    return {"eval/distill_loss": total / max(count, 1)}


def load_teacher(cfg: DistillConfig, student_tok: Any) -> Any:
    """The frozen teacher (eval mode, dropout off), after checking its tokenizer."""
    name = cfg.distill.teacher_model_name_or_path
    try:
        teacher_tok = load_tokenizer(name, trust_remote_code=cfg.model.trust_remote_code)
        check_same_vocab(student_tok, teacher_tok)
        teacher = load_causal_lm(
            name,
            teacher_tok,
            dtype=cfg.model.dtype,
            dropout=0.0,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    except ModelLoadError as e:
        raise ModelLoadError(f"teacher (--teacher-model-name-or-path): {e}") from e
    disable_dropout(teacher)
    teacher.eval().requires_grad_(False)
    return teacher


def uses_tiny_task(cfg: DistillConfig) -> bool:
    return "tiny" in cfg.data.data_path and cfg.distill.gold_eval_prompts > 0


# ---- the run -------------------------------------------------------------------------------------


def run(cfg: DistillConfig) -> dict[str, Any]:
    """Distil, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    set_seed(cfg.optim.seed)
    d, o, out_dir = cfg.distill, cfg.optim, cfg.log.output_dir
    tokenizer = load_tokenizer(
        cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    teacher = load_teacher(cfg, tokenizer)
    student = load_causal_lm(
        cfg.model.model_name_or_path,
        tokenizer,
        dtype=cfg.model.dtype,
        dropout=cfg.model.dropout,
        trust_remote_code=cfg.model.trust_remote_code,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    student = apply_lora(student, cfg.lora)
    vocab, pad_id, eos_id = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    train_ex, train_stats = load_encoded(tokenizer, cfg.data, "sft", d.data_step, "train")
    eval_ex, _ = load_encoded(tokenizer, cfg.data, "sft", d.data_step, "eval")
    train = [split_prompt_response(e) for e in train_ex]
    evals = [split_prompt_response(e) for e in eval_ex]
    if not train:
        raise ValueError("no training examples left after length filtering: raise --max-seq-len")
    per_epoch = common.steps_per_epoch(
        len(train), o.per_device_train_batch_size, o.gradient_accumulation_steps
    )
    total_steps = o.max_steps or per_epoch * o.num_train_epochs
    optimizer = common.build_optimizer(student, o, cfg.lora)
    scheduler = common.build_scheduler(optimizer, o, total_steps)
    logger = MetricsLogger(
        out_dir, cfg.log.report_to, total_steps=total_steps, progress_bar=cfg.log.progress_bar
    )
    common.save_run_config(out_dir, cfg)
    n_all, n_train = count_parameters(student)
    logger.print(
        f"[distill] student {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable), "
        f"teacher {count_parameters(teacher)[0] / 1e6:.2f}M; lmbda={d.lmbda} beta={d.beta} "
        f"seq_kd={d.seq_kd}; train examples: {train_stats.describe()}; eval examples: "
        f"{len(evals)}; {total_steps} optimiser steps"
    )
    student_sampling = SamplingArgs(
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        generation_batch_size=d.generation_batch_size,
    )
    timer = common.Timer()
    summary: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(evals)}
    if d.seq_kd:  # deterministic given the seed, so a resumed run regenerates the same data
        with timer("seq_kd"):
            seq_sampling = dataclasses.replace(student_sampling, temperature=d.seq_kd_temperature)
            train = teacher_generations(teacher, tokenizer, train, seq_sampling, seed=o.seed)
        n_eos = sum(1 for _, r in train if r and r[-1] == eos_id)
        summary["seq_kd_eos_rate"] = n_eos / len(train)
        logger.print(
            f"[distill] SeqKD: {len(train)} teacher responses in {timer.totals['seq_kd']:.1f}s "
            f"(EOS rate {summary['seq_kd_eos_rate']:.3f})"
        )
    step, epoch, skip = 0, 0, 0
    n_micro, n_on_policy = 0, 0  # micro-batches so far, and how many were on-policy
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt,
            models={"model": student},
            optimizers={"opt": optimizer},
            schedulers={"lr": scheduler},
        )
        step, epoch, skip = state["step"], state["epoch"], state["micro_in_epoch"]
        n_micro, n_on_policy = state["n_micro"], state["n_on_policy"]
        logger.print(f"[distill] resumed from {ckpt} at step {step}")

    bs, eval_bs = o.per_device_train_batch_size, o.per_device_eval_batch_size
    tiny = uses_tiny_task(cfg)
    if tiny:
        from simple_rlhf.rollout.evaluate import evaluate_gold

        t_gold = evaluate_gold(teacher, tokenizer, n_prompts=d.gold_eval_prompts, prefix="teacher")
        summary["teacher"] = t_gold
        logger.log(t_gold, step)
        logger.print(f"[distill] teacher: {format_metrics(t_gold)}")

    last: dict[str, float] = {}

    def evaluate(tag: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if evals:
            metrics.update(
                evaluate_divergence(student, teacher, evals, d, vocab, eval_bs, pad_id, eos_id)
            )
        if tiny:
            metrics.update(evaluate_gold(student, tokenizer, n_prompts=d.gold_eval_prompts))
        logger.log(metrics, step)
        logger.print(f"[distill] eval ({tag}, step {step}): {format_metrics(metrics)}")
        last.clear()
        last.update(metrics)
        return metrics

    if step == 0:
        summary["before"] = evaluate("before training")

    # ---- train loop ----
    student.train()
    accum = o.gradient_accumulation_steps
    t_start, tokens_seen = time.perf_counter(), 0
    last_eval = -1
    while step < total_steps:
        micro = list(common.batches(train, bs, shuffle=True, seed=o.seed + epoch))
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            # 1. responses: the student's samples (on-policy) or the dataset's / the teacher's
            rollouts, on_flags = [], []
            for mi, chunk in enumerate(groups[gi]):
                index = step * accum + mi  # global micro-batch index: same coin after resume
                on = is_on_policy(o.seed, index, d.lmbda)
                if on:
                    with timer("generate"):
                        r = generate(
                            student,
                            tokenizer,
                            [p for p, _ in chunk],
                            student_sampling,
                            seed=generation_seed(o.seed, index),
                        )
                else:
                    r = pack(chunk, pad_id, eos_id)
                rollouts.append(r)
                on_flags.append(on)
            # 2. loss normalised by the response tokens of the whole optimiser step
            n_tokens = sum(int(r.response_mask.sum()) for r in rollouts)
            loss_sum, extra = 0.0, {}
            with timer("train"):
                for r in rollouts:
                    loss, metrics = distill_loss(student, teacher, r, d, vocab)
                    n = int(r.response_mask.sum())
                    (loss * n / max(n_tokens, 1)).backward()
                    loss_sum += float(loss.detach()) * n
                    tokens_seen += int(r.attention_mask.sum())
                    if "distill/topk_mass" in metrics:
                        extra["distill/topk_mass"] = float(metrics["distill/topk_mass"])
                norm = common.grad_norm(student, o.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            n_micro += len(on_flags)
            n_on_policy += sum(on_flags)
            loss = loss_sum / max(n_tokens, 1)
            logger.progress(1, {"loss": loss, "lr": scheduler.get_last_lr()[0]})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_start
                on_rollouts = [r for r, on in zip(rollouts, on_flags, strict=True) if on]
                if on_rollouts:
                    lens = torch.cat([r.response_lengths for r in on_rollouts]).float()
                    eos = torch.cat([r.has_eos for r in on_rollouts]).float()
                    extra["rollout/response_len"] = float(lens.mean())
                    extra["rollout/eos_rate"] = float(eos.mean())
                logger.log(
                    {
                        "distill/loss": loss,
                        "distill/on_policy_share": n_on_policy / max(n_micro, 1),
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/grad_norm": norm,
                        "train/epoch": epoch + (gi + 1) / len(groups),
                        "perf/tokens_per_s": tokens_seen / elapsed,
                        **extra,
                        **timer.pop(),
                    },
                    step,
                )
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = evaluate(f"step {step}")
                last_eval = step
            if cfg.log.save_steps and step % cfg.log.save_steps == 0:
                save_checkpoint(
                    out_dir,
                    step,
                    models={"model": student},
                    optimizers={"opt": optimizer},
                    schedulers={"lr": scheduler},
                    state={
                        "epoch": epoch,
                        "micro_in_epoch": gi + 1,
                        "n_micro": n_micro,
                        "n_on_policy": n_on_policy,
                    },
                )
            if step >= total_steps:
                break
        else:  # a whole epoch done
            epoch, skip = epoch + 1, 0
            summary[f"epoch_{epoch}"] = evaluate(f"epoch {epoch}")
            last_eval = step

    # ---- save ----
    elapsed = time.perf_counter() - t_start
    summary["after"] = evaluate("final") if last_eval != step else dict(last)
    summary.update(
        {
            "steps": step,
            "on_policy_share": n_on_policy / max(n_micro, 1),
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
        }
    )
    save_hf_model(
        student,
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )
    logger.print(f"[distill] saved the student to {out_dir} ({elapsed:.1f}s of training)")
    logger.close()
    return summary
