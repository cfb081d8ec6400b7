"""QLoRA vs LoRA benchmark on the tiny task: the same LoRA settings with a full-precision base and
with a 4-bit NF4 base (``--load-in-4bit``), for SFT (from the tiny random-init base) and, with
``--dpo``, for DPO (from an SFT model, ``configs/tiny/dpo.yaml``).

Reported per run: held-out loss (SFT) or held-out preference accuracy (DPO) and the greedy gold
reward of answers to 64 held-out prompts, before and after; steps and wall seconds. Each run is
in-process, one after the other, seed 1234.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qlora.py --threads 1 --out /tmp/qlora-bench \\
        --markdown benchmarks/qlora_results.md

    # DPO too, from an existing SFT model (skips nothing else):
    ... --dpo --sft outputs/sft

The settings (``SFT_FLAGS``) are LoRA rank 16 on all linear layers with a higher learning rate
than full fine-tuning: adapters on a frozen *random* base (embeddings and head frozen too) need it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SFT_FLAGS: dict = {
    "lora_dim": 16,
    "lora_alpha": 32.0,
    "lora_module_name": "all-linear",
    "learning_rate": 1e-2,
}
DPO_FLAGS: dict = {"lora_dim": 16, "lora_alpha": 32.0, "lora_module_name": "all-linear"}
# (name, extra flags). "+ rest": --no-only-optimize-lora, i.e. the weights outside the adapters
# train too: all of them for LoRA, the unquantised ones (embeddings/head, norms) for QLoRA.
VARIANTS: list[tuple[str, dict]] = [
    ("LoRA", {}),
    ("QLoRA", {"load_in_4bit": True}),
    ("LoRA + rest", {"only_optimize_lora": False}),
    ("QLoRA + rest", {"load_in_4bit": True, "only_optimize_lora": False}),
]
QUIET = {"report_to": ["jsonl"], "progress_bar": False, "resume": False}


def flags(extra: dict) -> str:
    out = []
    for k, v in extra.items():
        name = k.replace("_", "-")
        out.append(f"--{name}" if v is True else f"--no-{name}" if v is False else f"--{name} {v}")
    return " ".join(out)


def slug(name: str) -> str:
    return name.lower().replace(" + ", "-").replace(" ", "-")


def run_sft(out: Path, name: str, extra: dict, epochs: int | None) -> dict:
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.sft import SFTConfig, run

    settings = {**SFT_FLAGS, **extra, **({"num_train_epochs": epochs} if epochs else {})}
    overrides = {**settings, **QUIET, "output_dir": str(out / f"sft-{slug(name)}")}
    t0 = time.perf_counter()
    summary = run(load_config(SFTConfig, overrides=overrides))
    before, after = summary["before"], summary["after"]
    return {
        "stage": "SFT",
        "variant": name,
        "metric": "eval loss",
        "metric_before": before["eval/loss"],
        "metric_after": after["eval/loss"],
        "gold_before": before.get("eval/gold_greedy"),
        "gold_after": after.get("eval/gold_greedy"),
        "steps": summary["steps"],
        "seconds": round(time.perf_counter() - t0, 1),
        "command": f"simple-rlhf sft {flags(settings)} --output-dir {overrides['output_dir']}",
    }


def run_dpo(out: Path, name: str, extra: dict, sft: str) -> dict:
    from simple_rlhf.cli.main import COMMANDS
    from simple_rlhf.config import load_config

    module, cls_name, _, _ = COMMANDS["dpo"]
    import importlib

    mod = importlib.import_module(module)
    settings = {**DPO_FLAGS, **extra}
    overrides = {
        **settings,
        **QUIET,
        "model_name_or_path": sft,
        "output_dir": str(out / f"dpo-{slug(name)}"),
    }
    cfg = load_config(getattr(mod, cls_name), ROOT / "configs" / "tiny" / "dpo.yaml", overrides)
    t0 = time.perf_counter()
    summary = mod.run(cfg)
    before, after = summary["before"], summary["after"]
    return {
        "stage": "DPO",
        "variant": name,
        "metric": "pref. acc.",
        "metric_before": before.get("eval/rewards/accuracy"),
        "metric_after": after.get("eval/rewards/accuracy"),
        "gold_before": before.get("eval/gold_greedy"),
        "gold_after": after.get("eval/gold_greedy"),
        "steps": summary["steps"],
        "seconds": round(time.perf_counter() - t0, 1),
        "command": f"simple-rlhf dpo --config configs/tiny/dpo.yaml --model-name-or-path {sft} "
        + flags(settings),
    }


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], threads: int | None) -> str:
    lines = [
        "# QLoRA vs LoRA on the tiny task",
        "",
        "Same LoRA settings with a full-precision base (LoRA) and a 4-bit NF4 base with double "
        "quantisation (QLoRA, `--load-in-4bit`, bitsandbytes on CPU). SFT starts from the tiny "
        "random-init base: **eval loss** = held-out token-averaged cross-entropy of responses; "
        "DPO starts from an SFT model: **pref. acc.** = implicit-reward accuracy on 200 held-out "
        "pairs. **Gold** = mean gold reward of greedy answers to 64 held-out prompts. The saved "
        "QLoRA models are plain fp32 folders (adapters merged into the dequantised NF4 base), so "
        "'after' is measured on exactly what is saved. One run each, seed 1234.",
        "",
        f"Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qlora.py --threads "
        f"{threads or 1} --markdown benchmarks/qlora_results.md` (add `--dpo --sft DIR`).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), torch "
        f"threads: {threads or 'default'}.",
        "",
        "| stage | variant | metric | before | after | gold before | gold after | steps | wall s "
        "| command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["stage"],
            r["variant"],
            r["metric"],
            fmt(r["metric_before"]),
            fmt(r["metric_after"]),
            fmt(r["gold_before"]),
            fmt(r["gold_after"]),
            fmt(r["steps"]),
            f"{r['seconds']:.0f}",
            f"`{r['command']}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/qlora-bench", help="where the runs are written")
    ap.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    ap.add_argument("--epochs", type=int, default=None, help="SFT epochs (default: sft's 6)")
    ap.add_argument("--skip-sft", action="store_true", help="only the DPO runs")
    ap.add_argument("--dpo", action="store_true", help="also DPO from --sft")
    ap.add_argument("--sft", default=None, help="SFT model for DPO (default: train one)")
    ap.add_argument("--markdown", default=None, help="write the results table to this file")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides for every run")
    ap.add_argument("--collect", nargs="*", default=None, help="only tabulate these out dirs")
    args = ap.parse_args()
    if args.collect is not None:  # runs made by several invocations (e.g. in parallel)
        rows = [r for d in args.collect for r in json.loads((Path(d) / "results.json").read_text())]
        table = markdown(rows, args.threads)
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        SFT_FLAGS[key.replace("-", "_")] = parsed
        DPO_FLAGS[key.replace("-", "_")] = parsed
    out = Path(args.out)
    rows: list[dict] = []
    results = out / "results.json"
    if results.exists():  # keep earlier rows (e.g. SFT) when adding others (e.g. DPO)
        rows = [
            r
            for r in json.loads(results.read_text())
            if not (r["stage"] == "DPO" and args.dpo)
            and not (r["stage"] == "SFT" and not args.skip_sft)
        ]
    chosen = [v for v in VARIANTS if v[0] in args.variants]
    if not args.skip_sft:
        for name, extra in chosen:
            rows.append(run_sft(out, name, extra, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
    if args.dpo:
        sft = args.sft
        if sft is None:
            from simple_rlhf.config import load_config
            from simple_rlhf.trainers.sft import SFTConfig, run

            sft = str(out / "sft-full")
            run(load_config(SFTConfig, overrides={**QUIET, "output_dir": sft}))
        for name, extra in chosen:
            rows.append(run_dpo(out, name, extra, sft))
            print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rows, indent=2))
    table = markdown(rows, args.threads)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
