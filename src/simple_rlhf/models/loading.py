"""Load any HF causal LM (Hub name or local folder, or the built-in 'tiny') and its tokenizer.

Safe by default: ``trust_remote_code`` stays off unless asked, weights are saved as safetensors.
The tokenizer always ends up with a pad token distinct from EOS (one is added, and the embeddings
resized, when the model ships none), so masking by pad id can never hide an EOS from the loss.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
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
    import pickle

    if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
        hint = (
            "its weights file (a pickle, e.g. pytorch_model.bin) holds Python objects besides "
            "tensors, which loading would run, so it was refused; use a copy saved as "
            "safetensors (save_pretrained(..., safe_serialization=True) where you trust it)"
        )
    elif isinstance(err, ValueError):
        hint = str(err).splitlines()[0]
    else:
        hint = "check the name or path; without network access only local folders (or 'tiny') load"
    return ModelLoadError(f"could not load {what} from {name!r}: {type(err).__name__}: {hint}")


def _looks_local(name: str) -> bool:
    """A name that can only mean a folder here: absolute, ``./``, ``../``, ``~``, more than one
    ``/``, or ``a/b`` where ``a`` is an existing folder (Hub ids are ``org/name``)."""
    parts = name.split("/")
    return (
        Path(name).is_absolute()
        or name.startswith((".", "~"))
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )


def _hub_reachable(host: str = "huggingface.co") -> bool:
    """Whether the Hub's host name resolves (a missing network fails here at once, where the Hub
    client would retry for about a minute)."""
    import socket

    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hub cache holds this repository's ``config.json``."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def check_findable(name_or_path: str) -> None:
    """Fail at once, naming the path, when ``name_or_path`` is not a local folder and cannot be a
    Hub download: it looks like a local path, or the Hub is unreachable and the repository is not
    in the local Hub cache (offline mode and cached repositories are left to ``from_pretrained``).
    """
    import os

    if name_or_path == tiny.TINY_NAME or Path(name_or_path).expanduser().is_dir():
        return
    if _looks_local(name_or_path):
        raise ModelLoadError(
            f"{name_or_path!r}: no such folder (a local path; from {os.getcwd()!r}): check the "
            "path, or train the model there first"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and not _in_hub_cache(name_or_path) and not _hub_reachable():
        raise ModelLoadError(
            f"{name_or_path!r}: not a local folder, and the Hugging Face Hub cannot be reached "
            "(no network): give a local folder (or 'tiny'), or set HF_HUB_OFFLINE=1 to use the "
            "local Hub cache"
        )


def load_tokenizer(
    name_or_path: str, *, trust_remote_code: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, with a pad token distinct from EOS."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    check_findable(name_or_path)
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


def check_4bit_available() -> None:
    """Raise ModelLoadError unless bitsandbytes (needed for 4-bit NF4 weights) imports."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError or a broken native library
        raise ModelLoadError(
            f"load_in_4bit (QLoRA) needs bitsandbytes, which failed to import ({e}); "
            "install it with `pip install bitsandbytes` or drop --load-in-4bit"
        ) from e


