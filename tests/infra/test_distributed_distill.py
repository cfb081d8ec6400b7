"""Distillation and rejection sampling on 2 real CPU processes (gloo), against one process.

One ``torchrun --standalone --nproc_per_node 2`` launch runs this file as its worker (``python
test_distributed_distill.py SPEC.json``, :func:`main`): several short runs in one process group.
Distillation: teacher = the tiny SFT model, student = the tiny base model, 2 optimiser steps of
2 ranks x 2 examples (x accumulation) against one process with 4 examples per micro-batch (the
same global micro-batches: ``common.rank_batches``), constant lr 3e-4:

* ``kd_ddp``: supervised KD (lmbda 0, beta 0.5), DDP, accumulation 2;
* ``kd_zero3``: lmbda 0, forward KL, ZeRO-3 (student and teacher partitioned), held-out
  divergence split over the ranks and gold evaluation (2 prompts, every rank on gathered
  parameters, teacher and student); it stops after step 1 (engine checkpoint) and resumes;
* ``gkd_zero2``: lmbda 0.5, ZeRO-2, accumulation 2; seed 13, whose coins of the 4 global
  micro-batches (index step x accumulation + j) are off, on, on, off: each step mixes student
  samples and dataset responses.

Sampling: ``generate`` draws one random stream per batch, so a sampled response depends on the rows
sampled with it and on the rank's seed. The test samples every row alone (:class:`PerRowSampler`,
patched into ``trainers/distill_dist.py`` in both runs), seeded by ``crc32(prompt) +
generation_seed`` (the rank offset ``1_000_003 x rank`` removed): the response depends on its
prompt and its global micro-batch only, whatever the split, so the 2-rank step equals one
process's.

Rejection sampling (``rs``): 8 prompts x 4 samples of the tiny SFT model scored by the gold
reward, chunks of 2 prompts (generation batch 8), each rank samples 2 chunks with the real
``generate`` (per-chunk seeds); rank 0 writes data.jsonl, then a 1-epoch SFT fine-tune runs on the
2 ranks (2 x 2 examples per step against 4 in one process).

Tolerances (measured on this machine in brackets; other padding widths change logits by float
rounding): loss of both steps rel 1e-5 [<= 1.1e-7], gradient norm rel 1e-4 [<= 1.5e-6]; held-out
metrics (ZeRO-3, split over the ranks) rel 1e-5 [3.3e-7, the perplexity]; saved weights atol 1e-5
[kd_ddp 5.5e-7, kd_zero3 2.1e-6, gkd_zero2 4.0e-7]; data.jsonl identical; the RS fine-tune's
weights atol 1e-5 [7.3e-8]. Time on 2 shared cores: ~45 s (one-process runs ~12 s, the torchrun
launch ~30 s) after the ``tiny_base`` / ``tiny_sft`` fixtures (~65 s, shared with other tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

COMMON = {
    "report_to": ["jsonl"],
    "progress_bar": False,
    "logging_steps": 1,
    "max_steps": 2,
    "lr_scheduler_type": "constant",
    "learning_rate": 3e-4,
    "max_new_tokens": 12,
    "max_eval_samples": 6,
    "gold_eval_prompts": 0,
}
RUNS = {  # name -> settings of both runs (per-device batch: 4 in one process, 2 per rank)
    "kd_ddp": {"lmbda": 0.0, "beta": 0.5, "gradient_accumulation_steps": 2},
    "kd_zero3": {
        "lmbda": 0.0,
        "beta": 0.0,
        "zero_stage": 3,
        "save_steps": 1,
        "gold_eval_prompts": 2,
    },
    "gkd_zero2": {
        "lmbda": 0.5,
        "beta": 0.5,
        "zero_stage": 2,
        "gradient_accumulation_steps": 2,
        "seed": 13,
    },
}
DIST_ONLY = ("zero_stage", "save_steps")
RS = {
    "report_to": ["jsonl"],
    "progress_bar": False,
    "reward_funcs": ["tiny_gold"],
    "num_samples": 4,
    "max_prompts": 8,
    "generation_batch_size": 8,
    "max_new_tokens": 16,
    "num_train_epochs": 1,
    "require_eos": False,  # all 8 prompts kept: 2 SFT steps of 4 in both runs
    "gold_eval_prompts": 2,
}
LAUNCH = [  # kd_zero3 stops after step 1 (checkpoint), then resumes to step 2
    ["distill", "kd_ddp", RUNS["kd_ddp"]],
    ["distill", "kd_zero3", {**RUNS["kd_zero3"], "max_steps": 1}],
    ["distill", "kd_zero3", RUNS["kd_zero3"]],
    ["distill", "gkd_zero2", RUNS["gkd_zero2"]],
    ["rs", "rs", {}],
]


def _module(name: str):
    """A sibling test helper module loaded by path (the suite imports with importlib mode)."""
    spec = importlib.util.spec_from_file_location(f"_distill_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class PerRowSampler:
    """``generate`` replacement: each row sampled alone with seed ``crc32(prompt) + seed - 1_000_003
    x rank`` (= ``crc32(prompt) + generation_seed`` of its global micro-batch); ``seen`` records
    the rows of each call."""

    def __init__(self) -> None:
        from simple_rlhf.rollout.generate import generate

        self.generate, self.seen = generate, []

    def __call__(self, model, tokenizer, prompts, sampling, *, seed=None, streamer=None):
        from simple_rlhf.rollout.generate import concat_rollouts

        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        base = seed - 1_000_003 * rank
        parts = [
            self.generate(
                model, tokenizer, [p], sampling, seed=zlib.crc32(str(list(p)).encode()) + base
            )
            for p in prompts
        ]
        self.seen.append(len(prompts))
        return concat_rollouts(parts, tokenizer.pad_token_id)


def _distill(overrides: dict, out: Path) -> PerRowSampler:
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers import distill, distill_dist

    sampler, original = PerRowSampler(), distill_dist.generate
    distill_dist.generate = sampler
    try:
        cfg = load_config(distill.DistillConfig, overrides={**overrides, "output_dir": str(out)})
        distill.run(cfg)
    finally:
        distill_dist.generate = original
    return sampler


def _rs(overrides: dict, out: Path) -> None:
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers import rejection_sampling as rs

    cfg = load_config(rs.RejectionSamplingConfig, overrides={**overrides, "output_dir": str(out)})
    rs.run(cfg)


# ---- worker (one per rank) ----------------------------------------------------------------------


def main(spec_path: str) -> None:
    """Every rank: each run of SPEC in this process group; records the world size and the rows
    each on-policy ``generate`` call sampled on this rank."""
    spec = json.loads(Path(spec_path).read_text())
    for kind, name, overrides in spec["runs"]:
        out = Path(spec["out"]) / name
        if kind == "rs":
            _rs({**spec["rs"], "per_device_train_batch_size": 2}, out)
            seen: list[int] = []
        else:
            over = {**spec["common"], "per_device_train_batch_size": 2, **overrides}
            seen = _distill(over, out).seen
        rank = int(os.environ["RANK"])
        path = out / f"rank{rank}.json"
        before = json.loads(path.read_text())["seen"] if path.exists() else []
        facts = {"world_size": torch.distributed.get_world_size(), "seen": before + seen}
        path.write_text(json.dumps(facts))


# ---- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base, tiny_sft) -> Path:
    """The single-process references (4 examples per micro-batch) and the 2-rank runs (2 each)."""
    import deepspeed  # noqa: F401 - CI must have it: fail here rather than skip

    out = tmp_path_factory.mktemp("distill_dist")
    common = {
        **COMMON,
        "model_name_or_path": str(tiny_base),
        "teacher_model_name_or_path": str(tiny_sft),
    }
    rs = {**RS, "model_name_or_path": str(tiny_sft)}
    for name, over in RUNS.items():
        single = {k: v for k, v in over.items() if k not in DIST_ONLY}
        _distill({**common, **single, "per_device_train_batch_size": 4}, out / f"{name}_ref")
    _rs({**rs, "per_device_train_batch_size": 4}, out / "rs_ref")
    assert not torch.distributed.is_initialized()
    spec = out / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "common": common, "rs": rs, "runs": LAUNCH}))
    _module("dist_worker").torchrun(__file__, spec, out / "torchrun.log")
    return out


def _steps(folder: Path) -> dict[int, dict]:
    from simple_rlhf.infra.logging import read_jsonl

    return {r["step"]: r for r in read_jsonl(folder / "metrics.jsonl") if "distill/loss" in r}


def _evals(folder: Path, key: str) -> dict[int, dict]:
    """The logged evaluations (rows holding ``key``) by step; a resumed run's first wins."""
    from simple_rlhf.infra.logging import read_jsonl

    out: dict[int, dict] = {}
    for r in read_jsonl(folder / "metrics.jsonl"):
        if key in r:
            out.setdefault(r["step"], r)
    return out


