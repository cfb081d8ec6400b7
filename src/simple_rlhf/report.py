"""The pipeline report: wall time per step (DeepSpeed-Chat style table), key metrics of each step
before -> after, and PNG plots of the training curves, from the files the steps wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simple_rlhf.infra.logging import read_jsonl

STEPS = {
    1: ("actor-sft", "Step 1 (SFT)"),
    2: ("reward", "Step 2 (RM)"),
    3: ("actor-ppo", "Step 3 (PPO)"),
}

# curves worth a picture, by prefix; each present key gets a panel
PLOT_KEYS = (
    "train/loss",
    "eval/loss",
    "eval/accuracy",
    "eval/gold_greedy",
    "reward/score_mean",
    "objective/kl",
    "policy/entropy",
    "critic/value_loss",
)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _numbers(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {
        k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def step_metrics(summary: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(metric, before, after) rows from a step's summary.json (before/after dicts + scalars)."""
    before, after = _numbers(summary.get("before")), _numbers(summary.get("after"))
    rows = [(k, before.get(k), after[k]) for k in after]
    rows += [(k, None, v) for k, v in _numbers(summary).items()]
    return rows


def plot_step(metrics_file: Path, out_png: Path, title: str) -> bool:
    """One PNG with a panel per interesting curve; False when there is nothing to plot."""
    rows = read_jsonl(metrics_file)
    series = {}
    for key in PLOT_KEYS:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if len(pts) >= 2:
            series[key] = pts
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    for ax, (key, pts) in zip(axes[0], series.items(), strict=True):
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, linewidth=1.5)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return True


def write_report(root: str | Path, times: dict[int, float]) -> dict[str, Any]:
    """Write report.md, report.json and plots/*.png under ``root``; returns the JSON form."""
    root = Path(root)
    report: dict[str, Any] = {"steps": {}, "times_s": {}}
    lines = ["# RLHF pipeline report", "", "## Wall time", ""]
    header = [label for _, label in STEPS.values()] + ["Total"]
    cells = [_fmt_time(times.get(s)) for s in STEPS]
    total = sum(times.get(s, 0.0) for s in STEPS)
    cells.append(_fmt_time(total))
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(cells) + " |",
    ]
    report["times_s"] = {str(s): times.get(s) for s in STEPS} | {"total": total}
    for s, (folder, label) in STEPS.items():
        summary_file = root / folder / "summary.json"
        if not summary_file.exists():
            continue
        summary = json.loads(summary_file.read_text())
        rows = step_metrics(summary)
        report["steps"][str(s)] = {
            "folder": folder,
            "metrics": {k: {"before": b, "after": a} for k, b, a in rows},
        }
        lines += [
            "",
            f"## {label}: `{folder}/`",
            "",
            "| metric | before | after |",
            "|---|---|---|",
        ]
        for k, b, a in rows:
            lines.append(
                f"| {k} | {'' if b is None else f'{b:.4g}'} | {'' if a is None else f'{a:.4g}'} |"
            )
        png = root / "plots" / f"step{s}.png"
        if plot_step(root / folder / "metrics.jsonl", png, label):
            lines += ["", f"![{label} curves](plots/{png.name})"]
    (root / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "report.json").write_text(json.dumps(report, indent=2))
    return report
