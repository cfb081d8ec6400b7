"""DeepSpeed ZeRO pieces with no process state: the config built from our flags, the memory
estimate per device, and the full-state gather/copy used to save a ZeRO-3 model.

ZeRO (Rajbhandari et al., 2020) shards the *model states* of data-parallel training over the N
ranks. With Ψ parameters (Ψ_t of them trainable), p bytes per weight/gradient and K bytes of
optimizer state per trainable parameter, the bytes held by one device are

    stage 0 (DDP):  p·Ψ + p·Ψ_t + K·Ψ_t
    stage 1:        p·Ψ + p·Ψ_t + K·Ψ_t / N          (optimizer states sharded)
    stage 2:        p·Ψ + (p + K)·Ψ_t / N            (+ gradients sharded)
    stage 3:        (p·Ψ + (p + K)·Ψ_t) / N          (+ parameters sharded)

Mixed precision under DeepSpeed (bf16/fp16): p = 2, K = 12 (fp32 master copy, Adam m and v);
fp32: p = 4, K = 8 (Adam m and v). Without DeepSpeed, torch AdamW keeps m and v in the weights'
dtype: K = 2p. Offload moves the optimizer term (``optimizer``) or the parameter term (``param``,
stage 3) to CPU memory. Activations and temporary buffers are not included.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simple_rlhf.config import ConfigError

GIB = 1024**3
QUIET_STEPS = 10**12  # DeepSpeed's own progress prints: never


def bytes_per_param(dtype: str, deepspeed: bool) -> tuple[int, int]:
    """(p, K): bytes per weight (and per gradient) and optimizer bytes per trainable weight."""
    p = 4 if dtype == "float32" else 2
    if not deepspeed:
        return p, 2 * p
    return p, 8 if p == 4 else 12


def estimate_memory(
    n_params: int,
    n_trainable: int,
    *,
    stage: int | None,
    world_size: int,
    dtype: str = "float32",
    offload: str = "none",
) -> dict[str, float]:
    """Model-state bytes per device (module docstring); ``stage`` None = no DeepSpeed (DDP).

    Returns ``{"params", "grads", "optimizer", "device", "cpu"}`` in bytes: the three terms per
    rank, then their split between the accelerator and CPU memory (offload).
    """
    p, k = bytes_per_param(dtype, deepspeed=stage is not None)
    s, n = stage or 0, max(world_size, 1)
    params = p * n_params / (n if s >= 3 else 1)
    grads = p * n_trainable / (n if s >= 2 else 1)
    optimizer = k * n_trainable / (n if s >= 1 else 1)
    cpu = (optimizer if offload in ("optimizer", "all") else 0.0) + (
        params if offload in ("param", "all") else 0.0
    )
    total = params + grads + optimizer
    return {
        "params": params,
        "grads": grads,
        "optimizer": optimizer,
        "device": total - cpu,
        "cpu": cpu,
    }


def describe_memory(mem: dict[str, float]) -> str:
    text = (
        f"{mem['device'] / GIB:.3g} GiB per device (params {mem['params'] / GIB:.3g}, "
        f"grads {mem['grads'] / GIB:.3g}, optimizer {mem['optimizer'] / GIB:.3g})"
    )
    if mem["cpu"]:
        text += f" + {mem['cpu'] / GIB:.3g} GiB offloaded to CPU"
    return text + ", activations not included"


# --- DeepSpeed config ---------------------------------------------------------------------------


def _fill_auto(user: Any, ours: Any, path: str = "") -> Any:
    """Replace every ``"auto"`` in the user's config by our value at the same place."""
    if isinstance(user, dict):
        out = {}
        for k, v in user.items():
            sub = ours.get(k) if isinstance(ours, dict) else None
            out[k] = _fill_auto(v, sub, f"{path}{k}.")
        return out
    if user == "auto":
        if ours is None:
            raise ConfigError(f"deepspeed_config: no value to fill '{path[:-1]}': 'auto'")
        return ours
    return user


