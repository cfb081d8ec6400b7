"""LoRA (and QLoRA) through peft: wrap a model, and name the trainable parameter groups."""

from __future__ import annotations

from typing import Any


def target_modules(spec: str) -> str | list[str]:
    """'all-linear' stays a string (peft resolves it); otherwise a list of module names."""
    spec = spec.strip()
    if spec == "all-linear":
        return spec
    return [m.strip() for m in spec.split(",") if m.strip()]


def apply_lora(model: Any, lora: Any, *, task_type: str = "CAUSAL_LM", extra_trainable=()) -> Any:
    """Wrap ``model`` with LoRA adapters as configured by a ``LoraArgs`` section.

    With ``only_optimize_lora`` the base weights are frozen (peft's default) and only the adapters
    and the modules in ``extra_trainable`` (e.g. a reward head ``score``) train; otherwise every
    weight trains and the adapters add capacity. Returns the model unchanged when lora_dim is 0.
    """
    if lora.lora_dim <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    if lora.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.lora_dim,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=target_modules(lora.lora_module_name),
        task_type=task_type,
        modules_to_save=list(extra_trainable) or None,
    )
    model = get_peft_model(model, config)
    if not lora.only_optimize_lora:
        for p in model.parameters():
            if p.is_floating_point():
                p.requires_grad_(True)
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()
    return model


def is_lora_param(name: str) -> bool:
    return "lora_" in name
