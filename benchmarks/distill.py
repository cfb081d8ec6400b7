"""Distillation benchmark: supervised KD, GKD (lmbda x beta) and SeqKD into a student.

For each (lmbda, beta), and for SeqKD (teacher-generated responses, lmbda 0) with each beta given
to ``--seq-kd-betas``, a student (``--student``: a model folder, or ``tiny`` for a fresh random
tiny model) is distilled from ``--teacher`` on the tiny task's step-1 SFT examples with
``simple-rlhf distill`` (the flags below; defaults otherwise). Read before/after from each run's
summary: the student's greedy gold reward on 64 held-out prompts, and on the 200 held-out SFT
examples the forward KL(teacher || student) at temperature 1 and the student's per-token NLL of the
dataset responses (both comparable across betas, unlike each run's own loss). The teacher's gold
is measured once. CPU seconds are this process's user+system time (the machine is shared, so wall
time is mostly waiting).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill.py --teacher /tmp/distill/ppo \\
        --student /tmp/distill/sft --out /tmp/distill/kd --max-steps 125 --lr 1e-3 \\
        --markdown /tmp/distill/kd.md

A finished run (its ``summary.json`` exists) is read back instead of being run again.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="teacher model folder (e.g. the PPO model)")
    ap.add_argument("--student", default="tiny", help="starting student ('tiny' = fresh)")
    ap.add_argument("--out", default="/tmp/distill/kd", help="where the runs are written")
    ap.add_argument("--lmbdas", type=float, nargs="*", default=[0.0, 1.0])
    ap.add_argument("--betas", type=float, nargs="*", default=[0.0, 0.5, 1.0])
    ap.add_argument("--seq-kd-betas", type=float, nargs="*", default=[0.0])
    ap.add_argument("--max-steps", type=int, default=None, help="optimiser steps per run")
    ap.add_argument("--epochs", type=int, default=4, help="epochs when --max-steps is not set")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: trainer's)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="on-policy/SeqKD cap")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--markdown", default=None, help="write the results table to this file")
    args = ap.parse_args()

    from simple_rlhf.config import load_config
    from simple_rlhf.trainers import distill

    out = Path(args.out)
    base = {
        "model_name_or_path": args.student,
        "teacher_model_name_or_path": args.teacher,
        "num_train_epochs": args.epochs,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "report_to": ["jsonl"],
        "progress_bar": False,
    }
    if args.lr is not None:
        base["learning_rate"] = args.lr
    if args.max_new_tokens is not None:
        base["max_new_tokens"] = args.max_new_tokens
    runs = [(lm, b, False) for lm in args.lmbdas for b in args.betas]
    runs += [(0.0, b, True) for b in args.seq_kd_betas]
    rows, teacher_gold = [], None
    for lmbda, beta, seq_kd in runs:
        name = f"{'seqkd' if seq_kd else 'kd'}_lmbda{lmbda}_beta{beta}"
        overrides = {**base, "output_dir": str(out / name), "lmbda": lmbda, "beta": beta}
        cfg = load_config(distill.DistillConfig, overrides={**overrides, "seq_kd": seq_kd})
        done = out / name / "summary.json"
        reused, cpu0 = done.is_file(), cpu_seconds()
        s = json.loads(done.read_text()) if reused else distill.run(cfg)
        cpu = None if reused else cpu_seconds() - cpu0
        teacher_gold = s["teacher"]["teacher/gold_greedy"]
        b, a = s["before"], s["after"]
        rows.append(
            {
                "method": "SeqKD" if seq_kd else ("supervised KD" if lmbda == 0 else "GKD"),
                "lmbda": lmbda,
                "beta": beta,
                "steps": s["steps"],
                "gold": (b["eval/gold_greedy"], a["eval/gold_greedy"]),
                "fkl": (b["eval/forward_kl"], a["eval/forward_kl"]),
                "nll": (b["eval/nll"], a["eval/nll"]),
                "on_policy_share": s["on_policy_share"],
                "train_s": s["train_seconds"],
                "cpu_s": None if cpu is None else round(cpu, 1),
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


def _ba(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} → {pair[1]:.3f}"


def render(rows: list[dict], teacher_gold: float | None, args: argparse.Namespace) -> str:
    lines = [
        f"Teacher `{args.teacher}` (greedy gold {_f(teacher_gold)}); student starts from "
        f"`{args.student}`; seed {args.seed}.",
        "",
        "| method | lmbda | beta | steps | gold greedy | forward KL(T‖S) | NLL of data "
        "| on-policy share | train s | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lmbda']:g} | {r['beta']:g} | {r['steps']} | {_ba(r['gold'])} "
            f"| {_ba(r['fkl'])} | {_ba(r['nll'])} | {_f(r['on_policy_share'])} | {r['train_s']} "
            f"| {r['cpu_s'] if r['cpu_s'] is not None else '-'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
