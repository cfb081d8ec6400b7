"""Does every algorithm learn on tasks this project was never tuned on? (issue 16)

Generates the task suite (``benchmarks/tasks/make_tasks.py``: plain JSONL files plus a
``reward.py`` per task), then runs the documented CLI with default settings, as a new user would:
SFT from the tiny default on ``sft.jsonl``, then from that SFT model each algorithm on the file it
needs (pairs, unpaired labels, prompts + the task's reward function). Every command evaluates the
same held-out prompts (``heldout.jsonl``, greedy answers scored by the task's reward), so "before"
is the SFT model's held-out reward and "after" the algorithm's. Three training seeds per cell.

    .venv/bin/python benchmarks/generalization.py                   # everything (hours)
    .venv/bin/python benchmarks/generalization.py --tasks add --algos sft,grpo --seeds 1234
    .venv/bin/python benchmarks/generalization.py --report-only     # rewrite the table

Finished runs are kept under ``--work`` (default ``outputs/generalization``) and reused; each
result is appended to ``results.jsonl`` there, and ``benchmarks/generalization_results.md`` is
rewritten from all results after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("simple-rlhf"))
TASKS = {"add": "en-plain", "sort_words": "zh-chat", "format": "en-chat"}
ALGOS = ("sft", "dpo", "ipo", "kto", "simpo", "orpo", "ppo", "grpo", "rloo", "reinforce", "rs")
# algorithm -> (command, data file, extra flags)
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    "dpo": ("dpo", "pairs.jsonl", []),
    "ipo": ("dpo", "pairs.jsonl", ["--loss-type", "ipo"]),
    "kto": ("kto", "kto.jsonl", []),
    "simpo": ("simpo", "pairs.jsonl", []),
    "orpo": ("orpo", "pairs.jsonl", []),
    "grpo": ("grpo", "prompts.jsonl", ["--reward-funcs", "{reward}"]),
    "rloo": ("rloo", "prompts.jsonl", ["--reward-funcs", "{reward}"]),
    "reinforce": ("reinforce", "prompts.jsonl", ["--reward-funcs", "{reward}"]),
    "rs": ("rejection-sampling", "prompts.jsonl", ["--reward-funcs", "{reward}"]),
}
GOLD = "eval/gold_greedy"


def run_cli(argv: list[str], out: Path) -> tuple[dict[str, Any], float]:
    """Run one command (reused when ``out/summary.json`` exists); its summary and wall time."""
    done = out / "summary.json"
    timing = out / "wall_seconds.txt"
    if done.is_file() and timing.is_file():
        return json.loads(done.read_text()), float(timing.read_text())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (out / "command.log").open("w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(argv)}; see {out}/command.log")
    timing.write_text(f"{seconds:.1f}\n")
    return json.loads(done.read_text()), seconds


def after_gold(algo: str, summary: dict[str, Any]) -> float:
    if algo == "rs":
        return summary["rounds"][-1]["gold_after"][GOLD]
    return summary["after"][GOLD]


def run_cell(task_dir: Path, task: str, algo: str, seed: int, work: Path) -> list[dict]:
    """The SFT run of (task, seed), then ``algo`` from it; result rows (SFT's own included)."""
    reward = f"{task_dir / 'reward.py'}:reward"
    evals = ["--eval-prompts", str(task_dir / "heldout.jsonl"), "--eval-reward-funcs", reward]
    evals += ["--gold-eval-prompts", "200", "--report-to", "jsonl", "--no-progress-bar"]
    base = work / task / f"seed{seed}"
    sft_cmd = [CLI, "sft", "--data-path", str(task_dir / "sft.jsonl"), "--seed", str(seed)]
    sft_cmd += ["--output-dir", str(base / "sft"), *evals]
    sft, sft_s = run_cli(sft_cmd, base / "sft")
    rows = [
        {"task": task, "algo": "sft", "seed": seed, "before": sft["before"][GOLD],
         "after": sft["after"][GOLD], "seconds": sft_s, "command": " ".join(sft_cmd[1:])}
    ]  # fmt: skip
    if algo == "sft":
        return rows
    model = ["--seed", str(seed), *evals]
    if algo == "ppo":
        rm_cmd = [CLI, "reward", "--model-name-or-path", str(base / "sft"), "--data-path"]
        rm_cmd += [str(task_dir / "pairs.jsonl"), "--output-dir", str(base / "reward"), *model]
        rm, rm_s = run_cli(rm_cmd, base / "reward")
        cmd = [CLI, "ppo", "--actor-model-name-or-path", str(base / "sft"), "--reward-model"]
        cmd += [str(base / "reward"), "--data-path", str(task_dir / "prompts.jsonl")]
        cmd += ["--output-dir", str(base / "ppo"), *model]
        summary, seconds = run_cli(cmd, base / "ppo")
        extra = {
            "rm_accuracy": rm["after"].get("eval/accuracy"),
            "rm_policy_pairs_accuracy": rm["after"].get("eval/policy_pairs_accuracy"),
            "rm_seconds": rm_s,
            "command": " ".join(rm_cmd[1:]) + " && " + " ".join(cmd[1:]),
        }
    else:
        command, data, flags = COMMANDS[algo]
        cmd = [CLI, command, "--model-name-or-path", str(base / "sft"), "--data-path"]
        cmd += [str(task_dir / data), *[f.format(reward=reward) for f in flags]]
        cmd += ["--output-dir", str(base / algo), *model]
        summary, seconds = run_cli(cmd, base / algo)
        extra = {"command": " ".join(cmd[1:])}
    before = sft["after"][GOLD]
    rows.append(
        {"task": task, "algo": algo, "seed": seed, "before": before,
         "after": after_gold(algo, summary), "seconds": seconds, **extra}
    )  # fmt: skip
    return rows


def target(algo: str, before: float) -> float:
    """The acceptance gain: RL with the reward function closes half the gap to 1 or gains 0.10
    (the smaller); learning from noisy labels gains 0.05."""
    if algo in ("grpo", "rloo", "reinforce"):
        return min(0.5 * (1.0 - before), 0.10)
    return 0.05


def write_report(results: list[dict], path: Path, argv: list[str]) -> None:
    """Markdown: one table per task (mean over seeds, per-seed values, wall time)."""
    latest: dict[tuple, dict] = {}
    for r in results:
        latest[(r["task"], r["variant"], r["algo"], r["seed"])] = r
    lines = [
        "# Generalization: every algorithm, default settings, on tasks never tuned for",
        "",
        "Written by `benchmarks/generalization.py` (" + " ".join(argv) + "). Held-out reward: "
        "greedy answers to the task's 200 held-out prompts, scored by its `reward.py` (0 = wrong, "
        "1 = perfect). For SFT, before = the untrained tiny model; for the others, before = the "
        "SFT model of the same seed. Target: GRPO/RLOO/REINFORCE++ close half the SFT model's gap "
        "to 1 or gain 0.10 (the smaller); the others gain 0.05.",
        "",
    ]
    for task, variant in sorted({(k[0], k[1]) for k in latest}):
        lines += [f"## {task} ({variant})", ""]
        lines += ["| algorithm | before | after | gain | target | met | seeds (after) | wall s |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for algo in ALGOS:
            rows = [r for k, r in sorted(latest.items()) if k[:3] == (task, variant, algo)]
            if not rows:
                continue
            before = statistics.mean(r["before"] for r in rows)
            after = statistics.mean(r["after"] for r in rows)
            goal = target(algo, before) if algo != "sft" else 0.0
            met = "yes" if after - before >= goal - 1e-9 else "**no**"
            seeds = ", ".join(f"{r['after']:.3f}" for r in rows)
            wall = statistics.mean(r["seconds"] for r in rows)
            lines.append(
                f"| {algo} | {before:.3f} | {after:.3f} | {after - before:+.3f} | "
                f"{'' if algo == 'sft' else f'+{goal:.3f}'} | {met if algo != 'sft' else ''} | "
                f"{seeds} | {wall:.0f} |"
            )
        ppo = [r for k, r in latest.items() if k[:3] == (task, variant, "ppo")]
        if ppo:
            accs = [r.get("rm_policy_pairs_accuracy") for r in ppo]
            lines += ["", "RM accuracy on pairs of the SFT policy's own samples: "
                      + ", ".join("n/a" if a is None else f"{a:.3f}" for a in accs)]  # fmt: skip
        lines.append("")
    lines += ["## Commands (one seed)", ""]
    for k, r in sorted(latest.items()):
        if k[3] == sorted({kk[3] for kk in latest})[0]:
            lines.append(f"- {k[0]} / {k[2]}: `simple-rlhf {r['command']}`")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS), help="tasks, optionally task=variant")
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--seeds", default="1234,1,2")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "generalization"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "generalization_results.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.jsonl"
    if not args.report_only:
        sys.path.insert(0, str(ROOT / "benchmarks" / "tasks"))
        from make_tasks import make_task

        for spec in args.tasks.split(","):
            task, _, variant = spec.partition("=")
            variant = variant or TASKS[task]
            lang, fmt = variant.split("-")
            task_dir = Path(make_task(task, lang, fmt, work / "tasks", seed=0))
            for seed in (int(s) for s in args.seeds.split(",")):
                for algo in args.algos.split(","):
                    for row in run_cell(task_dir, f"{task}", algo, seed, work / variant):
                        row["variant"] = variant
                        with results_file.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(json.dumps(row), flush=True)
                    results = [json.loads(x) for x in results_file.read_text().splitlines()]
                    write_report(results, Path(args.out), sys.argv[1:])
    results = [json.loads(x) for x in results_file.read_text().splitlines()]
    write_report(results, Path(args.out), sys.argv[1:])


if __name__ == "__main__":
    main()