def _assert_same_weights(got: Path, want: Path, name: str) -> None:
    from safetensors.torch import load_file

    g, w = load_file(str(got / "model.safetensors")), load_file(str(want / "model.safetensors"))
    assert g.keys() == w.keys()
    print(name, "weights max abs diff", max(float((g[k] - w[k]).abs().max()) for k in w))
    for k in w:
        torch.testing.assert_close(g[k], w[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_distill_two_ranks_match_one_process(name, runs):
    """2 ranks x 2 examples = 1 process x 4 per global micro-batch: the loss of both steps (the
    token mean of the global step) agrees within rel 1e-5, the saved student (rank 0, gathered
    under ZeRO-3) within atol 1e-5; world size 2 on both ranks. ZeRO-3: the held-out divergence /
    KL / NLL (split over the ranks) and the gold of student and teacher equal one process's
    (rel 1e-5), the run resumed from its step-1 checkpoint. lmbda 0.5: the same coins (on-policy
    share 1/2 in both), each rank sampled 2 rows per on-policy micro-batch (one process: 4)."""
    folder, ref = runs / name, runs / f"{name}_ref"
    facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(f["world_size"] == 2 for f in facts)
    got, want = _steps(folder), _steps(ref)
    assert sorted(got) == sorted(want) == [1, 2]
    for s in (1, 2):
        rel = abs(got[s]["distill/loss"] / want[s]["distill/loss"] - 1)
        print(name, f"step {s} loss", got[s]["distill/loss"], "rel diff", rel)
        assert got[s]["distill/loss"] == pytest.approx(want[s]["distill/loss"], rel=1e-5)
        assert got[s]["train/grad_norm"] == pytest.approx(want[s]["train/grad_norm"], rel=1e-4)
    assert want[1]["train/grad_norm"] > 0.01  # the update did something
    summary = json.loads((folder / "summary.json").read_text())
    want_s = json.loads((ref / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["on_policy_share"] == want_s["on_policy_share"]
    _assert_same_weights(folder, ref, name)
    if name == "kd_zero3":  # before (step 0), after (step 2) and the teacher (step 0)
        assert (folder / "checkpoints" / "step-1" / "state.json").exists()
        for key, step in (("eval/nll", 0), ("eval/nll", 2), ("teacher/gold_greedy", 0)):
            g, w = _evals(folder, key)[step], _evals(ref, key)[step]
            assert g.keys() == w.keys()
            for k in w:
                if k != "time_s":
                    assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7), (step, k)
        assert "eval/gold_greedy" in summary["after"] and "eval/forward_kl" in summary["after"]
    if name == "gkd_zero2":
        assert want_s["on_policy_share"] == 0.5
        assert all(f["seen"] == [2, 2] for f in facts), facts
        assert "rollout/response_len" in got[1] and "rollout/response_len" in got[2]
        for s in (1, 2):
            assert got[s]["rollout/response_len"] == pytest.approx(
                want[s]["rollout/response_len"], rel=1e-6
            )


@pytest.mark.multiproc
@pytest.mark.slow
def test_rejection_sampling_two_ranks_match_one_process(runs):
    """2 ranks sample and score 2 chunks of 2 prompts each: rank 0's data.jsonl is byte-identical
    to one process's (per-chunk seeds), the selection metrics equal; the SFT round then trained
    on both ranks (world size 2 in its summary) to the single-process weights (atol 1e-5), and
    the final policy was saved."""
    folder, ref = runs / "rs", runs / "rs_ref"
    facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(f["world_size"] == 2 for f in facts)
    got = (folder / "round_1" / "data.jsonl").read_text()
    assert got == (ref / "round_1" / "data.jsonl").read_text()
    assert len(got.splitlines()) >= 4
    sel = json.loads((folder / "round_1" / "selection.json").read_text())
    want = json.loads((ref / "round_1" / "selection.json").read_text())
    for k, v in want.items():
        if not k.startswith("time/"):
            assert sel[k] == pytest.approx(v, rel=1e-9), k
    sft_summary = json.loads((folder / "round_1" / "model" / "summary.json").read_text())
    assert sft_summary["world_size"] == 2 and sft_summary["steps"] >= 1
    _assert_same_weights(folder / "round_1" / "model", ref / "round_1" / "model", "rs sft")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2
    g = summary["rounds"][0]["gold_after"]["eval/gold_greedy"]
    w = json.loads((ref / "summary.json").read_text())["rounds"][0]["gold_after"]
    assert g == pytest.approx(w["eval/gold_greedy"], abs=1e-6)
    assert (folder / "model.safetensors").is_file()


def test_zero3_sampling_pads_to_the_largest_slice(monkeypatch):
    """Rank 1 of 2 holds 1 of a global micro-batch of 3 rows: under ZeRO-3 it samples
    ceil(3 / 2) = 2 rows (its prompt twice, seed 10 + 1_000_003) so both ranks make the same
    ``generate`` calls, and keeps 1; under ZeRO-2 it samples its 1 row and asks nobody."""
    import contextlib
    import types

    from simple_rlhf.rollout.generate import SamplingArgs
    from simple_rlhf.trainers import distill_dist
    from simple_rlhf.trainers.distill import pack

    calls, reduced = [], []

    def fake_generate(model, tokenizer, prompts, sampling, *, seed=None):
        calls.append((list(prompts), seed))
        return pack([(list(p), [7, 9]) for p in prompts], 0, 9)

    def all_reduce_sum(values):
        reduced.append(list(values))
        return [3.0]

    monkeypatch.setattr(distill_dist, "generate", fake_generate)
    from simple_rlhf.infra.distributed import Dist

    dist = types.SimpleNamespace(
        initialized=True, world_size=2, rank=1, all_reduce_sum=all_reduce_sum
    )
    dist.sampling_seed = lambda seed: Dist.sampling_seed(dist, seed)  # the real rule, rank 1
    tok = types.SimpleNamespace(pad_token_id=0)
    for stage, rows in ((3, 2), (2, 1)):
        calls.clear()
        plan = types.SimpleNamespace(zero_stage=stage, hf_current=contextlib.nullcontext)
        out = distill_dist.sample_student(None, tok, [[5, 6]], SamplingArgs(), 10, dist, plan)
        assert calls == [([[5, 6]] * rows, 10 + 1_000_003)]
        assert len(out) == 1 and out.response_ids.tolist() == [[7, 9]]
    assert reduced == [[1]]  # only ZeRO-3 asked for the global row count


if __name__ == "__main__":
    main(sys.argv[1])
