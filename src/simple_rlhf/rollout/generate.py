"""The one generation engine: prompts (token ids) in, a :class:`Rollout` out.

Knows nothing about trainers. Used by PPO, GRPO/RLOO/REINFORCE++, GKD's on-policy batches,
rejection sampling, evaluation and chat. Two backends behind one interface (``--generation-backend``):
``fast`` (default), the lean decode loop of :mod:`simple_rlhf.rollout.decode`, and ``hf``,
transformers' ``generate`` (used anyway where the fast loop does not apply: a streamer, sliding-window
models, ZeRO-3 across processes). Both:

* prompts are left-padded so every row's last prompt token sits in the same column;
* sampling settings (temperature, top-p, top-k, max new tokens) come from :class:`SamplingArgs`;
  ``temperature == 0`` means greedy;
* responses are cut after the first EOS: everything after it is pad and masked out, and
  ``has_eos`` tells which responses ended properly (the rest hit ``max_new_tokens``);
* the model is put in eval mode (no dropout) for generation and returned to its previous mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from simple_rlhf.config import ConfigError, fld
from simple_rlhf.infra.guard import check_finite_logits
from simple_rlhf.rollout.decode import decode, fast_path_supported

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


GENERATION_BACKENDS = ("fast", "hf")


@dataclasses.dataclass(frozen=True)
class SamplingArgs:
    """How responses are sampled."""

    max_new_tokens: int = fld(48, "maximum tokens generated per response")
    temperature: float = fld(1.0, "sampling temperature; 0 = greedy decoding")
    top_p: float = fld(1.0, "nucleus sampling: keep the smallest token set with this mass")
    top_k: int = fld(0, "keep only the k most likely tokens (0: off)")
    generation_batch_size: int = fld(64, "prompts per generate() call")
    generation_backend: str = fld(
        "fast",
        "'fast': the lean decode loop of rollout/decode.py (preallocated KV cache, finished rows "
        "leave the batch; greedy identical to HF generate); 'hf': transformers' generate",
    )

    def __post_init__(self) -> None:
        if self.generation_backend not in GENERATION_BACKENDS:
            raise ConfigError(
                f"generation_backend: {self.generation_backend!r} is not one of "
                f"{', '.join(GENERATION_BACKENDS)}"
            )
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens: must be >= 1")
        if self.temperature < 0:
            raise ConfigError("temperature: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p: must be in (0, 1]")


@dataclasses.dataclass
class Rollout:
    """A batch of prompts and sampled responses (all tensors on the same device)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded with pad_id
    prompt_mask: torch.Tensor  # [B, P] 1 on real prompt tokens
    response_ids: torch.Tensor  # [B, R] right-padded; pad after the first EOS
    response_mask: torch.Tensor  # [B, R] 1 on response tokens up to and including the first EOS
    has_eos: torch.Tensor  # [B] bool: the response ended with EOS (not truncated)

    @property
    def input_ids(self) -> torch.Tensor:  # [B, P+R]
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # [B, P+R]
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:  # [B]
        return self.response_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def index(self, idx: torch.Tensor | Sequence[int]) -> Rollout:
        """The rows ``idx`` as a new Rollout."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Rollout(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout(
            **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P]`` ids and mask, left-padded."""
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, n - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, n - len(p) :] = 1
    return ids, mask


def truncate_after_eos(
    response_ids: torch.Tensor, eos_ids: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask and pad everything after the first EOS of each row.

    Returns ``(response_ids, response_mask, has_eos)`` with shapes ``[B, R]``, ``[B, R]``, ``[B]``.
    """
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response_ids == e
    has_eos = is_eos.any(dim=1)
    # position of the first EOS (R when there is none)
    R = response_ids.shape[1]
    cols = torch.arange(R, device=response_ids.device).expand_as(response_ids)
    first = torch.where(is_eos, cols, torch.full_like(cols, R)).min(dim=1).values  # [B]
    mask = (cols <= first.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask, has_eos


def eos_token_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS ids: the tokenizer's plus any the model's generation config lists (end of turn)."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    return sorted(i for i in ids if i is not None)


# Every other option of HF ``generate`` that changes the next-token distribution, set to its
# neutral value. transformers fills options left unset from the model's own generation_config.json
# (many Hub models ship e.g. ``repetition_penalty`` or ``min_new_tokens``), which would silently make
# the sampled distribution differ from ``softmax(logits / temperature)`` that RL recomputes.
NEUTRAL_GENERATION: dict[str, Any] = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": None,
    "top_h": None,
    "guidance_scale": None,
    "sequence_bias": None,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "stop_strings": None,
    "max_time": None,
}


class _FiniteLogits:
    """A logits processor that only checks: NaN / +inf next-token scores (a diverged policy) stop
    generation with :class:`~simple_rlhf.infra.guard.NonFiniteError` instead of an obscure error
    from ``torch.multinomial`` (``-inf`` is a legitimate mask and passes)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        check_finite_logits(scores, "generation")
        return scores


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingArgs,
    *,
    seed: int | None = None,
    streamer: Any = None,
) -> Rollout:
    """Sample one response per prompt (repeat prompts for several). Deterministic given ``seed``."""
    from transformers import LogitsProcessorList

    if len(prompts) == 0:
        raise ValueError("generate() needs at least one prompt")
    pad_id = tokenizer.pad_token_id
    eos = eos_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    greedy = sampling.temperature == 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": not greedy,
        "pad_token_id": pad_id,
        "eos_token_id": eos,
        "use_cache": True,
        "logits_processor": LogitsProcessorList([_FiniteLogits()]),
    }
    if not greedy:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    kwargs.update(NEUTRAL_GENERATION)
    fast = sampling.generation_backend == "fast" and fast_path_supported(model, streamer) is None
    parts: list[Rollout] = []
    try:
        bs = sampling.generation_batch_size
        for start in range(0, len(prompts), bs):
            chunk = prompts[start : start + bs]
            ids, mask = left_pad(chunk, pad_id)
            ids, mask = ids.to(device), mask.to(device)
            if fast:
                resp = decode(
                    model, ids, mask, max_new_tokens=sampling.max_new_tokens, eos_ids=eos,
                    pad_id=pad_id, temperature=sampling.temperature, top_k=sampling.top_k,
                    top_p=sampling.top_p,
                )  # fmt: skip
            else:
                out = model.generate(
                    input_ids=ids, attention_mask=mask, streamer=streamer, **kwargs
                )
                resp = out[:, ids.shape[1] :]
            if resp.shape[1] == 0:  # nothing generated (max_new_tokens reached instantly)
                resp = torch.full((len(chunk), 1), pad_id, dtype=torch.long, device=device)
            resp, rmask, has_eos = truncate_after_eos(resp, eos, pad_id)
            parts.append(Rollout(ids, mask, resp, rmask, has_eos))
    finally:
        model.train(was_training)
    return concat_rollouts(parts, pad_id)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts with different prompt/response widths (prompts re-left-padded)."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    R = max(p.response_ids.shape[1] for p in parts)

    def lpad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def rpad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([lpad(p.prompt_ids, P, pad_id) for p in parts]),
        prompt_mask=torch.cat([lpad(p.prompt_mask, P, 0) for p in parts]),
        response_ids=torch.cat([rpad(p.response_ids, R, pad_id) for p in parts]),
        response_mask=torch.cat([rpad(p.response_mask, R, 0) for p in parts]),
        has_eos=torch.cat([p.has_eos for p in parts]),
    )


def decode_responses(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Response texts without special tokens (EOS and padding removed)."""
    out = []
    for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True):
        out.append(tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True).strip())
    return out