def deepspeed_config(
    *,
    zero_stage: int | None,
    offload: str,
    optim: Any,
    dtype: str,
    world_size: int,
    user_config: str | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config for our loop, from flags (or the user's JSON with 'auto' filled).

    Our loop owns the optimiser (torch AdamW, built by the trainer) and the schedule, accumulates
    micro-batches itself and normalises losses over the whole step, so the config has no
    ``optimizer``/``scheduler`` section and the batch sizes must be ours.
    """
    micro, accum = optim.per_device_train_batch_size, optim.gradient_accumulation_steps
    zero: dict[str, Any] = {"stage": zero_stage if zero_stage is not None else 0}
    if offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload in ("param", "all"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if zero["stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": float(optim.max_grad_norm or 0.0),
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {
            "enabled": dtype == "float16",
            "loss_scale": 0,  # dynamic loss scaling
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # our torch AdamW runs on the (offloaded) fp32 shards; DeepSpeedCPUAdam not required
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
    if user_config is None:
        return ours
    path = Path(user_config)
    if not path.is_file():
        raise ConfigError(f"deepspeed_config: file not found: {path}")
    try:
        user = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"deepspeed_config: {path} is not valid JSON: {e}") from None
    for key in ("optimizer", "scheduler"):
        if key in user:
            raise ConfigError(
                f"deepspeed_config: remove the '{key}' section; the optimiser and schedule come "
                "from our flags (--learning-rate, --lr-scheduler-type, ...)"
            )
    cfg = _fill_auto(user, ours)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in cfg and int(cfg[key]) != ours[key]:
            raise ConfigError(
                f"deepspeed_config: {key}={cfg[key]} differs from the flags ({ours[key]}); "
                "set it to 'auto' or change the flag"
            )
        cfg[key] = ours[key]
    cfg["train_batch_size"] = ours["train_batch_size"]
    cfg.setdefault("zero_optimization", {"stage": zero["stage"]})
    if zero_stage is not None:  # an explicit flag wins over the file
        cfg["zero_optimization"]["stage"] = zero_stage
    for key in ("zero_allow_untested_optimizer", "steps_per_print", "gradient_clipping"):
        cfg.setdefault(key, ours[key])
    cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    return cfg


def config_stage(cfg: dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


# --- ZeRO-3: full parameters --------------------------------------------------------------------


@contextlib.contextmanager
def zero3_detection_off() -> Iterator[None]:
    """Let transformers build a plain model (no ``zero.Init``) while a ZeRO-3 config is alive."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def gather_state_dict(module: Any, on_rank: bool) -> dict[str, Any]:
    """Full-size copy of every parameter and persistent buffer (keys as ``module.state_dict()``),
    on CPU, kept only where ``on_rank``. Collective: every rank must call it. Parameters are
    gathered one sub-module at a time, so no device ever holds the whole model."""
    import deepspeed

    out: dict[str, Any] = {}
    for prefix, mod in module.named_modules(remove_duplicate=False):
        pre = f"{prefix}." if prefix else ""
        params = list(mod.named_parameters(recurse=False, remove_duplicate=False))
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if on_rank:
                for name, p in params:
                    out[pre + name] = p.detach().to("cpu", copy=True)
        if on_rank:
            skip = getattr(mod, "_non_persistent_buffers_set", set())
            for name, b in mod.named_buffers(recurse=False):
                if b is not None and name not in skip:
                    out[pre + name] = b.detach().to("cpu", copy=True)
    return out


def plain_copy(module: Any, state_dict: dict[str, Any]) -> Any:
    """A CPU model with ``module``'s structure (HF model, or peft model over one) holding
    ``state_dict``: built on the meta device, then the gathered tensors are assigned (no copy)."""
    import torch

    peft_config = getattr(module, "peft_config", None)
    base = module.get_base_model() if peft_config is not None else module
    with zero3_detection_off():
        with torch.device("meta"):
            skeleton = type(base)(copy.deepcopy(base.config))
        if peft_config is not None:
            from peft import get_peft_model

            name = getattr(module, "active_adapter", "default")
            skeleton = get_peft_model(skeleton, copy.deepcopy(peft_config[name]))
    skeleton.load_state_dict(state_dict, strict=True, assign=True)
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    gen = getattr(base, "generation_config", None)
    target = skeleton.get_base_model() if peft_config is not None else skeleton
    if gen is not None:
        target.generation_config = copy.deepcopy(gen)
    return skeleton.eval()
