"""Distributed training on CPU, for real: 2 processes over gloo, DDP and DeepSpeed ZeRO-2/3.

Multi-process tests (marked ``multiproc`` and ``slow``) launch ``tests/infra/dist_worker.py``:
one ``torchrun --standalone --nproc_per_node 2`` runs five short SFT trainings in one process group
(DDP, ZeRO-2, ZeRO-2 + optimizer offload, ZeRO-3 + optimizer and parameter offload, ZeRO-3 without
offload + LoRA merged), one ``deepspeed --num_gpus 2`` launch (its ``--local_rank`` flag, resume from a
DeepSpeed checkpoint, a LoRA adapter saved from ZeRO-3, bf16) and one DeepSpeed run in a single
process; one more ``torchrun`` runs this file as its worker (:func:`qlora_worker`): QLoRA at
ZeRO-3 with the real ``run`` of SFT, the reward model, DPO (reference on the fly and precomputed)
and KTO. Each is compared with a single-process run on the same global batch: per rank 4
examples x 2 ranks = 8 examples in one process, 3 optimiser steps, cosine schedule from 3e-3 with
no warm-up (the schedule matters from step 2), gradients clipped to norm 1 (the initial norm is
~6.7, so clipping is active).

Tolerances (measured on this machine in brackets):
* train loss of steps 1-3: rtol 1e-6 [<= 7e-8: only the order of the sums over ranks differs];
* saved weights: atol 1e-4 [<= 1.1e-5]. Adam moves a weight by about lr x sign(g) on its first
  steps, so a gradient within rounding of zero (|g| ~ eps = 1e-8) moves by a different amount:
  1-5 elements per matrix differ by ~1e-5 under ZeRO-3, every other one by <= 1.2e-7. The
  weights move by up to 9e-3 in these 3 steps (asserted > 1e-3, so the comparison means something);
* bf16 (DeepSpeed bf16 with fp32 master weights) vs fp32: rtol 1e-2 [4e-4].
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simple_rlhf.config import ConfigError, DistArgs, OptimArgs, load_config
from simple_rlhf.infra.distributed import Dist, init_distributed
from simple_rlhf.infra.logging import read_jsonl
from simple_rlhf.infra.zero import deepspeed_config, estimate_memory
from simple_rlhf.trainers import common
from simple_rlhf.trainers.sft import SFTConfig, run

WORKER = Path(__file__).with_name("dist_worker.py")
COMMON = {
    "report_to": ["jsonl"],
    "progress_bar": False,
    "gold_eval_prompts": 0,
    "max_steps": 3,
    "logging_steps": 1,
    "warmup_ratio": 0.0,
    "adam_epsilon": 1e-6,  # bounds how far rounding noise in a ~0 gradient moves a weight
    "max_eval_samples": 8,
}
PER_RANK = {**COMMON, "per_device_train_batch_size": 4}
TORCHRUN_RUNS = {
    "ddp": {},
    "zero2": {"zero_stage": 2},
    "zero2_offload": {"zero_stage": 2, "offload": "optimizer"},
    # + generation under ZeRO-3 (gathered parameters on every rank)
    "zero3_offload": {"zero_stage": 3, "offload": "all", "gold_eval_prompts": 2},
    "zero3_lora": {"zero_stage": 3, "lora_dim": 4},
}
LORA = {"zero3_lora": "ref_lora"}
CONSTANT = {"lr_scheduler_type": "constant", "save_steps": 2}
LAUNCHER_RUNS = [
    ["resumed", {**CONSTANT, "zero_stage": 2, "max_steps": 2}],
    ["resumed", {**CONSTANT, "zero_stage": 2}],
    ["adapter", {"zero_stage": 3, "lora_dim": 4, "merge_lora": False}],
    ["bf16", {"zero_stage": 2, "dtype": "bfloat16"}],
]


QLORA = {"zero_stage": 3, "lora_dim": 8, "load_in_4bit": True}
QLORA_RUNS = {"qlora_merged": {}, "qlora_adapter": {"merge_lora": False}}
# QLoRA at ZeRO-3 for the other trainers (same launch): name -> (trainer, overrides). The DPO
# reference is the policy with its adapter disabled (the 4-bit base), on the fly or precomputed.
# adam_epsilon 1e-6 bounds how far rounding noise in a ~0 gradient moves a weight (see
# test_distributed_preference.py); the precomputed run takes 2% of the pairs (200, not 4000):
# the reference pass covers the whole train split.
PREF = {"learning_rate": 1e-3, "adam_epsilon": 1e-6}
QLORA_TRAINERS = {
    "rm_qlora": ("reward", {**PREF, "kind": "value"}),  # the scalar head kept full precision
    "dpo_qlora": ("dpo", PREF),
    "dpo_qlora_precomputed": (
        "dpo",
        {**PREF, "precompute_ref_log_probs": True, "data_split": "49,2,49"},
    ),
    "kto_qlora": ("kto", PREF),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd_prefix: list[str], out: Path, runs: list, tag: str, frozen=()) -> Path:
    """Run the worker under a launcher; fail with its log if any rank fails."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / f"{tag}.json"
    content = {"out": str(out), "common": PER_RANK, "runs": runs, "frozen": list(frozen)}
    spec.write_text(json.dumps(content))
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        # DeepSpeed JIT-compiles its CPU communication op once; keep it between test runs
        TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR")
        or str(Path.home() / ".cache" / "torch_extensions"),
    )
    _worker().run_logged([*cmd_prefix, str(WORKER), str(spec)], env, out / f"{tag}.log", tag)
    return out


