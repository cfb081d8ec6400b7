"""Critic-free online RL on the tiny task: GRPO, RLOO, REINFORCE++ and REINFORCE++-baseline from
the step-1 SFT model, with (a) the gold reward function and (b) the step-2 reward model as the
reward.

Each run: 8 rollouts of 8 prompts x 4 responses (max 24 new tokens), 2 minibatches of 16 per
rollout, lr 2e-4, seeds 1234, 1, 2 (the table gives the mean over the seeds), the stage's
default advantages / KL mode / aggregation (``reinforce_baseline`` is ``simple-rlhf reinforce
--advantage-estimator reinforce_pp_baseline``).
Held-out gold reward of greedy and sampled answers on 32 tiny-task prompts before and after, and
the run's own reward (gold, or the normalised RM score) of the greedy answers. Regenerate (5-10
CPU-seconds per run with one torch thread; wall time depends on the load)::

    OMP_NUM_THREADS=1 python benchmarks/grpo.py --sft outputs/sft --rm outputs/reward \\
        --out outputs/bench_grpo
    OMP_NUM_THREADS=1 python benchmarks/grpo.py --sft outputs/sft --rm outputs/reward \\
        --out outputs/bench_grpo --rewards gold --methods grpo        # a subset

Results are kept per run in ``<out>/<method>_<reward>_s<seed>.json`` (present ones are not
redone); the table of every result present is printed (markdown) and written to
``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simple_rlhf.config import load_config
from simple_rlhf.trainers import grpo

METHODS = {
    "grpo": (grpo.GRPOConfig, {}),
    "rloo": (grpo.RLOOConfig, {}),
    "reinforce": (grpo.ReinforceConfig, {}),
    "reinforce_baseline": (
        grpo.ReinforceConfig,
        {"advantage_estimator": "reinforce_pp_baseline"},
    ),
}
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


KEYS = (
    "gold_before",
    "gold_after",
    "gold_sampled_before",
    "gold_sampled_after",
    "reward_before",
    "reward_after",
    "kl",
    "cpu_seconds",
    "seconds",
)


def result_path(out: Path, method: str, reward: str, seed: int) -> Path:
    return out / f"{method}_{reward}_s{seed}.json"


def one(method: str, reward: str, sft: str, rm: str | None, out: Path, seed: int) -> dict:
    src = {"reward_funcs": ["tiny_gold"]} if reward == "gold" else {"reward_model": rm}
    cls, extra = METHODS[method]
    over = {
        **SETTINGS,
        **extra,
        **src,
        "seed": seed,
        "model_name_or_path": sft,
        "output_dir": str(out / f"{method}_{reward}_s{seed}"),
    }
    t, c = time.time(), time.process_time()
    s = grpo.run(load_config(cls, overrides=over))
    b, a = s["before"], s["after"]
    res = {
        "method": method,
        "reward": reward,
        "seed": seed,
        "gold_before": b["eval/gold_greedy"],
        "gold_after": a["eval/gold_greedy"],
        "gold_sampled_before": b["eval/gold_sampled"],
        "gold_sampled_after": a["eval/gold_sampled"],
        "reward_before": b["eval/reward_greedy"],
        "reward_after": a["eval/reward_greedy"],
        "kl": s["last_rollout"].get("objective/kl", 0.0),
        "seconds": time.time() - t,
        "cpu_seconds": time.process_time() - c,
    }
    result_path(out, method, reward, seed).write_text(json.dumps(res, indent=1))
    return res


def table(out: Path) -> str:
    """Mean over the seeds present of each (method, reward); the seeds are listed."""
    lines = [
        "| method | reward | seeds | gold greedy before → after | gold sampled before → after "
        "| reward of the run, greedy, before → after | KL last rollout | CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in out.glob("*_s*.json"):
        r = json.loads(f.read_text())
        groups.setdefault((r["reward"], r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    for reward, method in sorted(groups, key=lambda k: (k[0], order.get(k[1], 99))):
        rs = sorted(groups[reward, method], key=lambda r: r["seed"])
        m = {k: sum(r[k] for r in rs) / len(rs) for k in KEYS}
        seeds = ", ".join(str(r["seed"]) for r in rs)
        lines.append(
            f"| {method} | {reward} | {seeds} | {m['gold_before']:.3f} → {m['gold_after']:.3f} "
            f"| {m['gold_sampled_before']:.3f} → {m['gold_sampled_after']:.3f} "
            f"| {m['reward_before']:.3f} → {m['reward_after']:.3f} | {m['kl']:.3f} "
            f"| {m['cpu_seconds']:.0f} | {m['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=True)
    p.add_argument("--rm", default=None)
    p.add_argument("--out", default="outputs/bench_grpo")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--rewards", nargs="+", default=["gold", "rm"], choices=["gold", "rm"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        for reward in a.rewards:
            for method in a.methods:
                if not result_path(out, method, reward, seed).exists():  # kept: not redone
                    one(method, reward, a.sft, a.rm, out, seed)
    text = table(out)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
