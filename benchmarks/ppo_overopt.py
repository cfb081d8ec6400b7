"""Over-optimisation of a learned reward model: PPO with the KL penalty off versus on.

Same SFT actor, same step-2 RM as the reward (and critic initialisation), same seed(s); one run
with ``--kl-coef 0`` and one with the default ``kl_coef`` (0.2), each evaluated every
``--eval-every`` rollouts on the 64 held-out tiny-task prompts: the RM score of the greedy and
sampled answers (what PPO optimises), their *gold* reward (what we want) and the KL to the
reference on the training rollout (k1, nats per response). Expected: without the penalty the RM
score keeps rising while the gold reward rises less, then falls, and the KL grows without bound.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ppo_overopt.py --sft /tmp/online/sft \\
        --rm /tmp/online/reward --out /tmp/online/overopt --rollouts 100 --eval-every 20 --seeds 1

Each run's curve is kept in ``<out>/kl<beta>_seed<s>.json`` (runs already present are not
redone); the markdown table of every curve present is printed and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

KEYS = ("eval/gold_greedy", "eval/gold_sampled", "eval/reward_greedy", "eval/reward_sampled")


def curve(sft: str, rm: str, out: Path, beta: float, seed: int, rollouts: int, every: int) -> dict:
    """One PPO run; ``{"points": [{rollout, eval keys..., kl, score}], ...}``."""
    from simple_rlhf.config import load_config
    from simple_rlhf.infra.logging import read_jsonl
    from simple_rlhf.trainers.ppo import PPOConfig, run

    run_dir = out / f"kl{beta:g}_seed{seed}"
    cfg = load_config(
        PPOConfig,
        overrides={
            "actor_model_name_or_path": sft,
            "reward_model": rm,
            "kl_coef": beta,
            "seed": seed,
            "num_rollouts": rollouts,
            "eval_steps": every,
            "output_dir": str(run_dir),
            "resume": False,
            "report_to": ["jsonl"],
            "progress_bar": False,
            "sample_every": every,
        },
    )
    t, c = time.perf_counter(), time.process_time()
    summary = run(cfg)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    train = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "objective/kl" in r}
    points = [{"rollout": 0, **{k: summary["before"][k] for k in KEYS}, "kl": 0.0, "score": None}]
    for step in range(every, rollouts + 1, every):
        ev = summary.get(f"rollout_{step}") or summary["after"]
        row = train.get(step, {})
        points.append(
            {
                "rollout": step,
                **{k: ev[k] for k in KEYS},
                "kl": row.get("objective/kl"),
                "score": row.get("reward/score_mean"),
                "len_greedy": ev.get("eval/response_len_greedy"),
            }
        )
    return {"kl_coef": beta, "seed": seed, "points": points, "wall_s": wall, "cpu_s": cpu}


def fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def table(out: Path) -> str:
    """One table per seed: for each evaluated rollout, gold / RM score / KL of both runs."""
    runs = [json.loads(f.read_text()) for f in sorted(out.glob("kl*_seed*.json"))]
    lines = []
    for seed in sorted({r["seed"] for r in runs}):
        by_beta = {r["kl_coef"]: r for r in runs if r["seed"] == seed}
        betas = sorted(by_beta, reverse=True)
        head = ["rollout"]
        for b in betas:
            head += [
                f"β={b:g}: gold greedy",
                "gold sampled",
                "RM greedy",
                "RM sampled",
                "KL/response",
            ]
        lines += [f"seed {seed}:", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        steps = sorted({p["rollout"] for r in by_beta.values() for p in r["points"]})
        for s in steps:
            cells = [str(s)]
            for b in betas:
                p = next((q for q in by_beta[b]["points"] if q["rollout"] == s), {})
                cells += [fmt(p.get(k)) for k in KEYS] + [fmt(p.get("kl"), ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
        cost = ", ".join(
            f"β={b:g}: {by_beta[b]['cpu_s']:.0f} CPU-s ({by_beta[b]['wall_s']:.0f} s wall)"
            for b in betas
        )
        lines += ["", f"cost: {cost}", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", required=True, help="step-1 SFT model (the actor)")
    ap.add_argument("--rm", required=True, help="step-2 reward model (reward and critic init)")
    ap.add_argument("--out", default="/tmp/ppo-overopt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=20)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        for beta in a.betas:
            path = out / f"kl{beta:g}_seed{seed}.json"
            if path.exists():
                continue
            res = curve(a.sft, a.rm, out, beta, seed, a.rollouts, a.eval_every)
            path.write_text(json.dumps(res, indent=1))
            print(json.dumps({k: v for k, v in res.items() if k != "points"}), flush=True)
    text = table(out)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