def _worker():
    """``dist_worker.py`` loaded by path (the suite imports with importlib mode)."""
    found = importlib.util.spec_from_file_location("_sft_dist_worker", WORKER)
    worker = importlib.util.module_from_spec(found)
    found.loader.exec_module(worker)
    return worker


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_base) -> Path:
    """Single-process runs with the whole global batch of 8 (no launcher: no process group)."""
    out = tmp_path_factory.mktemp("reference")
    for name, extra in {
        "ref": {},
        "ref_lora": {"lora_dim": 4},
        "ref_constant": {"lr_scheduler_type": "constant"},
    }.items():
        cfg = {**COMMON, **extra, "per_device_train_batch_size": 8, "output_dir": str(out / name)}
        run(load_config(SFTConfig, overrides=cfg))
    assert not torch.distributed.is_initialized()
    return out


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory, references) -> Path:
    import deepspeed  # noqa: F401 - CI must have it: fail here rather than skip

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = tmp_path_factory.mktemp("torchrun")
    runs = [[k, v] for k, v in TORCHRUN_RUNS.items()]
    return _launch(cmd, out, runs, "torchrun", frozen=[["frozen_zero3", 3, "param"]])


@pytest.fixture(scope="module")
def launcher_runs(tmp_path_factory, references) -> Path:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    cmd += ["--master_port", str(_free_port())]
    return _launch(cmd, tmp_path_factory.mktemp("launcher"), LAUNCHER_RUNS, "deepspeed")


def losses(folder: Path) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(folder / "metrics.jsonl") if "train/loss" in r]


