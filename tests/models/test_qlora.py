"""QLoRA: a 4-bit NF4 base (bitsandbytes) with LoRA adapters — layers, training, gradient
checkpointing, saving to a plain full-precision model, resuming, and the combinations refused.

The tiny base has 3 decoder layers with 7 linear projections each (q, k, v, o, gate, up, down):
21 ``Linear4bit`` layers; the LM head (tied to the embeddings) stays full precision. LoRA on
all-linear adds A and B to each projection: 21 x 2 = 42 trainable tensors.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from simple_rlhf.config import ConfigError, LoraArgs, load_config
from simple_rlhf.infra.checkpoint import load_checkpoint, save_checkpoint, save_hf_model
from simple_rlhf.models.loading import (
    ModelLoadError,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
)
from simple_rlhf.models.lora import _dense_weight, apply_lora, check_qlora

pytest.importorskip("bitsandbytes")

QLORA = LoraArgs(lora_dim=8, lora_alpha=16.0, load_in_4bit=True)
NF4_HALF_GAP = (1.0 - 0.6962) / 2  # widest gap of the NF4 code book is between -1 and -0.6962


def qlora_model(path, tok, seed: int = 0, gradient_checkpointing: bool = False):
    torch.manual_seed(seed)
    model = load_causal_lm(
        str(path), tok, load_in_4bit=True, gradient_checkpointing=gradient_checkpointing
    )
    return apply_lora(model, QLORA)


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def batch(tok):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok) - 1, (4, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def test_linear_layers_are_nf4_and_compute_with_the_dequantised_weight(tiny_base, tok):
    """Every projection is a bitsandbytes ``Linear4bit`` holding packed uint8 NF4 codes; per block
    of 64 weights, deq(W) / s is one of the 16 NF4 codes (s = the block's stored scale, i.e. its
    largest |deq(W)|, within 1% of max|W| after double quantisation), so
    |W - deq(W)| <= (0.3038 / 2 + 0.01) * max|W_block|. The layer computes x @ deq(W)^T exactly,
    in train and in eval mode (no bf16 CPU re-packing, see ``keep_4bit_exact``)."""
    import bitsandbytes as bnb

    model = load_causal_lm(str(tiny_base), tok, load_in_4bit=True)
    full = load_causal_lm(str(tiny_base), tok)
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 21
    assert type(model.lm_head) is torch.nn.Linear
    assert count_parameters(model)[0] == count_parameters(full)[0]  # 4-bit counted unpacked
    layer = model.model.layers[1].mlp.down_proj
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == 384 * 128 // 2
    code = layer.weight.quant_state.code  # the 16 NF4 levels in [-1, 1]
    deq = _dense_weight(layer).reshape(-1, 64)
    w = full.model.layers[1].mlp.down_proj.weight.detach().reshape(-1, 64)
    scale = deq.abs().amax(1, keepdim=True)
    amax = w.abs().amax(1, keepdim=True)
    nearest = (deq / scale).unsqueeze(-1).sub(code).abs().amin(-1)
    assert float(nearest.max()) < 1e-6
    assert float((scale / amax - 1).abs().max()) < 0.01
    assert bool(((w - deq).abs() <= (NF4_HALF_GAP + 0.01) * amax).all())
    x = torch.randn(5, 384, generator=torch.Generator().manual_seed(1))
    dense = x @ deq.reshape(128, 384).T
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), dense, rtol=1e-5, atol=1e-6)
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def test_only_adapters_train_and_a_few_steps_lower_the_loss(tiny_base, tok, batch):
    """42 LoRA tensors train (B starts at 0, so step 0 is the 4-bit base); the packed 4-bit
    weights stay bit-identical; 10 AdamW steps at lr 1e-2 on one batch (seed 0) lower the loss
    by more than 0.5 nat (measured 6.53 -> ~5.0)."""
    model = qlora_model(tiny_base, tok)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 42 and all("lora_" in n for n in trainable)
    packed = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    before = packed.data.clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(10):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[0] - losses[-1] > 0.5
    assert torch.equal(packed.data, before)


def test_without_only_optimize_lora_the_unquantised_weights_train_too(tiny_base, tok):
    """``only_optimize_lora`` off: adapters + embeddings (tied head) + 7 RMSNorms (2 per layer and
    the final one) train, in fp32; the 21 packed uint8 weights stay frozen."""
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_base), tok, load_in_4bit=True)
    model = apply_lora(model, LoraArgs(lora_dim=8, load_in_4bit=True, only_optimize_lora=False))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lora = [n for n in trainable if "lora_" in n]
    rest = sorted(n for n in trainable if "lora_" not in n)
    assert len(lora) == 42 and len(rest) == 1 + 7
    assert any("embed_tokens" in n for n in rest)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert len(frozen) == 21 and all(p.dtype == torch.uint8 for p in frozen)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_base, tok, batch):
    """Same seed -> same adapters; one step's adapter gradients with non-reentrant gradient
    checkpointing equal those without (recomputation is exact); with B set to 0.01 (else only B
    would get gradients) the first layer's A gets its gradient through every 4-bit layer above."""
    grads = []
    for gc in (False, True):
        model = qlora_model(tiny_base, tok, gradient_checkpointing=gc)
        model.train()
        with torch.no_grad():  # B != 0 so that gradients reach A as well
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)
    first = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert float(grads[1][first].abs().max()) > 0


