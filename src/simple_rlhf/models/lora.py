"""LoRA (and QLoRA) through peft: wrap a model, name the trainable parameter groups, and turn a
trained (Q)LoRA model back into a plain full-precision one.

QLoRA (``LoraArgs.load_in_4bit``): the base is loaded by
:func:`simple_rlhf.models.loading.load_causal_lm` with ``load_in_4bit=True`` (every linear layer but
the LM head becomes a frozen bitsandbytes ``Linear4bit``, NF4 + double quantisation), and
:func:`apply_lora` adds full-precision adapters. A layer then computes

    y = x @ deq(W_nf4)^T + s * (x @ A^T) @ B^T,        s = lora_alpha / r

with ``deq`` the NF4 dequantisation in the compute dtype, A [r, in], B [out, r]. Saving
(:func:`dequantized_merged`) writes ``W = deq(W_nf4) + s * B @ A`` into ordinary ``nn.Linear``
layers, so the saved folder is a normal HF model that computes exactly what the trained model did
(up to float rounding) and loads with ``AutoModelForCausalLM`` without bitsandbytes.
"""

from __future__ import annotations

from typing import Any

from simple_rlhf.config import ConfigError


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
    QLoRA (``load_in_4bit``; the model must have been loaded with ``load_in_4bit=True``): the
    combination is checked by :func:`check_qlora`, the base is frozen and its unquantised weights
    (norms, embeddings, head) are kept in fp32 as in the QLoRA recipe; with ``only_optimize_lora``
    off those unquantised weights train too (the packed 4-bit weights never do).
    """
    check_qlora(lora)
    if lora.lora_dim <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    if lora.load_in_4bit or _is_4bit(model):
        if not _is_4bit(model):
            raise ConfigError(
                "load_in_4bit: the model was not loaded in 4-bit; pass "
                "load_in_4bit=cfg.lora.load_in_4bit to load_causal_lm"
            )
        from peft import prepare_model_for_kbit_training

        # freezes the base, keeps non-quantised weights (norms, embeddings, head) in fp32; the
        # gradient-checkpointing part is left to load_causal_lm (non-reentrant, no input hooks)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    from torch import nn

    targets = target_modules(lora.lora_module_name)
    if isinstance(targets, list):  # names: check them here, peft's own error is a traceback
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        missing = [
            t for t in targets if not any(n.split(".")[-1] == t for n, _ in model.named_modules())
        ]
        if missing or not targets:
            raise ConfigError(
                f"lora_module_name: no module named {', '.join(missing) or repr('')} in this "
                f"model; its linear layers are: {', '.join(linear)} (or use 'all-linear')"
            )
    config = LoraConfig(
        r=lora.lora_dim,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=targets,
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


def check_qlora(lora: Any, zero_stage: int | None = None, *, zero3_ok: bool = False) -> None:
    """Raise ConfigError for settings QLoRA cannot honour.

    * ``load_in_4bit`` without LoRA (``lora_dim`` 0): nothing could train, 4-bit weights are frozen;
    * ``load_in_4bit`` under ZeRO-3 unless ``zero3_ok``: the packed uint8 weights are partitioned
      and gathered back like any parameter (the quantisation state is replicated) and
      ``Engine.save_hf`` saves what one process saves, but a trainer says ``zero3_ok`` only once
      its own ZeRO-3 path (generation, frozen copies, ...) was tested with 4 bits: SFT, reward,
      the DPO family and KTO so far (``tests/infra/test_distributed.py``). ZeRO 0-2 work for every trainer.
    """
    if not getattr(lora, "load_in_4bit", False):
        return
    if lora.lora_dim <= 0:
        raise ConfigError(
            "load_in_4bit (QLoRA) needs LoRA adapters: 4-bit weights are frozen, so set --lora-dim "
            "(e.g. 16)"
        )
    if zero_stage == 3 and not zero3_ok:
        raise ConfigError(
            "load_in_4bit (QLoRA) with ZeRO-3 is enabled for sft, reward, dpo/simpo/cpo/orpo "
            "and kto so far, not this trainer; use --zero-stage 0, 1 or 2 (only the small "
            "adapters train, so little is gained from stage 3) or drop --load-in-4bit"
        )


def _is_4bit(model: Any) -> bool:
    from simple_rlhf.models.loading import is_quantized

    return is_quantized(model)


def _dense_weight(layer: Any) -> Any:
    """The weight of a linear layer as a float32 [out, in] tensor (4-bit NF4 dequantised)."""
    import torch

    weight = layer.weight
    if type(weight).__name__ == "Params4bit":
        import bitsandbytes as bnb

        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # see loading.keep_4bit_exact
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            data, state = _convert_weight_packed_for_cpu_inverse(data, state)
            weight.data, weight.quant_state = data, state
        return bnb.functional.dequantize_4bit(data, state).float()
    if not weight.is_floating_point():
        raise TypeError(f"cannot dequantise a {type(weight).__name__} weight")
    return weight.detach().to(torch.float32).clone()


def _merged_linear(module: Any) -> dict[str, Any]:
    """``{"weight": deq(W) + sum_a s_a B_a A_a, "bias": ...}`` (float32) of a LoRA layer."""
    base = module.get_base_layer()
    if not hasattr(base, "weight") or base.weight.ndim != 2 or isinstance(base, _embedding()):
        raise TypeError(f"only LoRA on linear layers can be merged here, not {type(base).__name__}")
    weight = _dense_weight(base)  # [out, in]; already holds adapters merged earlier, if any
    bias = None if base.bias is None else base.bias.detach().float().clone()
    for name in module.active_adapters:
        if name not in module.lora_A or name in module.merged_adapters:
            continue
        weight += module.get_delta_weight(name).detach().float()  # s * B @ A, [out, in]
        if module.lora_bias.get(name, False):
            bias = bias + module.lora_B[name].bias.detach().float()
    return {"weight": weight} if bias is None else {"weight": weight, "bias": bias}


def _embedding() -> type:
    import torch

    return torch.nn.Embedding


def _plain_state(module: Any, prefix: str, out: dict[str, Any]) -> None:
    """Fill ``out`` with the state of the plain model ``module`` stands for (see
    :func:`merged_state_dict`); ``prefix`` is the module's name with a trailing dot."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    if isinstance(module, LoraLayer):
        out.update({prefix + k: v for k, v in _merged_linear(module).items()})
        return
    if isinstance(module, ModulesToSaveWrapper):
        _plain_state(module.modules_to_save[module.active_adapters[0]], prefix, out)
        return
    if type(module._parameters.get("weight")).__name__ == "Params4bit":
        out[prefix + "weight"] = _dense_weight(module)
        if module.bias is not None:
            out[prefix + "bias"] = module.bias.detach().float().clone()
        return
    for name, p in module._parameters.items():
        if p is not None:
            out[prefix + name] = p.detach().clone()
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            out[prefix + name] = b.detach().clone()
    for name, child in module._modules.items():
        if child is not None:
            _plain_state(child, f"{prefix}{name}.", out)