def assert_two_synchronised_ranks(folder: Path, kind: str, stage: int | None) -> list[dict]:
    facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [f["rank"] for f in facts] == [0, 1]
    assert all(f["world_size"] == 2 and f["dist_world_size"] == 2 for f in facts)
    assert all(f["kind"] == kind and f["zero_stage"] == stage for f in facts)
    a, b = (load_file(str(folder / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:  # every rank holds exactly the same (full) weights after training
        assert torch.equal(a[k], b[k]), k
    return facts


def assert_same_weights(got: dict, want: dict, base: dict | None = None) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-4, msg=k)
    if base is not None:
        moved = max(float((want[k] - base[k]).abs().max()) for k in base)
        assert moved > 1e-3


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHRUN_RUNS))
def test_two_ranks_match_one_process(name, torchrun_runs, references, tiny_base):
    """Two ranks (4 examples each) = one process (8 examples): same losses, same saved weights
    (ZeRO-3: gathered on rank 0; LoRA: merged), identical weights on both ranks."""
    folder, ref = torchrun_runs / name, references / LORA.get(name, "ref")
    over = TORCHRUN_RUNS[name]
    assert_two_synchronised_ranks(folder, "ddp" if name == "ddp" else "ds", over.get("zero_stage"))
    got, want = losses(folder), losses(ref)
    assert len(got) == len(want) == 3
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    base = load_file(str(tiny_base / "model.safetensors"))
    saved = load_file(str(folder / "model.safetensors"))
    assert_same_weights(saved, load_file(str(ref / "model.safetensors")), base)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    ref_summary = json.loads((ref / "summary.json").read_text())
    for when in ("before", "after"):  # evaluation split over the ranks (padded) = one process
        got_eval, want_eval = summary[when]["eval/loss"], ref_summary[when]["eval/loss"]
        assert got_eval == pytest.approx(want_eval, rel=1e-5)
    if over.get("gold_eval_prompts"):
        assert 0.0 <= summary["after"]["eval/gold_greedy"] <= 1.0


@pytest.mark.multiproc
@pytest.mark.slow
def test_zero3_save_loads_as_plain_hf_model(torchrun_runs):
    from transformers import AutoModelForCausalLM

    for name in ("zero3_offload", "zero3_lora"):
        model = AutoModelForCausalLM.from_pretrained(torchrun_runs / name)
        assert not any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.multiproc
@pytest.mark.slow
def test_frozen_model_partitioned_by_zero3(torchrun_runs, tiny_base):
    """A frozen (reference) model under ZeRO-3 with parameters offloaded: each rank holds about
    half of the 0.73M parameters (shards are padded to a multiple of the world size), nothing
    trains, and the logits equal the plain model's (atol 1e-5: same weights, the matmuls only
    run on gathered copies)."""
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer

    folder = torchrun_runs / "frozen_zero3"
    facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(f["rank"], f["world_size"]) for f in facts] == [(0, 2), (1, 2)]
    for f in facts:
        assert f["shard_numel"] <= f["full_numel"] / 2 + 1000 and not f["requires_grad"]
    model = load_causal_lm(str(tiny_base), load_tokenizer(str(tiny_base))).eval()
    with torch.no_grad():
        want = model(input_ids=torch.arange(5, 45).unsqueeze(0)).logits
    for r in (0, 1):
        got = load_file(str(folder / f"rank{r}.safetensors"))["logits"]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.multiproc
