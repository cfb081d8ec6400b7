"""The reward-model trainer on 2 real CPU processes (gloo): DDP, ZeRO-2, ZeRO-3 with offload.

One ``torchrun --standalone --nproc_per_node 2`` launch runs this file as its worker (``python
test_distributed_reward.py SPEC.json``, see :func:`main`): several short RM trainings in one
process group, from the tiny base model (new scalar head, seeded). Each is compared with a
single-process run on the same global batch: per rank 4 pairs x 2 ranks = 8 pairs in one process,
3 optimiser steps, cosine schedule from 1e-3 with no warm-up (constant for the resumed ZeRO-3
run), gradients clipped to norm 1, 8 held-out pairs scored (split over the ranks, gathered). The
comparison helpers are those of ``tests/infra/test_distributed.py`` (SFT); the worker reuses its
``dist_worker`` recording (every rank writes its full weights, gathered under ZeRO-3, and its
world size just before saving).

Tolerances (measured on this machine in brackets):
* train loss of steps 1-3: rtol 1e-6 [<= 1.9e-7: only the order of the sums over ranks differs];
* held-out accuracy / Spearman: equal (same scores, gathered in order); held-out loss rtol 1e-5
  [3e-8]; mean of the normalisation scores rel 1e-4 [6e-6];
* saved weights: atol 1e-4 (as for SFT: Adam's first steps move a weight whose gradient is
  within rounding of zero by a different amount) [<= 6.4e-5, a few elements; weights move by
  up to ~3e-3, asserted > 1e-3].

The forward goes through the DDP / DeepSpeed wrapper (``models/reward.py::head_values``); had it
called the backbone directly, DDP would not average the gradients and the two ranks' weights
(asserted identical) and the losses would differ.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _module(name: str):
    """A sibling test helper module loaded by path (the suite imports with importlib mode)."""
    spec = importlib.util.spec_from_file_location(f"_rm_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


COMMON = {
    "report_to": ["jsonl"],
    "progress_bar": False,
    "max_steps": 3,
    "logging_steps": 1,
    "warmup_ratio": 0.0,
    "adam_epsilon": 1e-6,  # bounds how far rounding noise in a ~0 gradient moves a weight
    "learning_rate": 1e-3,  # 3 steps must move the weights measurably (> 1e-3)
    "max_eval_samples": 8,
    "per_device_eval_batch_size": 4,
}
RUNS = {  # 2-rank run -> its single-process reference
    "ddp": "ref",
    "zero2": "ref",
    "zero3_offload": "ref_constant",
}
LAUNCH = [
    ["ddp", {}],
    ["zero2", {"zero_stage": 2}],
    # ZeRO-3, parameters and optimizer on CPU; 2 steps + a sharded checkpoint, then resumed to 3
    ["zero3_offload", {"zero_stage": 3, "offload": "all", **{"max_steps": 2, "save_steps": 2}}],
    ["zero3_offload", {"zero_stage": 3, "offload": "all", "save_steps": 2}],
]
CONSTANT = {"lr_scheduler_type": "constant"}  # resuming must not change the schedule


# ---- worker (one per rank) ----------------------------------------------------------------------


def main(spec_path: str) -> None:
    """Every rank: run each RM training of SPEC in this process group."""
    from simple_rlhf.config import load_config
    from simple_rlhf.infra.distributed import Engine
    from simple_rlhf.trainers.reward import RewardConfig, run

    Engine.save_hf = _module("dist_worker")._recording_save_hf
    spec = json.loads(Path(spec_path).read_text())
    for name, overrides in spec["runs"]:
        out = Path(spec["out"]) / name
        run(
            load_config(
                RewardConfig, overrides={**spec["common"], **overrides, "output_dir": str(out)}
            )
        )


# ---- tests ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helpers():
    return _module("test_distributed")


@pytest.fixture(scope="module")
def rm_runs(tmp_path_factory, tiny_base, helpers) -> Path:
    """The single-process reference (batch 8) and the 2-rank runs (batch 4 per rank)."""

    import deepspeed  # noqa: F401 - CI must have it: fail here rather than skip

    from simple_rlhf.config import load_config
    from simple_rlhf.trainers.reward import RewardConfig, run

    out = tmp_path_factory.mktemp("rm_dist")
    common = {**COMMON, "model_name_or_path": str(tiny_base)}
    for ref, extra in (("ref", {}), ("ref_constant", CONSTANT)):
        over = {**common, **extra, "per_device_train_batch_size": 8, "output_dir": str(out / ref)}
        run(load_config(RewardConfig, overrides=over))
    assert not torch.distributed.is_initialized()
    spec = out / "spec.json"
    runs = [[k, {**v, **(CONSTANT if k == "zero3_offload" else {})}] for k, v in LAUNCH]
    per_rank = {**common, "per_device_train_batch_size": 4}
    spec.write_text(json.dumps({"out": str(out), "common": per_rank, "runs": runs}))
    _module("dist_worker").torchrun(__file__, spec, out / "torchrun.log")
    return out


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_rm_two_ranks_match_one_process(name, rm_runs, helpers, tiny_base):
    """2 ranks x 4 pairs = 1 process x 8 pairs: same train losses (steps 1-3), same held-out
    metrics before/after training, both ranks hold identical weights, the saved RM (ZeRO-3:
    gathered on rank 0) equals the single-process save; world size 2 asserted. The ZeRO-3 run
    stopped after step 2 and resumed from its sharded DeepSpeed checkpoint."""
    from safetensors.torch import load_file

    folder, ref = rm_runs / name, rm_runs / RUNS[name]
    stage = dict(LAUNCH)[name].get("zero_stage")
    helpers.assert_two_synchronised_ranks(folder, "ddp" if stage is None else "ds", stage)
    got, want = helpers.losses(folder), helpers.losses(ref)
    assert len(got) == len(want) == 3
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    summary = json.loads((folder / "summary.json").read_text())
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and ref_summary["world_size"] == 1
    resumed = name == "zero3_offload"
    if resumed:
        assert (folder / "checkpoints" / "step-2" / "state.json").exists()
    # the resumed run starts at step 2 and keeps the first launch's "before" metrics
    for when in ("before", "after"):
        g, w = summary[when], ref_summary[when]
        assert g["eval/accuracy"] == w["eval/accuracy"]
        assert g["eval/spearman_gold"] == pytest.approx(w["eval/spearman_gold"], abs=1e-12)
        assert g["eval/loss"] == pytest.approx(w["eval/loss"], rel=1e-5)
    stats, ref_stats = summary["reward_stats"], ref_summary["reward_stats"]
    assert stats["n"] == ref_stats["n"] == 8
    assert stats["mean"] == pytest.approx(ref_stats["mean"], rel=1e-4, abs=1e-5)
    want = load_file(str(ref / "model.safetensors"))
    helpers.assert_same_weights(load_file(str(folder / "model.safetensors")), want)
    init = load_file(str(tiny_base / "model.safetensors"))  # the backbone's start (no head)
    moved = max(float((want[k] - init[k]).abs().max()) for k in want if k in init)
    assert moved > 1e-3


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_rm_save_loads_as_its_kind(rm_runs):
    """The default (likelihood) RM gathered from ZeRO-3 loads as a plain causal LM that names its
    kind, and scores a response like the single-process RM (atol 1e-5)."""
    from transformers import AutoModelForCausalLM

    from simple_rlhf.models.reward import RewardScorer

    model = AutoModelForCausalLM.from_pretrained(rm_runs / "zero3_offload")
    assert model.config.reward_kind == "likelihood"
    got, want = (
        RewardScorer.load(str(rm_runs / f), normalize=False).score(["Q: a colour?"], ["red."])[0]
        for f in ("zero3_offload", "ref_constant")
    )
    assert got == pytest.approx(want, abs=1e-5)


if __name__ == "__main__":
    main(sys.argv[1])
