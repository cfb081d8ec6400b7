"""Critic-free online RL on the tiny task: GRPO, RLOO and REINFORCE++ from the step-1 SFT model,
with (a) the gold reward function and (b) the step-2 reward model as the reward.

Each run: 8 rollouts of 8 prompts x 4 responses (max 24 new tokens), 2 minibatches of 16 per
rollout, lr 2e-4, seed 1234, the stage's default advantages / KL mode / aggregation. Held-out
greedy gold reward on 32 tiny-task prompts before and after. Regenerate (several minutes)::

    python benchmarks/grpo.py --sft outputs/sft --rm outputs/reward --out outputs/bench_grpo
    python benchmarks/grpo.py --sft outputs/sft --rm outputs/reward --out outputs/bench_grpo \\
        --rewards gold --methods grpo        # a subset

Results are kept per run in ``<out>/<method>_<reward>.json``; the table of every result present
is printed (markdown) and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simple_rlhf.config import load_config
from simple_rlhf.trainers import grpo

METHODS = {"grpo": grpo.GRPOConfig, "rloo": grpo.RLOOConfig, "reinforce": grpo.ReinforceConfig}
SETTINGS = {
    "num_rollouts": 8,
    "prompts_per_rollout": 8,
    "num_generations": 4,
    "per_device_train_batch_size": 16,
    "max_new_tokens": 24,
    "gold_eval_prompts": 32,
    "report_to": ["none"],
    "progress_bar": False,
    "sample_every": 0,
}


def one(method: str, reward: str, sft: str, rm: str | None, out: Path) -> dict:
    src = {"reward_funcs": ["tiny_gold"]} if reward == "gold" else {"reward_model": rm}
    over = {
        **SETTINGS,
        **src,
        "model_name_or_path": sft,
        "output_dir": str(out / f"{method}_{reward}"),
    }
    t = time.time()
    s = grpo.run(load_config(METHODS[method], overrides=over))
    res = {
        "method": method,
        "reward": reward,
        "gold_before": s["before"]["eval/gold_greedy"],
        "gold_after": s["after"]["eval/gold_greedy"],
        "kl": s["last_rollout"].get("objective/kl", 0.0),
        "seconds": time.time() - t,
    }
    (out / f"{method}_{reward}.json").write_text(json.dumps(res, indent=1))
    return res


def table(out: Path) -> str:
    lines = [
        "| method | reward | gold greedy before | after | KL last rollout | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for f in sorted(out.glob("*_*.json")):
        r = json.loads(f.read_text())
        lines.append(
            f"| {r['method']} | {r['reward']} | {r['gold_before']:.3f} | {r['gold_after']:.3f} "
            f"| {r['kl']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=True)
    p.add_argument("--rm", default=None)
    p.add_argument("--out", default="outputs/bench_grpo")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--rewards", nargs="+", default=["gold", "rm"], choices=["gold", "rm"])
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for reward in a.rewards:
        for method in a.methods:
            one(method, reward, a.sft, a.rm, out)
    text = table(out)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
