"""The preference trainers on 2 real CPU processes (gloo): DPO under DDP, ZeRO-2 (optimizer
offload, reference log-probs precomputed on each rank's shard) and ZeRO-3 (policy and frozen
reference partitioned), KTO under ZeRO-3 — each against a single-process run on the same global
batch (per rank 4 examples x 2 ranks = 8 examples in one process, 3 optimiser steps, linear
schedule from 1e-3 with no warm-up, gradients clipped to norm 1), starting from the tiny SFT model.

This file is also the worker that ``torchrun`` starts on every rank:
``python test_distributed_preference.py SPEC.json`` runs the listed trainings in one process group
and, just before each model is saved, writes every rank's full (gathered) weights and what it saw
(``rank{R}.json``: ranks, world size, engine kind, ZeRO stage), through the recorder of
``tests/infra/dist_worker.py``.

Tolerances (measured on this machine in brackets):
* train loss of steps 1-3: rtol 1e-6 [<= 2.1e-7: only the order of sums over ranks differs]; for
  DPO step 1 is ln 2 for every pair (policy == reference), so steps 2-3 and the step-1 log-probs
  (rtol 1e-6 [7.9e-8]) carry the comparison; precomputed reference log-probs (computed per rank
  in other batches, other padding): rtol 1e-5 [1.3e-7]. KTO: each rank forms its mismatched KL
  pairs within its slice, which with an even per-rank batch are the pairs of the whole batch
  (``kto.mismatch_partner``), and z0 is all-reduced, so KTO is as exact as DPO;
* held-out metrics before/after (4 examples per rank vs 8 in one process): rel 1e-5 [<= 4e-6];
* saved weights (ZeRO-3: gathered on rank 0) vs one process: atol 1e-5 [<= 1.2e-6], with AdamW
  epsilon 1e-6: with the default 1e-8 a weight whose gradient is within rounding of 0 moves by an
  amount ~lr that rounding decides (9.3e-5 measured); the weights move by > 1e-3 (asserted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import test_distributed as td  # noqa: E402 - helpers only (its tests are not collected here)

COMMON = {
    "report_to": ["jsonl"],
    "progress_bar": False,
    "gold_eval_prompts": 0,
    "max_steps": 3,
    "logging_steps": 1,
    "warmup_ratio": 0.0,
    "learning_rate": 1e-3,
    "adam_epsilon": 1e-6,  # bounds how far rounding noise in a ~0 gradient moves a weight
    "max_eval_samples": 8,
}
PER_RANK = {**COMMON, "per_device_train_batch_size": 4}
# name -> (trainer, overrides, single-process reference run, loss rtol of steps 1-3)
RUNS = {
    "dpo_ddp": ("dpo", {}, "dpo", 1e-6),
    "dpo_zero2_offload_precomputed": (
        "dpo",
        {"zero_stage": 2, "offload": "optimizer", "precompute_ref_log_probs": True},
        "dpo",
        1e-5,
    ),
    "dpo_zero3": ("dpo", {"zero_stage": 3}, "dpo", 1e-6),
    "kto_zero3": ("kto", {"zero_stage": 3}, "kto", 1e-6),
}


def _config(trainer: str, overrides: dict):
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.kto import KTOConfig
    from simple_rlhf.trainers.preference import DPOConfig

    return load_config({"dpo": DPOConfig, "kto": KTOConfig}[trainer], overrides=overrides)


def _run(trainer: str, overrides: dict) -> dict:
    from simple_rlhf.trainers import kto, preference

    return {"dpo": preference.run, "kto": kto.run}[trainer](_config(trainer, overrides))


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_sft) -> Path:
    """Single-process runs with the whole global batch of 8 (no launcher: no process group)."""
    out = tmp_path_factory.mktemp("pref_reference")
    for trainer in ("dpo", "kto"):
        over = {**COMMON, "model_name_or_path": str(tiny_sft), "per_device_train_batch_size": 8}
        _run(trainer, {**over, "output_dir": str(out / trainer)})
    assert not torch.distributed.is_initialized()
    return out


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory, references, tiny_sft) -> Path:
    import deepspeed  # noqa: F401 - CI must have it: fail here rather than skip

    out = tmp_path_factory.mktemp("pref_torchrun")
    common = {**PER_RANK, "model_name_or_path": str(tiny_sft)}
    runs = [[name, trainer, over] for name, (trainer, over, _, _) in RUNS.items()]
    spec = out / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "common": common, "runs": runs}))
    import dist_worker

    dist_worker.torchrun(__file__, spec, out / "torchrun.log")
    return out


def _metric(folder: Path, key: str) -> list[float]:
    from simple_rlhf.infra.logging import read_jsonl

    return [r[key] for r in read_jsonl(folder / "metrics.jsonl") if key in r]


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_match_one_process(name, torchrun_runs, references, tiny_sft):
    """Two ranks (4 examples each) = one process (8 examples): same train losses and step-1
    log-probs, same held-out metrics, same saved weights (ZeRO-3: gathered on rank 0),
    identical weights on both ranks, and really two ranks."""
    trainer, over, ref_name, rtol = RUNS[name]
    folder, ref = torchrun_runs / name, references / ref_name
    kind = "ddp" if "zero_stage" not in over else "ds"
    td.assert_two_synchronised_ranks(folder, kind, over.get("zero_stage"))
    got, want = td.losses(folder), td.losses(ref)
    assert len(got) == len(want) == 3
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
    for key in ("train/logps/chosen", "train/logps/rejected"):
        torch.testing.assert_close(_metric(folder, key)[0], _metric(ref, key)[0], rtol=rtol, atol=0)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    ref_summary = json.loads((ref / "summary.json").read_text())
    for when in ("before", "after"):
        for key in ("eval/loss", "eval/logps/chosen", "eval/rewards/accuracy"):
            assert summary[when][key] == pytest.approx(ref_summary[when][key], rel=1e-5), key
    base = load_file(str(tiny_sft / "model.safetensors"))
    saved = load_file(str(folder / "model.safetensors"))
    want_w = load_file(str(ref / "model.safetensors"))
    assert saved.keys() == want_w.keys()
    for k in want_w:
        torch.testing.assert_close(saved[k], want_w[k], rtol=0, atol=1e-5, msg=k)
    assert max(float((want_w[k] - base[k]).abs().max()) for k in base) > 1e-3


# ---- the worker (run by torchrun on every rank) ---------------------------------------------


def main(argv: list[str]) -> None:
    from dist_worker import _recording_save_hf

    from simple_rlhf.infra.distributed import Engine

    spec = json.loads(Path(argv[0]).read_text())
    Engine.save_hf = _recording_save_hf
    for name, trainer, overrides in spec["runs"]:
        out = Path(spec["out"]) / name
        _run(trainer, {**spec["common"], **overrides, "output_dir": str(out)})


if __name__ == "__main__":
    main(sys.argv[1:])
