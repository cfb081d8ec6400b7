"""Worker of tests/infra/test_distributed.py, started on every rank by torchrun or the deepspeed
launcher: ``dist_worker.py [--local_rank=N] SPEC.json``.

SPEC is ``{"out": DIR, "common": {option: value}, "runs": [[name, {option: value}], ...],
"frozen": [[name, zero_stage, offload], ...]}``; runs with the same name share their output folder
(to resume). A ``frozen`` entry wraps the tiny base model with ``Plan.wrap_frozen`` and writes its
logits on a fixed input and the size of this rank's parameter shard. Each run is one short SFT training (``simple_rlhf.trainers.sft.run``) in the same process group. Just before
the model is saved, every rank writes its full parameters (gathered under ZeRO-3) to
``DIR/name/rank{R}.safetensors`` and what it saw to ``DIR/name/rank{R}.json``, so the test can
check that the ranks hold identical weights and that there really were two of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from simple_rlhf.config import add_config_arguments, load_config
from simple_rlhf.infra.distributed import Engine
from simple_rlhf.trainers.sft import SFTConfig, run

_save_hf = Engine.save_hf


def torchrun(script: str | Path, spec: Path, log: Path, nproc: int = 2) -> None:
    """Run ``script SPEC`` on ``nproc`` CPU ranks under torchrun (DeepSpeed on its CPU accelerator,
    one thread per rank, DeepSpeed's compiled ops kept between runs); fail with the log's tail."""
    import os

    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR")
        or str(Path.home() / ".cache" / "torch_extensions"),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    run_logged([*cmd, str(nproc), str(script), str(spec)], env, log, "torchrun")


def run_logged(cmd: list[str], env: dict, log: Path, what: str, timeout: float = 900) -> None:
    """Run ``cmd`` with its output in ``log``; fail with the log's tail. Each rank prints its
    stacks and exits 60 s before ``timeout`` (``SIMPLE_RLHF_RUN_TIMEOUT_S``): a hang fails
    with where every rank waited, never eats CI's time."""
    import subprocess

    env = {**env, "SIMPLE_RLHF_RUN_TIMEOUT_S": str(timeout - 60)}
    with log.open("w") as f:
        try:
            proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{what} timed out:\n" + log.read_text()[-12000:]) from None
    assert proc.returncode == 0, f"{what} failed:\n" + log.read_text()[-6000:]


def _recording_save_hf(self: Engine, tokenizer, out_dir, **kwargs):
    rank = torch.distributed.get_rank()
    with self.gathered():
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / f"rank{rank}.safetensors"))
    facts = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "dist_world_size": self.dist.world_size,
        "kind": self.kind,
        "zero_stage": self.zero_stage,
        "local_rank_flag": self.dist.args.local_rank,
        "optimizer": type(self.optimizer).__name__,
        "describe": self.describe(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(facts))
    return _save_hf(self, tokenizer, out_dir, **kwargs)


def main(argv: list[str]) -> None:
    # the deepspeed launcher passes --local_rank=N: it must be a flag every trainer accepts
    flags = [a for a in argv if a.startswith("--local_rank")]
    spec_path = [a for a in argv if not a.startswith("--local_rank")][0]
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig)
    from_flags = {k: v for k, v in vars(parser.parse_args(flags)).items() if k != "config"}
    spec = json.loads(Path(spec_path).read_text())
    Engine.save_hf = _recording_save_hf
    for name, overrides in spec["runs"]:
        out = Path(spec["out"]) / name
        cfg = load_config(
            SFTConfig,
            overrides={**spec["common"], **overrides, **from_flags, "output_dir": str(out)},
        )
        t0 = time.perf_counter()
        run(cfg)
        seconds = time.perf_counter() - t0
        if torch.distributed.get_rank() == 0:
            with (out / "seconds.txt").open("a") as f:
                f.write(f"{seconds:.2f}\n")
    for name, stage, offload in spec.get("frozen", []):
        frozen(Path(spec["out"]) / name, stage, offload)


def frozen(out: Path, stage: int, offload: str) -> None:
    from simple_rlhf.config import DistArgs, OptimArgs
    from simple_rlhf.infra.distributed import init_distributed
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer

    dist = init_distributed(DistArgs(zero_stage=stage))
    plan = dist.plan(OptimArgs(per_device_train_batch_size=1), "float32", offload=offload)
    tokenizer = load_tokenizer("tiny")
    with plan.loading():
        model = load_causal_lm("tiny", tokenizer)
    engine = plan.wrap_frozen(model)
    with torch.no_grad():
        logits = engine.module(input_ids=torch.arange(5, 45).unsqueeze(0)).logits
    out.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits.contiguous()}, str(out / f"rank{dist.rank}.safetensors"))
    params = list(engine.module.parameters())
    facts = {
        "rank": dist.rank,
        "world_size": torch.distributed.get_world_size(),
        "shard_numel": sum(p.ds_tensor.numel() for p in params),
        "full_numel": sum(p.ds_numel for p in params),
        "requires_grad": any(p.requires_grad for p in params),
    }
    (out / f"rank{dist.rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1:])
