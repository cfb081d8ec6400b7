"""Preference-optimisation benchmark: DPO, IPO, KTO, SimPO, CPO, CPO-SimPO, ORPO from one SFT model.

Each method runs with its tiny recipe (``configs/tiny/<command>.yaml``; IPO and CPO-SimPO add the
flags shown in the table) starting from the same step-1 SFT model, and the greedy gold reward of
answers to 64 held-out tiny-task prompts is read before and after; held-out preference accuracy is
the method's own implicit-reward accuracy on the 200 held-out pairs (for KTO: ``β(log π - log
π_ref)`` on those pairs). Without ``--sft`` the SFT model is trained first with the ``sft``
defaults (about 40 s on an idle 2-core machine).

    .venv/bin/python benchmarks/preference.py --out /tmp/pref-bench \\
        --markdown benchmarks/preference_results.md

    # re-use an SFT model, a subset, extra overrides for every run (tuning):
    .venv/bin/python benchmarks/preference.py --sft outputs/sft --methods DPO IPO --set beta=0.2

Takes 1-5 minutes per method on a shared 2-core machine (``--threads 1`` is much faster there:
two torch threads per process on an oversubscribed machine ran ~10x slower per step).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# (row name, command, extra flags on top of configs/tiny/<command>.yaml)
METHODS: list[tuple[str, str, dict]] = [
    ("DPO", "dpo", {}),
    ("IPO", "dpo", {"loss_type": ["ipo"], "beta": 0.5}),
    ("KTO", "kto", {}),
    ("SimPO", "simpo", {}),
    ("CPO", "cpo", {}),
    ("CPO-SimPO", "cpo", {"loss_type": "simpo", "beta": 2.0}),
    ("ORPO", "orpo", {}),
]


def flags(extra: dict) -> str:
    out = []
    for k, v in extra.items():
        v = " ".join(map(str, v)) if isinstance(v, list) else v
        out.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(out)


def config_class(command: str):
    from simple_rlhf.cli.main import COMMANDS

    module, cls, _, _ = COMMANDS[command]
    mod = importlib.import_module(module)
    return getattr(mod, cls), mod.run


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", default=None, help="SFT model folder (default: train one in --out)")
    ap.add_argument("--out", default="/tmp/pref-bench", help="where the runs are written")
    ap.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS])
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run")
    ap.add_argument("--markdown", default=None, help="write the results table to this file")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)"
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from simple_rlhf.config import load_config

    out = Path(args.out)
    sft_path = args.sft
    if sft_path is None:
        sft_cls, sft_run = config_class("sft")
        sft_path = str(out / "sft")
        sft_run(
            load_config(
                sft_cls,
                overrides={"output_dir": sft_path, "report_to": ["jsonl"], "progress_bar": False},
            )
        )
    extra_all = parse_set(args.set)
    rows = []
    for name, command, extra in METHODS:
        if name not in args.methods:
            continue
        cls, run = config_class(command)
        overrides = {
            **extra,
            **extra_all,
            "model_name_or_path": sft_path,
            "output_dir": str(out / name.lower()),
            "report_to": ["jsonl"],
            "progress_bar": False,
            "resume": False,
        }
        cfg = load_config(cls, ROOT / "configs" / "tiny" / f"{command}.yaml", overrides)
        t0 = time.perf_counter()
        summary = run(cfg)
        before, after = summary["before"], summary["after"]
        row = {
            "method": name,
            "command": f"simple-rlhf {command} --config configs/tiny/{command}.yaml "
            + flags({**extra, **extra_all}),
            "gold_before": before["eval/gold_greedy"],
            "gold_after": after["eval/gold_greedy"],
            "acc_before": before.get("eval/rewards/accuracy"),
            "acc_after": after.get("eval/rewards/accuracy"),
            # KTO: the margin on held-out pairs (its eval/rewards/margin is over unpaired data)
            "margin_after": after.get("eval/pairs/margin", after.get("eval/rewards/margin")),
            "steps": summary["steps"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows, sft_path, args.threads)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)


def markdown(rows: list[dict], sft_path: str, threads: int | None) -> str:
    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = [
        "# Preference optimisation on the tiny task",
        "",
        "Every method starts from the same step-1 SFT model (`simple-rlhf sft` defaults) and runs "
        "its tiny recipe `configs/tiny/<command>.yaml` (plus the flags shown). **Gold** = mean "
        "gold reward of greedy answers to 64 held-out prompts (before = the SFT model). **Pref. "
        "acc.** = how often the method's implicit reward ranks the chosen answer of a held-out "
        "pair first (200 pairs): β·(log π − log π_ref) for DPO/IPO/KTO (0 before training, when "
        "policy = reference and every reward is 0), β·(log-prob) for CPO, β·(average log-prob) "
        "for SimPO/CPO-SimPO and λ·(average log-prob) for ORPO, so their 'before' is the SFT "
        "model's own ranking. Labels "
        "carry 10% noise, so about 0.9 is the ceiling. **Margin** = mean chosen − rejected "
        "implicit reward on those pairs. Wall seconds include the before/after evaluations. "
        "One run each, seed 1234; runs are deterministic on one machine.",
        "",
        "Regenerate: `.venv/bin/python benchmarks/preference.py --threads 1 --out "
        "/tmp/pref-bench --markdown benchmarks/preference_results.md` (trains the SFT model "
        "first; `--sft DIR` re-uses one; `--methods DPO KTO` runs a subset).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), torch "
        f"threads: {threads or 'default'}; SFT model: `{sft_path}`.",
        "",
        "| method | gold before | gold after | Δ gold | pref. acc. before | pref. acc. after "
        "| margin after | steps | wall s | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {f(r['gold_before'])} | {f(r['gold_after'])} "
            f"| {r['gold_after'] - r['gold_before']:+.3f} | {f(r['acc_before'])} "
            f"| {f(r['acc_after'])} | {f(r['margin_after'])} | {r['steps']} | {r['seconds']} "
            f"| `{r['command'].strip()}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
