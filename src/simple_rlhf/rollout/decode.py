"""The fast generation backend: a lean decode loop on the model's own forward.

HF ``generate`` is general (beam search, streamers, dozens of logits processors, stopping
criteria) and, for the small models and short answers of RL rollouts, its per-token overhead is
most of the cost: the default KV cache grows by ``torch.cat`` every step (all keys and values
copied again), and rows that already ended keep being computed until the last row ends. This loop
does what rollouts need and nothing else:

* **a preallocated KV cache** (:class:`PreallocatedLayer`): room for the prompt plus
  ``max_new_tokens`` is reserved once and each step writes its keys/values in place;
* **finished rows leave the batch**: once a quarter of the rows have emitted EOS their cache rows
  are dropped, so the remaining steps compute (nearly) only the rows still generating;
* **the same next-token distribution as HF**: the logits go through transformers' own
  temperature / top-k / top-p warpers, in HF's order, then the sampling method of
  ``torch.multinomial`` (``argmax(p / q)``, ``q ~ Exp(1)``) with the random draws of the whole
  batch, as HF spends them (greedy: ``argmax``); positions come from the attention mask as in
  HF's ``prepare_inputs_for_generation``. Greedy and seeded sampled outputs are identical to HF
  ``generate`` on CPU (tested on five architectures, rows ending at different steps).

Models this loop cannot serve exactly fall back to HF ``generate`` (:func:`fast_path_supported`):
sliding-window or non-attention cache layers, encoder-decoders, a streamer, and ZeRO-3 across
several processes (there every rank must keep stepping until all are done: ``synced_gpus``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from simple_rlhf.infra.guard import check_finite_logits

# Ended rows are dropped from the batch once they are at least 1/COMPACT_EVERY of it: each drop
# copies the whole KV cache, so dropping every single row as it ends costs more than it saves.
COMPACT_EVERY = 4


def _dynamic_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class PreallocatedLayer(_dynamic_layer_class()):  # type: ignore[misc]
    """One attention layer's KV cache with buffers for ``capacity`` positions, written in place.

    ``keys``/``values`` are views of the filled part, so everything transformers reads from a
    dynamic layer (sequence length, mask sizes) stays correct."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, dk = key_states.shape
        self.device = key_states.device
        self.key_buffer = key_states.new_empty((b, h, self.capacity, dk))
        self.value_buffer = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions, room for {self.capacity}")
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self.keys = self.key_buffer[:, :, : self.length]
            self.values = self.value_buffer[:, :, : self.length]


def _num_attention_layers(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)


def fast_path_supported(model: Any, streamer: Any = None) -> str | None:
    """``None`` when the fast loop serves ``model`` exactly, else the reason it does not."""
    from transformers.cache_utils import DynamicCache

    config = getattr(model, "config", None)
    if streamer is not None:
        return "a streamer is attached"
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only model"
    if _num_attention_layers(config) is None:
        return "the config names no layer count"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as exc:  # an architecture transformers builds its cache differently for
        return f"its cache cannot be built from the config ({exc})"
    if any(type(layer) is not _dynamic_layer_class() for layer in layers):
        return "it has sliding-window or non-attention cache layers"
    if _zero3_across_ranks():
        return "ZeRO-3 across processes needs HF generate's synced_gpus"
    return None


def _zero3_across_ranks() -> bool:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def _forward_params(model: Any) -> set[str]:
    """The named arguments of the underlying model's ``forward`` (a PEFT wrapper passes its
    ``**kwargs`` through to it)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def sampling_processors(temperature: float, top_k: int, top_p: float) -> Any:
    """transformers' own warpers, in the order ``generate`` applies them (temperature, top-k,
    top-p), so the sampled distribution is HF's."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return procs


@torch.no_grad()
def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Response tokens ``[B, T]`` for left-padded prompts ``input_ids`` ``[B, P]`` (``T`` = steps
    until every row ended or ``max_new_tokens``; ``pad_id`` after a row's EOS), as HF
    ``generate`` returns them after the prompt. ``temperature == 0`` means greedy."""
    from transformers.cache_utils import Cache

    n_layers = _num_attention_layers(model.config)
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    cache = Cache(layers=[PreallocatedLayer(prompt_len + max_new_tokens) for _ in range(n_layers)])
    greedy = temperature == 0
    procs = None if greedy else sampling_processors(temperature, top_k, top_p)
    params = _forward_params(model)
    with_positions = "position_ids" in params  # else the model derives them from the mask
    eos = torch.tensor(list(eos_ids), device=device, dtype=torch.long)

    mask = attention_mask
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as HF computes them
    # transformers 5 names the cache argument ``cache`` (``past_key_values`` before)
    cache_arg = "cache" if "cache" in params else "past_key_values"
    kwargs: dict[str, Any] = {cache_arg: cache, "use_cache": True}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        **({"position_ids": positions} if with_positions else {}),
        **kwargs,
    )
    kwargs.pop("logits_to_keep", None)
    next_pos = positions[:, -1:] + 1
    rows = torch.arange(batch, device=device)  # original row of each row still in the batch
    ended = torch.zeros(batch, dtype=torch.bool, device=device)  # per row in the batch
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    steps = 0
    for t in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        check_finite_logits(logits, "generation")
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:  # torch.multinomial's own method (argmax of p / q, q ~ Exp(1)), with the draws
            # of every original row, so the rows still generating get the same draws as in HF
            # generate, where ended rows keep drawing until the last row ends
            probs = torch.softmax(procs(None, logits), dim=-1)
            q = torch.empty((batch, probs.shape[-1]), dtype=probs.dtype, device=device)
            nxt = (probs / q.exponential_(1)[rows]).argmax(dim=-1)
        nxt = nxt.masked_fill(ended, pad_id)  # as HF: rows that ended get pad
        tokens[rows, t] = nxt
        steps = t + 1
        ended = ended | torch.isin(nxt, eos)
        n_ended = int(ended.sum())
        if t + 1 == max_new_tokens or n_ended == len(rows):
            break
        if n_ended * COMPACT_EVERY >= len(rows):  # ended rows leave the batch and the KV cache
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, nxt, mask, next_pos = rows[keep], nxt[keep], mask[keep], next_pos[keep]
            ended = ended[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            **({"position_ids": next_pos} if with_positions else {}),
            **kwargs,
        )
        next_pos = next_pos + 1
    return tokens[:, :steps]
