"""Learning curves of finished distillation runs: held-out greedy gold (and forward KL to the
teacher) at chosen optimiser steps, read from each run's ``summary.json`` (per-epoch evaluations).

    python benchmarks/distill_curve.py --steps 500 1000 1500 2000 3000 4500 \\
        /tmp/distill/rm_fresh_long/kd_lmbda1.0_beta*

Prints a markdown table, one row per run folder; a step that is not an epoch end of that run
(or beyond its length) is left blank.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def curve_points(summary: dict[str, Any]) -> dict[int, dict[str, float]]:
    """``{step: metrics}`` of a run's evaluations: before training (step 0), each epoch end and the
    final one. A run of E whole epochs stores ``epoch_1 .. epoch_{E-1}``; its last epoch end is
    the final evaluation (``after``), so an epoch is ``steps / E`` optimiser steps."""
    epochs = sorted(int(k.split("_")[1]) for k in summary if k.startswith("epoch_"))
    steps = int(summary["steps"])
    per_epoch = steps // ((epochs[-1] if epochs else 0) + 1)
    points = {0: summary["before"], steps: summary["after"]}
    points.update({e * per_epoch: summary[f"epoch_{e}"] for e in epochs})
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (each with summary.json)")
    ap.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 1500, 2000, 3000, 4500])
    args = ap.parse_args()
    head = " | ".join(f"step {s}" for s in args.steps)
    print(f"| run | {head} |")
    print("|---|" + "---|" * len(args.steps))
    for run in args.runs:
        points = curve_points(json.loads((Path(run) / "summary.json").read_text()))
        cells = []
        for s in args.steps:
            m = points.get(s)
            cells.append(
                f"{m['eval/gold_greedy']:.3f} ({m['eval/forward_kl']:.2f})" if m is not None else ""
            )
        print(f"| {Path(run).parent.name}/{Path(run).name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