@pytest.mark.slow
def test_deepspeed_launcher_resume_adapter_bf16(launcher_runs, references, tiny_base):
    """Under ``deepspeed --num_gpus 2`` (which passes ``--local_rank=N``): 2 steps + a DeepSpeed
    checkpoint, then a resumed run to step 3 = 3 steps in one process (constant lr); a ZeRO-3
    LoRA adapter saved alone, merged by peft = the single-process merged LoRA; bf16 trains."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    facts = assert_two_synchronised_ranks(launcher_runs / "resumed", "ds", 2)
    assert [f["local_rank_flag"] for f in facts] == [0, 1]
    resumed = launcher_runs / "resumed"
    assert (resumed / "checkpoints" / "step-2" / "state.json").exists()
    got = losses(resumed)  # steps 1-2 from the first run, step 3 after resuming
    torch.testing.assert_close(got, losses(references / "ref_constant"), rtol=1e-6, atol=0)
    assert_same_weights(
        load_file(str(resumed / "model.safetensors")),
        load_file(str(references / "ref_constant" / "model.safetensors")),
    )

    adapter = launcher_runs / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    assert not (adapter / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    want = load_file(str(references / "ref_lora" / "model.safetensors"))
    got_sd = {k: v for k, v in merged.state_dict().items() if k in want}
    assert_same_weights(got_sd, want)

    bf16 = launcher_runs / "bf16"
    assert_two_synchronised_ranks(bf16, "ds", 2)
    assert (
        load_file(str(bf16 / "model.safetensors"))["model.embed_tokens.weight"].dtype
        == torch.bfloat16
    )
    torch.testing.assert_close(losses(bf16), losses(references / "ref"), rtol=1e-2, atol=0)


@pytest.mark.multiproc
@pytest.mark.slow
def test_deepspeed_in_one_process(tmp_path, references):
    """``--zero-stage`` without a launcher: a one-rank group of our own; batch 8 in one process
    equals the plain single-process run."""
    out = tmp_path / "single"
    out.mkdir()
    spec = out / "spec.json"
    over = {**COMMON, "per_device_train_batch_size": 8, "zero_stage": 3}
    spec.write_text(json.dumps({"out": str(out), "common": over, "runs": [["z3", {}]]}))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = json.loads((out / "z3" / "rank0.json").read_text())
    assert facts["world_size"] == 1 and facts["zero_stage"] == 3
    torch.testing.assert_close(losses(out / "z3"), losses(references / "ref"), rtol=1e-6, atol=0)


# --- in-process unit tests (no process group) ---------------------------------------------------


def _qlora_run(trainer: str, overrides: dict) -> dict:
    """One training of ``trainer`` (sft, reward, dpo, kto) with the shared SFT test settings."""
    from simple_rlhf.trainers import kto, preference, reward, sft

    runs = {
        "sft": (SFTConfig, sft.run),
        "reward": (reward.RewardConfig, reward.run),
        "dpo": (preference.DPOConfig, preference.run),
        "kto": (kto.KTOConfig, kto.run),
    }
    cls, fn = runs[trainer]
    if trainer == "reward":  # no generation in the RM trainer
        overrides = {k: v for k, v in overrides.items() if k != "gold_eval_prompts"}
    return fn(load_config(cls, overrides=overrides))


def _qlora_specs() -> dict[str, tuple[str, dict]]:
    return {**{k: ("sft", v) for k, v in QLORA_RUNS.items()}, **QLORA_TRAINERS}


def qlora_worker(spec_path: str) -> None:
    """Every rank (``python test_distributed.py SPEC``): QLoRA runs at ZeRO-3 (the real
    ``run`` of each trainer); records the world size seen by each rank."""
    spec = json.loads(Path(spec_path).read_text())
    for name, trainer, over in spec["runs"]:
        out = Path(spec["out"]) / name
        _qlora_run(trainer, {**spec["common"], **over, "output_dir": str(out)})
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": world}))


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory, tiny_base) -> Path:
    """One-process QLoRA references (global batch 8, no DeepSpeed) and the 2-rank ZeRO-3 runs
    (4 per rank) of every trainer in one torchrun launch."""

    import deepspeed  # noqa: F401 - CI must have it: fail here rather than skip

    out = tmp_path_factory.mktemp("qlora")
    q1 = {k: v for k, v in QLORA.items() if k != "zero_stage"}
    model = {"model_name_or_path": str(tiny_base)}
    for name, (trainer, extra) in _qlora_specs().items():
        cfg = {**COMMON, **model, **q1, **extra, "per_device_train_batch_size": 8}
        _qlora_run(trainer, {**cfg, "output_dir": str(out / f"ref_{name}")})
    assert not torch.distributed.is_initialized()
    spec = out / "spec.json"
    runs = [[k, t, v] for k, (t, v) in _qlora_specs().items()]
    common = {**PER_RANK, **model, **QLORA}
    spec.write_text(json.dumps({"out": str(out), "common": common, "runs": runs}))
    _worker().torchrun(__file__, spec, out / "torchrun.log")
    return out


@pytest.mark.multiproc
@pytest.mark.slow
def test_qlora_zero3_saves_what_one_process_saves(qlora_runs):
    """QLoRA (NF4 base, LoRA r=8) SFT at ZeRO-3 on 2 ranks x 4 examples = 1 process x 8, 3 steps:
    same losses (rtol 1e-6); rank 0 gathers the whole 4-bit model and writes (a) merged: a plain
    float32 model, ``deq(W) + s * B @ A``, no quantization_config, equal to the one-process save
    (atol 1e-5 [measured 1.1e-7]), (b) the adapter alone + ``qlora.json``, equal within atol
    2e-5 [5.4e-6: Adam moves a weight whose gradient is within rounding of 0 by a different
    amount, see the module docstring], its ``lora_B`` (0 at the start) moved by > 1e-4, so the
    merged comparison sees the adapters.
    RM, DPO, KTO: :func:`test_qlora_zero3_other_trainers_match_one_process`; the online trainers
    and distillation still refuse 4-bit at ZeRO-3 (``check_qlora(zero3_ok=)``, ``Plan.wrap``)."""
    from transformers import AutoModelForCausalLM

    for name in QLORA_RUNS:
        folder, ref = qlora_runs / name, qlora_runs / f"ref_{name}"
        facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [(f["rank"], f["world_size"]) for f in facts] == [(0, 2), (1, 2)]
        got, want = losses(folder), losses(ref)
        assert len(got) == len(want) == 3
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    merged, adapter = qlora_runs / "qlora_merged", qlora_runs / "qlora_adapter"
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    files = {merged: ("model.safetensors", 1e-5), adapter: ("adapter_model.safetensors", 2e-5)}
    for folder, (fname, atol) in files.items():
        g = load_file(str(folder / fname))
        w = load_file(str(qlora_runs / f"ref_{folder.name}" / fname))
        assert g.keys() == w.keys() and len(w) > 0
        for k in w:
            assert g[k].dtype == w[k].dtype == torch.float32, k
            torch.testing.assert_close(g[k], w[k], rtol=0, atol=atol, msg=k)
    lora_b = load_file(str(adapter / "adapter_model.safetensors"))
    assert max(float(v.abs().max()) for k, v in lora_b.items() if "lora_B" in k) > 1e-4
    assert (adapter / "qlora.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in n for n, _ in model.named_parameters())


def _first(folder: Path, key: str) -> float:
    return [r[key] for r in read_jsonl(folder / "metrics.jsonl") if key in r][0]


@pytest.fixture(scope="module")
def dequantized_base(tiny_base) -> dict[str, torch.Tensor]:
    """The tiny base as the 4-bit runs start from it: NF4 weights dequantised (float32)."""
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
    from simple_rlhf.models.lora import merged_state_dict

    tok = load_tokenizer(str(tiny_base))
    return merged_state_dict(load_causal_lm(str(tiny_base), tok, load_in_4bit=True))


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(QLORA_TRAINERS))
def test_qlora_zero3_other_trainers_match_one_process(name, qlora_runs, dequantized_base):
    """RM, DPO (reference = the 4-bit base with the adapter disabled, on the fly or precomputed
    on each rank's shard) and KTO with QLoRA (NF4, r=8, lr 1e-3) at ZeRO-3, 2 ranks x 4 = 1 process
    x 8, 3 steps: train losses of steps 1-3 rtol 1e-5 [<= 2.2e-7] (DPO/KTO step 1 is
    ln 2 / the KL-free value for every example, so the step-1 chosen log-probs are compared too);
    the merged save of rank 0 (plain float32, no quantization_config) equals the one-process save,
    atol 1e-5 [<= 4.3e-7]; its LoRA targets differ from the dequantised NF4 base by > 1e-3
    [~2e-3: the adapters moved], every other weight equals it. RM: the head
    ``score`` is saved full precision, the folder loads as a scorer whose raw scores equal the
    one-process RM's (atol 1e-5 [3.5e-7])."""
    folder, ref = qlora_runs / name, qlora_runs / f"ref_{name}"
    facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(f["rank"], f["world_size"]) for f in facts] == [(0, 2), (1, 2)]
    got, want = losses(folder), losses(ref)
    assert len(got) == len(want) == 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    trainer = QLORA_TRAINERS[name][0]
    if trainer != "reward":
        key = "train/logps/chosen"
        assert _first(folder, key) == pytest.approx(_first(ref, key), rel=1e-5)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    g = load_file(str(folder / "model.safetensors"))
    w = load_file(str(ref / "model.safetensors"))
    base = dequantized_base
    assert g.keys() == w.keys() and not any("lora" in k for k in w)
    for k in w:
        assert g[k].dtype == w[k].dtype == torch.float32, k
        torch.testing.assert_close(g[k], w[k], rtol=0, atol=1e-5, msg=k)
    targets = [k for k in w if k.endswith("proj.weight")]  # the LoRA targets
    assert max(float((w[k] - base[k]).abs().max()) for k in targets) > 1e-3
    for k in set(w) & set(base) - set(targets):  # norms, embeddings: frozen, saved as loaded
        assert torch.equal(w[k], base[k]), k
    if trainer == "reward":
        from simple_rlhf.models.reward import RewardScorer

        assert g["score.weight"].shape[0] == 1
        scorers = [RewardScorer.load(str(f), normalize=False) for f in (folder, ref)]
        ids = torch.arange(5, 45).view(2, 20)
        mask = torch.ones_like(ids)
        mask[1, 15:] = 0
        s_got, s_want = (sc.raw_score_ids(ids, mask) for sc in scorers)
        torch.testing.assert_close(s_got, s_want, rtol=0, atol=1e-5)
        assert not any("lora" in n for n, _ in scorers[0].model.named_parameters())


