"""Rejection-sampling (best-of-N) benchmark: rounds of sample -> score -> keep best -> SFT.

Runs ``simple-rlhf rejection-sampling`` from ``--policy`` once per scorer (``--scorers``: ``gold``
= the ``tiny_gold`` function, ``rm`` = the reward model ``--reward-model``) for ``--rounds``
rounds of ``--max-prompts`` step-3 prompts x ``--num-samples`` samples, and tabulates per round the
scorer's mean sample score and mean best-of-N score, the hidden gold reward of the kept responses
(so an RM-scored run shows how much true quality its selection buys), and the policy's greedy gold
on 64 held-out prompts before and after the round. CPU seconds are this process's user+system
time (the machine is shared).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_rs.py --policy /tmp/distill/sft \\
        --reward-model /tmp/distill/reward --out /tmp/distill/rs --markdown /tmp/distill/rs.md

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


def kept_gold(data_jsonl: Path) -> float:
    """Mean gold reward of the responses a round kept (its data.jsonl)."""
    from simple_rlhf.data.tiny_task import gold_reward_batch

    rows = [json.loads(line) for line in data_jsonl.read_text().splitlines()]
    prompts = [r["messages"][:-1] for r in rows]
    responses = [r["messages"][-1]["content"] for r in rows]
    scores = gold_reward_batch(prompts, responses)
    return sum(scores) / max(len(scores), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True, help="starting policy (the SFT model)")
    ap.add_argument("--reward-model", default=None, help="RM folder for the 'rm' scorer")
    ap.add_argument("--scorers", nargs="*", default=["gold", "rm"], choices=["gold", "rm"])
    ap.add_argument("--out", default="/tmp/distill/rs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--max-prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="SFT learning rate (default 3e-4)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()

    from simple_rlhf.config import load_config
    from simple_rlhf.trainers import rejection_sampling as rs

    out, rows = Path(args.out), []
    for scorer in args.scorers:
        source = {"reward_funcs": ["tiny_gold"]}
        if scorer == "rm":
            if not args.reward_model:
                raise SystemExit("--scorers rm needs --reward-model")
            source = {"reward_model": args.reward_model, "reward_funcs": []}
        run_dir = out / scorer
        cfg = load_config(
            rs.RejectionSamplingConfig,
            overrides={
                "model_name_or_path": args.policy,
                "output_dir": str(run_dir),
                "rounds": args.rounds,
                "num_samples": args.num_samples,
                "max_prompts": args.max_prompts,
                "max_new_tokens": args.max_new_tokens,
                "seed": args.seed,
                "report_to": ["jsonl"],
                "progress_bar": False,
                **source,
                **({"learning_rate": args.lr} if args.lr is not None else {}),
            },
        )
        done = run_dir / "summary.json"
        reused, cpu0 = done.is_file(), cpu_seconds()
        s = json.loads(done.read_text()) if reused else rs.run(cfg)
        cpu = None if reused else round(cpu_seconds() - cpu0, 1)
        for r in s["rounds"]:
            rows.append(
                {
                    "scorer": f"{scorer} ({s['scorer']})",
                    "round": r["round"],
                    "score_mean": r["rs/score_mean"],
                    "best_of_n": r["rs/best_of_n_score"],
                    "kept": int(r["rs/kept"]),
                    "kept_gold": kept_gold(run_dir / f"round_{r['round']}" / "data.jsonl"),
                    "gold": (
                        r["gold_before"]["eval/gold_greedy"],
                        r["gold_after"]["eval/gold_greedy"],
                    ),
                    "sft_steps": r["sft_steps"],
                    "cpu_s": cpu if r["round"] == len(s["rounds"]) else None,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows))
    table = render(rows, args)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)


def render(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Policy `{args.policy}`; {args.max_prompts} prompts x {args.num_samples} samples per "
        f"round (temperature 1, max {args.max_new_tokens} new tokens); SFT lr "
        f"{args.lr or 3e-4:g}, 2 epochs per round; seed {args.seed}.",
        "",
        "| scorer | round | mean score (all samples) | best-of-N score | kept | gold of kept "
        "| greedy gold before → after | SFT steps | CPU s (run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g0, g1 = r["gold"]
        lines.append(
            f"| {r['scorer']} | {r['round']} | {r['score_mean']:.3f} | {r['best_of_n']:.3f} "
            f"| {r['kept']} | {r['kept_gold']:.3f} | {g0:.3f} → {g1:.3f} | {r['sft_steps']} "
            f"| {'-' if r['cpu_s'] is None else r['cpu_s']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
