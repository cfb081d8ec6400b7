"""The valid range of every numeric option, checked when a config is built (flags and YAML alike).

One table keyed by option name (a name means the same thing in every command), with a few
entries keyed ``ClassName.option`` where one name means something else in one config (distill's
``beta`` is a JSD weight in [0, 1], DPO's a positive scale). ``tests/test_config_ranges.py``
checks that every numeric option of every command has an entry, so a new option cannot be added
without one, and that every default is inside its range. ``--help`` shows the ranges.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``lo_open`` / ``hi_open``: strict); None: no bound on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}"

        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{num(self.lo)}, {num(self.hi)}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        return "any finite number"


ANY = Range()
NONNEG = Range(0)
POSITIVE = Range(0, lo_open=True)
AT_LEAST_1 = Range(1)
UNIT = Range(0, 1)  # [0, 1]
UNIT_HALF_OPEN = Range(0, 1, hi_open=True)  # [0, 1)

RANGES: dict[str, Range] = {
    # optimiser and schedule
    "learning_rate": POSITIVE,
    "lora_learning_rate": POSITIVE,
    "critic_learning_rate": POSITIVE,
    "weight_decay": NONNEG,
    "adam_beta1": UNIT_HALF_OPEN,
    "adam_beta2": UNIT_HALF_OPEN,
    "adam_epsilon": POSITIVE,
    "num_warmup_steps": NONNEG,
    "warmup_ratio": UNIT,
    "num_train_epochs": AT_LEAST_1,
    "max_steps": AT_LEAST_1,
    "min_train_steps": NONNEG,
    "per_device_train_batch_size": AT_LEAST_1,
    "per_device_eval_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "max_grad_norm": NONNEG,
    "seed": NONNEG,
    "data_seed": NONNEG,
    # model, LoRA, data
    "dropout": UNIT_HALF_OPEN,
    "lora_dim": NONNEG,
    "lora_alpha": POSITIVE,
    "lora_dropout": UNIT_HALF_OPEN,
    "eval_fraction": UNIT_HALF_OPEN,
    "max_eval_samples": NONNEG,
    "max_seq_len": Range(2),
    "max_prompt_len": AT_LEAST_1,
    "data_step": Range(1, 3),
    # logging, saving, scale-out
    "eval_steps": NONNEG,
    "logging_steps": AT_LEAST_1,
    "save_steps": NONNEG,
    "gold_eval_prompts": NONNEG,
    "pass_threshold": ANY,
    "policy_check_samples": NONNEG,
    "eval_max_new_tokens": AT_LEAST_1,
    "sample_every": NONNEG,
    "zero_stage": Range(0, 3),
    "actor_zero_stage": Range(0, 3),
    "critic_zero_stage": Range(0, 3),
    "reward_zero_stage": Range(0, 3),
    "local_rank": Range(-1),
    "num_gpus": AT_LEAST_1,
    # preference losses
    "beta": POSITIVE,
    "label_smoothing": Range(0, 0.5, hi_open=True),
    "simpo_gamma": NONNEG,
    "cpo_alpha": NONNEG,
    "rpo_alpha": NONNEG,
    "orpo_lambda": NONNEG,
    "desirable_weight": POSITIVE,
    "undesirable_weight": POSITIVE,
    # reward model
    "margin": NONNEG,
    "center_coef": NONNEG,
    "nll_coef": NONNEG,
    "token_loss_coef": NONNEG,
    "eval_batches": AT_LEAST_1,
    "clip": POSITIVE,
    "batch_size": AT_LEAST_1,
    # generation
    "temperature": NONNEG,  # 0 = greedy
    "top_p": Range(0, 1, lo_open=True),
    "top_k": NONNEG,
    "max_new_tokens": AT_LEAST_1,
    "generation_batch_size": AT_LEAST_1,
    "forward_batch_size": AT_LEAST_1,
    # online RL
    "num_rollouts": AT_LEAST_1,
    "prompts_per_rollout": AT_LEAST_1,
    "responses_per_prompt": AT_LEAST_1,
    "num_generations": AT_LEAST_1,
    "num_iterations": AT_LEAST_1,
    "ppo_epochs": AT_LEAST_1,
    "kl_coef": NONNEG,
    "kl_target": POSITIVE,
    "kl_horizon": AT_LEAST_1,
    "gamma": UNIT,
    "lam": UNIT,
    "clip_range": POSITIVE,
    "clip_range_high": POSITIVE,
    "dual_clip": Range(1, lo_open=True),
    "value_clip": POSITIVE,
    "vf_coef": NONNEG,
    "entropy_coef": NONNEG,
    "ptx_coef": NONNEG,
    "critic_warmup_rollouts": NONNEG,
    "ema_decay": Range(0, 1, lo_open=True, hi_open=True),
    "reward_clip": POSITIVE,
    "missing_eos_penalty": ANY,
    "kl_warn": POSITIVE,
    "entropy_warn": NONNEG,
    "eos_rate_warn": UNIT,
    # distillation, rejection sampling, serving
    "lmbda": UNIT,
    "DistillArgs.beta": UNIT,
    "DistillArgs.temperature": POSITIVE,
    "seq_kd_temperature": NONNEG,
    "top_k_logits": NONNEG,
    "rounds": AT_LEAST_1,
    "num_samples": AT_LEAST_1,
    "max_prompts": AT_LEAST_1,
    "min_score": ANY,
    "n_prompts": AT_LEAST_1,
    "max_history_tokens": AT_LEAST_1,
}


def range_of(owner: str, name: str) -> Range | None:
    """The range of option ``name`` of config class ``owner`` (None: not numeric / not listed)."""
    return RANGES.get(f"{owner}.{name}", RANGES.get(name))
