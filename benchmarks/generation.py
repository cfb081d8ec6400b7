"""Rollout speed: the fast generation backend (rollout/decode.py) against HF ``generate``.

Tokens generated per second by ``rollout.generate.generate`` with ``--generation-backend fast``
and ``hf``, on the tiny-task held-out prompts (chat template), at each batch size; the two
backends run alternately (A B A B ...), ``--repeats`` pairs, median. Models:

* ``tiny`` — the tiny default (0.73M Llama) as trained by ``--sft`` (a folder from
  ``simple-rlhf sft``: realistic answer lengths, rows end at different steps) or, without
  ``--sft``, the random base (every row runs to ``--max-new-tokens``);
* ``25m`` — a ~25M-parameter Llama (hidden 512, 8 layers, the tiny tokenizer), random weights.

Regenerate (alone on the machine; OMP threads as the trainers use them)::

    python benchmarks/generation.py --sft outputs/sft --out benchmarks/generation_results.md

Greedy answers of the two backends are also compared (they must be identical).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch

from simple_rlhf.data.tiny_task import eval_prompts
from simple_rlhf.data.tokenize import encode_prompt
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.models.tiny import ensure_tiny
from simple_rlhf.rollout.generate import SamplingArgs, generate

SIZE_25M = dict(
    hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
    num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=True,
)  # fmt: skip


def load(kind: str, sft: str | None):
    base = str(ensure_tiny())
    tok = load_tokenizer(sft or base)
    if kind == "tiny":
        name = "tiny 0.73M, SFT (--sft)" if sft else "tiny 0.73M (random)"
        return load_causal_lm(sft or base, tok, dropout=0.0).eval(), tok, name
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SIZE_25M,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    n = sum(p.numel() for p in model.parameters()) / 1e6
    return model, tok, f"Llama {n:.1f}M (random)"


def timed(model, tok, prompts, sampling, seed):
    t0 = time.perf_counter()
    r = generate(model, tok, prompts, sampling, seed=seed)
    return int(r.response_mask.sum()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", default=None, help="an SFT'ed tiny model folder (default: random)")
    ap.add_argument("--models", default="tiny,25m")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    a = ap.parse_args()
    rows = []
    for kind in a.models.split(","):
        model, tok, name = load(kind, a.sft)
        all_prompts = [encode_prompt(tok, p) for p in eval_prompts(64)]
        for bs in (int(b) for b in a.batch_sizes.split(",")):
            prompts = (all_prompts * (1 + bs // len(all_prompts)))[:bs]
            s = SamplingArgs(
                max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                generation_batch_size=bs,
            )  # fmt: skip
            hf_s = dataclasses.replace(s, generation_backend="hf")
            g = dataclasses.replace(s, temperature=0.0)
            same = torch.equal(
                generate(model, tok, prompts, g).response_ids,
                generate(
                    model, tok, prompts, dataclasses.replace(g, generation_backend="hf")
                ).response_ids,
            )
            timed(model, tok, prompts, s, 0)  # warm-up
            fast, hf = [], []
            for rep in range(a.repeats):
                n, t = timed(model, tok, prompts, s, rep)
                fast.append(n / t)
                n, t = timed(model, tok, prompts, hf_s, rep)
                hf.append(n / t)
            f, h = statistics.median(fast), statistics.median(hf)
            rows.append((name, bs, f, h, f / h, same))
            print(f"{name} batch {bs}: fast {f:.0f} tok/s, hf {h:.0f} tok/s, x{f / h:.2f}, "
                  f"greedy identical {same}", flush=True)  # fmt: skip
    lines = [
        "| model | batch | fast tok/s | HF generate tok/s | speed-up | greedy identical |",
        "|---|---|---|---|---|---|",
        *(f"| {m} | {b} | {f:.0f} | {h:.0f} | {r:.2f}x | {s} |" for m, b, f, h, r, s in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if a.out:
        head = (
            f"# Rollout speed: fast backend vs HF generate\n\nWritten by `benchmarks/generation.py` "
            f"(`--sft {a.sft} --max-new-tokens {a.max_new_tokens} --temperature {a.temperature} "
            f"--repeats {a.repeats}`), {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; median of "
            f"{a.repeats} alternating pairs. Tokens = generated response tokens up to EOS.\n\n"
        )
        Path(a.out).write_text(head + table + "\n")


if __name__ == "__main__":
    main()
