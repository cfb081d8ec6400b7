"""The offline tiny default: a byte-level BPE tokenizer trained here and a small Llama built from a
config. Both are deterministic and cached under ``$SIMPLE_RLHF_HOME/tiny-v1`` after the first build
(about a second), so every command works with no download.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from simple_rlhf.paths import home_dir

TINY_NAME = "tiny"
TINY_VERSION = "tiny-v1"

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]

# Rendered: "<|user|>\n{content}\n<|assistant|>\n{answer}</s>\n". The prompt/response boundary is
# the generation prompt "<|assistant|>\n"; the assistant turn ends with EOS.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + m['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

TINY_MODEL_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def tiny_dir() -> Path:
    return home_dir() / TINY_VERSION


def _atomic_build(target: Path, build) -> Path:
    """Build into a temporary folder beside ``target`` and rename it into place."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists():  # a half-written folder from an interrupted build
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# A tokenizer trained on the user's own data gets a somewhat larger vocabulary (byte-level BPE needs
# about two merges per Chinese character) and spells numbers digit by digit, as the Llama and Qwen
# tokenizers do: with whole numbers as tokens ("41", " 38") a small model cannot learn arithmetic on
# numbers it has not seen (measured on the suite's `add` task: benchmarks/generalization_results.md).
DATA_VOCAB_SIZE = 1024
# The cache folder's prefix, bumped when the data tokenizer's recipe changes.
DATA_TOKENIZER_VERSION = "data2"


def build_tiny_tokenizer(
    out_dir: Path,
    corpus: Sequence[str] | None = None,
    vocab_size: int = 768,
    split_digits: bool = False,
) -> None:
    """Train a byte-level BPE tokenizer on ``corpus`` (default: the tiny task's text) and save it
    as an HF tokenizer with the tiny chat template; ``split_digits``: every digit its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from simple_rlhf.data.tiny_task import tokenizer_corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus() if corpus is None else corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=TINY_MODEL_CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def build_tiny_model(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> None:
    """A randomly initialised small Llama sized to the tiny tokenizer, saved with safetensors."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_MODEL_CONFIG,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_new_tokens=64,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def ensure_tiny(corpus: Sequence[str] | None = None) -> Path:
    """Build (once) and return the folder of the tiny base model (tokenizer saved beside it).

    With ``corpus`` (the texts of the user's data), the tokenizer is trained on that text instead
    of the colour task's (``DATA_VOCAB_SIZE`` tokens, digits split), so a task of one's own is not
    spelt out byte by byte; the folder is ``tiny-v1/data2-<hash of the corpus>``."""
    root = tiny_dir()
    if corpus is not None:
        texts = list(corpus)
        key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        root = root / f"{DATA_TOKENIZER_VERSION}-{key}"
        build = functools.partial(
            build_tiny_tokenizer, corpus=texts, vocab_size=DATA_VOCAB_SIZE, split_digits=True
        )
        tok_dir = _atomic_build(root / "tokenizer", build)
    else:
        tok_dir = _atomic_build(root / "tokenizer", build_tiny_tokenizer)
    return _atomic_build(root / "base", lambda d: build_tiny_model(d, tok_dir))


def resolve(name_or_path: str) -> str:
    """Map the name 'tiny' to the cached folder; anything else is returned unchanged."""
    return str(ensure_tiny()) if name_or_path == TINY_NAME else name_or_path
