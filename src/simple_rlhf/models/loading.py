"""Load any HF causal LM (Hub name or local folder, or the built-in 'tiny') and its tokenizer.

Safe by default: ``trust_remote_code`` stays off unless asked, weights are saved as safetensors.
The tokenizer always ends up with a pad token distinct from EOS (one is added, and the embeddings
resized, when the model ships none), so masking by pad id can never hide an EOS from the loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from simple_rlhf.models import tiny

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PAD_TOKEN = "<pad>"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to try."""


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _explain(what: str, name: str, err: Exception) -> ModelLoadError:
    hint = (
        "check the name or path; without network access only local folders (or 'tiny') load"
        if not isinstance(err, ValueError)
        else str(err).splitlines()[0]
    )
    return ModelLoadError(f"could not load {what} from {name!r}: {type(err).__name__}: {hint}")


def load_tokenizer(
    name_or_path: str, *, trust_remote_code: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, with a pad token distinct from EOS."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = tiny.resolve(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - turned into one clear message
        raise _explain("a tokenizer", name_or_path, e) from e
    if tok.eos_token is None:
        raise ModelLoadError(f"tokenizer of {name_or_path!r} has no EOS token; set one first")
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = padding_side
    return tok


def set_dropout(config: Any, p: float) -> None:
    """Set every dropout probability in an HF config (``*dropout*`` and GPT-2's ``*pdrop``)."""
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, p)


def disable_dropout(model: torch.nn.Module) -> None:
    """Turn off every ``nn.Dropout`` in a live model (RL needs deterministic logprobs)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def resize_for_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings when the tokenizer has tokens the model lacks (e.g. an added pad)."""
    n = len(tokenizer)
    weight = model.get_input_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 keeps the full shape aside
    if rows < n:
        model.resize_token_embeddings(n, mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    dtype: str = "float32",
    dropout: float | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """An ``AutoModelForCausalLM`` ready to train: dtype set, dropout as asked, embeddings sized to
    the tokenizer, KV cache off while gradient checkpointing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    path = tiny.resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if dropout is not None:
            set_dropout(config, dropout)
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except Exception as e:  # noqa: BLE001
        raise _explain("a causal LM", name_or_path, e) from e
    if tokenizer is not None:
        resize_for_tokenizer(model, tokenizer)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
