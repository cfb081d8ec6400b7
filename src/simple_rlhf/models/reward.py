"""Reward models, of two kinds (``config.reward_kind``, saved in the folder's ``config.json``):

* ``value``: a backbone plus a scalar head, saved as ``AutoModelForSequenceClassification``
  (``num_labels=1``), scored at the last real token of each sequence (DeepSpeed-Chat's and TRL's RM);
* ``likelihood``: a causal LM scoring a response by its summed log-probability
  ``r(x, y) = sum_t log pi(y_t | x, y_<t)`` (CPO's reference-free implicit reward, Xu et al.
  2024), trained on pairs with CPO's loss. It starts from what the SFT model already knows: on the
  suite's tasks the SFT model's own likelihood orders its sampled answers better than a scalar head
  trained on ~1,000 noisy pairs (benchmarks/generalization_results.md). Saved as a plain causal LM.

``RewardScorer`` is the read-out every later step uses: it tokenizes (prompt, response) pairs the
way the data layer does, reads the score at the last real token (EOS) for any padding side, and
applies the normalisation stored with the model (``reward_stats.json``: mean/std of the RM's scores
on a reference set), optionally clipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from simple_rlhf.losses.reward import last_token_values
from simple_rlhf.models.forward import forward, score_head, token_values
from simple_rlhf.models.loading import (
    ModelLoadError,
    _explain,
    _quiet_transformers,
    bnb_config,
    check_4bit_available,
    keep_4bit_exact,
    load_tokenizer,
    resize_for_tokenizer,
    set_dropout,
    torch_dtype,
)
from simple_rlhf.models.tiny import resolve

STATS_FILE = "reward_stats.json"
REWARD_KINDS = ("likelihood", "value")
KIND_ATTR = "reward_kind"  # the config attribute naming a likelihood RM (absent: value)


def reward_kind(model: Any) -> str:
    """``likelihood`` or ``value`` (the default for any model whose config does not say)."""
    config = getattr(model, "config", None)
    return getattr(config, KIND_ATTR, None) or "value"


def folder_reward_kind(name_or_path: str) -> str:
    """The kind a saved reward-model folder declares in its ``config.json`` (``value`` if none)."""
    p = Path(resolve(name_or_path)) / "config.json"
    if not p.is_file():
        return "value"
    try:
        return json.loads(p.read_text()).get(KIND_ATTR) or "value"
    except (OSError, ValueError):
        return "value"


def likelihood_scores(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probability ``[B]`` (float32) of each row's response tokens
    (``response_mask[b, t] = 1``), the model called itself (a DDP / DeepSpeed wrapper runs its own
    forward)."""
    from simple_rlhf.models.logprobs import causal_lm_logprobs

    logits = forward(model, input_ids, attention_mask).logits
    lp = causal_lm_logprobs(logits, input_ids)  # [B, T - 1]
    return (lp * response_mask[:, 1:].to(lp.dtype)).sum(-1)


def load_reward_model(
    name_or_path: str,
    tokenizer: Any | None = None,
    *,
    dtype: str = "float32",
    dropout: float | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    load_in_4bit: bool = False,
    head_seed: int | None = None,
) -> Any:
    """A sequence classifier with one output, from a causal LM (new head) or a saved RM.

    A new head (the checkpoint has none) is drawn from ``N(0, initializer_range²)`` with a
    generator seeded by ``head_seed`` (when given) instead of the global RNG: the same head
    however the model is loaded (ZeRO-3 builds it partitioned and draws other random numbers).

    ``load_in_4bit`` (QLoRA): the backbone's linear layers become frozen 4-bit NF4 weights
    (:func:`~simple_rlhf.models.loading.bnb_config`); the scalar head ``score`` stays in ``dtype``
    and trainable (it is kept out of the quantisation). Train it through LoRA only.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _quiet_transformers()
    path = resolve(name_or_path)
    extra: dict[str, Any] = {}
    if load_in_4bit:
        check_4bit_available()
        quant = bnb_config(dtype)
        quant.llm_int8_skip_modules = ["score", "classifier"]  # the head stays full precision
        extra["quantization_config"] = quant
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        config.num_labels = 1
        if dropout is not None:
            set_dropout(config, dropout)
        if tokenizer is not None:
            config.pad_token_id = tokenizer.pad_token_id
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            dtype=torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **extra,
        )
    except Exception as e:  # noqa: BLE001
        raise _explain("a reward model", name_or_path, e) from e
    if load_in_4bit:
        keep_4bit_exact(model)  # the same dequantise-then-matmul path in training and scoring
    if tokenizer is not None:
        resize_for_tokenizer(model, tokenizer)
    head = score_head(model)
    new_head = any(k.startswith(n) for k in info["missing_keys"] for n in ("score.", "classifier."))
    if head_seed is not None and new_head:
        init_head(head, std=getattr(model.config, "initializer_range", 0.02), seed=head_seed)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


@torch.no_grad()
def init_head(head: torch.nn.Module, std: float, seed: int) -> None:
    """``weight ~ N(0, std²)`` from ``torch.Generator().manual_seed(seed)`` (float32 draw), bias 0;
    under ZeRO-3 the full weight is set on rank 0 and re-partitioned (every rank draws alike)."""
    import contextlib

    params = [p for p in (head.weight, getattr(head, "bias", None)) if p is not None]
    ctx: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with ctx:
        w = head.weight
        gen = torch.Generator().manual_seed(seed)
        w.copy_((torch.randn(tuple(w.shape), generator=gen) * std).to(w.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


def sequence_scores(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw scores ``[B]``: a value RM's head at each row's last real token (left or right
    padding), or a likelihood RM's summed log-probability of the ``response_mask`` tokens."""
    if reward_kind(model) == "likelihood":
        if response_mask is None:
            raise ValueError("a likelihood reward model needs the response tokens' mask")
        return likelihood_scores(model, input_ids, attention_mask, response_mask)
    return last_token_values(token_values(model, input_ids, attention_mask), attention_mask)


