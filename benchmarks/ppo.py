"""PPO benchmark: gold reward before/after over seeds, final KL, and the KL penalty switched off.

From one step-1 SFT model and one step-2 reward model, ``simple-rlhf ppo`` runs with its defaults
(the tiny recipe is the default) for each seed; the held-out greedy and sampled *gold* reward
(64 tiny-task prompts) and the RM score of the same answers are read before and after, with the
KL to the reference on the last rollout. Then the same run with ``--kl-coef 0`` (and, by default,
twice the rollouts) shows over-optimisation of the RM: its score keeps rising while the gold
reward rises less or falls.

    .venv/bin/python benchmarks/ppo.py --sft outputs/sft --rm outputs/reward --out /tmp/ppo-bench \\
        --markdown benchmarks/ppo_results.md

Without ``--sft`` / ``--rm`` they are trained first with the ``sft`` / ``reward`` defaults. Extra
overrides for every run: ``--set learning_rate=1e-4 --set num_rollouts=20``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

KEYS = ("eval/gold_greedy", "eval/gold_sampled", "eval/reward_greedy", "eval/reward_sampled")


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        out[k.replace("-", "_")] = v
    return out


def ppo_run(out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.ppo import PPOConfig, run

    cfg = load_config(PPOConfig, overrides={"output_dir": str(out), "resume": False, **overrides})
    t, c = time.perf_counter(), time.process_time()
    summary = run(cfg)
    summary["seconds"] = time.perf_counter() - t
    summary["cpu_seconds"] = time.process_time() - c
    return summary


def row(name: str, s: dict[str, Any]) -> dict[str, Any]:
    r = {"run": name, "seconds": s["seconds"], "cpu_seconds": s["cpu_seconds"]}
    r["kl"] = s["last_rollout"].get("objective/kl")
    for k in KEYS:
        r[f"before:{k}"] = s["before"][k]
        r[f"after:{k}"] = s["after"][k]
    r["train_score_last"] = s["last_rollout"].get("reward/score_mean")
    return r


def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| run | gold greedy before → after | gold sampled before → after | RM score greedy "
        "before → after | RM score sampled before → after | KL (last rollout) | wall (s) | CPU (s) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        cells = [r["run"]]
        for k in KEYS:
            cells.append(f"{r[f'before:{k}']:.3f} → {r[f'after:{k}']:.3f}")
        cells.append(f"{r['kl']:.2f}" if r["kl"] is not None else "-")
        cells.append(f"{r['seconds']:.0f}")
        cells.append(f"{r['cpu_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def mean_row(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"run": name}
    for key in rows[0]:
        if key == "run":
            continue
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = statistics.mean(vals) if vals else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", default=None, help="step-1 SFT model (trained if absent)")
    ap.add_argument("--rm", default=None, help="step-2 reward model (trained if absent)")
    ap.add_argument("--out", default="/tmp/ppo-bench")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument(
        "--no-kl-rollouts",
        type=int,
        default=None,
        help="rollouts of the KL-off run (default: twice the default run's)",
    )
    ap.add_argument("--skip-no-kl", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="override for every run, k=v")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()

    from simple_rlhf.config import load_config

    out = Path(args.out)
    sft, rm = args.sft, args.rm
    if sft is None:
        from simple_rlhf.trainers import sft as sft_trainer

        sft = str(out / "sft")
        sft_trainer.run(
            load_config(
                sft_trainer.SFTConfig,
                overrides={"output_dir": sft, "report_to": ["none"], "progress_bar": False},
            )
        )
    if rm is None:
        from simple_rlhf.trainers import reward as rm_trainer

        rm = str(out / "rm")
        rm_trainer.run(
            load_config(
                rm_trainer.RewardConfig,
                overrides={
                    "model_name_or_path": sft,
                    "output_dir": rm,
                    "report_to": ["none"],
                    "progress_bar": False,
                },
            )
        )

    base = {
        "actor_model_name_or_path": sft,
        "reward_model": rm,
        "progress_bar": False,
        "report_to": ["jsonl"],
        **parse_sets(args.set),
    }
    rows = []
    for seed in args.seeds:
        s = ppo_run(out / f"ppo-seed{seed}", {**base, "seed": seed})
        rows.append(row(f"seed {seed}", s))
        print(json.dumps(rows[-1]), flush=True)
    mean = mean_row(f"mean of {len(rows)} seeds", rows)

    no_kl = None
    if not args.skip_no_kl:
        from simple_rlhf.trainers.ppo import PPOConfig

        default_n = load_config(PPOConfig, overrides=base).batch.num_rollouts or 0
        n = args.no_kl_rollouts or 2 * default_n
        s = ppo_run(
            out / "ppo-no-kl", {**base, "seed": args.seeds[0], "kl_coef": 0.0, "num_rollouts": n}
        )
        no_kl = row(f"kl_coef 0, {n} rollouts, seed {args.seeds[0]}", s)
        print(json.dumps(no_kl), flush=True)

    table = fmt_table(rows + [mean] + ([no_kl] if no_kl else []))
    print(table)
    if args.markdown:
        import torch

        env = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
        )
        Path(args.markdown).write_text(
            "# PPO benchmark (tiny task)\n\n"
            f"Command (machine: {env}):\n\n"
            f"    .venv/bin/python benchmarks/ppo.py --sft {sft} --rm {rm} --out {out}"
            f" --seeds {' '.join(map(str, args.seeds))}"
            + "".join(f" --set {x}" for x in args.set)
            + "\n\n"
            + table
        )


if __name__ == "__main__":
    main()
