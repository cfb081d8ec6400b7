"""Re-measure saved tiny-task models on more held-out prompts (tighter than the trainers' 64).

Greedy gold reward (and EOS rate, response length) of each model folder on ``--n-prompts``
held-out prompts (the same prompts as the trainers' evaluation, extended: prompt i is the same for
every n >= i). With 64 prompts one prompt moves the mean by up to 1/64 = 0.016, so differences of a
few hundredths between models need more prompts to be trusted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_eval.py --n-prompts 256 \\
        /tmp/distill/sft /tmp/distill/rs/gold/round_1/model /tmp/distill/rs/gold/round_2/model
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model folders")
    ap.add_argument("--n-prompts", type=int, default=256)
    args = ap.parse_args()

    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
    from simple_rlhf.rollout.evaluate import evaluate_gold

    print(f"| model | greedy gold ({args.n_prompts} prompts) | EOS rate | response length |")
    print("|---|---|---|---|")
    for path in args.models:
        tok = load_tokenizer(path)
        m = evaluate_gold(load_causal_lm(path, tok, dropout=0.0), tok, n_prompts=args.n_prompts)
        print(
            f"| `{path}` | {m['eval/gold_greedy']:.3f} | {m['eval/eos_rate_greedy']:.3f} "
            f"| {m['eval/response_len_greedy']:.2f} |",
            flush=True,
        )
        print(json.dumps({"model": path, **m}), flush=True)


if __name__ == "__main__":
    main()