def merged_state_dict(model: Any) -> dict[str, Any]:
    """The state dict of the plain HF model a (Q)LoRA ``model`` computes, without changing it.

    Keys are those of the model without peft and quantisation (``model.layers.0.mlp.up_proj.weight``
    ...). Each LoRA layer gives ``W = deq(W_base) + s * B @ A`` (``deq`` is the identity for an
    unquantised base), each remaining 4-bit layer its dequantised weight (float32), each
    ``modules_to_save`` wrapper its trained copy; everything else is copied as is.
    Under ZeRO-3 call it with the parameters gathered (``deepspeed.zero.GatheredParameters``).
    """
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: dict[str, Any] = {}
    _plain_state(hf, "", out)
    return out


def dequantized_merged(model: Any, dtype: Any = None) -> Any:
    """A new plain HF model computing what a (Q)LoRA ``model`` computes, in ``dtype``.

    Built from :func:`merged_state_dict` into a copy of the architecture without the quantisation
    config, so ``save_pretrained`` writes ordinary full-precision weights and ``model`` itself is
    left intact (it can keep training). Meant for saving: it is built on the meta device, so
    tensors that are neither parameters nor buffers keep meta placeholders; reload the saved
    folder to use it. ``dtype`` defaults to the 4-bit compute dtype (else the
    embeddings' dtype). Under ZeRO-3, gather the parameters first and build it with transformers'
    ZeRO-3 detection off (``infra.zero.zero3_detection_off``).
    """
    import copy

    import torch

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    qcfg = getattr(hf.config, "quantization_config", None)
    compute = None
    if qcfg is not None:
        compute = (
            qcfg.get("bnb_4bit_compute_dtype")
            if isinstance(qcfg, dict)
            else getattr(qcfg, "bnb_4bit_compute_dtype", None)
        )
    if isinstance(compute, str):
        compute = getattr(torch, compute)
    dtype = dtype or compute or hf.get_input_embeddings().weight.dtype
    state = merged_state_dict(model)
    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        plain = type(hf)(config)
    plain.load_state_dict(state, strict=True, assign=True)
    for name, module in hf.named_modules():  # non-persistent buffers (rotary inv_freq ...)
        for buf in getattr(module, "_non_persistent_buffers_set", ()):
            target = plain.get_submodule(name)
            target._buffers[buf] = module._buffers[buf].detach().clone()
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    if getattr(hf, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(hf.generation_config)
    return plain.to(dtype).train(hf.training)