def test_merged_save_is_a_plain_model_with_the_same_logits(tiny_base, tok, batch, tmp_path):
    """The saved folder is ordinary fp32 safetensors (no quantisation config, no Linear4bit), and
    the QLoRA model in memory is left as it was: each
    projection holds deq(W_nf4) + (alpha / r) B A, so reloaded logits equal the in-memory QLoRA
    model's up to float rounding (atol 1e-4 on logits of size ~2; measured ~1e-6). Merging into
    the original fp32 weights instead would be off by the NF4 error (> 0.05 here)."""
    from transformers import AutoModelForCausalLM

    model = qlora_model(tiny_base, tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
        with model.disable_adapter():
            base_4bit = model(input_ids=batch["input_ids"]).logits
    out = save_hf_model(model, tok, tmp_path / "m")
    with torch.no_grad():  # saving left the QLoRA model intact
        torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits, want)
    assert not (out / "adapter_config.json").exists()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    assert {p.dtype for p in again.parameters()} == {torch.float32}
    assert all(type(m).__name__ != "Linear4bit" for m in again.modules())
    with torch.no_grad():
        got = again(input_ids=batch["input_ids"]).logits
        base_fp32 = load_causal_lm(str(tiny_base), tok).eval()(batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert float((want - base_4bit).abs().max()) > 1e-2  # the adapters did change the model
    assert float((base_4bit - base_fp32).abs().max()) > 0.05  # NF4 error, absent from the save


def test_adapter_save_reloads_through_load_causal_lm(tiny_base, tok, batch, tmp_path):
    """``merge_lora=False`` writes the adapter and ``qlora.json``; ``load_causal_lm`` (what chat
    and eval use) rebuilds the 4-bit base, merges and returns a plain model with equal logits."""
    model = qlora_model(tiny_base, tok)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
    out = save_hf_model(model, tok, tmp_path / "a", merge_lora=False)
    assert (out / "adapter_config.json").exists() and (out / "qlora.json").exists()
    again = load_causal_lm(str(out), tok).eval()
    assert all(type(m).__name__ != "Linear4bit" for m in again.modules())
    with torch.no_grad():
        torch.testing.assert_close(again(batch["input_ids"]).logits, want, rtol=0, atol=1e-4)


def test_checkpoint_keeps_adapters_only_and_resumes_exactly(tiny_base, tok, batch, tmp_path):
    """A resumable checkpoint of a 4-bit model holds the 42 trainable tensors (the NF4 base is
    rebuilt deterministically by loading it again); restoring them into a model built with
    another seed gives identical logits."""
    from safetensors.torch import load_file

    a = qlora_model(tiny_base, tok, seed=0)
    with torch.no_grad():
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    path = save_checkpoint(tmp_path, 1, models={"model": a})
    assert len(load_file(str(path / "model.safetensors"))) == 42
    b = qlora_model(tiny_base, tok, seed=1)
    load_checkpoint(path, models={"model": b})
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(batch["input_ids"]).logits, b(batch["input_ids"]).logits)


def test_bad_combinations_are_clear_errors(tiny_base, tok, monkeypatch):
    with pytest.raises(ConfigError, match="needs LoRA"):
        check_qlora(LoraArgs(lora_dim=0, load_in_4bit=True))
    with pytest.raises(ConfigError, match="ZeRO-3"):
        check_qlora(QLORA, zero_stage=3)
    check_qlora(QLORA, zero_stage=2)  # fine
    check_qlora(QLORA, zero_stage=3, zero3_ok=True)  # ZeRO-3 path tested: SFT, RM, DPO, KTO
    with pytest.raises(ConfigError, match="not loaded in 4-bit"):
        apply_lora(load_causal_lm(str(tiny_base), tok), QLORA)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        load_causal_lm(str(tiny_base), tok, load_in_4bit=True)


def test_sft_with_load_in_4bit_saves_a_plain_model(tiny_base, tmp_path):
    """Two QLoRA SFT steps through the trainer: the flag reaches the loader, the saved model is
    plain fp32; --load-in-4bit without --lora-dim is refused before loading."""
    from transformers import AutoModelForCausalLM

    from simple_rlhf.trainers.sft import SFTConfig, run

    quiet = {"report_to": ["none"], "progress_bar": False, "gold_eval_prompts": 0}
    common = {**quiet, "max_eval_samples": 8, "max_steps": 2, "per_device_train_batch_size": 4}
    cfg = {**common, "output_dir": str(tmp_path / "q"), "lora_dim": 4, "load_in_4bit": True}
    summary = run(load_config(SFTConfig, overrides=cfg))
    assert summary["steps"] == 2
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert getattr(saved.config, "quantization_config", None) is None
    with pytest.raises(ConfigError, match="needs LoRA"):
        run(load_config(SFTConfig, overrides={**cfg, "lora_dim": 0}))
