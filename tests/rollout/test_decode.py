"""The fast generation backend (rollout/decode.py) against HF ``generate``: greedy and seeded
sampled answers identical, also while rows end at different steps (they leave the batch and the
KV cache), on five architectures built from tiny configs; the cases it leaves to HF
``generate``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout.decode import PreallocatedLayer, decode, fast_path_supported
from simple_rlhf.rollout.generate import SamplingArgs, generate

TEXTS = [
    "What color is each of these: sky?",
    "apple",
    "说出这些东西的颜色：苹果、天空。",
    "grass, snow and a lemon",
    "a",
    "Name the colour of coal.",
    "天空",
    "What is red?",
]

ARCHS = {
    "llama": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64,
    ),
    "qwen2": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64,
    ),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=128),
    "opt": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32, max_position_embeddings=128,
    ),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=2),
}  # fmt: skip


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def tiny(tiny_base, tok):
    return load_causal_lm(str(tiny_base), tok).eval()


def arch_model(arch: str, tok, init: float = 0.02) -> torch.nn.Module:
    """A random model; large ``init`` weights give peaked, varied greedy answers, the default
    near-uniform next-token distributions (EOS is rarely sampled)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id, initializer_range=init,
        **ARCHS[arch],
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg).eval()


def prompt_ids(tok) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def both(model, tok, sampling: SamplingArgs, seed: int = 0):
    fast = generate(model, tok, prompt_ids(tok), sampling, seed=seed)
    hf = generate(
        model, tok, prompt_ids(tok), dataclasses.replace(sampling, generation_backend="hf"),
        seed=seed,
    )  # fmt: skip
    return fast, hf


def varied_stops(free: torch.Tensor) -> list[int]:
    """One or two tokens of the free answers that, as extra EOS ids, end the rows at the most
    different steps (so the fast loop drops rows from its batch at several steps)."""
    cands = sorted({int(t) for t in free[:, 1:].flatten()})

    def lengths(stops: set[int]) -> set[int]:
        out = set()
        for row in free.tolist():
            hits = [i for i, t in enumerate(row) if t in stops]
            out.add(hits[0] + 1 if hits else len(row))
        return out

    options = [{a} for a in cands] + [{a, b} for a in cands for b in cands if a < b]
    return sorted(max(options, key=lambda s: (len(lengths(s)), -len(s))))


def with_extra_eos(model, tok, stops: list[int]):
    """Make ``stops`` end a response too (through the model's generation config, as a chat
    model's end-of-turn token would)."""
    model.generation_config.eos_token_id = [tok.eos_token_id, *stops]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_greedy_identical_to_hf_while_rows_end_at_different_steps(arch, tok):
    model = arch_model(arch, tok, init=0.5)
    assert fast_path_supported(model) is None
    greedy = SamplingArgs(max_new_tokens=12, temperature=0.0)
    free, _ = both(model, tok, greedy)
    with_extra_eos(model, tok, varied_stops(free.response_ids))
    fast, hf = both(model, tok, greedy)
    lengths = hf.response_lengths.tolist()
    assert len(set(lengths)) >= 3 and min(lengths) < 12, lengths  # rows did end at different steps
    assert torch.equal(fast.response_ids, hf.response_ids)
    assert torch.equal(fast.response_mask, hf.response_mask)
    assert torch.equal(fast.has_eos, hf.has_eos)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize(
    "knobs", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)]
)
def test_sampling_identical_to_hf_while_no_row_ends(arch, knobs, tok):
    model = arch_model(arch, tok)
    sampled = SamplingArgs(max_new_tokens=5, **knobs)
    fast, hf = both(model, tok, sampled, seed=11)
    assert not hf.has_eos.any()  # the random model emits no EOS in 5 tokens at this seed
    assert torch.equal(fast.response_ids, hf.response_ids)
    again, _ = both(model, tok, sampled, seed=12)
    assert not torch.equal(again.response_ids, fast.response_ids)  # the seed is used


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_sampling_identical_to_hf_while_rows_end_at_different_steps(arch, tok):
    """The rows still generating get the same random draws as in HF generate (where ended rows
    keep drawing), so seeded sampled answers stay identical after rows leave the batch."""
    model = arch_model(arch, tok, init=0.5)
    sampled = SamplingArgs(max_new_tokens=12, temperature=1.0, top_k=50)
    free, _ = both(model, tok, sampled, seed=4)
    with_extra_eos(model, tok, varied_stops(free.response_ids))
    fast, hf = both(model, tok, sampled, seed=4)
    lengths = hf.response_lengths.tolist()
    assert len(set(lengths)) >= 3 and min(lengths) < 12, lengths
    assert torch.equal(fast.response_ids, hf.response_ids)
    assert torch.equal(fast.has_eos, hf.has_eos)


def test_decode_matches_a_manual_full_forward(tiny, tok):
    """The cached loop's greedy tokens equal argmax of a full forward over the growing text."""
    ids = torch.tensor([prompt_ids(tok)[0]])
    out = decode(
        tiny, ids, torch.ones_like(ids), max_new_tokens=6, eos_ids=[], pad_id=tok.pad_token_id,
        temperature=0.0,
    )  # fmt: skip
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, tiny(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == seq[:, ids.shape[1] :].tolist()


def test_preallocated_layer_writes_in_place_and_selects_rows():
    layer = PreallocatedLayer(capacity=5)
    k = torch.arange(3 * 1 * 2 * 2, dtype=torch.float).view(3, 1, 2, 2)
    keys, values = layer.update(k, -k)
    assert keys.shape == (3, 1, 2, 2) and layer.get_seq_length() == 2
    step = torch.full((3, 1, 1, 2), 7.0)
    keys, _ = layer.update(step, step)
    assert keys.shape == (3, 1, 3, 2) and torch.equal(keys[:, :, 2], step[:, :, 0])
    assert torch.equal(keys[:, :, :2], k)
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, torch.cat([k, step], dim=2)[[2, 0]])
    assert torch.equal(layer.values[:, :, :2], -k[[2, 0]])
    layer.update(step[:2], step[:2])
    layer.update(step[:2], step[:2])
    with pytest.raises(RuntimeError, match="KV cache full"):
        layer.update(step[:2], step[:2])


def test_cases_left_to_hf_generate(tiny, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    assert fast_path_supported(tiny, streamer=object()) == "a streamer is attached"
    cfg = AutoConfig.for_model(
        "qwen2", vocab_size=len(tok), use_sliding_window=True, sliding_window=4, max_window_layers=0,
        **ARCHS["qwen2"],
    )  # fmt: skip
    sliding = AutoModelForCausalLM.from_config(cfg).eval()
    assert "sliding" in (fast_path_supported(sliding) or "")
    fast, hf = both(sliding, tok, SamplingArgs(max_new_tokens=8, temperature=0.0))
    assert torch.equal(fast.response_ids, hf.response_ids)  # served by HF generate


def test_backend_is_validated():
    from simple_rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="generation_backend"):
        SamplingArgs(generation_backend="vllm")