def bnb_config(dtype: str = "float32") -> Any:
    """The QLoRA quantisation: 4-bit NF4 weights, double-quantised absmax, compute in ``dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )


def is_quantized(model: Any) -> bool:
    """Whether a (possibly peft-wrapped) model holds bitsandbytes 4/8-bit weights."""
    base = model
    for _ in range(3):  # PeftModel -> LoraModel -> the HF model
        if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
            return True
        if getattr(base, "hf_quantizer", None) is not None:
            return True
        base = getattr(base, "base_model", None) or getattr(base, "model", None)
        if base is None:
            break
    return False


def keep_4bit_exact(model: Any) -> None:
    """Make every bitsandbytes 4-bit layer compute ``x @ deq(W)^T`` in its compute dtype, always.

    TRAP (bitsandbytes 0.50, CPUs with AVX512-BF16): the first forward in eval mode without
    gradients re-packs a ``Linear4bit`` weight in place into a CPU layout with bf16 block scales
    and from then on multiplies in bf16 through a kernel without autograd (also in train mode).
    Evaluation would then disagree with training, the scales lose precision for good and
    gradients stop flowing through the base layers. Turning the re-packing off keeps the
    standard dequantise-then-matmul path everywhere.
    """
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    dtype: str = "float32",
    dropout: float | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    load_in_4bit: bool = False,
) -> PreTrainedModel:
    """An ``AutoModelForCausalLM`` ready to train: dtype set, dropout as asked, embeddings sized to
    the tokenizer, KV cache off while gradient checkpointing.

    ``load_in_4bit`` (QLoRA) loads every linear layer except the LM head as a frozen bitsandbytes
    ``Linear4bit`` (NF4, double quantisation, matmuls computed in ``dtype``); embeddings, norms and
    the head stay in ``dtype``. Such a model only trains through LoRA adapters (``apply_lora``);
    see :func:`bnb_config` and :func:`check_4bit_available`.

    A folder holding only a LoRA adapter (``adapter_config.json``, saved with ``merge_lora`` off)
    loads as its base with the adapter merged in (a QLoRA adapter: into the dequantised 4-bit base
    it was trained on, named in ``qlora.json``), i.e. the model that was trained.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    check_findable(name_or_path)
    path = tiny.resolve(name_or_path)
    if is_adapter_folder(path):
        return _load_adapter_folder(
            Path(path),
            tokenizer,
            dtype=dtype,
            dropout=dropout,
            trust_remote_code=trust_remote_code,
            gradient_checkpointing=gradient_checkpointing,
            load_in_4bit=load_in_4bit,
        )
    extra: dict[str, Any] = {}
    if load_in_4bit:
        check_4bit_available()
        extra["quantization_config"] = bnb_config(dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if dropout is not None:
            set_dropout(config, dropout)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            **extra,
        )
    except Exception as e:  # noqa: BLE001
        raise _explain("a causal LM", name_or_path, e) from e
    if load_in_4bit:
        keep_4bit_exact(model)
    if tokenizer is not None:
        resize_for_tokenizer(model, tokenizer)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def is_adapter_folder(path: str | Path) -> bool:
    """A local folder with a peft adapter and no full model weights."""
    p = Path(path)
    return (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def _load_adapter_folder(
    path: Path,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    dtype: str,
    dropout: float | None,
    trust_remote_code: bool,
    gradient_checkpointing: bool,
    load_in_4bit: bool,
) -> PreTrainedModel:
    """Base + adapter of ``path`` merged into a plain model (see :func:`load_causal_lm`)."""
    from peft import PeftModel

    from simple_rlhf.models.lora import dequantized_merged

    qlora_file = path / "qlora.json"
    qlora = json.loads(qlora_file.read_text()) if qlora_file.is_file() else {}
    adapter = json.loads((path / "adapter_config.json").read_text())
    base_name = qlora.get("base_model_name_or_path") or adapter.get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(f"adapter folder {str(path)!r} names no base model")
    base = load_causal_lm(
        base_name,
        tokenizer,
        dtype=dtype,
        dropout=dropout,
        trust_remote_code=trust_remote_code,
        load_in_4bit=bool(qlora.get("load_in_4bit")),
    )
    try:
        peft_model = PeftModel.from_pretrained(base, str(path))
    except Exception as e:  # noqa: BLE001
        raise _explain("a LoRA adapter", str(path), e) from e
    merged = dequantized_merged(peft_model, torch_dtype(dtype))
    del peft_model, base
    with tempfile.TemporaryDirectory(prefix="merged-adapter-") as tmp:  # loaded as asked
        merged.save_pretrained(tmp, safe_serialization=True)
        del merged
        return load_causal_lm(
            tmp,
            tokenizer,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            gradient_checkpointing=gradient_checkpointing,
            load_in_4bit=load_in_4bit,
        )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); a 4-bit weight counts its unpacked size (its
    uint8 storage holds two NF4 codes per element)."""
    total = sum(parameter_count(p) for p in model.parameters())
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    return total, trainable


def parameter_count(p: torch.Tensor) -> int:
    """Elements of a parameter, unpacked for bitsandbytes 4-bit weights (``quant_state.shape``)."""
    state = getattr(p, "quant_state", None)
    if type(p).__name__ == "Params4bit" and state is not None:
        return int(state.shape.numel())
    return int(getattr(p, "ds_numel", p.numel()))
