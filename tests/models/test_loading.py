"""Model/tokenizer loading: tiny build, pad handling, dropout, save -> reload identical logits."""

from __future__ import annotations

import pytest
import torch

from simple_rlhf.infra.checkpoint import save_hf_model
from simple_rlhf.models.loading import (
    ModelLoadError,
    load_causal_lm,
    load_tokenizer,
    set_dropout,
)


def test_tiny_builds_offline_and_reloads_identically(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = load_tokenizer(str(tiny_base))
    model = load_causal_lm(str(tiny_base), tok).eval()
    ids = torch.tensor([tok("sky is blue.")["input_ids"]])
    out = save_hf_model(model, tok, tmp_path / "m")
    assert (out / "model.safetensors").exists()
    assert (out / "chat_template.jinja").exists() or tok.chat_template
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    tok2 = AutoTokenizer.from_pretrained(out)
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok2.pad_token_id == tok.pad_token_id != tok2.eos_token_id
    assert tok2.chat_template == tok.chat_template


def test_tokenizer_without_pad_gets_distinct_pad_and_model_resized(tiny_base, tmp_path):
    """A GPT-2-like tokenizer (pad == eos, or none) gets its own pad; embeddings grow."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(tiny_base)
    base.pad_token = base.eos_token
    folder = tmp_path / "nopad"
    base.save_pretrained(folder)
    tok = load_tokenizer(str(folder))
    assert tok.pad_token_id != tok.eos_token_id
    model = load_causal_lm(str(tiny_base), tok)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert model.config.pad_token_id == tok.pad_token_id


def test_set_dropout_covers_both_naming_styles():
    from transformers import GPT2Config, OPTConfig

    g = GPT2Config()
    set_dropout(g, 0.0)
    assert g.resid_pdrop == g.embd_pdrop == g.attn_pdrop == 0.0
    o = OPTConfig()
    set_dropout(o, 0.0)
    assert o.dropout == o.attention_dropout == 0.0


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_tokenizer(str(tmp_path / "nope"))


@pytest.mark.parametrize("arch", ["gpt2", "opt", "qwen2"])
def test_other_architectures_from_local_folders(tiny_base, tmp_path, arch):
    """Any HF causal LM loads from a local folder: GPT-2, OPT and Qwen2 configs built here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from simple_rlhf.data.tokenize import encode_prompt

    tok = load_tokenizer(str(tiny_base))
    kw = {
        "gpt2": dict(n_embd=32, n_layer=1, n_head=2, n_positions=128),
        "opt": dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            ffn_dim=64,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
        ),
        "qwen2": dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
        ),
    }[arch]
    cfg = AutoConfig.for_model(arch, vocab_size=len(tok), **kw)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / arch)
    tok.save_pretrained(tmp_path / arch)
    model = load_causal_lm(str(tmp_path / arch), tok, dropout=0.0).eval()
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "hi"}])])
    assert model(ids).logits.shape[-1] >= len(tok)


def test_missing_local_looking_path_fails_at_once(tmp_path, monkeypatch):
    """A path that can only be local (absolute, ./, or under an existing folder) is refused before
    any Hub request, naming the path; the Hub is never asked (its resolver would fail the test)."""
    from simple_rlhf.models import loading

    monkeypatch.setattr(loading, "_hub_reachable", lambda: pytest.fail("asked the Hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for name in (str(tmp_path / "nope"), "./nope", "outputs/ppo", "a/b/c"):
        with pytest.raises(ModelLoadError, match="no such folder") as e:
            load_causal_lm(name)
        assert repr(name) in str(e.value)


def test_hub_name_without_network_fails_at_once(tmp_path, monkeypatch):
    """An ``org/name`` id with no local folder, not cached, and an unreachable Hub: one clear error
    (not a minute of retries); with HF_HUB_OFFLINE=1 the check steps aside for from_pretrained."""
    from simple_rlhf.models import loading

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)
    with pytest.raises(ModelLoadError, match="Hub cannot be reached") as e:
        load_tokenizer("some-org/some-model")
    assert "'some-org/some-model'" in str(e.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loading.check_findable("some-org/some-model")  # left to from_pretrained (and its cache)
    loading.check_findable("tiny")


def test_a_pickled_payload_in_a_bin_file_is_refused_and_named(tmp_path, tiny_base):
    """A model folder whose pytorch_model.bin holds a pickled payload: refused (transformers loads
    .bin files with weights_only), the payload never runs, and the message says why."""
    import os
    import shutil

    import torch
    from safetensors.torch import load_file

    from simple_rlhf.models.loading import ModelLoadError, load_causal_lm, load_tokenizer

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "model"
    shutil.copytree(tiny_base, folder)
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save({**sd, "extra": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="holds Python objects besides tensors"):
        load_causal_lm(str(folder), load_tokenizer(str(folder)))
    assert not marker.exists()
