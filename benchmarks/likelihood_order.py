"""How well a policy's own likelihood orders its sampled answers (a probe for issue 16's RM cells).

The reward trainer reports its RM's accuracy on pairs of the policy's own sampled answers
(``eval/policy_pairs_accuracy``: 4 samples per held-out prompt, every pair the task's reward
function orders). This script measures the same pairs scored instead by the policy's summed and
per-token mean log-probability of each answer, i.e. what the SFT model itself "knows"::

    python benchmarks/likelihood_order.py --task-dir /tmp/gen/tasks/add-en-plain \\
        --sft /tmp/gen/en-plain/add/seed1234/sft

(folders as written by ``benchmarks/generalization.py --work /tmp/gen``).
"""

from __future__ import annotations

import argparse
import types

import torch

from simple_rlhf.data.tokenize import encode_prompt, encode_response
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout.heldout import build_heldout, policy_pair_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task-dir", required=True, help="a task folder (heldout.jsonl, reward.py)")
    ap.add_argument("--sft", required=True, help="the policy (an SFT model folder)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    tok = load_tokenizer(a.sft)
    model = load_causal_lm(a.sft, tok, dtype="float32", dropout=0.0).eval()
    heldout = types.SimpleNamespace(
        eval_reward_funcs=[f"{a.task_dir}/reward.py:reward"],
        eval_prompts=f"{a.task_dir}/heldout.jsonl", gold_eval_prompts=200,
        eval_reward_model=None, pass_threshold=1.0, eval_max_new_tokens=None,
    )  # fmt: skip
    evaluator = build_heldout(heldout, types.SimpleNamespace(data_path=[a.task_dir]))

    @torch.no_grad()
    def logprob(prompts, responses, mean: bool) -> list[float]:
        out = []
        for p, r in zip(prompts, responses, strict=True):
            resp = [{"role": "assistant", "content": r}] if isinstance(p, list) else r
            head, body = encode_prompt(tok, p), encode_response(tok, p, resp)
            logits = model(torch.tensor([head + body])).logits[0, len(head) - 1 : -1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(body)[:, None])
            out.append(float(lp.mean() if mean else lp.sum()))
        return out

    for mean in (False, True):
        m = policy_pair_accuracy(
            evaluator, model, tok, lambda p, r, mean=mean: logprob(p, r, mean),
            samples=a.samples, seed=a.seed,
        )  # fmt: skip
        name = "mean log-prob" if mean else "summed log-prob"
        print(f"{name}: {m.get('eval/policy_pairs_accuracy', float('nan')):.3f} on "
              f"{int(m.get('eval/policy_pairs', 0))} pairs")  # fmt: skip


if __name__ == "__main__":
    main()