def head_values(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position ``[B, T]`` (float32), computed by calling ``model``
    itself (with padding-aware position ids), so a DDP / DeepSpeed wrapper runs its own forward
    (DDP only synchronises the gradients of forwards it ran). The head's per-token output is
    captured with a forward hook; the pooled ``logits`` HF returns are not used. Same values as
    :func:`~simple_rlhf.models.forward.token_values` on an unwrapped model (tested)."""
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        forward(model, input_ids, attention_mask)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the scalar head ran {len(captured)} times in one forward")
    return captured[0].squeeze(-1).float()


def read_stats(path: str | Path) -> dict[str, float] | None:
    p = Path(path) / STATS_FILE
    return json.loads(p.read_text()) if p.is_file() else None


class RewardScorer:
    """Scores responses with a reward model: raw -> ``(raw - mean) / std`` -> clipped."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        stats: dict[str, float] | None = None,
        normalize: bool = True,
        clip: float | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stats = stats
        self.normalize = normalize and stats is not None
        self.clip = clip
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        path: str,
        *,
        trust_remote_code: bool = False,
        normalize: bool = True,
        clip: float | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> RewardScorer:
        if not Path(resolve(path)).exists():
            raise ModelLoadError(f"reward model folder not found: {path}")
        tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
        if folder_reward_kind(path) == "likelihood":
            from simple_rlhf.models.loading import load_causal_lm

            model = load_causal_lm(
                path, tok, dtype=dtype, dropout=0.0, trust_remote_code=trust_remote_code
            )
        else:
            model = load_reward_model(
                path, tok, dtype=dtype, dropout=0.0, trust_remote_code=trust_remote_code
            )
        return cls(
            model,
            tok,
            stats=read_stats(path),
            normalize=normalize,
            clip=clip,
            batch_size=batch_size,
        )

    def post_process(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalise with the stored mean/std (if on) and clip to ``[-clip, clip]`` (if set)."""
        out = raw.float()
        if self.normalize:
            out = (out - self.stats["mean"]) / max(self.stats["std"], 1e-6)
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out

    @torch.no_grad()
    def raw_score_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw scores ``[B]`` (float32, on the model's device) of tokenized sequences, in batches
        (``response_mask``: the response tokens, which a likelihood RM needs)."""
        device = next(self.model.parameters()).device
        outs = []
        for s in range(0, input_ids.shape[0], self.batch_size):
            ids = input_ids[s : s + self.batch_size].to(device)
            mask = attention_mask[s : s + self.batch_size].to(device)
            resp = None if response_mask is None else response_mask[s : s + self.batch_size]
            outs.append(sequence_scores(self.model, ids, mask, resp).float())
        return torch.cat(outs) if outs else torch.zeros(0)

    def score_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Post-processed scores ``[B]`` of already tokenized sequences (RM's own tokenizer)."""
        return self.post_process(self.raw_score_ids(input_ids, attention_mask, response_mask))

    def encode(
        self, prompts: Sequence[Any], responses: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenize (prompt, response text) pairs as the data layer does; right-padded.
        Returns ``input_ids``, ``attention_mask`` and the response tokens' mask."""
        from simple_rlhf.data.tokenize import encode_prompt, encode_response, pad

        seqs, resp_masks = [], []
        for p, r in zip(prompts, responses, strict=True):
            resp = [{"role": "assistant", "content": r}] if isinstance(p, list) else r
            head = encode_prompt(self.tokenizer, p)
            body = encode_response(self.tokenizer, p, resp)
            seqs.append(head + body)
            resp_masks.append([0] * len(head) + [1] * len(body))
        ids = pad(seqs, self.tokenizer.pad_token_id)
        mask = pad([[1] * len(s) for s in seqs], 0)
        return ids, mask, pad(resp_masks, 0)

    def score(self, prompts: Sequence[Any], responses: Sequence[str], **_: Any) -> list[float]:
        """Reward-source form: ``(prompts, responses, **fields) -> scores``."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        ids, mask, resp = self.encode(prompts, responses)
        return self.score_ids(ids, mask, resp).tolist()

    __call__ = score
