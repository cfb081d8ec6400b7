"""Distillation benchmark: a fresh tiny student distilled from a teacher, for lmbda x beta.

For each (lmbda, beta) a fresh tiny student (``tiny``, random init) is distilled from ``--teacher``
on the tiny task's step-1 SFT prompts with ``simple-rlhf distill`` defaults otherwise, and the
student's greedy gold reward on 64 held-out prompts is read before and after. The teacher's gold is
measured once. With ``--sft-baseline`` the same student is also trained by plain SFT on the same
data for the same number of steps (the reference distillation should beat or match).

    .venv/bin/python benchmarks/distill.py --teacher outputs/ppo --out /tmp/distill-bench \\
        --markdown benchmarks/distill_results.md

Takes ~2-5 minutes per configuration on 2 CPU cores (on-policy runs generate every batch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="teacher model folder (e.g. the PPO model)")
    ap.add_argument("--out", default="/tmp/distill-bench", help="where the runs are written")
    ap.add_argument("--lmbdas", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--epochs", type=int, default=4, help="distillation epochs (default: 4)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--sft-baseline", action="store_true", help="also plain SFT, same steps")
    ap.add_argument("--markdown", default=None, help="write the results table to this file")
    args = ap.parse_args()

    from simple_rlhf.config import load_config
    from simple_rlhf.trainers import distill, sft

    out = Path(args.out)
    rows = []
    teacher_gold = None
    common = {
        "num_train_epochs": args.epochs,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "report_to": ["jsonl"],
        "progress_bar": False,
        "save_steps": 50,  # an interrupted benchmark resumes where it stopped
    }
    for lmbda in args.lmbdas:
        for beta in args.betas:
            run_dir = out / f"lmbda{lmbda}_beta{beta}"
            cfg = load_config(
                distill.DistillConfig,
                overrides={
                    **common,
                    "teacher_model_name_or_path": args.teacher,
                    "output_dir": str(run_dir),
                    "lmbda": lmbda,
                    "beta": beta,
                },
            )
            done = run_dir / "summary.json"
            s = json.loads(done.read_text()) if done.is_file() else distill.run(cfg)
            teacher_gold = s["teacher"]["teacher/gold_greedy"]
            rows.append(
                {
                    "method": "distill",
                    "lmbda": lmbda,
                    "beta": beta,
                    "steps": s["steps"],
                    "gold_before": s["before"]["eval/gold_greedy"],
                    "gold_after": s["after"]["eval/gold_greedy"],
                    "jsd_before": s["before"]["eval/distill_loss"],
                    "jsd_after": s["after"]["eval/distill_loss"],
                    "on_policy_share": s["on_policy_share"],
                    "seconds": s["train_seconds"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.sft_baseline:
        steps = rows[0]["steps"] if rows else None
        cfg = load_config(
            sft.SFTConfig,
            overrides={**common, "max_steps": steps, "output_dir": str(out / "sft_baseline")},
        )
        done = out / "sft_baseline" / "summary.json"
        s = json.loads(done.read_text()) if done.is_file() else sft.run(cfg)
        rows.append(
            {
                "method": "sft (no teacher)",
                "lmbda": None,
                "beta": None,
                "steps": s["steps"],
                "gold_before": s["before"]["eval/gold_greedy"],
                "gold_after": s["after"]["eval/gold_greedy"],
                "jsd_before": None,
                "jsd_after": None,
                "on_policy_share": None,
                "seconds": s["train_seconds"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"teacher_gold": teacher_gold, "rows": rows}))
    table = render(rows, teacher_gold, args)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(rows: list[dict], teacher_gold: float | None, args: argparse.Namespace) -> str:
    lines = [
        f"Teacher: `{args.teacher}` (greedy gold {_f(teacher_gold)}). Student: fresh tiny model.",
        "",
        "| method | lmbda | beta | steps | gold before | gold after | JSD before | JSD after "
        "| on-policy share | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_f(r['lmbda'])} | {_f(r['beta'])} | {r['steps']} "
            f"| {_f(r['gold_before'])} | {_f(r['gold_after'])} | {_f(r['jsd_before'])} "
            f"| {_f(r['jsd_after'])} | {_f(r['on_policy_share'])} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