def test_4bit_weights_at_zero3_refused_unless_the_trainer_allows_them():
    """A model holding a bitsandbytes-style 4-bit weight (``Params4bit`` with a quant_state) is
    refused by a ZeRO-3 plan before DeepSpeed is touched; a ZeRO-2 plan takes it (plain here:
    no DeepSpeed config, so not wrapped by DeepSpeed)."""
    from simple_rlhf.infra.distributed import Plan

    class Params4bit(torch.nn.Parameter):  # what is_4bit_param recognises (by type name)
        quant_state = object()

    model = torch.nn.Linear(2, 2)
    model.weight = Params4bit(torch.zeros(2, 2), requires_grad=False)
    stage3 = Plan(Dist(None), OptimArgs(), "float32", {"zero_optimization": {"stage": 3}})
    with pytest.raises(ConfigError, match="load_in_4bit .*ZeRO-3"):
        stage3.wrap(model, None, None)
    assert Plan(Dist(None), OptimArgs(), "float32", None).wrap(model, None, None).kind == "plain"


def test_single_process_creates_no_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    dist = init_distributed(DistArgs())
    assert (dist.rank, dist.world_size, dist.initialized) == (0, 1, False)
    assert not torch.distributed.is_initialized()
    assert dist.plan(OptimArgs(), "float32").ds_config is None
    assert dist.all_reduce_sum([3, 4.5]) == [3.0, 4.5]
    assert dist.mean_metrics({"a": 2.0}) == {"a": 2.0}


