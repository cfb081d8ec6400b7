"""The one forward pass used for logprobs and values, correct under any padding side.

HF decoders number positions 0..T-1 regardless of padding unless ``position_ids`` is given, so a
left-padded prompt would be seen at shifted positions. Every forward here passes position ids
counted over real tokens (``cumsum(mask) - 1``), so logprobs and values do not depend on the
padding side (tested).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from simple_rlhf.models.logprobs import entropy_from_logits, token_logprobs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` positions counting only real tokens (0 on left padding)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def hf_model(model: Any) -> Any:
    """The transformers model under DDP/DeepSpeed and peft wrappers."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@functools.lru_cache(maxsize=64)
def _accepts_position_ids(cls: type) -> bool:
    return "position_ids" in inspect.signature(cls.forward).parameters


def forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> Any:
    """``model(...)`` with padding-aware position ids when the architecture takes them."""
    if _accepts_position_ids(type(hf_model(model))):
        kw["position_ids"] = position_ids_from_mask(attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)


def response_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token logprobs ``[B, R]`` of ``input_ids[:, response_start:]`` (a Rollout's response
    columns), logits divided by the sampling ``temperature``; optionally the entropy ``[B, R]``."""
    logits = forward(model, input_ids, attention_mask).logits  # [B, T, V]
    logits = logits[:, response_start - 1 : -1]  # position t predicts token t+1
    targets = input_ids[:, response_start:]  # [B, R]
    logprobs = token_logprobs(logits, targets, temperature=temperature)
    entropy = entropy_from_logits(logits, temperature=temperature) if with_entropy else None
    return logprobs, entropy


def score_head(model: Any) -> torch.nn.Module:
    """The scalar head of an ``AutoModelForSequenceClassification`` (``score`` or ``classifier``)."""
    m = hf_model(model)
    for name in ("score", "classifier", "v_head"):
        head = getattr(m, name, None)
        if head is not None:
            return head
    raise AttributeError(f"{type(m).__name__} has no scalar head (score/classifier)")


def token_values(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position: ``[B, T]`` (float32).

    Used for reward models (read at the last real token) and critics (one value per token).
    """
    m = hf_model(model)
    backbone = getattr(m, m.base_model_prefix)
    kw = {}
    if _accepts_position_ids(type(backbone)):
        kw["position_ids"] = position_ids_from_mask(attention_mask)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw
    ).last_hidden_state  # [B, T, H]
    # call the head through the (possibly peft-wrapped) outer model so adapters/modules_to_save apply
    head = score_head(model)
    return head(hidden).squeeze(-1).float()
