"""Reward-model benchmark on the tiny task: variants of ``simple-rlhf reward`` from one SFT model.

Each variant is one ``simple-rlhf reward`` run (defaults + the flags in the table) from the same
step-1 SFT model. Read from the run's summary (200 held-out pairs, 400 held-out responses):
accuracy against the (10%-noisy) labels, accuracy against the noise-free gold order, Spearman of
the RM score with the gold reward over the 400 responses, and, as a diagnostic, that Spearman
within the responses to 1-, 2- and 3-thing prompts (``k``): the labels only order answers to the
same prompt, so how scores of different prompts line up is left to the model.

    .venv/bin/python benchmarks/reward.py --sft outputs/sft --out /tmp/rm-bench --threads 1 \\
        --markdown benchmarks/reward_results.md
    # a subset, two at a time:
    .venv/bin/python benchmarks/reward.py --sft outputs/sft --variants default mixed --jobs 2

Without ``--sft`` the SFT model is trained first with the ``sft`` defaults. A default run is 1500
optimiser steps: 3-12 minutes on a shared 2-core machine with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

# (name, overrides on top of the RewardConfig defaults)
VARIANTS: dict[str, dict] = {
    "default": {},  # loss_type pairwise
    "seed2": {"seed": 2},
    "mixed": {"loss_type": "mixed"},
    "mixed-seed2": {"loss_type": "mixed", "seed": 2},
    "mixed-tok4": {"loss_type": "mixed", "token_loss_coef": 4.0},
    "dschat": {"loss_type": "dschat"},
    "dschat-seed2": {"loss_type": "dschat", "seed": 2},
    "pairwise-base": {"model_name_or_path": "tiny"},
    "dschat-base": {"loss_type": "dschat", "model_name_or_path": "tiny"},
}
KEYS = ("eval/accuracy", "eval/gold_accuracy", "eval/spearman_gold")


def flags(extra: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in extra.items())


def worker(spec: str) -> None:
    """Run one variant in this process (``--worker``): ``{"overrides": {...}, "threads": N}``."""
    import torch

    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.reward import RewardConfig, run

    s = json.loads(spec)
    if s.get("threads"):
        torch.set_num_threads(s["threads"])
    run(load_config(RewardConfig, overrides=s["overrides"]))


def per_k_spearman(rm_dir: Path, threads: int | None) -> dict[str, float]:
    """Spearman(score, gold) within the held-out responses to k-thing prompts, k = 1, 2, 3."""
    import torch

    from simple_rlhf.config import load_config
    from simple_rlhf.data.pipeline import load_encoded
    from simple_rlhf.data.tiny_task import parse_prompt
    from simple_rlhf.models.reward import RewardScorer
    from simple_rlhf.trainers.reward import RewardConfig
    from simple_rlhf.trainers.reward_eval import gold_rewards, score_examples, spearman

    if threads:
        torch.set_num_threads(threads)
    scorer = RewardScorer.load(str(rm_dir), normalize=False)
    data = yaml.safe_load((rm_dir / "run_config.yaml").read_text())["data"]
    cfg = load_config(RewardConfig, yaml_data={"data": data})
    evals, _ = load_encoded(scorer.tokenizer, cfg.data, "pair", step=2, split="eval")
    c, r = score_examples(scorer.model, evals, 32, scorer.tokenizer.pad_token_id)
    gold = gold_rewards(scorer.tokenizer, evals)
    k = [
        len(parse_prompt(scorer.tokenizer.decode(e["prompt_ids"], skip_special_tokens=True))[0])
        for e in evals
    ] * 2
    scores, golds = c.tolist() + r.tolist(), [g for g, _ in gold] + [g for _, g in gold]
    out = {}
    for n in (1, 2, 3):
        idx = [i for i, kk in enumerate(k) if kk == n]
        out[f"k{n}"] = spearman([scores[i] for i in idx], [golds[i] for i in idx])
    return out


def launch(name: str, overrides: dict, out: Path, sft: str, threads: int | None):
    over = {
        "model_name_or_path": sft,
        "output_dir": str(out / name),
        "report_to": ["jsonl"],
        "progress_bar": False,
        **overrides,
    }
    spec = json.dumps({"overrides": over, "threads": threads})
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    log = (out / f"{name}.log").open("w")
    cmd = [sys.executable, __file__, "--worker", spec]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time()


def row(name: str, out: Path, seconds: float, threads: int | None) -> dict:
    summary = json.loads((out / name / "summary.json").read_text())
    res = {"variant": name, "flags": flags(VARIANTS[name]), "wall_s": round(seconds, 1)}
    for when in ("before", "after"):
        for k in KEYS:
            res[f"{when} {k[5:]}"] = summary[when][k]
    res["steps"] = summary["steps"]
    res.update(per_k_spearman(out / name, threads))
    return res


def markdown(rows: list[dict], sft: str, threads: int | None) -> str:
    head = (
        "| variant | flags | acc before | acc after | gold-order acc | Spearman | "
        "Spearman k=1 / 2 / 3 | steps | wall s |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['variant']} | `{r['flags'] or '(defaults)'}` | {r['before accuracy']:.3f} | "
        f"**{r['after accuracy']:.3f}** | {r['after gold_accuracy']:.3f} | "
        f"**{r['after spearman_gold']:.3f}** | {r['k1']:.2f} / {r['k2']:.2f} / {r['k3']:.2f} | "
        f"{r['steps']} | {r['wall_s']} |"
        for r in rows
    ]
    return (
        "# Reward model on the tiny task\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch threads: "
        f"{threads}; SFT model: `{sft}`.\n\n" + head + "\n".join(lines) + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sft", default=None, help="SFT model folder (default: train one in --out)")
    ap.add_argument("--out", default="/tmp/rm-bench")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=1, help="variants run at the same time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--markdown", default=None, help="write the table to this file")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sft = args.sft
    if sft is None:
        from simple_rlhf.config import load_config
        from simple_rlhf.trainers.sft import SFTConfig
        from simple_rlhf.trainers.sft import run as sft_run

        sft = str(out / "sft")
        sft_run(load_config(SFTConfig, overrides={"output_dir": sft, "progress_bar": False}))
    pending, running, rows = list(args.variants), {}, []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            running[name] = launch(name, VARIANTS[name], out, sft, args.threads)
        time.sleep(5)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                print(f"{name} failed, see {out / name}.log", flush=True)
                continue
            rows.append(row(name, out, time.time() - t0, args.threads))
            print(json.dumps(rows[-1]), flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
    order = {n: i for i, n in enumerate(args.variants)}
    rows.sort(key=lambda r: order[r["variant"]])
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, sft, args.threads))


if __name__ == "__main__":
    main()