def test_shards_are_disjoint_and_cover_the_global_batch():
    """10 examples, batch 3 per rank x 2 ranks: global batches of 6 then 4; rank 0 takes the
    first half of each. With 13 examples the last global batch holds 1 (< 2 ranks) and is dropped:
    still 2 micro-batches per rank, and steps_per_epoch counts them."""
    ranks = [Dist(DistArgs(), rank=r, world_size=2) for r in (0, 1)]
    data = list(range(10))
    got = [common.rank_batches(data, 3, d, shuffle=False) for d in ranks]
    assert got == [[[0, 1, 2], [6, 7]], [[3, 4, 5], [8, 9]]]
    shuffled = [common.rank_batches(data, 3, d, shuffle=True, seed=5) for d in ranks]
    one = list(common.batches(data, 6, shuffle=True, seed=5))
    assert [a + b for a, b in zip(shuffled[0], shuffled[1], strict=True)] == one
    thirteen = list(range(13))
    assert common.rank_batches(thirteen, 3, ranks[1], shuffle=False) == [[3, 4, 5], [9, 10, 11]]
    assert common.steps_per_epoch(13, 3, 1, world_size=2) == 2
    assert common.steps_per_epoch(13, 3, 1) == 5  # one process: ceil(13 / 3)
    assert common.steps_per_epoch(13, 3, 2, world_size=2) == 1
    assert common.rank_batches(data, 4, Dist(DistArgs()), shuffle=False)[-1] == [8, 9]


