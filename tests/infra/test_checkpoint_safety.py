"""Resuming never runs code from a checkpoint: every torch file of a checkpoint is read with the
``weights_only`` unpickler (tensors and plain data), DeepSpeed's files with their few known
classes allowed, and anything else is refused with a message naming the file."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from simple_rlhf.infra.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    safe_torch_load,
    save_checkpoint,
)
from simple_rlhf.infra.seed import rng_state, set_rng_state


class Payload:
    """Unpickling this runs ``os.system``: it writes the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker) -> None:
    torch.save({"optimizers": {}, "schedulers": {}, "rng": Payload(str(marker))}, path)


def _small_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    sched.step()
    save_checkpoint(
        tmp_path, 1, models={"m": model}, optimizers={"m": opt}, schedulers={"m": sched}
    )
    return model, opt, sched


def test_a_written_checkpoint_holds_only_safe_data_and_round_trips(tmp_path):
    """Optimiser, scheduler and the python / numpy / torch RNG states load back with
    ``weights_only=True`` (no allow-list) and restore the same random streams."""
    model, opt, sched = _small_checkpoint(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt / "trainer.pt") == []
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    state = rng_state()
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    blob = torch.load(ckpt / "trainer.pt", weights_only=True)  # raises if anything else is there
    json.dumps(blob["rng"]["python"]), json.dumps(blob["rng"]["numpy"])  # plain data
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
    m2 = torch.nn.Linear(3, 2)
    o2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    s2 = torch.optim.lr_scheduler.LambdaLR(o2, lambda s: 1.0)
    out = load_checkpoint(ckpt, models={"m": m2}, optimizers={"m": o2}, schedulers={"m": s2})
    assert out["step"] == 1 and s2.last_epoch == sched.last_epoch
    torch.testing.assert_close(m2.weight, model.weight)
    torch.testing.assert_close(
        o2.state_dict()["state"][0]["exp_avg"], opt.state[model.weight]["exp_avg"]
    )


def test_a_planted_payload_is_refused_and_never_runs(tmp_path):
    _small_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    _plant(latest_checkpoint(tmp_path) / "trainer.pt", marker)
    m = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(latest_checkpoint(tmp_path), models={"m": m})
    assert not marker.exists()
    msg = str(e.value)
    assert "trainer.pt" in msg and "posix.system" in msg and "--output-dir" in msg


def test_the_cli_refuses_to_resume_from_a_planted_checkpoint(tmp_path, tiny_base, capsys):
    """``simple-rlhf sft --output-dir X`` over a folder whose checkpoint was tampered with: exit 2,
    one line naming the file, the payload did not run, nothing is saved over the folder."""
    from simple_rlhf.cli.main import main

    out = tmp_path / "run"
    flags = ["--model-name-or-path", str(tiny_base), "--output-dir", str(out), "--no-progress-bar"]
    flags += ["--save-steps", "1", "--report-to", "none", "--gold-eval-prompts", "0"]
    flags += ["--max-eval-samples", "4"]
    assert main(["sft", *flags, "--max-steps", "2"]) == 0
    marker = tmp_path / "pwned"
    ckpt = latest_checkpoint(out)
    _plant(ckpt / "trainer.pt", marker)
    saved = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["sft", *flags, "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(ckpt / "trainer.pt") in err and "Traceback" not in err
    assert not marker.exists()
    assert (out / "model.safetensors").read_bytes() == saved


def test_deepspeed_checkpoint_reads_allow_its_classes_only(tmp_path):
    """Inside ``safe_deepspeed_loads`` an engine's checkpoint reads accept DeepSpeed's loss scaler
    and stage enum (what its ZeRO optimiser files hold) and refuse a payload."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from simple_rlhf.infra.dist_checkpoint import safe_deepspeed_loads

    class TorchCheckpointEngine:  # DeepSpeed's reads a checkpoint file like this
        def load(self, path, map_location=None):
            return torch.load(path, map_location=map_location, weights_only=False)

    class Engine:  # what safe_deepspeed_loads touches of a DeepSpeed engine
        checkpoint_engine = TorchCheckpointEngine()

    good, bad, marker = tmp_path / "optim.pt", tmp_path / "bad.pt", tmp_path / "pwned"
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.weights}, good)
    _plant(bad, marker)
    with safe_deepspeed_loads(Engine):
        sd = Engine.checkpoint_engine.load(str(good), map_location=lambda s, loc: s)
        assert sd["zero_stage"] == ZeroStageEnum.weights
        assert isinstance(sd["loss_scaler"], LossScaler) and sd["loss_scaler"].cur_scale == 1.0
        with pytest.raises(CheckpointError, match="bad.pt"):
            Engine.checkpoint_engine.load(str(bad))
    assert not marker.exists()
    Engine.checkpoint_engine.load(str(good))  # the engine's own method is back afterwards


def test_safe_torch_load_of_a_non_torch_file_says_so(tmp_path):
    p = tmp_path / "trainer.pt"
    p.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="trainer.pt"):
        safe_torch_load(p)


def test_a_save_killed_before_the_weights_keeps_the_old_summary(tmp_path, tiny_base, monkeypatch):
    """save_hf_model renames config/tokenizer, then the weights, then summary.json: failing at the
    weights leaves the old summary (never a new summary beside old weights). Orphan temporary
    folders of an earlier interrupted save are removed by the next save."""
    from simple_rlhf.infra import checkpoint as ck
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_base))
    model = load_causal_lm(str(tiny_base), tok)
    out = tmp_path / "out"
    ck.save_hf_model(model, tok, out, extra_json={"summary.json": {"run": 1}})
    orphan = out / ".model.tmp-abandoned"
    orphan.mkdir()
    real_replace = os.replace

    def failing(src, dst):
        if str(dst).endswith("model.safetensors"):
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", failing)
    with pytest.raises(OSError, match="killed"):
        ck.save_hf_model(model, tok, out, extra_json={"summary.json": {"run": 2}})
    assert json.loads((out / "summary.json").read_text()) == {"run": 1}
    assert not orphan.exists()