def test_padded_eval_shards_have_equal_size():
    """5 items over 2 ranks: 3 each; rank 1 gets items 3, 4 and one padding copy."""
    r0, r1 = (Dist(DistArgs(), rank=r, world_size=2) for r in (0, 1))
    assert r0.shard_padded(list("abcde")) == (["a", "b", "c"], 3)
    assert r1.shard_padded(list("abcde")) == (["d", "e", "e"], 2)
    assert Dist(DistArgs()).shard_padded(list("ab")) == (["a", "b"], 2)


def test_memory_estimate_reproduces_the_zero_paper():
    """ZeRO paper, Figure 1: Ψ = 7.5B, N = 64, mixed precision (p = 2, K = 12):
    DDP (2+2+12)Ψ = 120 GB; stage 1: 4Ψ + 12Ψ/64 = 31.406 GB; stage 2: 2Ψ + 14Ψ/64 = 16.641 GB;
    stage 3: 16Ψ/64 = 1.875 GB."""
    psi = 7.5e9
    want = {0: 120e9, 1: 31.40625e9, 2: 16.640625e9, 3: 1.875e9}
    for stage, total in want.items():
        mem = estimate_memory(psi, psi, stage=stage, world_size=64, dtype="bfloat16")
        assert mem["device"] == pytest.approx(total, rel=1e-12)
        assert mem["cpu"] == 0
    # offload moves the optimizer (12Ψ/64 = 1.40625 GB) and the params (2Ψ/64) to CPU
    mem = estimate_memory(psi, psi, stage=3, world_size=64, dtype="bfloat16", offload="all")
    assert mem["cpu"] == pytest.approx(1.40625e9 + 0.234375e9, rel=1e-12)
    assert mem["device"] == pytest.approx(0.234375e9, rel=1e-12)
    # fp32 without DeepSpeed, 1M params of which 0.5M trainable: 4 + 4*0.5 + 8*0.5 = 10 MB
    mem = estimate_memory(1e6, 5e5, stage=None, world_size=2, dtype="float32")
    assert mem["device"] == pytest.approx(10e6, rel=1e-12)


def test_deepspeed_config_from_flags_and_user_json(tmp_path):
    optim = OptimArgs(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    cfg = deepspeed_config(zero_stage=3, offload="all", optim=optim, dtype="bfloat16", world_size=2)
    assert cfg["train_batch_size"] == 16 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    fp16 = deepspeed_config(
        zero_stage=2, offload="none", optim=optim, dtype="float16", world_size=1
    )
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    user = tmp_path / "ds.json"
    user.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_clipping": "auto",
                "zero_optimization": {"stage": 2, "overlap_comm": False},
            }
        )
    )
    cfg = deepspeed_config(
        zero_stage=None,
        offload="none",
        optim=optim,
        dtype="float32",
        world_size=2,
        user_config=str(user),
    )
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["train_batch_size"] == 16
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 5}))
    with pytest.raises(ConfigError, match="differs from the flags"):
        deepspeed_config(
            zero_stage=2, offload="none", optim=optim, dtype="float32", world_size=2,
            user_config=str(user),
        )  # fmt: skip
    user.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="optimizer"):
        deepspeed_config(
            zero_stage=2, offload="none", optim=optim, dtype="float32", world_size=2,
            user_config=str(user),
        )  # fmt: skip


def test_dist_args_validation():
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(SFTConfig, overrides={"zero_stage": 4})
    with pytest.raises(ConfigError, match="needs DeepSpeed"):
        load_config(SFTConfig, overrides={"offload": "optimizer"})
    with pytest.raises(ConfigError, match="stage 3"):
        load_config(SFTConfig, overrides={"zero_stage": 2, "offload": "param"})
    cfg = load_config(SFTConfig, overrides={"local_rank": "1", "zero_stage": "3"})
    assert (cfg.dist.local_rank, cfg.dist.zero_stage) == (1, 3)


if __name__ == "__main__":
    qlora_worker(sys.argv[1])
